"""Field normalisation and comparison, shared by label verification (03) and scoring (07).

Durations become minutes, yields become numbers, text is normalised (case,
unicode fractions, punctuation) and lists are matched one-to-one with fuzzy
string similarity (rapidfuzz), so "1 cup flour" matches "1 c. flour".
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

from rapidfuzz import fuzz

# A fuzzy score (0-100) at or above which two list items count as the same item.
ITEM_MATCH = 80.0

_ISO = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.I)
_HUMAN = re.compile(r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m)\b", re.I)


def to_minutes(value: Any) -> float | None:
    """ISO 8601 duration ("PT1H20M"), human text ("1 hr 20 mins") or a number -> minutes."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    if not s:
        return None
    m = _ISO.match(s)
    if m and any(m.groups()):
        d, h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
        return d * 1440 + h * 60 + mi + sec / 60
    total, found = 0.0, False
    for num, unit in _HUMAN.findall(s):
        found = True
        u = unit.lower()
        total += float(num) * (1440 if u.startswith("d") else 60 if u.startswith("h") else 1)
    return total if found else None


def minutes_to_iso(minutes: float | int | None) -> str | None:
    if minutes is None:
        return None
    minutes = int(round(minutes))
    d, rem = divmod(minutes, 1440)
    h, m = divmod(rem, 60)
    out = "P" + (f"{d}D" if d else "")
    if h or m or not d:
        out += "T" + (f"{h}H" if h else "") + (f"{m}M" if m or not h else "")
    return out


def to_number(value: Any) -> float | None:
    """The first number in a yield such as "8 servings" or "Makes 2 dozen (24 cookies)"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = re.search(r"\d+(?:\.\d+)?", normalize_text(str(value)))
    return float(m.group()) if m else None


_FRACTIONS = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5",
              "⅗": "3/5", "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8"}


def normalize_text(s: Any) -> str:
    """Lower-case, unicode fractions spelled out, punctuation folded to spaces."""
    if s is None:
        return ""
    s = str(s)
    for k, v in _FRACTIONS.items():
        s = re.sub(rf"(\d)\s*{k}", rf"\1 {v}", s).replace(k, v)
    s = unicodedata.normalize("NFKC", s).replace("\u2044", "/").lower()
    s = re.sub(r"[^\w/.\s]", " ", s)
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def text_similarity(a: Any, b: Any) -> float:
    """0-1 similarity of two short strings, insensitive to word order."""
    na, nb = normalize_text(a), normalize_text(b)
    if not na and not nb:
        return 1.0
    if not na or not nb:
        return 0.0
    return fuzz.token_sort_ratio(na, nb) / 100.0


def item_text(item: Any) -> str:
    """A list item as text: strings as they are, HowToStep-like dicts by their text."""
    if isinstance(item, dict):
        for key in ("text", "name", "value"):
            if isinstance(item.get(key), str):
                return item[key]
        return " ".join(str(v) for v in item.values() if isinstance(v, (str, int, float)))
    return "" if item is None else str(item)


def match_lists(pred: Iterable[Any], ref: Iterable[Any], threshold: float = ITEM_MATCH) -> dict:
    """One-to-one fuzzy matching of two lists; returns tp/fp/fn and precision/recall/F1.

    Greedy by best score: each reference item is matched at most once, so
    repeating an ingredient does not inflate precision.
    """
    p = [normalize_text(item_text(x)) for x in (pred or [])]
    r = [normalize_text(item_text(x)) for x in (ref or [])]
    p = [x for x in p if x]
    r = [x for x in r if x]
    pairs = sorted(((fuzz.token_set_ratio(a, b), i, j) for i, a in enumerate(p) for j, b in enumerate(r)), reverse=True)
    used_p, used_r = set(), set()
    for score, i, j in pairs:
        if score < threshold:
            break
        if i in used_p or j in used_r:
            continue
        used_p.add(i)
        used_r.add(j)
    tp = len(used_p)
    fp, fn = len(p) - tp, len(r) - tp
    precision = tp / len(p) if p else (1.0 if not r else 0.0)
    recall = tp / len(r) if r else (1.0 if not p else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1,
            "unmatched_pred": [p[i] for i in range(len(p)) if i not in used_p]}


def grounded_in(item: Any, text_norm: str, threshold: float = ITEM_MATCH) -> bool:
    """Does an extracted item appear (fuzzily) in the normalised input text?"""
    s = normalize_text(item_text(item))
    if not s:
        return True
    if s in text_norm:
        return True
    return fuzz.partial_ratio(s, text_norm) >= threshold


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}
