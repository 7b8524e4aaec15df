"""task.yaml validation: a typo or a wrong type is one clear line naming the file and the key,
never a check silently switched off."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from distill.io import StageError
from distill.source import RECORD_FIELDS, load_records
from distill.tasks import load_task, main

ROOT = Path(__file__).resolve().parent.parent


def copy_task(tmp_path, name, old, new):
    d = tmp_path / name
    shutil.copytree(ROOT / "tasks" / name, d)
    p = d / "task.yaml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))
    return d


@pytest.mark.parametrize("name,old,new,message", [
    # a field name that is not in the schema (it would never be checked or scored)
    ("recipe", "fields:\n  name:\n", "fields:\n  nmae:\n",
     r"task\.yaml: fields\.nmae: not a property of schema\.json \(did you mean 'name'\?\)"),
    # a verify.source the records do not have (the check would see "no source value" forever)
    ("recipe", "source: prep_minutes,", "source: prep_minute,",
     r"task\.yaml: fields\.prepTime\.verify\.source: 'prep_minute' is not a field of the allrecipes_csv records "
     r"\(did you mean 'prep_minutes'\?\)"),
    ("gtm_intent", "source: motion,", "source: motoin,",
     r"fields\.motion\.verify\.source: 'motoin' is not a field of the jsonl records"),
    ("coffee_order", "source: total_price,", "source: total,",
     r"fields\.total_price\.verify\.source: 'total' is not a field of the menu_orders records"),
    ("recipe", "record_fields: [name, summary,", "record_fields: [name, sumary,",
     r"synthesis\.record_fields: 'sumary' is not a field"),
    # a template without {text}: the model would never see the input
    ("recipe", 'user_template: "Extract the recipe from this text:\\n\\n{text}"\n\nstudent:',
     'user_template: "Extract the recipe from this text:"\n\nstudent:', r"label\.user_template has no \{text\}"),
    ("coffee_order", 'user_template: "Clean order list:\\n\\n{text}"', 'user_template: "Clean order list"',
     r"steps\[1\]\.user_template has no \{text\}"),
    # wrong types
    ("recipe", "weight: 5\n", "weight: lots\n",
     r"task\.yaml: synthesis\.styles\[2\]\.weight: Input should be a valid number, got 'lots'$"),
    ("recipe", "    required: true\n    score: text", "    required: yes please\n    score: text",
     r"fields\.name\.required: Input should be a valid boolean, got 'yes please'$"),
    ("article_scores", "method: number, tolerance: 2}", "method: number, tolerance: two}",
     r"fields\.impact\.verify\.tolerance: Input should be a valid number, got 'two'"),
    ("recipe", "    grounded: paraphrase ", "    grounded: fuzzy ",
     r"fields\.recipeInstructions\.grounded: must be true .*, false, or paraphrase .*; got 'fuzzy'$"),
    # unknown keys, with what is allowed
    ("recipe", "    verify: {source: name,", "    verfy: {source: name,",
     r"fields\.name: unknown key 'verfy' \(did you mean 'verify'\? allowed: grounded, required, score, verify, weight\)"),
    ("recipe", "method: minutes, keywords: [prep", "method: minutes, keyword: [prep",
     r"fields\.prepTime\.verify: unknown key 'keyword' \(did you mean 'keywords'\? allowed: keywords, method, min, "
     r"source, tolerance\)"),
    ("recipe", "  - name: instagram_short\n      weight: 1",
     "  - name: instagram_short\n      wieght: 1", r"synthesis\.styles\[0\]: unknown key 'wieght'"),
    ("recipe", "method: name, min: 0.8}", "method: fuzzy, min: 0.8}", r"fields\.name\.verify\.method: Input should be"),
    ("recipe", "  - name: minimal_organized\n      weight: 2", "  - name: minimal_organized\n      weight: -2",
     r"synthesis\.styles\[1\]\.weight: Input should be greater than 0, got -2"),
    ("recipe", "name: recipe\n", "name: [recipe]\n", r"task\.yaml: name: Input should be a valid string, got \['recipe'\]"),
    ("recipe", "parser: allrecipes_csv", "parser: allrecipe_csv", r"source\.parser 'allrecipe_csv' is not a parser"),
])
def test_task_yaml_mistakes_are_one_clear_line(tmp_path, name, old, new, message):
    d = copy_task(tmp_path, name, old, new)
    with pytest.raises(StageError) as exc:
        load_task(d)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(d / "task.yaml") + ": "), msg
    assert re.search(message, msg), msg


def test_python_m_distill_tasks_reports_the_typo(tmp_path, capsys):
    d = copy_task(tmp_path, "recipe", "fields:\n  name:\n", "fields:\n  nmae:\n")
    assert main([str(d)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fields.nmae: not a property of schema.json" in err


def test_style_empty_fields_must_be_task_fields(tmp_path):
    d = copy_task(tmp_path, "recipe", "  - name: instagram_short\n      weight: 1\n",
                  "  - name: instagram_short\n      weight: 1\n      empty: [name, recipeIngredients]\n")
    with pytest.raises(StageError, match=r"style 'instagram_short': empty: \['recipeIngredients'\] are not fields"):
        load_task(d)
    d = copy_task(tmp_path / "ok", "recipe", "  - name: instagram_short\n      weight: 1\n",
                  "  - name: instagram_short\n      weight: 1\n      empty: [name, recipeIngredient]\n")
    assert load_task(d).style_empty("instagram_short") == ("name", "recipeIngredient")


def test_keywords_only_for_methods_that_read_them(tmp_path):
    d = copy_task(tmp_path, "recipe", "method: name, min: 0.8}", "method: name, min: 0.8, keywords: [title]}")
    with pytest.raises(StageError, match=r"fields\.name\.verify\.keywords: only minutes, count and number"):
        load_task(d)


@pytest.mark.parametrize("task", ["recipe", "coffee_order"])
def test_declared_record_fields_are_the_parsers_real_fields(task):
    t = load_task(task)
    records, _ = load_records(t.dir / (t.source.get("sample") or t.source["file"]), t.source["parser"])
    have = set().union(*(r.keys() for r in records))
    assert have == RECORD_FIELDS[t.source["parser"]]


def test_a_styles_own_prompt_and_record_fields_are_checked(tmp_path):
    d = copy_task(tmp_path / "a", "recipe", "record_fields: [name, summary]   #", "record_fields: [name, sumary]   #")
    with pytest.raises(StageError, match=r"style 'no_recipe_review': record_fields: 'sumary' is not a field of the "
                                         r"allrecipes_csv records \(did you mean 'summary'\?\)"):
        load_task(d)
    d = copy_task(tmp_path / "b", "recipe", "prompt: prompts/synthesize_no_recipe.md\n      record_fields: [name, summary]  ",
                  "prompt: prompts/nope.md\n      record_fields: [name, summary]  ")
    with pytest.raises(StageError, match=r"style 'no_recipe_review': prompt: file .*nope\.md not found"):
        load_task(d)
    d = copy_task(tmp_path / "c", "recipe", "name: recipe", "name: recipe")
    (d / "prompts" / "synthesize_no_recipe.md").write_text("Write a review.\n\n{style_instructions}\n")
    with pytest.raises(StageError, match=r"style 'no_recipe_review': prompt \(prompts/synthesize_no_recipe\.md\) "
                                         r"has no \{record_text\}"):
        load_task(d)
