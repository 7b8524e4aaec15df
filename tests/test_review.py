"""The review page (distill/review.py): item spans that agree with the verifier's grounding,
pages rendered from real 07, 03 and 08 runs (in process, against the fake server), escaping,
and the page itself in a real headless Chromium (no console error, filters, a screenshot)."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from distill import fields as F
from distill import review as R
from distill.reports import load_eval
from distill.scoring import aggregate, load_adversarial, score_case
from distill.tasks import list_tasks, load_task
from fake_openai_server import FakeOpenAIServer
from fake_teacher import OracleTeacher
from review_helpers import RECIPE, SCRIPT, Student, make_dataset

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tasks" / "recipe" / "sample.csv"


def script(name):
    spec = importlib.util.spec_from_file_location(f"stage{name[:2]}_review", ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S02, S03, S07, S08 = (script(n) for n in ("02_generate_synthetic.py", "03_label_with_reasoning.py",
                                          "07_evaluate.py", "08_extract.py"))


def page_data(path: Path) -> dict:
    """The JSON a page embeds, read back the way the browser does."""
    html = path.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', html, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def by_id(data: dict) -> dict:
    return {x["id"]: x for x in data["examples"]}


# ------------------------------------------------------------------ spans agree with grounded_in

TEXT = ("Grandma's Lemon Drizzle Cake!!\nYou need: 1½ cups flour, 2 eggs…  and white sugar: ¾ cup.\n"
        "Café crème, 3.5 oz butter (softened). Bake at 180°C for 45 mins.")


def test_normalize_with_offsets_replays_normalize_text():
    rng = random.Random(0)
    pool = list("abcXYZ 019.-,/:!\n\t") + ["½", "¾", "⅓", "é", "e\u0301", "ﬁ", "Ａ", "°", "…", "\u2044", "İ", "ß"]
    for _ in range(600):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        norm, offsets = F.normalize_with_offsets(s)
        assert norm == F.normalize_text(s), repr(s)
        assert len(offsets) == len(norm)
        assert all(0 <= o < len(s) for o in offsets) and offsets == sorted(offsets), repr(s)


def test_spans_agree_with_grounded_in_and_point_at_the_item():
    index = F.GroundingIndex(TEXT)
    norm = F.normalize_text(TEXT)
    cases = {"1 1/2 cups flour": "1½ cups flour", "2 eggs": "2 eggs", "3/4 cup white sugar": "white sugar: ¾ cup",
             "café crème": "Café crème", "3.5 oz butter, softened": "3.5 oz butter (softened",
             "Lemon drizzle cake": "Lemon Drizzle Cake"}
    for item, raw in cases.items():
        assert F.grounded_in(item, norm)
        start, end = index.span(item)
        assert TEXT[start:end] == raw, item
    for item in ("2 tbsp unicorn tears", "1 dragon egg", {"text": "Fry the onions."}):
        assert not F.grounded_in(item, norm) and index.span(item) is None
    # Whatever the item, a span is found exactly when the verifier says it is in the text.
    rng = random.Random(1)
    words = norm.split() + ["unicorn", "tears", "sugar", "1/2", "cups", "onion"]
    for _ in range(400):
        item = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        assert (index.span(item) is not None) == F.grounded_in(item, norm), item


def test_field_outcome_reads_the_scorers_outcome_or_derives_it():
    # The scorer's own outcome (score None where it gives no score) ...
    assert R.field_outcome({"outcome": "abstained", "score": None}) == "abstained"
    assert R.field_outcome({"outcome": "hallucinated", "score": None, "pred_empty": False}) == "hallucinated"
    assert R.field_outcome({"outcome": "scored", "exact": False, "score": 0.5}) == "partial"
    # ... or the same from the empty flags of an older eval.json.
    assert R.field_outcome({"pred_empty": True, "ref_empty": True, "exact": True, "score": 1.0}) == "abstained"
    assert R.field_outcome({"pred_empty": True, "ref_empty": False, "exact": False, "score": 0.0}) == "omitted"
    assert R.field_outcome({"pred_empty": False, "ref_empty": True, "exact": False, "score": 0.0}) == "hallucinated"
    assert R.field_outcome({"pred_empty": False, "ref_empty": False, "exact": True, "score": 1.0}) == "match"
    assert R.field_outcome({"pred_empty": False, "ref_empty": False, "exact": False, "score": 0.0}) == "mismatch"


# ------------------------------------------------------------------ 07: a small run and --compare

@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    """07 on 8 posts (one holding a <script> tag) for a flawed student and a perfect teacher, and --compare."""
    base = tmp_path_factory.mktemp("runs")
    rows = make_dataset(base / "ds", n=8)
    common = ["--dataset-dir", base / "ds", "--task", "recipe", "--no-progress"]
    with FakeOpenAIServer(Student(rows)) as srv:
        assert S07.main([str(a) for a in ["--model", f"openai:{srv.url}", "--model-id", "student", *common,
                                          "--output-dir", base / "student", "--name", "student"]]) == 0
        srv.handler = Student(rows, perfect=True)
        assert S07.main([str(a) for a in ["--model", f"openai:{srv.url}", "--model-id", "teacher", *common,
                                          "--output-dir", base / "teacher", "--name", "teacher"]]) == 0
    assert S07.main([str(a) for a in ["--compare", base / "student", base / "teacher",
                                      "--output-dir", base / "cmp"]]) == 0
    return base


def test_07_writes_review_next_to_report_with_every_outcome(eval_runs):
    out = eval_runs / "student"
    assert (out / "report.md").is_file() and (out / "review.html").is_file()
    data = page_data(out / "review.html")
    ev = load_eval(out)
    assert data["kind"] == "eval" and data["runs"] == ["student"]
    # The task's fields, then the schema's other properties (shown where filled, never scored).
    assert data["fields"] == list(RECIPE.fields) + data["extra_fields"] and "description" in data["extra_fields"]
    ex = by_id(data)
    assert len(ex) == 8 + ev["adversarial"]["n"]
    assert {x["set"] for x in ex.values()} == {"test", "adversarial"}

    prose = ex["post-003"]["answers"][0]
    assert prose["verdict"] == "no valid JSON" and prose["score"] == 0.0 and prose["spans"] == []
    assert "no valid JSON (no_json)" in prose["notes"] and "cannot find one here" in prose["raw"]

    invented = ex["post-001"]["answers"][0]
    assert invented["verdict"] == "hallucinated items"
    assert {"field": "recipeIngredient", "text": "2 tbsp unicorn tears", "grounded": True} in invented["missing"]
    assert invented["cells"]["recipeIngredient"]["outcome"] == "partial" and "recipeIngredient" in invented["failing"]
    assert invented["reasoning"].startswith("The title is on the first line")

    wrong = ex["post-002"]["answers"][0]["cells"]
    assert wrong["cookTime"]["outcome"] == "mismatch" and wrong["cookTime"]["value"] == "PT2H"
    assert wrong["recipeYield"]["outcome"] == "omitted" and wrong["name"]["outcome"] == "match"
    assert ex["post-002"]["ref"]["cookTime"] == ev["examples"][2]["fields"]["cookTime"]["ref"]

    perfect = ex["post-000"]["answers"][0]
    assert perfect["verdict"] == "perfect" and perfect["failing"] == []
    # "4 servings" is not written as such ("Serves 4"): listed apart, but not as invented.
    assert perfect["missing"] == [{"field": "recipeYield", "text": "4 servings", "grounded": False}]
    text = ex["post-000"]["text"]
    marked = {text[s:e] for s, e, _, _ in perfect["spans"]}
    assert {"1 1/2 cups flour", "2 eggs", "3/4 cup white sugar", "1 lemon, zested"} <= marked
    # The worst-first order is the score order; the summary has the scores, styles and fields.
    assert [t["title"].split(" (")[0] for t in data["summary"]] == ["Scores", "By input style", "By field"]
    assert min(a["rank"] for x in ex.values() for a in x["answers"]) == 0.0

    # The adversarial cases show with what they expected.
    case = next(x for x in ex.values() if x["set"] == "adversarial" and x["style"] == "no_recipe")
    assert case["answers"][0]["verdict"] == "adversarial passed"


def test_compare_page_puts_runs_side_by_side(eval_runs):
    data = page_data(eval_runs / "cmp" / "review.html")
    assert data["kind"] == "compare" and data["runs"] == ["student", "teacher"]
    x = by_id(data)["post-002"]
    student, teacher = x["answers"]
    assert student["cells"]["cookTime"]["outcome"] == "mismatch" and teacher["cells"]["cookTime"]["outcome"] == "match"
    assert all(len(x["answers"]) == 2 and all(x["answers"]) for x in data["examples"])


def test_escaping_keeps_script_in_inputs_as_text(eval_runs, tmp_path):
    html = (eval_runs / "student" / "review.html").read_text(encoding="utf-8")
    assert SCRIPT in by_id(page_data(eval_runs / "student" / "review.html"))["post-000"]["text"]
    assert "alert(1)" in html and SCRIPT not in html
    assert html.count("<script") == 2, "only the page's own data and code blocks"
    # Hostile strings everywhere the page shows data: title, summary, text, values.
    evil = '</script><script>alert(2)</script><!--<script>'
    data = R.label_review_data(tmp_path, [], RECIPE, title=evil)
    data["summary"][0]["rows"] = [{"cells": [evil, '"><img src=x onerror=alert(3)>'], "filter": ["verdict", evil]}]
    data["examples"] = [{"id": evil, "set": "label", "style": evil, "text": evil, "ref": {"name": evil},
                         "answers": [{"verdict": evil, "score": None, "rank": 0, "failing": [], "spans": [],
                                      "missing": [], "notes": [evil], "cells": {"name": {"value": evil}}}]}]
    page = R.write_review(tmp_path / "review.html", data).read_text(encoding="utf-8")
    assert page.count("<script") == 2 and "<img" not in page and "alert(2)</script>" not in page
    assert page_data(tmp_path / "review.html")["examples"][0]["text"] == evil


@pytest.mark.parametrize("task_name", list_tasks())
def test_every_shipped_task_gets_a_page(task_name, tmp_path):
    """Pages for the other tasks' shapes (nested items, score objects, price checks) from their
    adversarial cases: once answered right, once with every value dropped."""
    task = load_task(task_name)
    cases = load_adversarial(task.adversarial_path, task)
    scored = []
    for c in cases:
        right = c.get("reference") or {k: v for k, v in c["expect"].items() if v is not None}
        for tag, pred in (("right", right), ("empty", {})):
            scored.append({"id": f"{c['id']}-{tag}", "kind": c["kind"], "text": c["text"],
                           "answer": json.dumps(pred), **score_case(c, pred, task)})
    ev = {"name": "oracle", "task": task_name, "examples": [], "aggregate": aggregate([], task),
          "adversarial": {"cases": scored}}
    data = page_data(R.write_eval_review(tmp_path, [ev], task_name))
    assert data["fields"] and len(data["examples"]) == 2 * len(cases)
    for x in data["examples"]:
        a = x["answers"][0]
        assert x["style"] in {c["kind"] for c in cases}
        if x["id"].endswith("-empty"):
            assert a["spans"] == [] and all(c["outcome"] in ("omitted", "abstained", "match", "mismatch")
                                            for f, c in a["cells"].items() if f in task.fields)
        else:
            assert a["verdict"] == "adversarial passed", x["id"]
            assert all(c["outcome"] in ("match", "abstained") for f, c in a["cells"].items()
                       if f in task.fields), x["id"]


# ------------------------------------------------------------------ 03 --review

def test_03_review_shows_verdicts_and_failed_checks(tmp_path):
    def corrupt(lab):   # every other recipe: an invented ingredient and a wrong cook time
        if len(lab["name"]) % 2:
            return lab | {"recipeIngredient": lab["recipeIngredient"] + ["1 dragon egg"], "cookTime": "PT999M"}
        return lab

    syn, lab = tmp_path / "02", tmp_path / "03"
    with FakeOpenAIServer(OracleTeacher(corrupt=corrupt)) as srv:
        common = ["--base-url", srv.url, "--model", "teacher", "--retries", "1", "--timeout", "5"]
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(syn), "--limit", "6", *common]) == 0
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--review", *common]) == 0
    labels = {p.stem: json.loads(p.read_text()) for p in lab.glob("*.json") if p.name != "manifest.json"}
    data = page_data(lab / "review.html")
    assert data["kind"] == "labels" and data["ref_label"] == "source record"
    ex = by_id(data)
    assert set(ex) == set(labels)
    rejected = [i for i, l in labels.items() if l["verdict"] == "rejected"]
    assert rejected and len(rejected) < len(labels)
    for i, label in labels.items():
        a = ex[i]["answers"][0]
        assert a["verdict"] == label["verdict"]
        post = json.loads((syn / f"{i}.json").read_text())
        assert ex[i]["text"] == post["text"] and ex[i]["ref"]["name"] == post["source"]["name"]
        if label["verdict"] == "rejected":
            assert a["cells"]["recipeIngredient"]["outcome"] == "hallucinated"
            assert {"field": "recipeIngredient", "text": "1 dragon egg", "grounded": True} in a["missing"]
            assert any(n.startswith("failed check recipeIngredient") for n in a["notes"])
            if post["source"].get("cook_minutes"):
                assert a["cells"]["cookTime"]["outcome"] == "mismatch"
                assert ex[i]["ref"]["cookTime"] == f"{post['source']['cook_minutes']:g} min"
        else:
            assert a["failing"] == [] and a["cells"]["name"]["outcome"] == "match"
    verdict_rows = {r["cells"][0]: int(r["cells"][1]) for r in data["summary"][0]["rows"]}
    assert verdict_rows == {v: sum(l["verdict"] == v for l in labels.values()) for v in verdict_rows}
    assert (lab / "manifest.json").is_file()


# ------------------------------------------------------------------ 08 --review

def test_08_review_highlights_extractions_and_refuses_an_output_dir_inside_the_inputs(tmp_path, capsys):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "good.txt").write_text("Banana bread: 3 bananas, mashed. Bake.\n" + SCRIPT)
    (pages / "bad.md").write_text("# Not a recipe\n\nBAD")
    out = tmp_path / "extracted"
    answer = {"@context": "https://schema.org", "@type": "Recipe", "name": "Banana bread",
              "recipeIngredient": ["3 bananas, mashed", "1 cup walnuts"],
              "recipeInstructions": [{"@type": "HowToStep", "text": "Bake."}]}

    def handler(body):
        return "no idea" if "BAD" in body["messages"][1]["content"] else json.dumps(answer)

    with FakeOpenAIServer(handler=handler) as srv:
        inside = ["--model", f"openai:{srv.url}", "--task", "recipe", "--input-dir", str(pages),
                  "--output-dir", str(pages / "out"), "--review"]
        assert S08.main(inside) == 1
        assert "inside --input-dir" in capsys.readouterr().err and not srv.history
        assert S08.main(["--model", f"openai:{srv.url}", "--task", "recipe", str(pages / "good.txt"), "--review"]) == 1
        assert "--review writes review.html into --output-dir" in capsys.readouterr().err
        assert S08.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--input-dir", str(pages),
                         "--output-dir", str(out), "--review"]) == 2
    data = page_data(out / "review.html")
    ex = by_id(data)
    good, bad = ex["good"]["answers"][0], ex["bad"]["answers"][0]
    assert good["verdict"] == "valid" and bad["verdict"] == "invalid" and bad["raw"] == "no idea"
    text = ex["good"]["text"]
    assert {text[s:e] for s, e, _, _ in good["spans"]} == {"Banana bread", "3 bananas, mashed", "Bake"}
    assert good["missing"] == [{"field": "recipeIngredient", "text": "1 cup walnuts", "grounded": True}]
    assert good["cells"]["recipeIngredient"]["outcome"] == "hallucinated"
    assert (out / "manifest.json").is_file()


# ------------------------------------------------------------------ in a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1600"]


def _browser_parts():
    """(selenium webdriver module, chromium, chromedriver); locally a clear skip when missing, in CI a failure."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver:
        why = ("the browser test needs selenium (requirements-dev.txt) and the OS packages chromium and "
               "chromium-driver (bash scripts/setup.sh installs them)")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return webdriver, chromium, driver


@pytest.fixture
def browser(tmp_path):
    webdriver, chromium, driver = _browser_parts()
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(service=Service(driver), options=opts)
    b.set_page_load_timeout(60)
    b.implicitly_wait(10)  # on a loaded machine a card drawn after a filter change can lag the click
    yield b
    b.quit()


def open_page(b, path: Path) -> int:
    """Load a page from disk; returns ms from navigation start until its first page of examples was drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    b.get(path.resolve().as_uri())
    WebDriverWait(b, 30).until(lambda d: d.execute_script("return document.documentElement.dataset.ready"))
    return int(b.execute_script("return document.documentElement.dataset.ready"))


def console_errors(b) -> list:
    return [e for e in b.get_log("browser") if e.get("level") == "SEVERE"]


def shown(b) -> tuple[int, list[str]]:
    from selenium.webdriver.common.by import By

    n = int(b.find_element(By.ID, "count").text.split()[0])
    return n, [c.get_attribute("data-id") for c in b.find_elements(By.CSS_SELECTOR, "article.card")]


def choose(b, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(b.find_element(By.ID, select_id)).select_by_value(value)


def test_page_in_headless_chromium_filters_escapes_and_screenshots(browser, eval_runs, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    b = browser
    page = eval_runs / "student" / "review.html"
    data = page_data(page)
    ex = by_id(data)
    open_page(b, page)
    assert console_errors(b) == []
    total = len(data["examples"])
    n, ids = shown(b)
    assert n == total and len(ids) == total   # 16 examples fit on the first page of 25
    ranks = [ex[i]["answers"][0]["rank"] for i in ids]
    assert ranks == sorted(ranks), "worst first"

    # The <script> in an input is text on the page and never ran.
    pre = b.find_element(By.CSS_SELECTOR, "article[data-id='post-000'] pre.text")
    assert SCRIPT in pre.text
    assert b.execute_script("return document.scripts.length") == 2
    with pytest.raises(NoAlertPresentException):
        b.switch_to.alert.text  # noqa: B018 - reading the alert raises when there is none
    marks = [m.text for m in pre.find_elements(By.TAG_NAME, "mark")]
    assert "1 1/2 cups flour" in marks and "2 eggs" in marks

    choose(b, "f-verdict", "no valid JSON")
    assert shown(b) == (1, ["post-003"])
    choose(b, "f-verdict", "")
    choose(b, "f-field", "recipeIngredient")
    n, ids = shown(b)
    want = sorted(i for i, x in ex.items() if "recipeIngredient" in x["answers"][0]["failing"])
    assert sorted(ids) == want and 0 < n < total
    b.find_element(By.ID, "f-reset").click()
    assert shown(b)[0] == total
    # A style row of the summary filters by style.
    row = b.find_element(By.CSS_SELECTOR, "tr.clickable[data-filter='style'][data-value='chaotic_unstructured']")
    row.click()
    n, ids = shown(b)
    assert n == sum(x["style"] == "chaotic_unstructured" for x in ex.values()) and n < total
    assert all(ex[i]["style"] == "chaotic_unstructured" for i in ids)
    choose(b, "f-style", "")
    b.find_element(By.ID, "f-q").send_keys("unicorn")
    assert shown(b)[1] == []   # search reads the inputs, and no input mentions the invented item
    b.find_element(By.ID, "f-reset").click()

    # The reasoning is folded, and there when unfolded.
    card = b.find_element(By.CSS_SELECTOR, "article[data-id='post-001']")
    fold = card.find_element(By.TAG_NAME, "details")
    assert fold.get_attribute("open") is None
    fold.find_element(By.TAG_NAME, "summary").click()
    assert "starred lines are ingredients" in fold.find_element(By.TAG_NAME, "pre").text
    assert "2 tbsp unicorn tears" in card.find_element(By.CSS_SELECTOR, ".missing").text

    shot = tmp_path / "review.png"
    assert b.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert console_errors(b) == []


def test_compare_page_in_headless_chromium(browser, eval_runs):
    from selenium.webdriver.common.by import By

    b = browser
    open_page(b, eval_runs / "cmp" / "review.html")
    assert console_errors(b) == []
    choose(b, "f-run", "1")             # the teacher: nothing fails
    choose(b, "f-field", "cookTime")
    assert shown(b)[0] == 0
    choose(b, "f-run", "0")             # the student: the wrong cook time
    assert "post-002" in shown(b)[1]
    card = b.find_element(By.CSS_SELECTOR, "article[data-id='post-002']")
    heads = [th.text for th in card.find_elements(By.CSS_SELECTOR, "table.fields th")]
    assert heads == ["field", "reference", "student", "teacher"]
    card.find_elements(By.CSS_SELECTOR, ".runs button")[1].click()   # highlight the teacher's answer
    card = b.find_element(By.CSS_SELECTOR, "article[data-id='post-002']")
    assert card.find_element(By.CSS_SELECTOR, ".runs button.on").text == "teacher"
    assert console_errors(b) == []


def thousand_examples(eval_dir: Path, n: int = 1000) -> dict:
    """A run of n examples shaped like a real one: blog-length inputs (~3,000 characters), every outcome."""
    ev = load_eval(eval_dir)
    story = ("We first made this on a rainy Sunday at my aunt's house, and the whole kitchen smelled of it. "
             "ADVERTISEMENT - Continue reading below. ") * 14
    base = ev["examples"]
    ev["examples"] = [dict(base[i % len(base)], id=f"ex-{i:04d}", text=f"{story}\n{base[i % len(base)]['text']}")
                      for i in range(n)]
    ev["adversarial"] = None
    return ev


@pytest.mark.slow
def test_a_page_of_1000_examples_opens_in_a_second(browser, eval_runs, tmp_path):
    ev = thousand_examples(eval_runs / "student")
    t0 = time.perf_counter()
    page = R.write_eval_review(tmp_path, [ev], "1,000 examples")
    built = time.perf_counter() - t0
    # The first load (a cold browser) and two more: the median must be under a second (one slow
    # load on a busy machine does not fail the test; every number is printed).
    loads = [open_page(browser, page) for _ in range(3)]
    print(f"\n1,000-example review page: {page.stat().st_size / 1e6:.1f} MB, built in {built:.1f} s, "
          f"first page drawn {loads} ms after navigation start (cold, then warm)")
    assert console_errors(browser) == []
    assert shown(browser)[0] == 1000 and len(shown(browser)[1]) == 25
    choose(browser, "f-verdict", "no valid JSON")
    assert shown(browser)[0] == sum(R._eval_verdict(e) == "no valid JSON" for e in ev["examples"])
    assert sorted(loads)[1] < 1000, f"{loads} ms"
