"""Validation and verification of teacher labels on real messy cases (parsing a reply: test_answers.py)."""
from __future__ import annotations

import pytest

from distill import fields as F
from distill.labels import validate, verify
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


def test_a_value_the_record_lacks_and_the_text_never_shows_is_invented():
    record = {k: v for k, v in RECORD.items() if k != "cook_minutes"}
    checks, verdict, reason = verify(GOOD | {"cookTime": "PT25M"}, TASK, record, TEXT)
    assert (verdict, reason) == ("rejected", "cookTime_invented")
    assert checks["cookTime"]["status"] == "invented"
    # the text does say "1 hour": a value the reader can find is left unverifiable, not rejected
    checks, verdict, _ = verify(GOOD, TASK, record, TEXT)
    assert verdict == "accepted" and checks["cookTime"]["status"] == "unverifiable"


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


# ---- verification that means something: required, omitted, steps, unverified, per-style empty ----

EMPTY = {"@context": "https://schema.org", "@type": "Recipe", "name": None, "recipeIngredient": [],
         "recipeInstructions": []}


def test_a_label_that_says_nothing_is_rejected():
    assert validate(EMPTY, TASK.schema) == []   # the schema alone lets it through
    checks, verdict, reason = verify(EMPTY, TASK, RECORD, TEXT)
    assert verdict == "rejected"
    assert reason == ("name_missing,recipeIngredient_missing,recipeInstructions_missing,"
                      "prepTime_omitted,cookTime_omitted,recipeYield_omitted")
    assert checks["name"] == {"status": "missing", "source": "Easy Banana Bread", "required": True}
    # Without a source record it is still rejected: required fields need no record.
    _, verdict, reason = verify(EMPTY, TASK, None, TEXT)
    assert (verdict, reason) == ("rejected", "name_missing,recipeIngredient_missing,recipeInstructions_missing")


def test_blank_values_are_empty_too():
    blank = GOOD | {"name": "  ", "recipeIngredient": [""], "recipeInstructions": [{"@type": "HowToStep", "text": " "}]}
    _, verdict, reason = verify(blank, TASK, RECORD, TEXT)
    assert (verdict, reason) == ("rejected", "name_missing,recipeIngredient_missing,recipeInstructions_missing")


def test_no_source_record_is_unverified_never_accepted():
    checks, verdict, reason = verify(GOOD, TASK, None, TEXT)
    assert (verdict, reason) == ("unverified", "no_source_record")
    assert checks["name"]["status"] == "unverifiable"
    # A record without any of the checked values verifies nothing either (the label's total time,
    # 70 minutes, is nowhere in the text: against such a record it would be invented).
    assert verify(GOOD | {"totalTime": None}, TASK, {"id": "r-2"}, TEXT)[1:] == ("unverified", "no_source_values")
    assert verify(GOOD, TASK, {"id": "r-2"}, TEXT)[1:] == ("rejected", "totalTime_invented")
    # A wrong label without a record is still rejected by the checks against the text.
    bad = GOOD | {"recipeIngredient": GOOD["recipeIngredient"] + ["2 cups chocolate chips"]}
    assert verify(bad, TASK, None, TEXT)[1:] == ("rejected", "recipeIngredient_not_in_text")


# A recipe-blog post as the teacher writes them (fluffy_organized): story, ad lines, a card.
BLOG_POST = """Grandma's Sunday Pot Roast
Home > Recipes > Beef
There is nothing like the smell of a pot roast on a rainy Sunday. My grandma made this every week, and
honestly I still can't make it quite like she did (she swore by a splash of coffee in the braising liquid).
ADVERTISEMENT - Continue reading below
Tips: chuck roast is best here. You can swap the red wine for more beef broth.
Prep Time: 30 mins | Cook Time: 3 hrs 30 mins | Total Time: 4 hrs | Servings: 6
Ingredients
- 1 (3 pound) beef chuck roast
- 2 tablespoons vegetable oil
- 1 large onion, cut into wedges
- 4 carrots, cut into 2-inch pieces
- 1 cup red wine
- 2 cups beef broth
- 2 sprigs fresh thyme
Instructions
1. Preheat the oven to 300 degrees F. Pat the roast dry and season it well with salt and pepper.
2. Heat the oil in a large Dutch oven over medium-high heat and brown the roast on all sides, about 4 minutes per side.
3. Take the roast out, add the onion and carrots, and cook for 5 minutes.
4. Pour in the red wine and scrape up the browned bits, then add the broth and thyme.
5. Put the roast back in, cover, and braise in the oven until fork-tender.
Sponsored: 20% off kitchen knives
Print | Pin | Rate"""
BLOG_RECORD = {"id": "r-roast", "name": "Grandma's Sunday Pot Roast",
               "ingredients": ["1 (3 pound) beef chuck roast", "2 tablespoons vegetable oil",
                               "1 large onion, cut into wedges", "4 carrots, cut into 2-inch pieces", "1 cup red wine",
                               "2 cups beef broth", "2 sprigs fresh thyme"],
               "prep_minutes": 30, "cook_minutes": 210, "total_minutes": 240, "servings": 6, "yield": "6 servings"}
# The teacher's label: steps reworded a little, as real teachers do.
BLOG_LABEL = {"@context": "https://schema.org", "@type": "Recipe", "name": "Grandma's Sunday Pot Roast",
              "recipeIngredient": BLOG_RECORD["ingredients"],
              "recipeInstructions": [
                  {"@type": "HowToStep", "text": "Preheat oven to 300°F. Pat the roast dry and season with salt and pepper."},
                  {"@type": "HowToStep", "text": "Brown the roast on all sides in hot oil in a Dutch oven, about 4 minutes per side."},
                  {"@type": "HowToStep", "text": "Remove the roast; cook the onion and carrots for 5 minutes."},
                  {"@type": "HowToStep", "text": "Deglaze with the red wine, then add the beef broth and thyme."},
                  {"@type": "HowToStep", "text": "Return the roast, cover and braise in the oven until fork-tender."}],
              "prepTime": "PT30M", "cookTime": "PT3H30M", "totalTime": "PT4H", "recipeYield": "6 servings"}


def test_a_real_looking_post_and_its_paraphrased_label_are_accepted():
    checks, verdict, reason = verify(BLOG_LABEL, TASK, BLOG_RECORD, BLOG_POST)
    assert (verdict, reason) == ("accepted", "ok"), checks
    assert checks["recipeInstructions"]["grounded"] is True


@pytest.mark.parametrize("field,reason", [
    ("prepTime", "prepTime_omitted"), ("cookTime", "cookTime_omitted"), ("totalTime", "totalTime_omitted"),
    ("recipeYield", "recipeYield_omitted")])
def test_a_value_the_post_states_but_the_label_leaves_empty_is_omitted(field, reason):
    checks, verdict, got = verify(BLOG_LABEL | {field: None}, TASK, BLOG_RECORD, BLOG_POST)
    assert (verdict, got) == ("rejected", reason)
    assert checks[field]["status"] == "omitted"


def test_omitted_needs_the_value_clearly_stated():
    label = BLOG_LABEL | {"prepTime": None, "cookTime": None, "totalTime": None, "recipeYield": None}
    # Times in a column layout, the yield without a keyword: nothing is clearly stated.
    post = BLOG_POST.replace("Prep Time: 30 mins | Cook Time: 3 hrs 30 mins | Total Time: 4 hrs | Servings: 6",
                             "Prep Time Cook Time Total Time\n30 mins 3 hrs 30 mins 4 hrs\nenough for 6")
    checks, verdict, reason = verify(label, TASK, BLOG_RECORD, post)
    assert (verdict, reason) == ("accepted", "ok"), checks
    assert {checks[f]["status"] for f in ("prepTime", "cookTime", "totalTime", "recipeYield")} == {"missing"}


def test_prep_and_total_of_the_same_length_are_told_apart_by_their_keyword():
    record = RECORD | {"prep_minutes": 15, "cook_minutes": None, "total_minutes": 15}
    label = GOOD | {"cookTime": None}
    # "ready in" names the total, never the prep time: an empty prepTime is not omitted.
    text = TEXT.replace("prep 10 min, bake 1 hour.", "ready in 15 minutes!")
    checks, verdict, _ = verify(label | {"prepTime": None, "totalTime": "PT15M"}, TASK, record, text)
    assert verdict == "accepted" and checks["prepTime"]["status"] == "missing"
    assert verify(label | {"prepTime": "PT15M", "totalTime": None}, TASK, record, text)[1:] == ("rejected", "totalTime_omitted")
    # Both named: both stated.
    text = TEXT.replace("prep 10 min, bake 1 hour.", "prep: 15 mins, total: 15 mins.")
    assert verify(label | {"prepTime": None, "totalTime": "PT15M"}, TASK, record, text)[1:] == ("rejected", "prepTime_omitted")


@pytest.mark.parametrize("text,method,source,keywords,stated", [
    ("Prep: 30 mins", "minutes", 30, ["prep"], True),
    ("Prep time: 30 minutes", "minutes", 30, ["prep"], True),
    ("cook time 1 hr 20 min", "minutes", 80, ["cook"], True),
    ("bake for 1 ½ hours", "minutes", 90, ["bake"], True),
    ("cook: 1 hour and 5 minutes", "minutes", 65, ["cook"], True),
    ("ready in 45mins", "minutes", 45, ["ready in"], True),
    ("bake at 350 for 1 hour", "minutes", 60, ["bake"], False),     # a number in between: not clearly its time
    ("30 mins prep", "minutes", 30, ["prep"], False),               # keyword after the value
    ("Prep: 30 mins", "minutes", 20, ["prep"], False),              # a different value
    ("about an hour", "minutes", 60, ["cook"], False),              # words, not a duration: not detected
    ("Prep: 30 mins", "minutes", 30, [], False),                    # no keywords declared: never stated
    ("Serves 8", "count", 8, ["serves"], True),
    ("Servings: 10, Yield: 10 burritos", "count", "10 burritos", ["yield"], True),
    ("makes 2 dozen cookies", "count", 24, ["makes"], True),
    ("makes 2 dozen cookies", "count", "2 dozen cookies", ["makes"], True),
    ("serves 4 to 6", "count", 6, ["serves"], False),
    ("serves 4 to 6", "count", 4, ["serves"], True),
    ("Grandma's Mustard Potato Salad!! so good", "name", "Grandma’s Mustard Potato Salad", [], True),
    ("a mustard potato salad like grandma's", "name", "Grandma's Mustard Potato Salad", [], False),
    ("you need 3 ripe bananas and 2 cups flour", "set_f1", ["3 ripe bananas", "2 cups flour", "1 egg"], [], True),
    ("a banana bread story", "set_f1", ["3 ripe bananas", "2 cups flour", "1 egg"], [], False),
    ("intent: account_discovery", "exact", "account_discovery", [], False),   # categories are never "stated"
])
def test_stated_in_text(text, method, source, keywords, stated):
    assert F.stated_in_text(method, source, F.normalize_text(text), keywords) is stated


def test_invented_steps_are_rejected():
    invented = BLOG_LABEL | {"recipeInstructions": BLOG_LABEL["recipeInstructions"] + [
        {"@type": "HowToStep", "text": "Garnish with chopped parsley and a drizzle of truffle oil."}]}
    checks, verdict, reason = verify(invented, TASK, BLOG_RECORD, BLOG_POST)
    assert (verdict, reason) == ("rejected", "recipeInstructions_not_in_text")
    assert checks["recipeInstructions"]["not_in_text"] == ["Garnish with chopped parsley and a drizzle of truffle oil."]
    # Steps of another recipe, as plain strings: every one fails.
    other = ["Cream the butter and sugar until fluffy.", "Beat in the eggs one at a time, then the vanilla.",
             "Fold in the chocolate chips and chill the dough for an hour."]
    checks, verdict, reason = verify(BLOG_LABEL | {"recipeInstructions": other}, TASK, BLOG_RECORD, BLOG_POST)
    assert (verdict, reason) == ("rejected", "recipeInstructions_not_in_text")
    assert checks["recipeInstructions"]["not_in_text"] == other


def test_terse_methods_ground_steps_that_borrow_words_from_the_ingredients():
    post = (TASK.dir / "examples" / "instagram-caption.txt").read_text()
    label = GOOD | {"name": "Grandma's Banana Bread", "recipeIngredient": [
        "3 very ripe bananas", "1/3 cup melted butter", "3/4 cup sugar", "1 egg", "1 tsp vanilla", "1 tsp baking soda",
        "pinch of salt", "1 1/2 cups flour"], "recipeInstructions": [
        "Mash the bananas.", "Mix in the melted butter, sugar, egg, vanilla, baking soda and salt.",
        "Fold in the flour.", "Bake for 1 hour at 350°F."]}
    record = RECORD | {"name": "Grandma's Banana Bread", "ingredients": [
        "3 very ripe bananas", "1/3 cup melted butter", "3/4 cup white sugar", "1 egg, beaten",
        "1 teaspoon vanilla extract", "1 teaspoon baking soda", "1 pinch salt", "1 1/2 cups all-purpose flour"]}
    checks, verdict, reason = verify(label, TASK, record, post)
    assert (verdict, reason) == ("accepted", "ok"), checks
    # "Mash the bananas": "mash" is in the method, "bananas" only in the ingredient list.
    assert checks["recipeInstructions"]["grounded"] is True and "too_many" not in checks["recipeInstructions"]


def test_more_steps_than_the_text_has_sentences_are_rejected():
    text = "Banana bread! 3 ripe bananas, 1/3 cup melted butter, 1 1/2 cups all-purpose flour. Mash, mix, bake 1 hour."
    steps = ["Mash the bananas.", "Mix the butter.", "Mix the flour.", "Mix the bananas.", "Bake 1 hour."]
    checks, verdict, reason = verify(GOOD | {"recipeInstructions": steps}, TASK, RECORD, text)
    assert verdict == "rejected" and reason.split(",")[-1] == "recipeInstructions_too_many"
    assert checks["recipeInstructions"]["too_many"] == {"items": 5, "text_sentences": 3}


def test_a_style_with_nothing_to_extract_rejects_invented_values():
    import dataclasses

    from distill.tasks import Style

    nothing = ("name", "recipeIngredient", "recipeInstructions", "prepTime", "cookTime", "totalTime", "recipeYield")
    task = dataclasses.replace(TASK, styles=TASK.styles + [Style("no_recipe", 1.0, "A post with no recipe.", nothing)])
    text = "We finally finished the kitchen renovation!! Recipes are coming back next week, I promise."
    empty = EMPTY | {"prepTime": None, "cookTime": None, "totalTime": None, "recipeYield": None}
    checks, verdict, reason = verify(empty, task, RECORD, text, style="no_recipe")
    assert (verdict, reason) == ("accepted", "ok")   # required does not apply to the style's empty fields
    assert checks["name"] == {"status": "ok", "expected": "empty"}
    _, verdict, reason = verify(empty | {"name": "Easy Banana Bread", "recipeIngredient": ["3 ripe bananas"]},
                                task, RECORD, text, style="no_recipe")
    assert (verdict, reason) == ("rejected", "name_invented,recipeIngredient_invented")
    # Other styles are checked as usual.
    assert verify(empty, task, RECORD, text, style="minimal_organized")[1] == "rejected"


def test_feedback_for_missing_and_omitted_fields_never_shows_the_source():
    from distill.labels import feedback_message

    label = BLOG_LABEL | {"name": None, "prepTime": None}
    checks, verdict, _ = verify(label, TASK, BLOG_RECORD, BLOG_POST)
    msg = feedback_message({"verdict": verdict, "output": label, "checks": checks})
    assert "name is empty, but every answer needs it" in msg and "prepTime is empty, but the text states it" in msg
    assert "Pot Roast" not in msg and "30" not in msg and "PT30M" not in msg


def test_unverified_labels_are_done_but_counted_apart(tmp_path):
    from distill.io import write_json
    from distill.labels import format_report, is_done, report

    assert is_done({"verdict": "unverified"}) and is_done({"verdict": "accepted"})
    assert not is_done({"verdict": "failed"})
    verdicts = {"a": ("accepted", "ok"), "b": ("unverified", "no_source_record"),
                "c": ("rejected", "name_missing,recipeInstructions_missing"), "d": ("failed", "length")}
    for i, (v, r) in verdicts.items():
        write_json(tmp_path / f"{i}.json", {"id": i, "verdict": v, "reason": r, "style": "s", "checks": {}})
    rep = report(tmp_path, list(verdicts), TASK)
    assert rep["verdicts"] == {"accepted": 1, "rejected": 1, "unverified": 1, "failed": 1}
    assert rep["reasons"] == {"rejected": {"name_missing": 1, "recipeInstructions_missing": 1},
                              "unverified": {"no_source_record": 1}, "failed": {"length": 1}}
    text = format_report(rep)
    assert "1 accepted (25%), 1 rejected, 1 unverified" in text and "1 failed" in text
    assert "unverified, by reason: no_source_record 1" in text


def test_values_the_text_never_shows_are_dropped_from_record_labels():
    from distill import fields as F
    from distill.labels import drop_unreadable_values
    from distill.tasks import load_task

    task = load_task("recipe")
    text = "Lemon Cake\nPrep Time: 15 mins\nBake 1 hr 10 minutes\nMakes 8 slices\n1 cup flour\nMix and bake."
    norm = F.normalize_text(text)
    assert F.value_in_text("minutes", "PT1H10M", norm) and F.value_in_text("minutes", "PT15M", norm)
    assert not F.value_in_text("minutes", "PT1H25M", norm)       # prep + cook, computed by the markup
    assert F.value_in_text("count", "8 servings", norm) and not F.value_in_text("count", "12", norm)
    label = {"name": "Lemon Cake", "recipeIngredient": ["1 cup flour"], "recipeInstructions": ["Mix and bake."],
             "prepTime": "PT15M", "cookTime": "PT1H10M", "totalTime": "PT1H25M", "recipeYield": "12 servings"}
    out, dropped = drop_unreadable_values(label, task, text)
    assert out["prepTime"] == "PT15M" and out["cookTime"] == "PT1H10M"
    assert out["totalTime"] is None and out["recipeYield"] is None
    assert dropped == {"totalTime": ["PT1H25M"], "recipeYield": ["12 servings"]}
    assert out["recipeIngredient"] == label["recipeIngredient"]  # lists are drop_ungrounded's
