"""A deterministic 'oracle' teacher for stage tests, served by FakeOpenAIServer.

Synthesis requests get a messy post written from the record in the prompt;
labeling requests get the correct label for that post (looked up by the post's
text), with reasoning in the channel the test chooses. Tasks plug in two
functions: ``write(record_text, style_instructions) -> post`` and
``label(post) -> dict``.
"""
from __future__ import annotations

import json
import re
from typing import Callable

from distill.fields import minutes_to_iso
from fake_openai_server import Behaviour, reply


def parse_record_text(prompt: str) -> dict:
    """Invert Task.record_text: 'key: value' lines and '- item' bullets after the last 'Recipe:'/'Record:'
    (or 'Topic:', the heading of a style whose text must hold no recipe)."""
    body = re.split(r"\n(?:Recipe|Record|Source|Topic):\n", prompt)[-1]
    out: dict = {}
    key = None
    for line in body.splitlines():
        if line.startswith("- ") and key:
            out.setdefault(key, []).append(line[2:])
        elif ":" in line:
            k, v = line.split(":", 1)
            key = k.strip().replace(" ", "_")
            if v.strip():
                out[key] = v.strip()
    return out


# The second recipe a two-recipe post adds after the record's (recipe_label stops before it).
SECOND_RECIPE = ["BONUS: Quick Pickled Onions", "* 1 red onion, sliced", "* 1/2 cup cider vinegar",
                 "Pour the vinegar over the onion."]


def recipe_post(rec: dict, style: str) -> str:
    """The record as a post in ``style``; a record shown without ingredients (a style whose text must
    hold no recipe: the dish is only its topic) gives a review with no recipe in it."""
    if not rec.get("ingredients"):
        return (f"Dinner at Trattoria Lucia last night, four stars.\nWe had the {rec.get('name')} ($14) and "
                f"the tiramisu. Service was quick.\n(written as: {style[:80]})")
    lines = [f"Home > Recipes > {rec.get('name')}" if "scraped" in style.lower() else f"{rec.get('name')}!!"]
    lines.append("Sponsored: 20% off kitchen knives")
    lines.append(f"(written as: {style[:80]})")
    lines.append("You need:")
    lines += [f"* {i}" for i in rec.get("ingredients", [])]
    if rec.get("prep_minutes"):
        lines.append(f"Prep: {rec['prep_minutes']} mins")
    if rec.get("cook_minutes"):
        lines.append(f"Cook: {rec['cook_minutes']} mins")
    if rec.get("total_minutes"):
        lines.append(f"Total: {rec['total_minutes']} mins")
    if rec.get("servings"):
        lines.append(f"Serves {rec['servings']}")
    lines.append("Mix everything. Bake until golden.")
    if "two recipes" in style:
        lines += SECOND_RECIPE
    return "\n".join(lines)


EMPTY_RECIPE = {"@context": "https://schema.org", "@type": "Recipe", "name": None, "recipeIngredient": [],
                "recipeInstructions": [], "prepTime": None, "cookTime": None, "totalTime": None, "recipeYield": None}


def recipe_label(post: str) -> dict:
    """The right label of a post: the first recipe in it (nothing after a second recipe's title);
    a post with no ingredient lines has no recipe: nulls and empty lists."""
    lines = post.splitlines()
    if SECOND_RECIPE[0] in lines:
        lines = lines[:lines.index(SECOND_RECIPE[0])]
    ings = [ln[2:] for ln in lines if ln.startswith("* ")]
    if not ings:
        return dict(EMPTY_RECIPE)
    name = lines[0].split(" > ")[-1].rstrip("!")

    def mins(prefix):
        m = next((re.search(r"\d+", ln).group() for ln in lines if ln.startswith(prefix)), None)
        return minutes_to_iso(int(m)) if m else None

    serves = next((ln.split()[-1] for ln in lines if ln.startswith("Serves")), None)
    return {"@context": "https://schema.org", "@type": "Recipe", "name": name, "recipeIngredient": ings,
            "recipeInstructions": [{"@type": "HowToStep", "text": "Mix everything."},
                                   {"@type": "HowToStep", "text": "Bake until golden."}],
            "prepTime": mins("Prep:"), "cookTime": mins("Cook:"), "totalTime": mins("Total:"),
            "recipeYield": f"{serves} servings" if serves else None}


class OracleTeacher:
    """Callable handler: decides from the messages whether it is asked to write or to label."""

    def __init__(self, write: Callable[[dict, str], str] = recipe_post, label: Callable[[str], dict] = recipe_label,
                 reasoning_channel: str = "reasoning_content",
                 corrupt: Callable[[dict], dict] | None = None, fix_on_feedback: bool = False):
        self.write, self.label = write, label
        self.reasoning_channel = reasoning_channel
        self.corrupt = corrupt  # turn some right labels wrong, to test verification
        self.fix_on_feedback = fix_on_feedback  # a feedback round gets the right label
        self.calls = {"write": 0, "label": 0}
        self.feedback: list[str] = []  # the feedback turns it was sent

    def __call__(self, body: dict) -> str | Behaviour:
        msgs = body["messages"]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        user = users[0]
        if msgs[0]["role"] == "system":   # labeling: system prompt + the post (+ answer and feedback)
            self.calls["label"] += 1
            post = user.split("\n\n", 1)[1]
            lab = self.label(post)
            feedback = users[1:]
            self.feedback += feedback
            if self.corrupt and not (feedback and self.fix_on_feedback):
                lab = self.corrupt(lab)
            reasoning = "The title is on the first line; ingredients are the starred lines."
            text = json.dumps(lab)
            if self.reasoning_channel == "think":
                return reply(f"<think>\n{reasoning}\n</think>\n\n{text}")
            if self.reasoning_channel == "closing_only":
                return reply(f"{reasoning}\n</think>\n\n{text}")
            return reply(text, **{self.reasoning_channel: reasoning})
        self.calls["write"] += 1
        style = user.split("\n\n", 1)[1].split("\n\nRules:")[0]
        return self.write(parse_record_text(user), style)
