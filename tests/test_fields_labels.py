"""Parsing, repair, validation and verification of teacher labels on real messy cases."""
from __future__ import annotations

import pytest

from distill import fields as F
from distill.labels import LabelError, parse_answer, validate, verify
from distill.tasks import load_task

TASK = load_task("recipe")
GOOD = {"@context": "https://schema.org", "@type": "Recipe", "name": "Easy Banana Bread",
        "recipeIngredient": ["3 ripe bananas", "⅓ cup melted butter", "1 ½ cups all-purpose flour"],
        "recipeInstructions": [{"@type": "HowToStep", "text": "Mash the bananas."}],
        "prepTime": "PT10M", "cookTime": "PT1H", "totalTime": "PT1H10M", "recipeYield": "8 servings"}
RECORD = {"id": "r-1", "name": "Easy Banana Bread", "ingredients": ["3 ripe bananas", "1/3 cup melted butter",
          "1 1/2 cups all-purpose flour"], "prep_minutes": 10, "cook_minutes": 60, "total_minutes": 70, "servings": 8}
TEXT = ("OMG you guys. ADVERTISEMENT. Easy banana bread!! grab 3 ripe bananas, ⅓ cup melted butter and "
        "1 ½ cups all-purpose flour. mash the bananas with a fork, stir in the rest. prep 10 min, bake 1 hour. serves 8")


@pytest.mark.parametrize("value,minutes", [
    ("PT1H20M", 80), ("PT45M", 45), ("P1DT2H", 1560), ("PT90S", 1.5), ("1 hr 20 mins", 80),
    ("2 hours", 120), ("10 min", 10), (25, 25), (None, None), ("soon", None), ("", None)])
def test_to_minutes(value, minutes):
    assert F.to_minutes(value) == minutes


@pytest.mark.parametrize("minutes,iso", [(80, "PT1H20M"), (60, "PT1H"), (5, "PT5M"), (1560, "P1DT2H"), (0, "PT0M")])
def test_minutes_to_iso_round_trips(minutes, iso):
    assert F.minutes_to_iso(minutes) == iso
    assert F.to_minutes(iso) == minutes


def test_normalize_text_spells_fractions_and_folds_punctuation():
    assert F.normalize_text("1 ½ Cups All-Purpose Flour, sifted.") == "1 1/2 cups all purpose flour sifted"
    assert F.normalize_text("⅓ cup") == "1/3 cup"
    assert F.to_number("Makes 2 dozen (24 cookies)") == 24
    assert F.to_number("8 servings") == 8


def test_match_lists_is_one_to_one():
    res = F.match_lists(["1 cup flour", "1 cup flour", "2 eggs"], ["1 cup flour", "2 large eggs"])
    assert (res["tp"], res["fp"], res["fn"]) == (2, 1, 0)
    assert res["precision"] == pytest.approx(2 / 3) and res["recall"] == 1.0
    assert F.match_lists([], [])["f1"] == 1.0
    assert F.match_lists(["x"], [])["f1"] == 0.0


@pytest.mark.parametrize("content,expected,repaired", [
    ('{"a": 1}', {"a": 1}, False),
    ('```json\n{"a": 1}\n```', {"a": 1}, False),
    ('Sure! Here is the recipe:\n```\n{"a": 1}\n```\nEnjoy!', {"a": 1}, False),
    ('Here it is: {"a": 1} hope that helps', {"a": 1}, False),
    ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}, True),     # trailing commas
    ("{'a': 'x'}", {"a": "x"}, True),                             # single quotes
    ('```json\n{"a": 1}', {"a": 1}, False),                       # unclosed fence
])
def test_parse_answer(content, expected, repaired):
    assert parse_answer(content) == (expected, repaired)


@pytest.mark.parametrize("content,reason", [("", "empty"), ("   ", "empty"), (None, "empty"),
                                            ("I cannot find a recipe here.", "no_json")])
def test_parse_answer_rejects(content, reason):
    with pytest.raises(LabelError) as exc:
        parse_answer(content)
    assert exc.value.reason == reason


def test_validate_reports_paths():
    assert validate(GOOD, TASK.schema) == []
    bad = GOOD | {"prepTime": "10 minutes", "recipeIngredient": "flour", "extra": 1}
    errors = validate(bad, TASK.schema)
    assert any(e.startswith("prepTime:") for e in errors)
    assert any(e.startswith("recipeIngredient:") for e in errors)
    assert any("extra" in e for e in errors)


def test_verify_accepts_a_correct_label():
    checks, verdict, reason = verify(GOOD, TASK, RECORD, TEXT)
    assert (verdict, reason) == ("accepted", "ok")
    assert checks["recipeIngredient"]["status"] == "ok" and checks["recipeIngredient"]["grounded"] is True
    assert checks["cookTime"] == {"status": "ok", "minutes": 60.0, "source": 60}
    assert checks["recipeInstructions"]["status"] == "unverifiable"


def test_verify_rejects_wrong_times_and_invented_ingredients():
    wrong = GOOD | {"cookTime": "PT45M", "recipeIngredient": GOOD["recipeIngredient"] + ["2 cups chocolate chips"]}
    checks, verdict, reason = verify(wrong, TASK, RECORD, TEXT)
    assert verdict == "rejected"
    assert "cookTime_mismatch" in reason and "recipeIngredient_not_in_text" in reason
    assert checks["recipeIngredient"]["not_in_text"] == ["2 cups chocolate chips"]


def test_verify_missing_fields_the_text_does_not_state_are_not_guesses():
    partial = GOOD | {"prepTime": None, "recipeYield": None}
    text = TEXT.replace("prep 10 min, ", "").replace(" serves 8", " feeds a crowd")
    checks, verdict, _ = verify(partial, TASK, RECORD, text)
    assert verdict == "accepted"
    assert checks["prepTime"]["status"] == "missing" and checks["recipeYield"]["status"] == "missing"


def test_verify_title_mismatch():
    _, verdict, reason = verify(GOOD | {"name": "Chocolate Lava Cake"}, TASK, RECORD, TEXT)
    assert verdict == "rejected" and reason == "name_mismatch"


# Real teacher labels that were correct but rejected by an earlier, stricter verifier.
@pytest.mark.parametrize("value,numbers", [
    ("1 9x13-inch cake, 12 pieces", [1, 9, 13, 12]), ("2 dozen cookies", [24]), ("½ dozen", [6]),
    ("8 servings", [8]), (12, [12]), (None, []), ("serves a crowd", [])])
def test_numbers_in_reads_every_number_and_dozens(value, numbers):
    assert F.numbers_in(value) == numbers


@pytest.mark.parametrize("label_yield,verdict", [
    ("1 9x13-inch cake, 12 pieces", "accepted"), ("1 dozen bars", "accepted"), ("12", "accepted"),
    ("4 servings", "rejected"), ("1 9x13-inch cake", "rejected")])
def test_verify_yield_counts_any_number(label_yield, verdict):
    checks, got, _ = verify(GOOD | {"recipeYield": label_yield}, TASK, RECORD | {"servings": 12}, TEXT)
    assert got == verdict, checks["recipeYield"]


def test_number_method_still_takes_the_first_number():
    from distill.labels import _check_field
    from distill.tasks import FieldRule

    rule = FieldRule(name="impact", verify_source="impact", verify_method="number")
    assert _check_field(rule, "7 out of 10", {"impact": 10})["status"] == "mismatch"
    assert _check_field(rule, "10 (high)", {"impact": 10})["status"] == "ok"


@pytest.mark.parametrize("title,source,accepted", [
    ("Spiced Pumpkin Pie", "Pumpkin Pie", True),
    ("The Delightful Journey of Chewy Brown Butter Chocolate Chip Cookies",
     "Chewy Brown Butter Chocolate Chip Cookies", True),
    ("Easy Banana Bread", "Easy Banana Bread", True),
    ("easy bananna bread", "Easy Banana Bread", True),              # a typo
    ("Cookies", "Chewy Brown Butter Chocolate Chip Cookies", False),  # too little of the title
    ("Chocolate Lava Cake", "Easy Banana Bread", False),
    ("Banana Muffins", "Easy Banana Bread", False)])
def test_verify_name_allows_extra_words_but_not_a_different_dish(title, source, accepted):
    checks, _, _ = verify(GOOD | {"name": title}, TASK, RECORD | {"name": source}, TEXT)
    assert (checks["name"]["status"] == "ok") is accepted, checks["name"]


@pytest.mark.parametrize("item,grounded", [
    ("¾ cup white sugar", True),          # the post says "White sugar: ¾ cup"
    ("2 large eggs", True),               # "eggs (2, large)"
    ("1 cup chopped walnuts", True),      # contiguous, fuzzy
    ("2 cups chocolate chips", False),    # not in the post
    ("1 teaspoon vanilla extract", False),  # "vanilla" alone, far from "teaspoon"
])
def test_grounded_in_accepts_reordered_items_only_when_the_words_are_together(item, grounded):
    post = ("Pantry list! White sugar: ¾ cup. Eggs (2, large), 1 cup chopped walnut. "
            "Bake at 350F for 30 minutes, stirring with a teaspoon now and then, and the kids love it. "
            "My grandmother grew up on a farm with a small garden and a lot of patience. Vanilla ice cream on top.")
    assert F.grounded_in(item, F.normalize_text(post)) is grounded


# Real teacher yields that were correct but rejected while only `servings` was checked.
@pytest.mark.parametrize("label_yield,record_yield,verdict", [
    ("1 loaf", "1 9x5-inch loaf", "accepted"),
    ("1 pie", "1 9-inch deep-dish pie", "accepted"),
    ("8 thighs", "8 thighs", "accepted"),
    ("1 large stockpot, about 16 cups", "1 large stockpot, about 16 cups", "accepted"),
    ("24 cookies", "2 dozen cookies", "accepted"),
    ("12 servings", "1 9x13-inch cake, 12 pieces", "accepted"),   # servings 12 matches
    ("1 serving", "1 9x5-inch loaf", "rejected"),                 # a number shared, another unit
    ("2 loaves", "1 9x5-inch loaf", "rejected"),
    ("8 servings", "8 thighs", "rejected")])                      # servings is 4 for this record
def test_verify_yield_against_servings_or_yield_text(label_yield, record_yield, verdict):
    servings = 12 if "12 pieces" in record_yield else 4
    checks, got, _ = verify(GOOD | {"recipeYield": label_yield}, TASK,
                            RECORD | {"servings": servings, "yield": record_yield}, TEXT)
    assert got == verdict, checks["recipeYield"]
    if verdict == "accepted":
        assert checks["recipeYield"]["status"] == "ok" and checks["recipeYield"]["source_field"] in ("servings", "yield")


def test_verify_source_list_is_validated(tmp_path):
    import shutil

    from distill.io import StageError
    from distill.tasks import load_task

    task_dir = tmp_path / "recipe"
    shutil.copytree(TASK.dir, task_dir)
    y = task_dir / "task.yaml"
    y.write_text(y.read_text().replace("source: [servings, yield]", "source: []"))
    with pytest.raises(StageError, match=r"verify\.source: must be a record field name or a list"):
        load_task(str(task_dir))


def test_feedback_message_names_what_failed_and_nothing_else():
    from distill.labels import feedback_message

    assert feedback_message({"verdict": "rejected", "reason": "no_json"}).count("not one JSON object") == 1
    msg = feedback_message({"verdict": "rejected", "reason": "schema",
                            "schema_errors": ["prepTime: 5 is not of type 'string'"]})
    assert "Schema error at prepTime: 5 is not of type 'string'" in msg
    checks, _, _ = verify(GOOD | {"prepTime": "PT45M"}, TASK, RECORD, TEXT)
    msg = feedback_message({"verdict": "rejected", "output": GOOD | {"prepTime": "PT45M"}, "checks": checks})
    assert 'prepTime = "PT45M"' in msg and "PT10M" not in msg and "10" not in msg
    assert "recipeIngredient" not in msg and "name" not in msg
    assert feedback_message({"verdict": "rejected", "checks": {"name": {"status": "ok"}}}) is None
