"""07_evaluate.py --pages on the handmade pages of tests/data/pages/, against the fake OpenAI server.

The server answers each page with a chosen reply (the exact reference, or ``{}``), so every
score is known in advance; the prompts it received show what the model read: exactly what
08_extract.py sends, never the page's markup, and the long page's recipe card.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = Path(__file__).resolve().parent / "data" / "pages"
CONST = {"@context": "https://schema.org", "@type": "Recipe"}


def _load(script: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


evaluate07 = _load("07_evaluate.py", "evaluate07_pages")
extract08 = _load("08_extract.py", "extract08_pages")

# The references, written out by hand (the markup or the sibling .json of each page).
PANCAKES = CONST | {"name": "Buttermilk Pancakes",
                    "recipeIngredient": ["2 cups flour", "2 tbsp sugar", "2 cups buttermilk", "2 eggs"],
                    "recipeInstructions": ["Whisk the flour and sugar in a bowl.",
                                           "Beat in the buttermilk and eggs until just smooth.",
                                           "Cook ladlefuls on a hot griddle until golden on both sides."],
                    "prepTime": "PT10M", "cookTime": "PT15M", "totalTime": "PT25M", "recipeYield": "4 servings"}
SALAD = CONST | {"name": "Crunchy Green Salad",
                 "recipeIngredient": ["1 head lettuce", "1 cucumber, sliced", "3 tbsp olive oil"],
                 "recipeInstructions": ["Tear the lettuce into a bowl with the cucumber.",
                                        "Dress with the olive oil just before serving."],
                 "prepTime": "PT15M", "cookTime": None, "totalTime": "PT15M", "recipeYield": "2 servings"}
STEW = CONST | {"name": "Long Winter Stew",
                "recipeIngredient": ["800 g beef chuck, cubed", "3 carrots, sliced", "2 onions, chopped",
                                     "1 l beef stock"],
                "recipeInstructions": ["Brown the beef in batches in a heavy pot.",
                                       "Add the onions and carrots and cook until soft.",
                                       "Pour in the stock and simmer gently until the beef is tender."],
                "prepTime": "PT20M", "cookTime": "PT2H30M", "totalTime": None, "recipeYield": "6 servings"}
DIP = CONST | {"name": "Garlic Yogurt Dip", "recipeIngredient": ["1 cup yogurt", "1 clove garlic, grated"],
               "recipeInstructions": ["Stir the garlic into the yogurt.", "Chill for an hour."],
               "prepTime": None, "cookTime": None, "totalTime": "PT1H5M", "recipeYield": 4}
# page title in the text -> the reply; the soup page gets an empty answer
ANSWERS = {"Buttermilk Pancakes": PANCAKES, "Roasted Tomato Soup": {}, "Crunchy Green Salad": SALAD,
           "Long Winter Stew": STEW, "Two Dips for Game Night": DIP, "Grandma's Toast": {}}
MARKUP_STRINGS = ('"@type": "Recipe"', '"@type"', "@context", "itemprop", "itemscope", "schema.org", "ld+json",
                  "PT15M", "PT2H30M", "Old Salad Name")


def answer(body: dict) -> str:
    text = body["messages"][-1]["content"]
    hits = [k for k in ANSWERS if k in text]
    assert len(hits) == 1, hits
    return json.dumps(ANSWERS[hits[0]])


def user_texts(srv) -> list[str]:
    return [b["messages"][-1]["content"] for b in srv.history]


def run07(*args) -> int:
    return evaluate07.main([str(a) for a in args])


@pytest.fixture
def srv():
    with FakeOpenAIServer(answer) as s:
        yield s


def common(srv, out) -> list:
    return ["--model", f"openai:{srv.url}", "--model-id", "fake-model", "--task", "recipe",
            "--output-dir", out, "--name", "student", "--no-progress"]


def test_pages_exact_scores_references_and_prompts(tmp_path, srv, capsys):
    out = tmp_path / "reports" / "pages"
    assert run07(*common(srv, out), "--pages", PAGES) == 0
    printed = capsys.readouterr().out
    assert "from .json 1, from markup 4; 1 skipped (no reference): kitchen-c.example/no-reference.html" in printed
    assert "pages/min" in printed

    # The skipped page was never sent; each of the 5 others once.
    sent = user_texts(srv)
    assert len(sent) == 5 and not any("Grandma's Toast" in t for t in sent)
    for t in sent:
        assert t.startswith("Extract the recipe from this text:\n\n")
        for s in MARKUP_STRINGS:
            assert s not in t, s
    stew = next(t for t in sent if "Long Winter Stew" in t)
    assert "800 g beef chuck, cubed" in stew and "Pour in the stock and simmer gently" in stew
    assert "(Part A1 of the story.)" not in stew     # the window over the long page, not its head

    ev = json.loads((out / "eval.json").read_text())
    assert ev["split"] == "pages" and ev["dataset_dir"] is None and ev["adversarial"] is None
    pg = ev["pages"]
    assert pg["pages_found"] == 6 and pg["pages_read"] == 6 and pg["references"] == {"json": 1, "markup": 4}
    assert [(s["name"], s["path"], s["host"]) for s in pg["skipped"]] == [
        ("no-reference", "kitchen-c.example/no-reference.html", "kitchen-c.example")]
    assert "no schema.org Recipe markup" in pg["skipped"][0]["reason"]
    by_id = {e["id"]: e for e in ev["examples"]}
    assert {k: e["score"] for k, e in by_id.items()} == {
        "jsonld-pancakes": 1.0, "microdata-soup": 0.0, "json-salad": 1.0, "long-stew": 1.0, "two-recipes": 1.0}
    assert {k: e["reference_from"] for k, e in by_id.items()} == {
        "jsonld-pancakes": "markup", "microdata-soup": "markup", "json-salad": "json", "long-stew": "markup",
        "two-recipes": "markup"}
    assert by_id["json-salad"]["host"] == "salads.example" and by_id["long-stew"]["style"] == "real_page"
    assert by_id["json-salad"]["fields"]["name"]["ref"] == "Crunchy Green Salad"   # the .json, not the markup
    # what was scored is what was sent
    assert stew == "Extract the recipe from this text:\n\n" + by_id["long-stew"]["text"]

    a = ev["aggregate"]
    assert (a["n"], a["n_scored"]) == (5, 5)
    assert a["score"] == pytest.approx(0.8)
    assert a["json_valid"] == 1.0 and a["schema_valid"] == pytest.approx(4 / 5)   # {} lacks the required fields
    assert a["fields"]["name"]["score"] == pytest.approx(0.8) and a["fields"]["name"]["n"] == 5
    assert a["fields"]["recipeIngredient"]["f1"] == pytest.approx(0.8)
    assert a["fields"]["recipeInstructions"]["f1"] == pytest.approx(0.8)
    # soup: 6 fields with a value omitted, its empty totalTime abstained; no invented field, no invented item
    assert by_id["microdata-soup"]["missing"] == ["name", "recipeIngredient", "recipeInstructions", "prepTime",
                                                  "cookTime", "recipeYield"]
    assert a["outcomes"]["omitted"] == 6 and a["outcomes"]["hallucinated"] == 0
    assert a["hallucination_rate"] == 0.0
    assert set(a["by_host"]) == {"kitchen-a.example", "kitchen-b.example", "salads.example", "kitchen-e.example",
                                 "kitchen-f.example"}
    assert a["by_host"]["kitchen-b.example"]["score"] == 0.0 and a["by_host"]["salads.example"]["score"] == 1.0
    assert set(a["by_style"]) == {"real_page"}
    assert ev["throughput"]["generated"] == 5 and ev["throughput"]["per_min"] > 0

    report = (out / "report.md").read_text()
    assert "## By host" in report and "| salads.example |" in report
    assert "references from a sibling .json: 1, from the page's own markup: 4; skipped (no reference, not scored): 1" \
        in report
    assert "skipped `kitchen-c.example/no-reference.html`" in report
    worst = report.split("### Worst examples: student", 1)[1]
    assert "**microdata-soup** (real_page): score 0.000" in worst
    assert "page `kitchen-b.example/microdata-soup.html` (kitchen-b.example), reference from its markup" in worst
    assert "Roasted Tomato Soup" in worst             # what the model saw
    assert "pages/min (generation wall time)" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["pages_dir"] == str(PAGES) and manifest["counts"]["skipped_pages"] == 1

    # Resume: everything is saved, nothing is sent again; the rate of the run that generated is kept.
    assert run07(*common(srv, out), "--pages", PAGES) == 0
    assert len(srv.history) == 5
    ev2 = json.loads((out / "eval.json").read_text())
    assert ev2["aggregate"]["score"] == pytest.approx(0.8) and ev2["throughput"] == ev["throughput"]


def test_pages_prompts_are_exactly_what_08_sends(tmp_path, srv):
    assert run07(*common(srv, tmp_path / "r07"), "--pages", PAGES) == 0
    sent07 = user_texts(srv)
    srv.history.clear()
    assert extract08.main(["--model", f"openai:{srv.url}", "--model-id", "fake-model", "--task", "recipe",
                           "--input-dir", str(PAGES), "--output-dir", str(tmp_path / "x08")]) == 2  # {} is invalid
    sent08 = user_texts(srv)
    assert len(sent08) == 6    # 08 extracts the page without a reference too
    assert sorted(sent07) == sorted(t for t in sent08 if "Grandma's Toast" not in t)


def test_pages_limit_counts_pages_with_a_reference(tmp_path, srv):
    out = tmp_path / "r"
    assert run07(*common(srv, out), "--pages", PAGES, "--limit", 3) == 0
    ev = json.loads((out / "eval.json").read_text())
    # path order: pancakes, soup, (no-reference: skipped), salad
    assert [e["id"] for e in ev["examples"]] == ["jsonld-pancakes", "microdata-soup", "json-salad"]
    assert ev["pages"]["pages_read"] == 4 and len(ev["pages"]["skipped"]) == 1
    assert ev["aggregate"]["score"] == pytest.approx(2 / 3) and len(srv.history) == 3


def test_pages_with_no_reference_is_an_error_not_a_score(tmp_path, srv, capsys):
    pages = tmp_path / "pages" / "kitchen-c.example"
    pages.mkdir(parents=True)
    shutil.copy(PAGES / "kitchen-c.example" / "no-reference.html", pages)
    out = tmp_path / "r"
    assert run07(*common(srv, out), "--pages", tmp_path / "pages") == 1
    assert "none of its 1 pages has a reference" in capsys.readouterr().err
    assert not (out / "eval.json").exists() and not srv.history


def test_pages_empty_page_is_scored_as_no_answer(tmp_path, srv):
    """A page with a reference but no readable text: 08 sends nothing, so nothing is answered (score 0)."""
    pages = tmp_path / "pages" / "blank.example"
    pages.mkdir(parents=True)
    (pages / "blank.html").write_text("<html><body><script>var x = 1;</script></body></html>")
    (pages / "blank.json").write_text(json.dumps({"title": "Hidden Cake", "ingredients": ["1 egg"]}))
    shutil.copy(PAGES / "kitchen-a.example" / "jsonld-pancakes.html", pages.parent)
    out = tmp_path / "r"
    assert run07(*common(srv, out), "--pages", tmp_path / "pages") == 0
    assert len(srv.history) == 1      # only the pancakes page
    ev = json.loads((out / "eval.json").read_text())
    blank = next(e for e in ev["examples"] if e["id"] == "blank")
    assert blank["score"] == 0.0 and blank["parse_error"] == "empty_input" and not blank["json_valid"]
    assert ev["pages"]["input_errors"] == {"empty_input": 1} and ev["aggregate"]["score"] == pytest.approx(0.5)


@pytest.mark.parametrize("extra", [["--split", "test"], ["--dataset-dir", "data/04_dataset"]])
def test_pages_excludes_the_split_arguments(tmp_path, srv, capsys, extra):
    assert run07(*common(srv, tmp_path / "r"), "--pages", PAGES, *extra) == 1
    assert "--pages evaluates a folder of pages, not a dataset split" in capsys.readouterr().err
    assert not srv.history


def test_pages_output_inside_the_pages_folder_is_refused(tmp_path, srv, capsys):
    pages = tmp_path / "pages"
    shutil.copytree(PAGES, pages)
    assert run07(*common(srv, pages / "report"), "--pages", pages) == 1
    assert "inside this stage's input folder" in capsys.readouterr().err
    assert not srv.history
