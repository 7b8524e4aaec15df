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

from distill.menu import load_menu, price_order
from fake_teacher import recipe_label, recipe_post

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


UNSURE_INTENT = {"intent_type": "unclear", "motion": "none", "role_assumption": "unknown", "account_scope": "none",
                 "time_horizon": "unspecified",
                 "confidence_scores": {"intent_type": 0.2, "motion": 0.2, "role_assumption": 0.2,
                                       "account_scope": 0.2, "time_horizon": 0.2},
                 "overall_confidence": 0.2, "assumptions_applied": ["the request matches nothing known"],
                 "needs_clarification": True, "clarification_question": "What do you want to know?",
                 "unknown_terms": []}


def gtm_label(post: str) -> dict:
    """The seed's reference for a known request; an unsure intent for anything else (adversarial inputs)."""
    request = post.split("hey assistant: ", 1)[-1].strip()
    return next((r["reference"] for r in _seeds("gtm_intent") if r["request"] == request), UNSURE_INTENT)


def article_post(rec: dict, style: str) -> str:
    points = rec.get("key_points") or []
    if isinstance(points, str):
        points = [points]
    return f"{rec['title']}\nCookies help us deliver our services.\n" + "\n".join(f"* {p}" for p in points)


def article_label(post: str) -> dict:
    """The seed's reference for a known article; all zeros for anything else (adversarial inputs)."""
    title = post.splitlines()[0].strip() if post.strip() else ""
    return next((r["reference"] for r in _seeds("article_scores") if r["title"] == title),
                {"impact": 0, "evidence": 0, "novelty": 0, "actionability": 0, "tier": "low",
                 "rationale": "not an article"})


ORACLES = {
    "recipe": (recipe_post, recipe_label),
    "coffee_order": (coffee_post, coffee_label),
    "gtm_intent": (gtm_post, gtm_label),
    "article_scores": (article_post, article_label),
}
