"""Teaching from real documents: 01 --from-pages -> 02 (real_page) -> 03 --label-from-record -> 04 (by host).

The pages under tests/data/pages_import/ are handmade (JSON-LD, JSON-LD in an @graph, microdata,
HowToSection steps, one page without markup). No teacher is needed for a page's own text; the
fake server is only used where --per-record adds synthetic variants.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill import labels as L
from distill import synth
from distill.pages import import_pages, page_text
from distill.tasks import load_task
from fake_openai_server import FakeOpenAIServer
from fake_teacher import OracleTeacher

ROOT = Path(__file__).resolve().parent.parent
PAGES = Path(__file__).resolve().parent / "data" / "pages_import"
TASK = load_task("recipe")
# Nothing listens on port 9 (discard): a stage that tried to reach a teacher would fail.
NO_SERVER = "http://127.0.0.1:9/v1"
# Strings that exist only in the pages' markup (JSON-LD bodies, microdata attributes), never in their text.
MARKUP_ONLY = ("ld-only-marker", "application/ld+json", "@context", "@graph", "HowToStep", "HowToSection",
               "itemprop", "PT15M", "PT1H15M", "PT10M", "PT25M", "PT40M")
# A markup value the page does not show: never in a page's text (a synthetic variant written from the
# record may mention it: the teacher was given the record's ingredients to write it).
MARKUP_VALUE = "ground nutmeg"


def script(name):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S01, S02, S03, S04 = (script(n) for n in ("01_download_dataset.py", "02_generate_synthetic.py",
                                          "03_label_with_reasoning.py", "04_build_dataset.py"))


def inputs(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.glob("recipe-*.json"))]


def split_rows(d: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(x) for x in (d / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}


def assert_no_markup(text: str, page_text: bool = True) -> None:
    for s in MARKUP_ONLY + ((MARKUP_VALUE,) if page_text else ()):
        assert s not in text, f"markup string {s!r} reached a model input"


def test_import_pages_reads_records_from_markup_and_text_from_the_reader():
    records, report = import_pages(PAGES, TASK)
    assert report["skipped"] == {"no_markup": ["quiet-corner.example/about-us.html"]}
    assert report["unparseable"] == {"no_markup": 1} and report["pages_read"] == 5 and report["records"] == 4
    by_page = {r["page"]: r for r in records}
    assert set(by_page) == {"sunny-kitchen.example/banana-bread.html", "sunny-kitchen.example/lemon-cake.html",
                            "herb-garden.example/lentil-soup.html", "oven-notes.example/flatbread.html"}
    for r in records:
        html = (PAGES / r["page"]).read_bytes()
        assert r["text"] == page_text(html, TASK.pages["max_chars"]).text  # the reader 08 uses, exactly
        assert r["host"] == r["page"].split("/")[0] and r["kind"] == "page" and r["id"].startswith("p-")
        assert_no_markup(r["text"])
    bread = by_page["sunny-kitchen.example/banana-bread.html"]
    # The answer: the markup mapped to the output schema; the record fields the checks read, from it.
    assert bread["answer"]["recipeIngredient"][-1] == "1 pinch ground nutmeg"
    assert bread["answer"]["cookTime"] == "PT1H" and bread["answer"]["recipeYield"] == "8 slices"
    assert (bread["name"], bread["prep_minutes"], bread["cook_minutes"], bread["total_minutes"]) == \
        ("Grandma's Banana Bread", 15, 60, 75)
    assert bread["ingredients"] == bread["answer"]["recipeIngredient"] and bread["servings"] == "8 slices"
    soup = by_page["herb-garden.example/lentil-soup.html"]   # microdata: durations only in content= attributes
    assert soup["answer"]["prepTime"] == "PT10M" and soup["servings"] == 4
    assert soup["answer"]["recipeInstructions"] == ["Soften the onion in a little oil with the cumin.",
                                                    "Add the lentils and stock and simmer for 25 minutes, then blend."]
    flat = by_page["oven-notes.example/flatbread.html"]      # HowToSection steps flattened
    assert len(flat["answer"]["recipeInstructions"]) == 3 and flat["total_minutes"] == 40
    # Content-hash ids: the same pages give the same ids.
    assert [r["id"] for r in import_pages(PAGES, TASK)[0]] == [r["id"] for r in records]


def test_from_pages_to_dataset_needs_no_teacher_and_groups_splits_by_host(tmp_path, capsys):
    src, syn, lab, ds = (tmp_path / d for d in ("01", "02", "03", "04"))
    assert S01.main(["--from-pages", str(PAGES), "--output-dir", str(src)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 page(s), no_markup: quiet-corner.example/about-us.html" in err
    report = json.loads((src / "clean_report.json").read_text())
    assert report["skipped"]["no_markup"] == ["quiet-corner.example/about-us.html"]
    assert json.loads((src / "manifest.json").read_text())["counts"]["records"] == 4

    # 02: each page's own text, unchanged, as a real_page input; no server runs at all.
    assert S02.main(["--input", str(src), "--output-dir", str(syn), "--base-url", NO_SERVER, "--limit", "0",
                     "--retries", "0"]) == 0
    records = {r["id"]: r for r in map(json.loads, (src / "records.jsonl").read_text().splitlines())}
    rows = inputs(syn)
    assert len(rows) == 4 and {r["style"] for r in rows} == {"real_page"}
    for r in rows:
        assert r["text"] == records[r["source_id"]]["text"]
        assert r["text_sha256"] == synth.text_sha256(r["text"]) and r["model"] is None
        assert "text" not in r["source"] and r["source"]["host"] == records[r["source_id"]]["host"]
    assert json.loads((syn / "manifest.json").read_text())["counts"]["real_pages"] == 4

    # 03 --label-from-record: the record's answer is the label, with what the page does not show dropped.
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--base-url", NO_SERVER,
                     "--retries", "0", "--label-from-record"]) == 0
    out = capsys.readouterr().out
    assert "items not in the text, dropped: recipeIngredient 1 item(s) in 1 label(s)" in out
    labels = {r["id"]: r for r in inputs(lab)}
    assert {l["verdict"] for l in labels.values()} == {"accepted"} and len(labels) == 4
    bread = next(l for l in labels.values() if l["output"]["name"] == "Grandma's Banana Bread")
    assert bread["label_from"] == "record" and bread["dropped"] == {"recipeIngredient": ["1 pinch ground nutmeg"]}
    assert "1 pinch ground nutmeg" not in bread["output"]["recipeIngredient"]
    assert bread["record_answer"]["recipeIngredient"][-1] == "1 pinch ground nutmeg"
    assert bread["checks"]["recipeIngredient"]["grounded"] is True
    # A re-run keeps them as they are (same key), still without a teacher.
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--base-url", NO_SERVER,
                     "--retries", "0", "--label-from-record"]) == 0
    assert {r["id"]: r["created_at"] for r in inputs(lab)} == {i: l["created_at"] for i, l in labels.items()}
    assert "(4 already labeled, 0 to label)" in capsys.readouterr().out
    rep = json.loads((lab / "manifest.json").read_text())["report"]
    assert rep["labels_from_record"] == 4
    assert rep["ungrounded_dropped"] == {"recipeIngredient": {"items": 1, "labels": 1}}

    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", "0.34,0.33,0.33"]) == 0
    splits = split_rows(ds)
    hosts = {s: {r["source"]["host"] for r in v} for s, v in splits.items()}
    assert sum(len(v) for v in splits.values()) == 4
    assert not (hosts["train"] & hosts["val"]) and not (hosts["train"] & hosts["test"]) \
        and not (hosts["val"] & hosts["test"])
    sunny = [s for s, v in splits.items() for r in v if r["source"]["host"] == "sunny-kitchen.example"]
    assert len(sunny) == 2 and len(set(sunny)) == 1   # both pages of the site in one split
    for v in splits.values():
        for r in v:
            assert r["messages"][1]["role"] == "user"
            assert_no_markup(r["messages"][1]["content"])
            assert json.loads(r["messages"][2]["content"]) == r["reference"]  # no reasoning: the JSON alone
    stats = json.loads((ds / "stats.json").read_text())
    assert sum(stats["page_hosts"].values()) == 3


def test_per_record_adds_teacher_variants_and_only_they_reach_the_teacher(tmp_path):
    src, syn, lab, ds = (tmp_path / d for d in ("01", "02", "03", "04"))
    assert S01.main(["--from-pages", str(PAGES), "--output-dir", str(src)]) == 0
    teacher = OracleTeacher()
    with FakeOpenAIServer(teacher) as srv:
        common = ["--base-url", srv.url, "--model", "teacher", "--retries", "1", "--timeout", "5"]
        assert S02.main(["--input", str(src), "--output-dir", str(syn), "--limit", "0", "--per-record", "2",
                         *common]) == 0
        assert teacher.calls["write"] == 4   # one variant per page; the page texts cost nothing
        rows = inputs(syn)
        assert sorted(r["style"] == "real_page" for r in rows) == [False] * 4 + [True] * 4
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--label-from-record", *common]) == 0
        assert teacher.calls["label"] == 4   # the variants only
        for body in srv.history:   # what the teacher was sent: never the markup, never a page's text
            for m in (m for m in body["messages"] if m["role"] == "user"):  # system prompts show a JSON-LD example
                assert_no_markup(m["content"], page_text=False)
                assert "Every autumn my grandmother" not in m["content"]
    labels = inputs(lab)
    assert {l.get("label_from") for l in labels if l["style"] == "real_page"} == {"record"}
    assert all(l["model"] == "teacher" for l in labels if l["style"] != "real_page")
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", "0.34,0.33,0.33"]) == 0
    where: dict[str, set] = {}
    for s, v in split_rows(ds).items():
        for r in v:
            where.setdefault(r["source"]["host"], set()).add(s)
            assert_no_markup(r["messages"][1]["content"], page_text=r["style"] == "real_page")
    assert where and all(len(s) == 1 for s in where.values()), where   # variants stay with their site


def test_label_from_record_needs_records_complete(tmp_path, capsys):
    task_dir = tmp_path / "recipe"
    shutil.copytree(ROOT / "tasks" / "recipe", task_dir)
    y = task_dir / "task.yaml"
    y.write_text(y.read_text().replace("records_complete: true", "records_complete: false"))
    src, syn = tmp_path / "01", tmp_path / "02"
    assert S01.main(["--from-pages", str(PAGES), "--output-dir", str(src)]) == 0
    assert S02.main(["--input", str(src), "--output-dir", str(syn), "--base-url", NO_SERVER]) == 0
    capsys.readouterr()
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(tmp_path / "03"), "--task", str(task_dir),
                     "--base-url", NO_SERVER, "--label-from-record"]) == 1
    assert "pages.records_complete" in capsys.readouterr().err
    assert not (tmp_path / "03").exists()


def test_a_record_label_left_without_a_required_field_is_rejected():
    records, _ = import_pages(PAGES, TASK)
    rec = next(r for r in records if r["host"] == "herb-garden.example")
    text = "Red Lentil Soup\nSoften the onion in a little oil with the cumin.\nAdd the lentils and stock and simmer."
    row = {"id": "x", "source_id": rec["id"], "task": "recipe", "style": "real_page", "text": text,
           "source": {k: v for k, v in rec.items() if k != "text"}}
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, row), TASK)
    assert lab["verdict"] == "rejected" and "recipeIngredient_missing" in lab["reason"]
    assert lab["dropped"]["recipeIngredient"] == rec["answer"]["recipeIngredient"] and lab["output"]["recipeIngredient"] == []
    # A synthetic variant of a page record is the teacher's text: it never takes the record's answer.
    assert L.record_answer(row | {"style": "minimal_organized"}) is None


def _variant(style: str, text: str) -> dict:
    """A synthetic variant (02 --per-record 2) of the lentil soup page's record, with a text of our own."""
    records, _ = import_pages(PAGES, TASK)
    rec = next(r for r in records if r["host"] == "herb-garden.example")
    return {"id": "v", "source_id": rec["id"], "task": "recipe", "style": style, "text": text,
            "source": {k: v for k, v in rec.items() if k != "text"}}


def test_label_from_record_all_empties_what_the_variants_style_must_lack():
    review = _variant("no_recipe_review", "Dinner at Luigi's on Friday. The Red Lentil Soup was warming, "
                                          "$9, four stars. Service was slow but friendly.")
    # Only with the task (03 --label-from-record all) does a variant take its record's answer.
    assert L.record_answer(review) is None
    assert L.record_answer(review, TASK)["recipeIngredient"] == []
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, review), TASK)
    assert lab["verdict"] == "accepted", lab["reason"]
    out = lab["output"]
    assert out["name"] is None and out["recipeIngredient"] == [] and out["recipeInstructions"] == []
    assert all(out[k] is None for k in ("prepTime", "cookTime", "totalTime", "recipeYield"))
    # A "no recipe" review that lists the recipe after all is not of its style: rejected, not labeled empty.
    leaky = _variant("no_recipe_review", "Luigi's Red Lentil Soup: 1 cup red lentils, rinsed; 1 onion, chopped; "
                                         "4 cups vegetable stock. Four stars.")
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, leaky), TASK)
    assert lab["verdict"] == "rejected" and lab["reason"] == "recipeIngredient_stated"
    # A "no times" post keeps the recipe and loses the times and the yield ...
    steps = "Soften the onion in a little oil with the cumin.\nAdd the lentils and stock and simmer, then blend."
    body = ("Red Lentil Soup\n1 cup red lentils, rinsed\n1 onion, chopped\n4 cups vegetable stock\n"
            "1 teaspoon ground cumin\n" + steps)
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, _variant("no_times", body)), TASK)
    assert lab["verdict"] == "accepted", lab["reason"]
    assert lab["output"]["name"] == "Red Lentil Soup" and len(lab["output"]["recipeIngredient"]) == 4
    assert all(lab["output"][k] is None for k in ("prepTime", "cookTime", "totalTime", "recipeYield"))
    # ... and one that states the record's prep time is rejected for it.
    lab = L.label_from_record(L.LabelItem.from_record_answer(TASK, _variant("no_times", body + "\nPrep: 10 minutes")),
                              TASK)
    assert lab["verdict"] == "rejected" and lab["reason"] == "prepTime_stated"
    # The same rule holds for a teacher's empty label of such a text.
    checks, verdict, reason = L.verify(L.record_answer(leaky, TASK), TASK, leaky["source"], leaky["text"],
                                       "no_recipe_review")
    assert (verdict, reason, checks["recipeIngredient"]["status"]) == ("rejected", "recipeIngredient_stated", "stated")


def _no_recipe_post(record: dict, style: str) -> str:
    return f"Dinner out on Friday. The {record.get('name') or 'special'} was lovely, $12, four stars."


def test_label_from_record_all_needs_the_teacher_only_to_write(tmp_path):
    src, syn, lab = (tmp_path / d for d in ("01", "02", "03"))
    assert S01.main(["--from-pages", str(PAGES), "--output-dir", str(src)]) == 0
    teacher = OracleTeacher(write=_no_recipe_post)
    with FakeOpenAIServer(teacher) as srv:
        assert S02.main(["--input", str(src), "--output-dir", str(syn), "--limit", "0", "--per-record", "2",
                         "--styles", "no_recipe_review=1", "--base-url", srv.url, "--model", "teacher",
                         "--retries", "0", "--timeout", "5"]) == 0
    assert teacher.calls["write"] == 4
    # No teacher for the labels: nothing listens at NO_SERVER.
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--base-url", NO_SERVER, "--retries", "0",
                     "--label-from-record", "all"]) == 0
    labels = inputs(lab)
    assert len(labels) == 8 and {l["label_from"] for l in labels} == {"record"}
    reviews = [l for l in labels if l["style"] == "no_recipe_review"]
    assert len(reviews) == 4 and all(l["verdict"] == "accepted" for l in reviews)
    assert all(l["output"]["name"] is None and l["output"]["recipeIngredient"] == [] for l in reviews)


def test_real_page_is_a_style_no_one_draws():
    with pytest.raises(ValueError, match="real_page is not drawn"):
        synth.reweight_styles(TASK.styles, "real_page=1")
    records, _ = import_pages(PAGES, TASK)
    items = synth.plan(TASK, records, per_record=3, seed=1, model="m", params={})
    assert [it.style.name == "real_page" for it in items] == [True, False, False] * 4
    assert all(it.messages == [] and it.text for it in items if it.style.name == "real_page")


@pytest.mark.slow
def test_a_few_training_steps_on_page_rows(tmp_path):
    """The 04 split of real pages trains: three steps of the tiny random Llama of test_train_run."""
    from train_helpers import tiny_model_folder

    src, syn, lab, ds = (tmp_path / d for d in ("01", "02", "03", "ds"))
    assert S01.main(["--from-pages", str(PAGES), "--output-dir", str(src)]) == 0
    assert S02.main(["--input", str(src), "--output-dir", str(syn), "--base-url", NO_SERVER]) == 0
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--base-url", NO_SERVER,
                     "--label-from-record"]) == 0
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", "0.75,0.25"]) == 0
    tiny_model_folder(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, str(ROOT / "05_finetune.py"), "--dataset-dir", "ds", "--model-name",
                        "tiny-llama", "--backend", "hf", "--max-steps", "3", "--batch-size", "1",
                        "--gradient-accumulation-steps", "1", "--lora-rank", "8", "--max-seq-length", "512",
                        "--learning-rate", "5e-3", "--optimizer", "adamw_torch", "--inference-examples", "1",
                        "--save-dir", "out", "--output-dir", "ckpt", "--seed", "7"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert len([h for h in history if "loss" in h]) == 3
    from safetensors.torch import load_file

    b = [v for k, v in load_file(tmp_path / "out" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert b and all(v.abs().sum() > 0 for v in b)


def test_from_pages_names_its_own_flag_for_a_bad_folder(tmp_path):
    from distill.io import StageError
    from distill.pages import list_pages

    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match=r"^--from-pages .*: not a folder"):
        list_pages(tmp_path / "nope", "--from-pages")
    with pytest.raises(StageError, match=r"^--from-pages .*: no \.html pages"):
        list_pages(tmp_path / "empty", "--from-pages")
