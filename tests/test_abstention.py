"""Inputs whose right answer is empty or partial: the recipe task's abstention styles, their
verification on real cases, 04 --abstention-share, and the demo's draw of them."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from distill import synth
from distill.dataset import abstention_styles, cap_share
from distill.labels import verify
from distill.tasks import load_task
from fake_openai_server import FakeOpenAIServer
from fake_teacher import OracleTeacher
from test_stages_02_04 import outputs, run_02, run_03, run_04

ROOT = Path(__file__).resolve().parent.parent
TASK = load_task("recipe")
NO_RECIPE = ("no_recipe_review", "no_recipe_product", "no_recipe_menu")
RECORD = {"id": "r-tacos", "name": "Chicken Tacos", "summary": "Smoky grilled chicken tacos for a weeknight.",
          "ingredients": ["1 lb boneless chicken thighs", "2 tsp chili powder", "1 lime, juiced",
                          "8 small corn tortillas"],
          "prep_minutes": 10, "cook_minutes": 12, "total_minutes": 22, "servings": 4}
EMPTY = {"@context": "https://schema.org", "@type": "Recipe", "name": None, "recipeIngredient": [],
         "recipeInstructions": [], "prepTime": None, "cookTime": None, "totalTime": None, "recipeYield": None}
TACOS = EMPTY | {"name": "Chicken Tacos",
                 "recipeIngredient": ["1 lb boneless chicken thighs", "2 tsp chili powder", "1 lime, juiced",
                                      "8 small corn tortillas"],
                 "recipeInstructions": [{"@type": "HowToStep", "text": "Toss the chicken with chili powder and lime juice."},
                                        {"@type": "HowToStep", "text": "Grill the chicken 6 minutes per side, then slice."},
                                        {"@type": "HowToStep", "text": "Warm the tortillas and fill with chicken."}]}

# What a teacher writes for no_recipe_review from this record: the dish is only the topic.
REVIEW = ("Dinner at El Farolito on Friday ⭐⭐⭐⭐\nWe ordered the chicken tacos ($12 for three) and a michelada. "
          "The tortillas were clearly handmade and the lime crema was great, the salsa verde a little too mild for "
          "me. Service was friendly but slow on a packed night. Street parking only. #tacotuesday #foodie")
NO_TIMES_POST = ("Chicken Tacos\nweeknight win, the kids ate every crumb\n\n1 lb boneless chicken thighs\n"
                 "2 tsp chili powder\n1 lime, juiced\n8 small corn tortillas\n\nToss the chicken with chili powder "
                 "and lime juice. Grill the chicken 6 minutes per side, then slice. Warm the tortillas and fill "
                 "with chicken.")
TWO_RECIPES = ("Chicken Tacos\nTaco night is sacred in this house!\nPrep: 10 mins | Cook: 12 mins | Serves 4\n\n"
               "Ingredients:\n- 1 lb boneless chicken thighs\n- 2 tsp chili powder\n- 1 lime, juiced\n"
               "- 8 small corn tortillas\n\n1. Toss the chicken with chili powder and lime juice.\n"
               "2. Grill the chicken 6 minutes per side, then slice.\n3. Warm the tortillas and fill with chicken.\n\n"
               "And to go with them: Quick Pickled Onions (makes 1 jar)\n- 1 red onion, thinly sliced\n"
               "- 1/2 cup apple cider vinegar\n- 1 tsp sugar\n- 1 tsp salt\n\nPack the onion into a jar. Heat the "
               "vinegar, sugar and salt until dissolved and pour it over the onion.")
ONIONS = EMPTY | {"name": "Quick Pickled Onions",
                  "recipeIngredient": ["1 red onion, thinly sliced", "1/2 cup apple cider vinegar", "1 tsp sugar",
                                       "1 tsp salt"],
                  "recipeInstructions": [{"@type": "HowToStep", "text": "Pack the onion into a jar."},
                                         {"@type": "HowToStep", "text": "Heat the vinegar, sugar and salt until "
                                                                        "dissolved and pour it over the onion."}],
                  "recipeYield": "1 jar"}


def style(name):
    return next(s for s in TASK.styles if s.name == name)


# ------------------------------------------------------------------ the styles as the teacher sees them

def test_a_no_recipe_style_shows_the_teacher_only_its_topic_and_asks_for_no_recipe():
    for name in NO_RECIPE:
        assert set(style(name).empty) == set(TASK.fields), name   # every field must stay empty
        (msg,) = TASK.synthesis_messages(RECORD, style(name))
        body = msg["content"]
        assert "contains no recipe" in body and "Chicken Tacos" in body and style(name).instructions in body
        for absent in ("chicken thighs", "chili powder", "minutes:", "servings:", "presents the recipe below"):
            assert absent not in body, (name, absent)


def test_a_no_times_style_hides_the_times_and_servings_and_two_recipes_shows_the_whole_record():
    (msg,) = TASK.synthesis_messages(RECORD, style("no_times"))
    assert "2 tsp chili powder" in msg["content"]
    assert "minutes" not in msg["content"].split("Recipe:")[1] and "servings" not in msg["content"].split("Recipe:")[1]
    assert style("no_times").empty == ("prepTime", "cookTime", "totalTime", "recipeYield")
    (msg,) = TASK.synthesis_messages(RECORD, style("two_recipes"))
    assert "prep minutes: 10" in msg["content"] and "servings: 4" in msg["content"]
    assert "first the recipe below in full" in msg["content"] and style("two_recipes").empty == ()
    # The rule for which recipe is the answer is in both the teacher's and the student's prompt.
    assert "first complete one" in TASK.label_prompt and "first complete one" in TASK.student_system_prompt


def test_the_default_mix_stays_mostly_complete_posts():
    total = sum(s.weight for s in TASK.styles)
    abstaining = sum(s.weight for s in TASK.styles if s.empty or s.name == "two_recipes")
    assert 0 < abstaining / total <= 0.2
    assert abstention_styles(TASK) == {*NO_RECIPE, "no_times"}


def test_reweighting_keeps_what_a_style_must_leave_empty_and_its_prompt():
    (s,) = synth.reweight_styles(TASK.styles, "no_recipe_menu=2")
    assert (s.weight, s.empty, s.prompt, s.record_fields) == (2.0, style("no_recipe_menu").empty,
                                                              style("no_recipe_menu").prompt, ("name",))


# ------------------------------------------------------------------ verification on real cases

def test_a_no_recipe_text_rejects_an_invented_title_and_accepts_nulls_and_empty_lists():
    checks, verdict, reason = verify(EMPTY, TASK, RECORD, REVIEW, style="no_recipe_review")
    assert (verdict, reason) == ("accepted", "ok")   # required: true does not apply to the style's empty fields
    assert checks["name"] == {"status": "ok", "expected": "empty"}
    _, verdict, reason = verify(EMPTY | {"name": "Chicken Tacos"}, TASK, RECORD, REVIEW, style="no_recipe_review")
    assert (verdict, reason) == ("rejected", "name_invented")
    _, verdict, reason = verify(EMPTY | {"recipeIngredient": ["chicken", "corn tortillas"]}, TASK, RECORD, REVIEW,
                                style="no_recipe_menu")
    assert (verdict, reason) == ("rejected", "recipeIngredient_invented")
    # The same empty label of a post of a complete-recipe style is a label that says nothing.
    assert verify(EMPTY, TASK, RECORD, REVIEW, style="minimal_organized")[2].startswith("name_missing")


def test_a_post_without_times_rejects_the_records_times_and_servings_it_does_not_state():
    assert verify(TACOS, TASK, RECORD, NO_TIMES_POST, style="no_times")[1:] == ("accepted", "ok")
    # The record's own values, which the post does not state: right for the record, invented for this text.
    label = TACOS | {"prepTime": "PT10M", "recipeYield": "4 servings"}
    assert verify(label, TASK, RECORD, NO_TIMES_POST, style="minimal_organized")[1] == "accepted"
    assert verify(label, TASK, RECORD, NO_TIMES_POST, style="no_times")[1:] == \
        ("rejected", "prepTime_invented,recipeYield_invented")


def test_a_two_recipe_post_accepts_the_first_recipe_and_rejects_the_second():
    first = TACOS | {"prepTime": "PT10M", "cookTime": "PT12M", "recipeYield": "4 servings"}
    assert verify(first, TASK, RECORD, TWO_RECIPES, style="two_recipes")[1:] == ("accepted", "ok")
    checks, verdict, reason = verify(ONIONS, TASK, RECORD, TWO_RECIPES, style="two_recipes")
    assert verdict == "rejected"
    assert {"name_mismatch", "recipeIngredient_mismatch"} <= set(reason.split(",")), reason
    assert checks["name"]["source"] == "Chicken Tacos"   # checked against the record the post was written from


# ------------------------------------------------------------------ 02 -> 03 -> 04 (and 05's loader)

ABSTAIN_MIX = "minimal_organized=1,no_recipe_review=1,no_recipe_menu=1,no_times=1,two_recipes=1"


def test_abstention_inputs_are_accepted_by_03_and_trained_on_by_04_with_their_share_capped(tmp_path, capsys):
    from distill.train.data import load_dataset_dir

    syn, lab = tmp_path / "02", tmp_path / "03"
    with FakeOpenAIServer(OracleTeacher()) as srv:
        assert run_02(srv, syn, "--limit", "20", "--styles", ABSTAIN_MIX) == 0
        assert run_03(srv, syn, lab) == 0
    labels = [json.loads(p.read_text()) for p in outputs(lab)]
    styles = Counter(lab["style"] for lab in labels)
    assert set(styles) == {"minimal_organized", "no_recipe_review", "no_recipe_menu", "no_times", "two_recipes"}
    assert all(lab["verdict"] == "accepted" for lab in labels), [(x["style"], x["reason"]) for x in labels]
    no_recipe = [lab for lab in labels if lab["style"].startswith("no_recipe")]
    assert no_recipe and all(lab["output"]["name"] is None and lab["output"]["recipeIngredient"] == []
                             for lab in no_recipe)

    ds = tmp_path / "04"
    assert run_04(syn, lab, ds, "--dedupe-threshold", "100") == 0
    stats = json.loads((ds / "stats.json").read_text())
    ab = stats["abstention"]
    assert ab["cap"] == 1.0 and ab["dropped_by_cap"] == 0 and ab["train_rows_before_cap"] > 0
    data = load_dataset_dir(ds, reasoning="strip")   # 05's loader: an empty label is an answer like any other
    empty_rows = [r for r in data.train if json.loads(r["messages"][-1]["content"])["name"] is None]
    assert empty_rows and all(r["style"].startswith("no_recipe") for r in empty_rows)

    capped = tmp_path / "04capped"
    assert run_04(syn, lab, capped, "--dedupe-threshold", "100", "--abstention-share", "0.2") == 0
    cstats = json.loads((capped / "stats.json").read_text())
    train = [json.loads(ln) for ln in (capped / "train.jsonl").read_text().splitlines()]
    n_ab = sum(r["style"] in abstention_styles(TASK) for r in train)
    assert n_ab / len(train) <= 0.2 and n_ab == cstats["abstention"]["by_split"]["train"]
    assert cstats["abstention"]["dropped_by_cap"] == ab["by_split"]["train"] - n_ab > 0
    assert {r["id"] for r in train} | set(cstats["abstention"]["dropped_ids"]) == \
        {json.loads(ln)["id"] for ln in (ds / "train.jsonl").read_text().splitlines()}
    assert (capped / "test.jsonl").read_text() == (ds / "test.jsonl").read_text()   # val/test keep 02's mix
    assert f"capped at 0.2: {cstats['abstention']['dropped_by_cap']} dropped" in capsys.readouterr().out

    assert run_04(syn, lab, tmp_path / "04none", "--dedupe-threshold", "100", "--abstention-share", "0") == 0
    assert json.loads((tmp_path / "04none" / "stats.json").read_text())["abstention"]["by_split"]["train"] == 0


def test_abstention_share_outside_0_to_1_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_04(tmp_path / "02", tmp_path / "03", tmp_path / "04", "--abstention-share", "1.5")
    assert exc.value.code == 2 and "--abstention-share: must be from 0 to 1, got 1.5" in capsys.readouterr().err


def test_cap_share_keeps_every_other_row_and_a_seeded_choice_of_the_capped_ones():
    rows = [{"id": f"n{i}", "style": "normal"} for i in range(10)] + [{"id": f"a{i}", "style": "ab"} for i in range(10)]
    kept, dropped = cap_share(rows, {"ab"}, 0.2, seed=1)
    assert [r["id"] for r in kept if r["style"] == "normal"] == [f"n{i}" for i in range(10)]
    assert sum(r["style"] == "ab" for r in kept) == 2 and len(dropped) == 8   # 2 / 12 <= 0.2 < 3 / 13
    assert cap_share(rows, {"ab"}, 0.2, seed=1) == (kept, dropped)
    assert cap_share(rows, {"ab"}, 0.5, seed=1) == (rows, [])
    assert cap_share(rows, {"ab"}, 1.0, seed=1) == (rows, [])
    assert cap_share(rows, {"ab"}, 0.0, seed=1)[0] == rows[:10]


# ------------------------------------------------------------------ the demo's draw

def test_the_full_demo_draws_a_few_abstention_inputs_and_the_small_one_none():
    from distill.source import get_parser

    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    records, _ = get_parser(TASK.source["parser"])(TASK.sample_path())   # what 01 --sample imports

    def drawn(size):
        cfg = demo.SIZES[size]
        styles = synth.reweight_styles(TASK.styles, cfg["styles"])
        items = synth.plan(TASK, records[:cfg["records"]], per_record=cfg["per_record"], seed=42, model=None,
                           params={}, styles=styles)
        return Counter(it.style.name for it in items)

    full = drawn("full")
    kinds = {k: sum(n for s, n in full.items() if s.startswith(k)) for k in ("no_recipe", "no_times", "two_recipes")}
    assert all(kinds.values()), full                           # every kind at least once
    assert 3 <= sum(kinds.values()) <= sum(full.values()) // 4, full   # a few: most posts stay complete
    small = drawn("small")
    assert not set(small) & ({*abstention_styles(TASK), "two_recipes"}), small


# ------------------------------------------------------------------ labels without the teacher

def test_label_from_record_all_labels_a_no_recipe_post_of_any_record_without_the_teacher():
    """A record with no answer of its own (a CSV row, not a page's markup) still gives its "no recipe"
    posts their label: every field empty. The post is checked against the record as a teacher's
    empty label would be; the other styles need the record's answer, so they stay the teacher's."""
    from distill import labels as L

    def row(style, text):
        return {"id": "x", "source_id": RECORD["id"], "task": "recipe", "style": style, "text": text,
                "source": RECORD}

    review = row("no_recipe_review", REVIEW)
    assert L.record_answer(review) is None            # without --label-from-record all: the teacher's
    assert L.record_answer(review, TASK) == EMPTY
    # In the schema's order: the constrained decoder writes "@context" first, so must the label.
    assert list(L.record_answer(review, TASK)) == [k for k in TASK.schema["properties"] if k in EMPTY]
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, review), TASK)
    assert lab["verdict"] == "accepted" and lab["output"] == EMPTY, lab["reason"]
    leaky = row("no_recipe_menu", "Menu. Chicken Tacos $12: 1 lb boneless chicken thighs, 2 tsp chili powder, "
                                  "1 lime, juiced, 8 small corn tortillas.")
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, leaky), TASK)
    assert lab["verdict"] == "rejected" and lab["reason"] == "recipeIngredient_stated"
    assert L.record_answer(row("no_times", NO_TIMES_POST), TASK) is None
    assert L.record_answer(row("minimal_organized", NO_TIMES_POST), TASK) is None
    assert L.record_answer({**review, "source": None}, TASK) is None   # no record: nothing to check it against


def test_03_label_from_record_all_on_sample_records_asks_the_teacher_only_for_recipes(tmp_path):
    teacher = OracleTeacher(write=lambda record, style: REVIEW if style.startswith("no_recipe") else NO_TIMES_POST)
    syn, labeled = tmp_path / "02", tmp_path / "03"
    with FakeOpenAIServer(teacher) as srv:
        assert run_02(srv, syn, "--limit", "4", "--per-record", "2", "--styles", "no_recipe_review=1,no_times=1") == 0
        assert run_03(srv, syn, labeled, "--label-from-record", "all") == 0
    labels = [json.loads(p.read_text()) for p in outputs(labeled)]
    by_style = Counter((lab["style"], lab.get("label_from") or "teacher") for lab in labels)
    assert by_style["no_recipe_review", "record"] >= 1 and not by_style["no_times", "record"], by_style
    assert not by_style["no_recipe_review", "teacher"], by_style
    assert teacher.calls["label"] == by_style["no_times", "teacher"], (teacher.calls, by_style)
    reviews = [lab for lab in labels if lab["style"] == "no_recipe_review"]
    assert all(lab["output"] == EMPTY and lab["verdict"] == "accepted" for lab in reviews), reviews
