"""07's scoring on hand-made cases with numbers worked out by hand, adversarial cases, aggregates,
tables, reports and run comparison."""
import dataclasses
import json
import math

import pytest

from distill import evaluate as E
from distill import reports as R
from distill import scoring as S
from distill.io import StageError
from distill.tasks import FieldRule, load_task

RECIPE = load_task("recipe")


def rule(score, **kw):
    return FieldRule(name=kw.pop("name", "f"), score=score, **kw)


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("pred,valid,obj,err", [
    ({"name": "x"}, True, {"name": "x"}, None),
    (None, False, None, "no_output"),
    ("null", True, {}, None),                                   # "nothing here" is a valid, empty answer
    ("{}", True, {}, None),
    ("[1, 2]", False, None, "not_object"),
    ('<think>title first</think>\n{"name": "a"}', True, {"name": "a"}, None),
    ('thinking without opening tag</think>{"name": "a"}', True, {"name": "a"}, None),
    ('Here:\n```json\n{"name": "a"}\n```', True, {"name": "a"}, None),
    ("I could not find a recipe.", False, None, "no_json"),
    ("", False, None, "empty"),
])
def test_parse_prediction(pred, valid, obj, err):
    got, info = S.parse_prediction(pred)
    assert got == obj and info["json_valid"] is valid and info["parse_error"] == err


def test_parse_prediction_repairs_broken_json():
    got, info = S.parse_prediction('{"name": "a", "recipeIngredient": ["x", "y"')
    assert got == {"name": "a", "recipeIngredient": ["x", "y"]} and info["repaired"] and info["json_valid"]


# ------------------------------------------------------------------ one field, every method

def test_text_field():
    r = S.score_field(rule("text"), "Banana Bread!", "banana bread")
    assert r["score"] == 1.0 and r["exact"]
    r = S.score_field(rule("text"), "banana bread", "Banana Breads")   # one insertion in 25 chars
    assert r["score"] == pytest.approx(0.96) and not r["exact"]
    assert S.score_field(rule("text"), None, "x")["score"] == 0.0
    # both empty: an abstention, not a match (this used to score 1.0)
    r = S.score_field(rule("text"), None, None)
    assert r["score"] is None and r["exact"] is None and r["pred_empty"] and r["ref_empty"]
    assert r["outcome"] == "abstained"


def test_exact_field():
    assert S.score_field(rule("exact"), "Vegan", "vegan")["score"] == 1.0
    assert S.score_field(rule("exact"), "5", 5)["exact"]
    assert S.score_field(rule("exact"), True, True)["exact"]
    assert not S.score_field(rule("exact"), False, True)["exact"]
    assert S.score_field(rule("exact"), "a", "b")["score"] == 0.0
    assert S.score_field(rule("exact"), None, None)["exact"] is None   # abstained, not "exact"
    assert S.score_field(rule("exact"), None, "x")["exact"] is False
    assert S.score_field(rule("exact"), False, False)["exact"]         # False is a value, not empty


def test_minutes_field():
    r = S.score_field(rule("minutes"), "PT1H20M", "1 hr 20 mins")
    assert r["exact"] and r["abs_error"] == 0.0 and r["score"] == 1.0
    r = S.score_field(rule("minutes"), "PT30M", "PT45M")
    assert r["abs_error"] == 15.0 and r["score"] == 0.0
    assert S.score_field(rule("minutes", verify_tolerance=5), "PT40M", "PT45M")["exact"]
    r = S.score_field(rule("minutes"), "soon", "PT10M")
    assert r.get("unreadable") and r["score"] == 0.0 and "abs_error" not in r
    assert S.score_field(rule("minutes"), None, "PT10M")["score"] == 0.0   # omitted
    # invented, and both empty: not scored here (the example's overall score penalises the
    # invented one); null-against-null used to be an "exact" 1.0
    assert S.score_field(rule("minutes"), "PT10M", None)["score"] is None
    assert S.score_field(rule("minutes"), None, None)["score"] is None


def test_number_field():
    assert S.score_field(rule("number"), "8 servings", 8)["exact"]
    assert S.score_field(rule("number"), "Makes 2 dozen", "24")["exact"]   # dozens are read
    r = S.score_field(rule("number"), "Makes 20 cookies", "24")
    assert r["abs_error"] == 4.0 and not r["exact"]


def test_list_f1_field():
    r = S.score_field(rule("list_f1"), ["1 cup flour", "2 eggs", "1 tsp salt"],
                      ["1 cup flour", "2 eggs", "1 cup sugar", "1 tsp vanilla"])
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 2)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(4 / 7) and r["score"] == r["f1"] and not r["exact"]
    assert S.score_field(rule("list_f1"), [], [])["f1"] is None          # abstained (used to be F1 1.0)
    r = S.score_field(rule("list_f1"), ["x"], [])
    assert r["f1"] is None and r["outcome"] == "hallucinated" and (r["tp"], r["fp"], r["fn"]) == (0, 1, 0)
    # a list of blank steps is no answer: omitted against steps, abstained against none
    blank = [{"@type": "HowToStep", "text": ""}, " "]
    assert S.score_field(rule("list_f1"), blank, ["Mix."])["outcome"] == "omitted"
    assert S.score_field(rule("list_f1"), blank, [])["outcome"] == "abstained"
    # HowToStep objects are compared by their text
    steps = [{"@type": "HowToStep", "text": "Mix."}, {"@type": "HowToStep", "text": "Bake."}]
    assert S.score_field(rule("list_f1"), steps, ["Mix.", "Bake."])["exact"]


def test_set_f1_ignores_repeats():
    assert S.score_field(rule("list_f1"), ["salt", "salt", "pepper"], ["salt", "pepper"])["f1"] == pytest.approx(0.8)
    assert S.score_field(rule("set_f1"), ["salt", "salt", "pepper"], ["salt", "pepper"])["f1"] == 1.0
    assert S.score_field(rule("set_f1"), "salt", ["salt"])["f1"] == 1.0   # a scalar is a one-item set


def test_mae_field_scalar_and_dimensions():
    prop = {"type": "integer", "minimum": 0, "maximum": 10}
    r = S.score_field(rule("mae", name="impact", verify_tolerance=2), 7, 9, prop)
    assert r["errors"] == {"impact": 2.0} and r["score"] == pytest.approx(0.8) and r["exact"]
    obj_prop = {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 10}}
    r = S.score_field(rule("mae", name="scores"), {"clarity": 5}, {"clarity": 8, "accuracy": 4}, obj_prop)
    assert r["errors"] == {"clarity": 3.0, "accuracy": None}
    assert r["score"] == pytest.approx((0.7 + 0.0) / 2) and not r["exact"]
    # without a declared range: right within tolerance or wrong
    assert S.score_field(rule("mae", name="c"), 0.5, 0.9)["score"] == 0.0
    assert S.score_field(rule("mae", name="c", verify_tolerance=0.5), 0.5, 0.9)["score"] == 1.0


MAE_PROP = {"type": "integer", "minimum": 0, "maximum": 10}


@pytest.mark.parametrize("method,value", [
    ("text", "Banana Bread"), ("exact", "vegan"), ("minutes", "PT10M"), ("number", "4 servings"),
    ("list_f1", ["1 cup flour"]), ("set_f1", ["salt"]), ("mae", 7)])
def test_every_method_separates_the_four_outcomes(method, value):
    """One rule for every method: a field is scored only where the reference has a value."""
    def score(pred, ref):
        return S.score_field(rule(method), pred, ref, MAE_PROP)

    for empty in (None, "", "   ", [], [""], {}):
        abst = score(empty, None)
        assert (abst["outcome"], abst["score"], abst["exact"]) == ("abstained", None, None)
        om = score(empty, value)
        assert (om["outcome"], om["score"], om["exact"]) == ("omitted", 0.0, False)
    hal = score(value, None)
    assert (hal["outcome"], hal["score"], hal["exact"]) == ("hallucinated", None, None)
    hit = score(value, value)
    assert (hit["outcome"], hit["score"], hit["exact"]) == ("scored", 1.0, True)


# ------------------------------------------------------------------ one example

TEXT = ("Grandma Banana Bread. You need 3 ripe bananas, 2 cups flour, 1 cup sugar, 1 tsp baking soda. "
        "Mash the bananas. Mix everything and bake. Prep 15 min, cook 30 min, 45 min in total.")
STEPS = [{"@type": "HowToStep", "text": "Mash the bananas."}, {"@type": "HowToStep", "text": "Mix everything and bake."}]
REF = {"@context": "https://schema.org", "@type": "Recipe", "name": "Grandma Banana Bread",
       "recipeIngredient": ["3 ripe bananas", "2 cups flour", "1 cup sugar", "1 tsp baking soda"],
       "recipeInstructions": STEPS, "prepTime": "PT15M", "cookTime": "PT30M", "totalTime": "PT45M",
       "recipeYield": None}
# name right; 3 of 4 ingredients + 1 invented (not in the text); steps right; prep right;
# cook wrong by 5 min; total missing; a yield invented.
PRED = dict(REF, recipeIngredient=["3 ripe bananas", "2 cups flour", "1 cup sugar", "1 cup chocolate chips"],
            cookTime="PT35M", totalTime=None, recipeYield="4 servings")
SOURCE = {"name": "Grandma Banana Bread", "ingredients": ["3 ripe bananas", "2 cups flour", "1 cup sugar",
                                                         "1 tsp baking soda"],
          "prep_minutes": 15, "cook_minutes": 30, "total_minutes": 45, "servings": None}


def test_score_example_by_hand():
    r = S.score_example(PRED, REF, RECIPE, TEXT, SOURCE)
    assert r["json_valid"] and r["schema_valid"] and r["schema_errors"] == []
    f = r["fields"]
    assert f["name"]["score"] == 1.0 and f["name"]["exact"]
    ing = f["recipeIngredient"]
    assert (ing["tp"], ing["fp"], ing["fn"]) == (3, 1, 1) and ing["f1"] == pytest.approx(0.75)
    assert f["recipeInstructions"]["f1"] == 1.0
    assert f["prepTime"]["score"] == 1.0 and f["cookTime"]["abs_error"] == 5.0 and f["cookTime"]["score"] == 0.0
    assert f["totalTime"]["score"] == 0.0 and f["recipeYield"]["score"] is None
    assert {k: fr["outcome"] for k, fr in f.items()} == {
        "name": "scored", "recipeIngredient": "scored", "recipeInstructions": "scored", "prepTime": "scored",
        "cookTime": "scored", "totalTime": "omitted", "recipeYield": "hallucinated"}
    # 6 fields with a reference value, weight 1: (1 + 0.75 + 1 + 1 + 0 + 0); the invented yield adds 1
    # to the denominator
    assert r["score"] == pytest.approx(3.75 / (6 + 1))
    assert r["missing"] == ["totalTime"] and r["spurious"] == ["recipeYield"] and r["abstained"] == []
    assert (r["ref_filled"], r["ref_empty"]) == (6, 1)
    assert r["hallucination"] == {"items": 4, "ungrounded": 1, "not_in_text": ["1 cup chocolate chips"]}
    # against the source record (stage 03's checks): cook time disagrees, total missing, and the yield,
    # which neither the record nor the text has, invented
    assert r["source_checks"] == {"name": "ok", "recipeIngredient": "ok", "prepTime": "ok",
                                  "cookTime": "mismatch", "totalTime": "missing", "recipeYield": "invented"}


def test_score_example_invalid_json_scores_zero():
    r = S.score_example("Sorry, I can't help with that.", REF, RECIPE, TEXT)
    assert not r["json_valid"] and not r["schema_valid"] and r["parse_error"] == "no_json"
    assert r["score"] == 0.0
    # 0 on every field with a reference value; the empty yield is "invalid": no abstention credit
    assert {k: (fr["outcome"], fr["score"]) for k, fr in r["fields"].items()} == {
        **{k: ("omitted", 0.0) for k in REF if k in RECIPE.fields and REF[k] is not None},
        "recipeYield": ("invalid", None)}
    assert r["abstained"] == [] and r["spurious"] == []
    # everything the reference has counts as missing; the list field's reference items as false negatives
    assert r["missing"] == ["name", "recipeIngredient", "recipeInstructions", "prepTime", "cookTime", "totalTime"]
    assert r["fields"]["recipeIngredient"]["fn"] == 4 and r["hallucination"]["items"] == 0


def test_score_example_schema_invalid_but_scored():
    bad = dict(REF, prepTime="15 minutes")   # not an ISO duration: schema error, but the value is right
    r = S.score_example(bad, REF, RECIPE, TEXT)
    assert r["json_valid"] and not r["schema_valid"] and any("prepTime" in e for e in r["schema_errors"])
    assert r["fields"]["prepTime"]["score"] == 1.0 and r["score"] == 1.0


def test_hallucinated_field_lowers_the_score_by_its_weight():
    honest = dict(PRED, recipeYield=None)
    h = S.score_example(honest, REF, RECIPE, TEXT)
    assert h["fields"]["recipeYield"]["outcome"] == "abstained" and h["score"] == pytest.approx(3.75 / 6)
    invented = S.score_example(PRED, REF, RECIPE, TEXT)
    assert h["score"] - invented["score"] == pytest.approx(3.75 / 6 - 3.75 / 7)   # 0.0893
    # a perfect answer plus one invented field: 6 / 7
    assert S.score_example(dict(REF, recipeYield="4"), REF, RECIPE, TEXT)["score"] == pytest.approx(6 / 7)
    # the penalty follows the field weight: a weight-3 invented field on 6 perfect fields -> 6 / 9
    weighted = dataclasses.replace(RECIPE, fields=dict(
        RECIPE.fields, recipeYield=FieldRule(name="recipeYield", score="number", weight=3.0)))
    assert S.score_example(dict(REF, recipeYield="4"), REF, weighted, TEXT)["score"] == pytest.approx(6 / 9)


@pytest.mark.parametrize("answer", ["{}", "null", {}, {"@context": "https://schema.org", "@type": "Recipe"},
                                    {"name": "", "recipeIngredient": [], "recipeInstructions": [""]}])
def test_an_empty_answer_scores_zero(answer):
    """{} is valid JSON but says nothing: 0 wherever the reference has a value, abstained where it has none."""
    r = S.score_example(answer, REF, RECIPE, TEXT)
    assert r["json_valid"] and r["parse_error"] is None and r["score"] == 0.0
    assert r["missing"] == ["name", "recipeIngredient", "recipeInstructions", "prepTime", "cookTime", "totalTime"]
    assert r["abstained"] == ["recipeYield"] and r["spurious"] == []


def test_a_reference_without_values_is_not_scored():
    empty_ref = {k: None for k in RECIPE.fields}
    r = S.score_example("{}", empty_ref, RECIPE, TEXT)
    assert r["score"] is None and len(r["abstained"]) == 7 and (r["ref_filled"], r["ref_empty"]) == (0, 7)
    r = S.score_example({"name": "Banana Bread"}, empty_ref, RECIPE, TEXT)
    assert r["score"] is None and r["spurious"] == ["name"] and len(r["abstained"]) == 6
    r = S.score_example("not json", empty_ref, RECIPE, TEXT)
    assert r["score"] is None and r["abstained"] == [] and {f["outcome"] for f in r["fields"].values()} == {"invalid"}


# ------------------------------------------------------------------ aggregate

def _ex(pred, style, **kw):
    return S.score_example(pred, REF, RECIPE, TEXT) | {"style": style, **kw}


def test_aggregate_by_hand():
    exs = [_ex(PRED, "chaotic", latency_s=1.0), _ex(REF, "minimal", latency_s=3.0),
           _ex("not json", "minimal", latency_s=2.0)]
    a = S.aggregate(exs, RECIPE)
    assert a["n"] == 3 and a["json_valid"] == pytest.approx(2 / 3) and a["schema_valid"] == pytest.approx(2 / 3)
    assert a["score"] == pytest.approx((3.75 / 7 + 1 + 0) / 3)
    ing = a["fields"]["recipeIngredient"]
    assert ing["f1"] == pytest.approx((0.75 + 1 + 0) / 3)
    assert ing["precision"] == pytest.approx((0.75 + 1 + 0) / 3)
    # micro: tp 3+4+0, fp 1, fn 1+0+4
    assert ing["micro"]["tp"] == 7 and ing["micro"]["precision"] == pytest.approx(7 / 8)
    assert ing["micro"]["recall"] == pytest.approx(7 / 12)
    cook = a["fields"]["cookTime"]
    assert cook["exact"] == pytest.approx(1 / 3) and cook["mae"] == pytest.approx(2.5)
    assert cook["rmse"] == pytest.approx(math.sqrt(25 / 2)) and cook["n_errors"] == 2
    assert cook["n"] == 3 and cook["outcomes"] == {"scored": 2, "omitted": 1, "hallucinated": 0, "abstained": 0,
                                                    "invalid": 0}
    # the yield's reference is empty everywhere: no mean (n=0), one invention, one abstention, one non-answer
    y = a["fields"]["recipeYield"]
    assert y["n"] == 0 and y["score"] is None and y["exact"] is None and y["missing_rate"] is None
    assert y["outcomes"] == {"scored": 0, "omitted": 0, "hallucinated": 1, "abstained": 1, "invalid": 1}
    assert y["spurious_rate"] == pytest.approx(1 / 3) and y["abstention_rate"] == pytest.approx(1 / 3)
    assert a["abstention_rate"] == pytest.approx(1 / 3) and a["n_scored"] == 3
    # missing: 1 (PRED) + 0 + 6 (invalid) of 18 filled reference fields; invented: 1 of 3 empty ones
    assert a["missing_rate"] == pytest.approx(7 / 18) and a["spurious_rate"] == pytest.approx(1 / 3)
    assert a["fields"]["totalTime"]["missing_rate"] == pytest.approx(2 / 3)
    assert a["hallucination_rate"] == pytest.approx(1 / 8)
    assert a["parse_errors"] == {"no_json": 1}
    assert a["latency_s"]["p50"] == 2.0
    assert set(a["by_style"]) == {"chaotic", "minimal"}
    assert a["by_style"]["minimal"]["n"] == 2 and a["by_style"]["minimal"]["score"] == pytest.approx(0.5)
    assert "by_style" not in a["by_style"]["minimal"]


# ------------------------------------------------------------------ a generic task: MAE dimensions + flags

@pytest.fixture
def scores_task(tmp_path):
    d = tmp_path / "review_scores"
    (d / "prompts").mkdir(parents=True)
    (d / "prompts" / "student.md").write_text("Rate the review.")
    (d / "schema.json").write_text(json.dumps({
        "type": "object",
        "properties": {"scores": {"type": "object",
                                  "additionalProperties": {"type": "number", "minimum": 0, "maximum": 10}},
                       "needs_clarification": {"type": "boolean"},
                       "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1}}}))
    (d / "task.yaml").write_text(
        "name: review_scores\ndescription: scores\nschema: schema.json\n"
        "student: {system_prompt: prompts/student.md, user_template: '{text}'}\n"
        "fields:\n  scores: {score: mae}\n  needs_clarification: {score: exact}\n  confidence: {score: mae}\n"
        "adversarial: adversarial.jsonl\n")
    (d / "adversarial.jsonl").write_text(
        json.dumps({"id": "a1", "kind": "one_word", "text": "accounts",
                    "expect": {"needs_clarification": True, "confidence": None}}) + "\n")
    return load_task(d)


def test_mae_per_dimension(scores_task):
    ref = {"scores": {"clarity": 8, "depth": 4}, "needs_clarification": False, "confidence": 0.9}
    exs = [S.score_example({"scores": {"clarity": 6, "depth": 4}, "needs_clarification": False, "confidence": 0.8},
                           ref, scores_task, "t"),
           S.score_example({"scores": {"clarity": 9, "depth": 1}, "needs_clarification": True, "confidence": 0.5},
                           ref, scores_task, "t")]
    a = S.aggregate(exs, scores_task)
    dims = a["fields"]["scores"]["dims"]
    assert dims["clarity"]["mae"] == pytest.approx(1.5) and dims["clarity"]["rmse"] == pytest.approx(math.sqrt(2.5))
    assert dims["depth"]["mae"] == pytest.approx(1.5) and dims["depth"]["rmse"] == pytest.approx(math.sqrt(4.5))
    assert dims["depth"]["coverage"] == 1.0
    assert a["fields"]["scores"]["mae"] == pytest.approx(6 / 4)   # all dimensions pooled: (2+0+1+3)/4
    conf = a["fields"]["confidence"]
    assert conf["mae"] == pytest.approx(0.25) and conf["rmse"] == pytest.approx(math.sqrt((0.01 + 0.16) / 2))
    assert a["fields"]["needs_clarification"]["exact"] == 0.5
    table = R.format_table([{"name": "m", "aggregate": a, "adversarial": None}])
    assert "scores MAE" in table and "clarity MAE" in table and "confidence MAE" in table


def test_expectations_with_flags(scores_task):
    case = S.load_adversarial(scores_task.adversarial_path, scores_task)[0]
    ok = S.score_case(case, {"needs_clarification": True, "confidence": None, "scores": {}}, scores_task)
    assert ok["passed"] and ok["score"] is None and ok["fields"] == {}
    bad = S.score_case(case, {"needs_clarification": False, "confidence": 0.9}, scores_task)
    assert not bad["passed"]
    assert bad["expect"]["needs_clarification"]["passed"] is False
    assert bad["expect"]["confidence"] == {"expected": None, "got": 0.9, "outcome": "hallucinated", "passed": False,
                                           "why": "expected empty/null"}


# ------------------------------------------------------------------ adversarial cases of the recipe task

@pytest.fixture(scope="module")
def cases():
    return {c["id"]: c for c in S.load_adversarial(RECIPE.adversarial_path, RECIPE)}


def test_recipe_case_file_is_complete(cases):
    kinds = {c["kind"] for c in cases.values()}
    assert kinds == {"no_recipe", "two_recipes", "missing_fields"}
    from distill.labels import validate
    for c in cases.values():   # every reference is a valid label and passes its own expectations
        assert validate(c["reference"], RECIPE.schema) == []
        r = S.score_case(c, c["reference"], RECIPE)
        # a no-recipe reference has no value to score (it used to score 1.0, null against null)
        assert r["passed"] and r["score"] == (None if c["kind"] == "no_recipe" else 1.0), c["id"]


def test_no_recipe_case(cases):
    c = cases["no-recipe-request"]
    for empty in ("null", "{}", c["reference"],
                  {"@context": "https://schema.org", "@type": "Recipe", "name": None,
                   "recipeIngredient": [], "recipeInstructions": []}):
        assert S.score_case(c, empty, RECIPE)["passed"], empty
    invented = {"@context": "https://schema.org", "@type": "Recipe", "name": "Five Cheese Lasagna",
                "recipeIngredient": ["1 lb ground beef", "2 cups ricotta"],
                "recipeInstructions": ["Layer and bake."]}
    r = S.score_case(c, invented, RECIPE)
    assert not r["passed"]
    assert {k for k, ch in r["expect"].items() if not ch["passed"]} == {"name", "recipeIngredient",
                                                                          "recipeInstructions"}
    assert not S.score_case(c, "no recipe here", RECIPE)["passed"]   # prose is not an answer
    # A loop stopped and closed to nothing says nothing by accident: no pass.
    closed = {"@context": "https://schema.org", "@type": "Recipe", "name": None,
              "recipeIngredient": [], "recipeInstructions": []}
    for reason in ("repetition", "max_items", "length"):
        r = S.score_case(c, closed, RECIPE, stopped=reason)
        assert not r["passed"] and all(ch["passed"] for ch in r["expect"].values()), reason


def test_two_recipes_case_mixing_fails(cases):
    c = cases["two-recipes-tacos-onions"]
    mixed = dict(c["reference"], recipeIngredient=c["reference"]["recipeIngredient"] + [
        "1 red onion, thinly sliced", "1/2 cup apple cider vinegar", "1 tbsp sugar", "1 tsp salt"])
    r = S.score_case(c, mixed, RECIPE)
    # 6 right + 4 from the side recipe: precision 6/10, recall 1, F1 0.75 < 0.8
    assert not r["passed"] and r["expect"]["recipeIngredient"]["why"] == "score 0.75 < 0.8"
    assert r["fields"]["recipeIngredient"]["f1"] == pytest.approx(0.75)
    side = dict(c["reference"], name="Quick Pickled Onions")
    assert not S.score_case(c, side, RECIPE)["passed"]


def test_missing_fields_case_guessing_fails(cases):
    c = cases["missing-times-yield-coleslaw"]
    guess = dict(c["reference"], prepTime="PT10M", recipeYield="6 servings")
    r = S.score_case(c, guess, RECIPE)
    assert not r["passed"]
    assert {k for k, ch in r["expect"].items() if not ch["passed"]} == {"prepTime", "recipeYield"}
    assert r["spurious"] == ["prepTime", "recipeYield"]
    # 3 fields with a value, all right, 2 invented: 3 / (3 + 2)
    assert r["score"] == pytest.approx(0.6)
    shrimp = cases["missing-title-shrimp"]
    assert not S.score_case(shrimp, dict(shrimp["reference"], name="Garlic Butter Shrimp"), RECIPE)["passed"]


def test_aggregate_adversarial_per_kind(cases):
    scored = [S.score_case(c, c["reference"] if c["kind"] != "two_recipes" else "garbage", RECIPE)
              | {"kind": c["kind"]} for c in cases.values()]
    a = S.aggregate_adversarial(scored)
    assert a["n"] == 8 and a["passed"] == 6 and a["pass_rate"] == 0.75
    assert a["by_kind"]["two_recipes"] == {"n": 2, "passed": 0, "pass_rate": 0.0}
    assert a["by_kind"]["no_recipe"]["pass_rate"] == 1.0


def test_adversarial_kinds_against_an_empty_answer(cases):
    """{} passes exactly the cases that expect nothing (no_recipe), fails the others, scores 0 there."""
    scored = {cid: S.score_case(c, "{}", RECIPE) | {"kind": c["kind"]} for cid, c in cases.items()}
    assert {cid: r["passed"] for cid, r in scored.items()} == {
        "no-recipe-renovation": True, "no-recipe-review": True, "no-recipe-request": True,
        "two-recipes-tacos-onions": False, "two-recipes-pancakes-syrup": False,
        "missing-times-yield-coleslaw": False, "missing-prep-cook-soup": False, "missing-title-shrimp": False}
    assert {r["score"] for r in scored.values() if r["kind"] != "no_recipe"} == {0.0}
    assert all(r["score"] is None and len(r["abstained"]) == 7 for r in scored.values() if r["kind"] == "no_recipe")
    # an expected null is met by abstaining; an expected value is not
    soup = scored["missing-prep-cook-soup"]["expect"]
    assert {k: (ch["outcome"], ch["passed"]) for k, ch in soup.items()} == {
        "prepTime": ("abstained", True), "cookTime": ("abstained", True), "totalTime": ("omitted", False),
        "recipeYield": ("abstained", True)}
    a = S.aggregate_adversarial(list(scored.values()))
    assert (a["n"], a["passed"]) == (8, 3)
    assert a["by_kind"] == {"missing_fields": {"n": 3, "passed": 0, "pass_rate": 0.0},
                            "no_recipe": {"n": 3, "passed": 3, "pass_rate": 1.0},
                            "two_recipes": {"n": 2, "passed": 0, "pass_rate": 0.0}}
    # aggregated like a split: overall 0 over the 5 scorable cases; the ref-empty fields all abstained
    agg = S.aggregate(list(scored.values()), RECIPE, by_style=False)
    assert agg["n_scored"] == 5 and agg["score"] == 0.0 and agg["abstention_rate"] == 1.0
    assert agg["missing_rate"] == 1.0 and agg["spurious_rate"] == 0.0


def test_adversarial_kinds_against_invented_and_unparseable_answers(cases):
    lasagna = {"@context": "https://schema.org", "@type": "Recipe", "name": "Five Cheese Lasagna",
               "recipeIngredient": ["1 lb ground beef"], "recipeInstructions": ["Layer and bake."],
               "prepTime": "PT20M"}
    r = S.score_case(cases["no-recipe-request"], lasagna, RECIPE)
    assert not r["passed"] and r["score"] is None
    assert r["spurious"] == ["name", "recipeIngredient", "recipeInstructions", "prepTime"]
    assert {k for k, ch in r["expect"].items() if ch["outcome"] == "hallucinated"} == set(r["spurious"])
    for c in cases.values():   # prose fails every case, every expectation
        r = S.score_case(c, "Here is the recipe you asked for!", RECIPE)
        assert not r["passed"] and r["abstained"] == [] and r["spurious"] == []
        assert {ch["outcome"] for ch in r["expect"].values()} == {"invalid"}
        assert r["score"] == (None if c["kind"] == "no_recipe" else 0.0)


def test_reference_only_case(tmp_path):
    p = tmp_path / "adv.jsonl"
    empty = {"id": "e", "kind": "k", "text": "t", "reference": {"name": None}}
    full = {"id": "f", "kind": "k", "text": "t", "reference": dict(REF)}
    p.write_text(json.dumps(empty) + "\n" + json.dumps(full) + "\n")
    e, f = S.load_adversarial(p, RECIPE)
    assert S.score_case(e, "{}", RECIPE)["passed"] and not S.score_case(e, "no", RECIPE)["passed"]
    assert not S.score_case(e, {"name": "Bread"}, RECIPE)["passed"]   # nothing to match: an invention fails
    assert S.score_case(f, REF, RECIPE)["passed"] and not S.score_case(f, "{}", RECIPE)["passed"]
    assert S.score_case(f, dict(REF, recipeYield="4"), RECIPE)["passed"]   # one invented field: 6/7 >= 0.8
    assert not S.score_case(f, dict(REF, recipeYield="4", name="Cake"), RECIPE)["passed"]


@pytest.mark.parametrize("line,msg", [
    ({"id": "a", "kind": "k", "expect": {"name": None}}, "non-empty string 'text'"),
    ({"id": "a", "kind": "k", "text": "t"}, "'reference'"),
    ({"id": "a", "kind": "k", "text": "t", "expect": {"nmae": None}}, "unknown field"),
    ({"id": "a", "kind": "k", "text": "t", "expect": {}}, "non-empty object"),
    ({"id": "a", "kind": "k", "text": "t", "expect": {"name": None}, "expected": 1}, "unknown key"),
])
def test_adversarial_file_errors(tmp_path, line, msg):
    p = tmp_path / "adv.jsonl"
    p.write_text(json.dumps(line) + "\n")
    with pytest.raises(StageError, match=msg):
        S.load_adversarial(p, RECIPE)


def test_adversarial_duplicate_ids(tmp_path):
    p = tmp_path / "adv.jsonl"
    line = json.dumps({"id": "a", "kind": "k", "text": "t", "expect": {"name": None}})
    p.write_text(line + "\n" + line + "\n")
    with pytest.raises(StageError, match="duplicate id"):
        S.load_adversarial(p, RECIPE)


def test_every_bundled_case_file_loads():
    """Other tasks' case files follow the same format (07 runs them by default)."""
    from distill.tasks import list_tasks

    for name in list_tasks():
        t = load_task(name)
        if t.adversarial_path and t.adversarial_path.is_file():
            assert S.load_adversarial(t.adversarial_path, t), name


# ------------------------------------------------------------------ tables, reports, comparison

def _eval(name, preds, task="recipe"):
    exs = [_ex(p, s) | {"id": f"ex{i}", "text": TEXT} for i, (p, s) in enumerate(preds)]
    return {"name": name, "model": f"{name}.gguf", "task": task, "split": "test",
            "aggregate": S.aggregate(exs, RECIPE), "adversarial": None, "examples": exs}


def test_format_table_is_aligned():
    evals = [_eval("student", [(PRED, "chaotic"), (REF, "minimal")]), _eval("base", [("junk", "chaotic")])]
    t = R.format_table(evals)
    lines = t.splitlines()
    assert len({len(line) for line in lines}) == 1          # fixed width: every line equally long
    assert lines[0].split() == ["metric", "student", "base"]
    row = next(line for line in lines if line.startswith("recipeIngredient F1"))
    assert row.split()[-2:] == ["0.875", "0.000"]
    assert next(line for line in lines if line.startswith("JSON valid")).split()[-2:] == ["100.0%", "0.0%"]
    assert "hallucinated items" in t and "missing fields" in t and "invented fields" in t


def test_write_report_and_compare(tmp_path):
    a = _eval("student", [(PRED, "chaotic"), (REF, "minimal")])
    b = _eval("base", [("junk", "chaotic"), (dict(REF, name="Bread"), "minimal")])
    for d, ev in (("s", a), ("b", b)):
        R.write_eval(tmp_path / d, ev)
    evals = E.run_compare([tmp_path / "s", tmp_path / "b"], tmp_path / "cmp")
    assert [e["name"] for e in evals] == ["student", "base"]
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| metric | student | base |" in md and "## By input style" in md
    assert "### Worst examples: base" in md and "no valid JSON (no_json)" in md
    assert "![per-field scores](fields.png)" in md
    for png in ("fields.png", "styles.png"):
        data = (tmp_path / "cmp" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    cmp = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    row = next(r for r in cmp["table"] if r["metric"] == "JSON valid")
    assert row == {"metric": "JSON valid", "student": "100.0%", "base": "50.0%"}
    assert (tmp_path / "cmp" / "manifest.json").exists()


def test_report_says_what_was_scored(tmp_path):
    perfect = _eval("perfect", [(REF, "minimal"), (REF, "chaotic")])
    assert "(none: all 2 scored examples scored 1.0)" in R._worst_md(perfect, 5)
    empty_ref = {k: None for k in RECIPE.fields}
    exs = [S.score_example({"name": "Bread"}, empty_ref, RECIPE, TEXT) | {"id": "e", "style": "s", "text": TEXT}]
    unscored = {"name": "u", "aggregate": S.aggregate(exs, RECIPE), "examples": exs}
    assert "(no example scored: no reference has a value)" in R._worst_md(unscored, 5)
    assert unscored["aggregate"]["score"] is None and unscored["aggregate"]["n_scored"] == 0
    # the invented field of a scored example is listed as invented, not as a score
    inv = _eval("inv", [(PRED, "chaotic")])
    assert "`recipeYield` invented: got `4 servings`, expected `null`" in "\n".join(R._worst_md(inv, 5))
    rows = dict(R.table_rows([inv, unscored]))
    assert rows["recipeYield (number) match"] == ["n/a", "n/a"]   # a mean over n=0 is n/a, not 0% or 100%
    assert rows["  scored (reference has a value)"] == ["1", "0"]
    R.write_report(tmp_path, [inv, unscored])
    md = (tmp_path / "report.md").read_text()
    assert "| chaotic | 0.536 (n=1 of 1); omitted 16.7%, invented 100.0%, abstained 0.0% | n/a |" in md


def test_compare_errors(tmp_path):
    with pytest.raises(StageError, match="eval.json not found"):
        R.compare([tmp_path / "nothing"])
    R.write_eval(tmp_path / "a", _eval("a", [(REF, "x")]))
    R.write_eval(tmp_path / "b", _eval("b", [(REF, "x")], task="other"))
    with pytest.raises(StageError, match="different tasks"):
        R.compare([tmp_path / "a", tmp_path / "b"])


def test_same_names_are_told_apart(tmp_path):
    R.write_eval(tmp_path / "run1", _eval("m", [(REF, "x")]))
    R.write_eval(tmp_path / "run2", _eval("m", [(REF, "x")]))
    assert [e["name"] for e in R.compare([tmp_path / "run1", tmp_path / "run2"])] == ["m (run1)", "m (run2)"]


def test_price_check_for_tasks_that_declare_it():
    """coffee_order declares price_check: 07 prices the predicted items with the task's menu."""
    coffee = load_task("coffee_order")
    ref = {"items": [{"name": "Latte", "size": "small", "quantity": 2, "modifiers": ["oat milk"]}],
           "total_price": 9.30, "not_on_menu": []}                                    # (3.95 + 0.70) * 2
    right = S.score_example(ref, ref, coffee, "two small oat lattes")
    assert right["price_check"]["consistent"] and right["price_check"]["correct"]
    # right drink, wrong total: inconsistent with the menu and with the reference
    wrong_total = S.score_example(dict(ref, total_price=7.90), ref, coffee, "two small oat lattes")
    assert wrong_total["price_check"]["priced"] and not wrong_total["price_check"]["consistent"]
    off_menu = S.score_example(dict(ref, items=[{"name": "Pizza", "size": "large", "quantity": 1}]), ref, coffee, "t")
    assert off_menu["price_check"]["priced"] is False
    a = S.aggregate([right, wrong_total, off_menu], coffee)
    assert a["price_check"]["consistent_rate"] == 0.3333   # summarize_price_checks rounds to 4 places
    assert a["price_check"]["priced_rate"] == 0.6667
    assert "total = menu price" in R.format_table([{"name": "m", "aggregate": a}])
    assert "price_check" not in S.score_example(REF, REF, RECIPE, TEXT)
    # an empty order has nothing to price: not a vacuous "every item on the menu"; {} is not priced at all
    nothing = S.score_example({"items": [], "total_price": 0, "not_on_menu": []}, ref, coffee, "t")["price_check"]
    assert nothing["priced"] is None and nothing["consistent"] is None and nothing["correct"] is False
    assert S.score_example("{}", ref, coffee, "t")["price_check"]["priced"] is False
    a = S.aggregate([right, S.score_example({"items": [], "total_price": 0}, ref, coffee, "t")], coffee)
    assert a["price_check"]["priced_rate"] == 1.0 and a["price_check"]["correct_rate"] == 0.5


def test_every_score_method_is_one_registered_scorer():
    """A method is one object in distill.scoring.SCORERS: it scores, aggregates and names its table
    rows; the task loader accepts exactly the registered names."""
    assert S.SCORE_METHODS == tuple(S.SCORERS)
    assert set(S.SCORERS) == {"text", "exact", "minutes", "number", "list_f1", "set_f1", "mae"}
    for name, scorer in S.SCORERS.items():
        assert scorer.name == name
        rows = scorer.rows("f", [])
        assert rows and rows[0][3] is True and rows[0][0].startswith("f ")   # the field's first row always shows
        assert all(fmt in ("pct", "num3", "num2", "int") for _, fmt, _, _ in rows)
    with pytest.raises(ValueError, match="unknown score method 'nope'"):
        S.score_field(FieldRule(name="x", score="nope"), "a", "a")
