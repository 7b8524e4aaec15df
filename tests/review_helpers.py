"""Runs of 07 and 03 for the review page tests: a small dataset and a student that errs in
the ways a real one does (a missed ingredient, an invented one, a wrong time, a field left
out, prose instead of JSON), so every outcome shows on the page."""
from __future__ import annotations

import json
from pathlib import Path

from distill.io import write_jsonl, write_manifest
from distill.tasks import load_task
from fake_openai_server import reply
from fake_teacher import recipe_label, recipe_post

RECIPE = load_task("recipe")
STYLES = ["minimal_organized", "chaotic_unstructured", "fluffy_organized"]
SCRIPT = "<script>alert(1)</script>"
DISHES = ["Lemon drizzle cake", "Spiced pumpkin pie", "Banana bread", "Garlic butter noodles",
          "Chocolate chip cookies", "Shakshuka", "Blueberry muffins", "Tomato soup"]
INGREDIENTS = [["1 1/2 cups flour", "2 eggs", "3/4 cup white sugar", "1 lemon, zested"],
               ["1 (15 ounce) can pumpkin puree", "2 eggs", "1 tsp cinnamon", "1 unbaked pie crust"],
               ["3 ripe bananas, mashed", "1/3 cup melted butter", "1 tsp baking soda", "1 1/2 cups flour"],
               ["8 ounces egg noodles", "4 cloves garlic, minced", "3 tbsp butter", "parmesan to serve"],
               ["2 1/4 cups flour", "1 cup butter, softened", "2 cups chocolate chips", "1 tsp vanilla"],
               ["6 eggs", "1 can crushed tomatoes", "1 red pepper, sliced", "1 tsp cumin"],
               ["1 cup blueberries", "2 cups flour", "1/2 cup milk", "1/2 cup sugar"],
               ["2 lbs tomatoes", "1 onion, chopped", "2 cups vegetable stock", "1/2 cup cream"]]


def make_dataset(d: Path, n: int = 8, script_in: int = 0) -> list[dict]:
    """A 04-style test split of n posts; post ``script_in`` holds a <script> tag in its text."""
    rows = []
    for i in range(n):
        name = DISHES[i % len(DISHES)] + (f" {SCRIPT}" if i == script_in else "")
        rec = {"name": name, "ingredients": INGREDIENTS[i % len(INGREDIENTS)], "prep_minutes": 10 + i,
               "cook_minutes": 30 + 5 * i, "total_minutes": 40 + 6 * i, "servings": 4 + i % 3}
        style = STYLES[i % len(STYLES)]
        text = recipe_post(rec, style)
        ref = recipe_label(text)
        rows.append({"messages": RECIPE.student_messages(text) + [{"role": "assistant", "content": json.dumps(ref)}],
                     "id": f"post-{i:03d}", "source_id": f"src{i}", "style": style, "task": "recipe",
                     "reference": ref, "text": text, "source": rec})
    write_jsonl(d / "test.jsonl", rows)
    write_jsonl(d / "train.jsonl", rows[:1])
    write_manifest(d, "04_build_dataset", {}, {"test": n}, task="recipe",
                   system_prompt=RECIPE.student_system_prompt, user_template=RECIPE.student_user_template)
    return rows


def flawed(ref: dict, i: int) -> dict | str:
    """The answer of an imperfect student for example i."""
    out = dict(ref)
    kind = i % 6
    if kind == 1:
        out["recipeIngredient"] = ref["recipeIngredient"][:-1] + ["2 tbsp unicorn tears"]   # invented item
    elif kind == 2:
        out["cookTime"] = "PT2H"                                                              # wrong time
        out["recipeYield"] = None                                                             # left out
    elif kind == 3:
        return "Sorry, this looks like a lovely recipe but I cannot find one here."           # prose
    elif kind == 4:
        out["name"] = ref["name"].split()[0] + " thing"                                       # poor title
        out["recipeInstructions"] = [{"@type": "HowToStep", "text": "Preheat the oven to 180C."}]
    return out


class Student:
    """Answers each post (found by its text) with ``flawed`` of its reference; adversarial cases right."""

    def __init__(self, rows, perfect: bool = False):
        self.rows = {r["text"]: (i, r) for i, r in enumerate(rows)}
        self.cases = {json.loads(line)["text"]: json.loads(line) for line in
                      RECIPE.adversarial_path.read_text().splitlines() if line.strip()}
        self.perfect = perfect

    def __call__(self, body):
        text = body["messages"][-1]["content"].split("\n\n", 1)[1]
        if text in self.cases:
            case = self.cases[text]
            return json.dumps(case.get("reference")) if case.get("reference") else "null"
        i, row = self.rows[text]
        ans = row["reference"] if self.perfect else flawed(row["reference"], i)
        content = ans if isinstance(ans, str) else json.dumps(ans)
        return reply(f"<think>\nThe title is on the first line; the starred lines are ingredients.\n</think>\n{content}")
