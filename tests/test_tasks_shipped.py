"""Every shipped task folder: loads, renders its prompts, its reference labels fit its schema,
its adversarial cases are well-formed, and stages 02 -> 04 run on it against the fake server."""
from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from distill import labels
from distill.io import StageError
from distill.menu import load_menu, price_check, price_order
from distill.source import load_records
from distill.tasks import describe_tasks, list_tasks, load_task
from fake_openai_server import FakeOpenAIServer
from fake_teacher import OracleTeacher
from task_oracles import ORACLES, coffee_label, coffee_post, coffee_simplified_label, parse_line

ROOT = Path(__file__).resolve().parent.parent
NEW_TASKS = ["coffee_order", "gtm_intent", "article_scores"]


def script(name):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def source_file(task):
    return task.dir / (task.source.get("file") or task.source["sample"])


def reference_labels(task) -> list[dict]:
    records, _ = load_records(source_file(task), task.source.get("parser", "jsonl"))
    if task.name == "recipe":  # the recipe source has no labels: the oracle's label of its post
        write, label = ORACLES["recipe"]
        return [label(write(r, "plain")) for r in records[:5]]
    return [r["reference"] for r in records]


def test_all_shipped_tasks_are_listed():
    assert set(NEW_TASKS) | {"recipe"} <= set(list_tasks())
    described = {d["name"]: d for d in describe_tasks()}
    assert all("error" not in d for d in described.values()), described
    assert described["coffee_order"]["steps"] == ["simplify", "structure"]


@pytest.mark.parametrize("name", NEW_TASKS + ["recipe"])
def test_task_loads_renders_and_references_fit_schema(name):
    task = load_task(name)
    records, report = load_records(source_file(task), task.source.get("parser", "jsonl"))
    assert records and report["records"] == len(records)
    assert len({r["id"] for r in records}) == len(records)
    rec = records[0]
    msgs = task.synthesis_messages(rec, task.styles[0])
    body = msgs[0]["content"]
    assert "{record_text}" not in body and "{style_instructions}" not in body
    assert task.styles[0].instructions.strip() in body
    for f in task.record_fields:  # every field the teacher should see is in the prompt
        if rec.get(f) not in (None, [], ""):
            assert f.replace("_", " ") + ":" in body
    assert task.label_messages("some text")[1]["content"].endswith("some text")
    student = task.student_messages("hello there")
    assert [m["role"] for m in student] == ["system", "user"] and student[1]["content"].endswith("hello there")
    refs = reference_labels(task)
    assert refs
    for ref in refs:
        assert labels.validate(ref, task.schema) == [], ref
        assert set(task.fields) <= set(task.schema["properties"])


@pytest.mark.parametrize("name", NEW_TASKS)
def test_seed_references_pass_their_own_verification(name):
    """A label equal to the reference must be accepted: the verify rules agree with the data."""
    task = load_task(name)
    records, _ = load_records(source_file(task), task.source["parser"])
    for rec in records:
        checks, verdict, reason = labels.verify(rec["reference"], task, rec, "")
        assert verdict == "accepted", (rec["id"], reason, checks)


@pytest.mark.parametrize("name", NEW_TASKS)
def test_adversarial_cases_are_well_formed(name):
    task = load_task(name)
    assert task.adversarial_path and task.adversarial_path.is_file()
    rows = [json.loads(ln) for ln in task.adversarial_path.read_text().splitlines() if ln.strip()]
    assert rows and len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert {"id", "kind", "text"} <= set(r) and ("expect" in r or "reference" in r)
        for field in r.get("expect", {}):
            assert field in task.schema["properties"], (r["id"], field)
        if "reference" in r:
            assert labels.validate(r["reference"], task.schema) == []
            for field, want in r.get("expect", {}).items():
                assert r["reference"][field] == want


def test_gtm_adversarial_kinds_cover_the_brief():
    task = load_task("gtm_intent")
    rows = [json.loads(ln) for ln in task.adversarial_path.read_text().splitlines()]
    kinds = Counter(r["kind"] for r in rows)
    assert {"one_word", "made_up_jargon", "off_domain"} <= set(kinds)
    # Every adversarial case expects a flag, not a confident intent.
    for r in rows:
        if r["kind"] != "role_signal":
            assert r["expect"].get("needs_clarification") is True or r["expect"].get("intent_type") == "out_of_domain"
    # Training seeds teach the behaviour too, with texts that differ from the held-out cases.
    seeds = [json.loads(ln) for ln in (task.dir / "records.jsonl").read_text().splitlines()]
    assert sum(s["needs_clarification"] for s in seeds) >= 4
    assert not {s["request"].lower() for s in seeds} & {r["text"].lower() for r in rows}


# ---- coffee_order: the menu is the single source of truth ----------------------------------

def test_coffee_menu_prompts_and_schema_agree():
    task = load_task("coffee_order")
    menu = load_menu(task.dir / "menu.yaml")
    item = task.schema["properties"]["items"]["items"]["properties"]
    assert item["name"]["enum"] == list(menu.drinks)
    assert item["size"]["enum"] == menu.sizes
    assert item["modifiers"]["items"]["enum"] == list(menu.modifiers)
    for prompt in (task.label_prompt, task.student_system_prompt, task.steps[1].system_prompt):
        for drink, prices in menu.drinks.items():
            line = f"- {drink}: " + " / ".join(f"{prices[s]:.2f}" for s in menu.sizes)
            assert line in prompt, line
        for mod, p in menu.modifiers.items():
            assert f"{mod} +{p:.2f}" in prompt


def test_menu_orders_generator_is_seeded_and_priced():
    task = load_task("coffee_order")
    a, rep = load_records(task.dir / "menu.yaml", "menu_orders")
    b, _ = load_records(task.dir / "menu.yaml", "menu_orders")
    assert a == b and len(a) == rep["records"] == 200
    menu = load_menu(task.dir / "menu.yaml")
    assert {r["n_items"] for r in a} == {1, 2, 3}
    for r in a[:50]:
        assert price_order(menu, r["items"]) == r["total_price"] == r["reference"]["total_price"]
        assert [parse_line(ln) for ln in r["order_lines"]] == r["items"]


def test_menu_price_check():
    menu = load_menu(ROOT / "tasks" / "coffee_order" / "menu.yaml")
    ref = {"items": [{"name": "Latte", "size": "large", "quantity": 2, "modifiers": ["oat milk", "extra shot"]}],
           "total_price": 13.1}
    assert price_order(menu, ref["items"]) == 13.1  # (4.95 + 0.70 + 0.90) x 2
    assert price_check(menu, ref, ref) == {"priced": True, "consistent": True, "correct": True, "menu_total": 13.1,
                                           "predicted_total": 13.1, "reference_total": 13.1}
    wrong_sum = ref | {"total_price": 12.0}
    assert price_check(menu, wrong_sum, ref)["consistent"] is False
    off_menu = {"items": [{"name": "Pizza", "size": "large", "quantity": 1, "modifiers": []}], "total_price": 9}
    assert price_check(menu, off_menu, ref)["priced"] is False
    assert price_check(menu, None, ref)["correct"] is False


def test_coffee_step_targets_render_from_labels():
    task = load_task("coffee_order")
    simplify, structure = task.steps
    label = {"items": [{"name": "Drip Coffee", "size": "large", "quantity": 1, "modifiers": ["extra hot"]},
                       {"name": "Chai Latte", "size": "small", "quantity": 3, "modifiers": ["caramel drizzle", "no whip"]}],
             "total_price": 0, "not_on_menu": []}
    text = simplify.render_target(label)
    assert text == "- Large Drip Coffee - Extra Hot\n- 3 x Small Chai Latte - Caramel Drizzle, No Whip"
    assert coffee_simplified_label(text)["items"] == label["items"]
    with pytest.raises(ValueError):
        structure.render_target(label)
    st = task.step_task(0)
    assert st.student_messages("x")[0]["content"] == simplify.system_prompt
    assert task.student_messages("x")[0]["content"] == task.student_system_prompt != simplify.system_prompt


def test_article_tiers_follow_the_scores():
    task = load_task("article_scores")
    records, _ = load_records(task.dir / "records.jsonl", "jsonl")
    assert {r["tier"] for r in records} == {"high", "medium", "low"}
    for r in records:
        assert task.tier_for(r["reference"]) == r["tier"], r["id"]


# ---- task.yaml validation of the new keys ------------------------------------------------------

def _copy_task(tmp_path, name, edit):
    import shutil

    d = tmp_path / name
    shutil.copytree(ROOT / "tasks" / name, d)
    p = d / "task.yaml"
    p.write_text(edit(p.read_text()))
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("    target_template: prompts/simplified.j2\n", ""), "needs target_template"),
    (lambda s: s.replace("    user_template: \"Clean order list:\\n\\n{text}\"\n",
                         "    user_template: \"Clean order list:\\n\\n{text}\"\n    target_template: prompts/simplified.j2\n"),
     "drop its target_template"),
    (lambda s: s.replace("  - name: structure", "  - name: simplify"), "unique"),
    (lambda s: s.replace("    target_template:", "    target_tmpl:"), "unknown key"),
    (lambda s: s.replace("price_check: {menu: menu.yaml", "price_check: {menu: nope.yaml"), "not found"),
])
def test_bad_steps_are_clear_errors(tmp_path, edit, message):
    d = _copy_task(tmp_path, "coffee_order", edit)
    with pytest.raises(StageError, match=message):
        load_task(d)


def test_bad_tiers_are_clear_errors(tmp_path):
    d = _copy_task(tmp_path, "article_scores", lambda s: s.replace("bounds: {high: 7, medium: 4, low: 0}", "bounds: [7, 4]"))
    with pytest.raises(StageError, match="tiers.bounds"):
        load_task(d)


def test_broken_jinja_target_is_a_clear_error(tmp_path):
    d = _copy_task(tmp_path, "coffee_order", lambda s: s)
    (d / "prompts" / "simplified.j2").write_text("{% for it in items %}- {{ it.name }")
    with pytest.raises(StageError, match="Jinja2"):
        load_task(d)


# ---- stages 02 -> 04 on every new task -------------------------------------------------------------

S02, S03, S04 = (script(n) for n in ("02_generate_synthetic.py", "03_label_with_reasoning.py", "04_build_dataset.py"))


def run_02_04(srv, task_name, tmp_path, limit, split="0.6,0.2,0.2"):
    task = load_task(task_name)
    syn, lab, ds = tmp_path / "02", tmp_path / "03", tmp_path / "04"
    common = ["--base-url", srv.url, "--model", "teacher", "--retries", "1", "--timeout", "5"]
    assert S02.main(["--task", task_name, "--input", str(source_file(task)), "--output-dir", str(syn),
                     "--limit", str(limit), "--concurrency", "3", *common]) == 0
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--concurrency", "3", *common]) == 0
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", split]) == 0
    return syn, lab, ds


def read_split(ds, s):
    return [json.loads(ln) for ln in (ds / f"{s}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name, limit", [("coffee_order", 30), ("gtm_intent", 28), ("article_scores", 24)])
def test_stages_02_to_04_on_each_task(tmp_path, name, limit):
    write, label = ORACLES[name]
    with FakeOpenAIServer(OracleTeacher(write=write, label=label), slots=3) as srv:
        syn, lab, ds = run_02_04(srv, name, tmp_path, limit)
    task = load_task(name)
    verdicts = Counter(json.loads(p.read_text())["verdict"] for p in lab.glob("*.json") if p.name != "manifest.json")
    assert verdicts == {"accepted": limit}, verdicts
    splits = {s: read_split(ds, s) for s in ("train", "val", "test")}
    assert all(splits.values())
    stats = json.loads((ds / "stats.json").read_text())
    assert stats["stratified_by"] == task.extra["stratify"]
    for rows in splits.values():
        for r in rows:
            assert r["task"] == name and labels.validate(r["reference"], task.schema) == []
            assert r["messages"][0]["content"] == task.student_system_prompt
            assert r["messages"][2]["content"].startswith("<think>")  # reasoning first, then the JSON
    # Stratified: every stratum with at least 3 source records reaches train and test.
    from distill.dataset import stratum

    key = task.extra["stratify"]
    all_rows = [r for v in splits.values() for r in v]
    for value, n in Counter(stratum(r, key) for r in all_rows).items():
        if n >= 5:
            assert any(stratum(r, key) == value for r in splits["train"]), value
            assert any(stratum(r, key) == value for r in splits["test"]), value


def test_coffee_wrong_prices_are_rejected(tmp_path):
    def corrupt(lab):
        return lab | {"total_price": round(lab["total_price"] + 1.0, 2)}

    with FakeOpenAIServer(OracleTeacher(write=coffee_post, label=coffee_label, corrupt=corrupt)) as srv:
        task = load_task("coffee_order")
        syn, lab = tmp_path / "02", tmp_path / "03"
        common = ["--base-url", srv.url, "--model", "teacher", "--retries", "0"]
        assert S02.main(["--task", "coffee_order", "--input", str(source_file(task)), "--output-dir", str(syn),
                         "--limit", "4", *common]) == 0
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), *common]) == 0
    out = [json.loads(p.read_text()) for p in lab.glob("*.json") if p.name != "manifest.json"]
    assert len(out) == 4 and all(o["verdict"] == "rejected" and "total_price_mismatch" in o["reason"] for o in out)


def test_01_uses_the_task_source(tmp_path):
    s01 = script("01_download_dataset.py")
    for name, n in (("coffee_order", 200), ("gtm_intent", 28)):
        out = tmp_path / name
        assert s01.main(["--task", name, "--output-dir", str(out)]) == 0
        rows = (out / "records.jsonl").read_text().splitlines()
        assert len(rows) == n and "reference" in json.loads(rows[0])


def test_python_m_distill_tasks_lists_everything(capsys):
    from distill.tasks import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in NEW_TASKS + ["recipe"]:
        assert re.search(rf"^{name}\s", out, re.M)
    assert "simplify -> structure" in out
    assert main(["nope"]) == 1


# ---- 02 -> 07: the oracle served as the "model" (openai:), faults injected ----------------------

S07 = script("07_evaluate.py")


@pytest.mark.parametrize("name, limit", [("coffee_order", 20), ("gtm_intent", 28), ("article_scores", 24),
                                         ("recipe", 12)])
def test_stages_02_to_07_on_each_task(tmp_path, name, limit):
    from fake_openai_server import error

    write, label = ORACLES[name]
    task = load_task(name)
    with FakeOpenAIServer(OracleTeacher(write=write, label=label), slots=3) as srv:
        _, _, ds = run_02_04(srv, name, tmp_path, limit, split="0.5,0.2,0.3")
        srv.push(error(503), error(500))  # the first two 07 requests fail once and are retried
        out = tmp_path / "07"
        assert S07.main(["--model", f"openai:{srv.url}", "--model-id", "teacher", "--dataset-dir", str(ds),
                         "--output-dir", str(out), "--concurrency", "2", "--no-progress"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    n_test = len(read_split(ds, "test"))
    assert ev["task"] == name and ev["aggregate"]["n"] == n_test and ev["missing_predictions"] == 0
    agg = ev["aggregate"]
    assert agg["json_valid"] == 1.0 and agg["schema_valid"] == 1.0
    assert agg["score"] == pytest.approx(1.0)  # the oracle is right on every field
    scored = {f for f, r in task.fields.items() if r.score}
    assert set(agg["fields"]) == scored
    if name == "article_scores":  # MAE and RMSE per dimension
        for dim in ("impact", "evidence", "novelty", "actionability"):
            assert agg["fields"][dim]["mae"] == 0 and agg["fields"][dim]["rmse"] == 0
    if name == "coffee_order":  # the menu price validation
        assert agg["price_check"]["correct_rate"] == 1.0 and agg["price_check"]["consistent_rate"] == 1.0
    adv = ev["adversarial"]
    cases = [json.loads(ln) for ln in task.adversarial_path.read_text().splitlines() if ln.strip()]
    assert adv["n"] == len(cases) and set(adv["by_kind"]) == {c["kind"] for c in cases}
    report = (out / "report.md").read_text()
    assert "adversarial" in report.lower()
