"""Oracle write/label functions for the shipped tasks, plugged into fake_teacher.OracleTeacher.

``write(record, style) -> post`` turns the record shown in a synthesis prompt into a
messy input; ``label(post) -> dict`` gives the correct label for that input. They let
stages 02-07 run against the fault-injecting server with known-right answers.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from fake_teacher import recipe_label, recipe_post

from distill.menu import load_menu, price_order

TASKS = Path(__file__).resolve().parent.parent / "tasks"


# ---- coffee_order ------------------------------------------------------------------

_LINE = re.compile(r"^(?:(\d+) x )?(Small|Medium|Large) (.+?)(?: - (.+))?$")


def parse_line(line: str) -> dict:
    m = _LINE.match(line.strip().lstrip("-* ").strip())
    if not m:
        raise ValueError(f"not an order line: {line!r}")
    qty, size, name, mods = m.groups()
    return {"name": name, "size": size.lower(), "quantity": int(qty or 1),
            "modifiers": sorted(x.strip().lower() for x in mods.split(",")) if mods else []}


def coffee_post(rec: dict, style: str) -> str:
    lines = rec.get("order_lines") or []
    if isinstance(lines, str):
        lines = [lines]
    return "um hi, yeah, can I get\n" + "\n".join(f"* {ln}" for ln in lines) + "\nthat's it, thanks"


def coffee_label(post: str) -> dict:
    items = [parse_line(ln[2:]) for ln in post.splitlines() if ln.startswith("* ")]
    return {"items": items, "total_price": price_order(coffee_menu(), items), "not_on_menu": []}


def coffee_simplified_label(text: str) -> dict:
    """Step 2's oracle: a clean list ('- 2 x Large Latte - Oat Milk') -> the order JSON."""
    items = [parse_line(ln) for ln in text.splitlines() if ln.strip().startswith("- ")]
    return {"items": items, "total_price": price_order(coffee_menu(), items), "not_on_menu": []}


@lru_cache(maxsize=1)
def coffee_menu():
    return load_menu(TASKS / "coffee_order" / "menu.yaml")


# ---- tasks with seed records: look the reference up by the text the oracle wrote ---

@lru_cache(maxsize=4)
def _seeds(task: str) -> list[dict]:
    return [json.loads(ln) for ln in (TASKS / task / "records.jsonl").read_text().splitlines() if ln.strip()]


def gtm_post(rec: dict, style: str) -> str:
    return f"hey assistant: {rec['request']}"


def gtm_label(post: str) -> dict:
    request = post.split("hey assistant: ", 1)[-1].strip()
    return next(r["reference"] for r in _seeds("gtm_intent") if r["request"] == request)


def article_post(rec: dict, style: str) -> str:
    points = rec.get("key_points") or []
    if isinstance(points, str):
        points = [points]
    return f"{rec['title']}\nCookies help us deliver our services.\n" + "\n".join(f"* {p}" for p in points)


def article_label(post: str) -> dict:
    title = post.splitlines()[0].strip()
    return next(r["reference"] for r in _seeds("article_scores") if r["title"] == title)


ORACLES = {
    "recipe": (recipe_post, recipe_label),
    "coffee_order": (coffee_post, coffee_label),
    "gtm_intent": (gtm_post, gtm_label),
    "article_scores": (article_post, article_label),
}
