"""distill/pages.py on handmade pages (tests/data/pages/): the reader's window, schema.org markup,
references from sibling .json files. Offline, no model."""
from __future__ import annotations

from pathlib import Path

import pytest

from distill.io import StageError
from distill.pages import (
    find_markup,
    focus,
    list_pages,
    load_page,
    markup_to_output,
    page_text,
    reference_from_json,
    visible_text,
)
from distill.tasks import load_task

PAGES = Path(__file__).resolve().parent / "data" / "pages"
RECIPE = load_task("recipe")
CONST = {"@context": "https://schema.org", "@type": "Recipe"}


def html(rel: str) -> bytes:
    return (PAGES / rel).read_bytes()


def test_focus_picks_the_card_window_of_a_long_text():
    story = [f"Paragraph {i} of a long story about winter evenings, a dog, the old farmhouse and the neighbours."
             for i in range(60)]
    card = ["Ingredients", "2 cups flour", "1 tsp salt", "3 eggs", "Instructions", "1. Mix everything.",
            "2. Bake for an hour.", "Prep time: 10 minutes"]
    text = "\n".join(story + card + ["Leave a comment"])
    window, cut = focus(text, 1000)
    assert cut and len(window) <= 1000
    assert "\n".join(card) in window            # the whole card kept
    assert story[0] not in window               # the story's head dropped
    assert focus("short text", 1000) == ("short text", False)
    assert focus(text, 0) == (text, False)       # 0 = no window


def test_page_text_of_the_long_page_keeps_the_card_and_puts_the_title_first():
    full, h1 = visible_text(html("kitchen-e.example/long-stew.html"))
    assert h1 == "Long Winter Stew" and len(full) > 7000
    assert full.index("800 g beef chuck, cubed") > 7000      # past a head-cut window
    pt = page_text(html("kitchen-e.example/long-stew.html"), 7000)
    assert pt.focused and pt.title_line == "Long Winter Stew" and pt.chars_full == len(full)
    assert pt.text.startswith("# Long Winter Stew\n") and len(pt.text) <= 7000 + len("# Long Winter Stew\n")
    for line in ("800 g beef chuck, cubed", "1 l beef stock", "Pour in the stock and simmer gently until the beef "
                 "is tender.", "Cook time: 2 hours 30 minutes"):
        assert line in pt.text
    assert "(Part A1 of the story.)" not in pt.text


@pytest.mark.parametrize("rel", ["kitchen-a.example/jsonld-pancakes.html", "kitchen-b.example/microdata-soup.html",
                                 "kitchen-d.example/json-salad.html", "kitchen-e.example/long-stew.html"])
def test_page_text_never_carries_the_markup(rel):
    text = page_text(html(rel), 7000).text
    for s in ('"@type"', "@context", "itemprop", "itemscope", "schema.org", "ld+json", "PT15M", "PT20M",
              "Old Salad Name"):
        assert s not in text, s


def test_find_markup_json_ld_graph_and_mapping():
    obj = find_markup(html("kitchen-a.example/jsonld-pancakes.html"), "Recipe")
    assert obj["name"] == "Buttermilk Pancakes"      # the Recipe of the @graph, not its WebPage
    assert markup_to_output(obj, RECIPE) == CONST | {
        "name": "Buttermilk Pancakes",
        "recipeIngredient": ["2 cups flour", "2 tbsp sugar", "2 cups buttermilk", "2 eggs"],
        "recipeInstructions": ["Whisk the flour and sugar in a bowl.",
                               "Beat in the buttermilk and eggs until just smooth.",
                               "Cook ladlefuls on a hot griddle until golden on both sides."],
        "prepTime": "PT10M", "cookTime": "PT15M", "totalTime": "PT25M",
        "recipeYield": "4 servings"}                 # ['4', '4 servings']: the worded one


def test_find_markup_microdata_with_a_howto_section():
    obj = find_markup(html("kitchen-b.example/microdata-soup.html"), "Recipe")
    assert obj is not None and obj["name"] == "Roasted Tomato Soup"
    out = markup_to_output(obj, RECIPE)
    assert out["recipeIngredient"] == ["1 kg ripe tomatoes", "1 onion, quartered", "500 ml vegetable stock"]
    # the HowToSection's steps, not its name ("Method")
    assert out["recipeInstructions"] == ["Roast the tomatoes and onion until soft and charred at the edges.",
                                         "Blend with the stock and simmer for ten minutes."]
    assert (out["prepTime"], out["cookTime"], out["totalTime"], out["recipeYield"]) == ("PT15M", "PT40M", None,
                                                                                       "6 bowls")


def test_find_markup_json_ld_howto_sections_nested_in_a_list():
    page = """<html><head><script type="application/ld+json">
    {"@context": "https://schema.org", "@type": "Recipe", "name": "Layer Cake",
     "recipeInstructions": [
       {"@type": "HowToSection", "name": "Sponge", "itemListElement": [
          {"@type": "HowToStep", "text": "Whisk the eggs &amp; sugar."}, {"@type": "HowToStep", "text": "Bake."}]},
       {"@type": "HowToSection", "name": "Icing", "itemListElement": [{"@type": "HowToStep", "text": "Beat the butter."}]}]}
    </script></head><body><p>cake</p></body></html>"""
    out = markup_to_output(find_markup(page, "Recipe"), RECIPE)
    assert out["recipeInstructions"] == ["Whisk the eggs & sugar.", "Bake.", "Beat the butter."]


def test_two_recipes_the_first_is_the_answer():
    obj = find_markup(html("kitchen-f.example/two-recipes.html"), "Recipe")
    assert obj["name"] == "Garlic Yogurt Dip"
    out = markup_to_output(obj, RECIPE)
    assert out["recipeInstructions"] == ["Stir the garlic into the yogurt.", "Chill for an hour."]  # one string, its lines
    assert out["totalTime"] == "PT1H5M" and out["recipeYield"] == 4


def test_a_page_without_markup_has_none():
    assert find_markup(html("kitchen-c.example/no-reference.html"), "Recipe") is None
    assert find_markup("<html><body><p>no recipe here</p></body></html>", "Recipe") is None
    assert find_markup("", "Recipe") is None
    page = load_page(PAGES / "kitchen-c.example" / "no-reference.html", RECIPE)
    assert (page.reference, page.reference_from, page.markup, page.host) == (None, None, None, "kitchen-c.example")


def test_reference_from_json_minutes_to_iso():
    ref = reference_from_json({"title": "Stew", "ingredients": ["1 onion"], "instructions_list": ["Cook.", "Eat."],
                               "yields": "4 servings", "prep_time": 90, "cook_time": 0, "total_time": 1500}, RECIPE)
    assert ref == CONST | {"name": "Stew", "recipeIngredient": ["1 onion"], "recipeInstructions": ["Cook.", "Eat."],
                           "prepTime": "PT1H30M", "cookTime": None, "totalTime": "P1DT1H",
                           "recipeYield": "4 servings"}
    # absent keys and non-numbers are empty, never guessed
    assert reference_from_json({"title": "X", "prep_time": "ten"}, RECIPE)["prepTime"] is None
    assert reference_from_json({"title": "X"}, RECIPE)["recipeIngredient"] == []


def test_load_page_sibling_json_wins_over_markup_and_names_the_host():
    page = load_page(PAGES / "kitchen-d.example" / "json-salad.html", RECIPE)
    assert page.reference_from == "json" and page.host == "salads.example"
    assert page.reference["name"] == "Crunchy Green Salad"
    assert page.markup["name"] == "Old Salad Name From Markup"   # read, but not the reference
    assert page.reference["prepTime"] == "PT15M" and page.reference["cookTime"] is None


def test_list_pages_and_bad_references(tmp_path):
    assert [p.relative_to(PAGES).as_posix() for p in list_pages(PAGES)] == [
        "kitchen-a.example/jsonld-pancakes.html", "kitchen-b.example/microdata-soup.html",
        "kitchen-c.example/no-reference.html", "kitchen-d.example/json-salad.html",
        "kitchen-e.example/long-stew.html", "kitchen-f.example/two-recipes.html"]
    with pytest.raises(StageError, match="no .html pages"):
        list_pages(tmp_path)
    (tmp_path / "p.html").write_text("<html><body>x</body></html>")
    (tmp_path / "p.json").write_text("[1, 2]")
    with pytest.raises(StageError, match="must be a JSON object"):
        load_page(tmp_path / "p.html", RECIPE)
    (tmp_path / "p.json").write_text("{broken")
    with pytest.raises(StageError, match="not a JSON reference"):
        load_page(tmp_path / "p.html", RECIPE)
