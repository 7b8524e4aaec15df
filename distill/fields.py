"""Field normalisation and comparison, shared by label verification (03) and scoring (07).

Durations become minutes, yields become numbers, text is normalised (case,
unicode fractions, punctuation) and lists are matched one-to-one with fuzzy
string similarity (rapidfuzz), so "1 cup flour" matches "1 c. flour".
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any, Iterable

from rapidfuzz import fuzz, process

# A fuzzy score (0-100) at or above which two list items count as the same item.
ITEM_MATCH = 80.0

_ISO = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.I)
# The one table of duration units (minutes per unit), for the strict parser of source CSVs and the
# lenient one of labels and scoring (human_minutes).
DURATION_UNITS = {
    "d": 1440, "day": 1440, "days": 1440,
    "h": 60, "hr": 60, "hrs": 60, "hour": 60, "hours": 60,
    "m": 1, "min": 1, "mins": 1, "minute": 1, "minutes": 1,
    "s": 1 / 60, "sec": 1 / 60, "secs": 1 / 60, "second": 1 / 60, "seconds": 1 / 60,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]+)")


def iso_duration_minutes(text: str) -> float | None:
    """An ISO 8601 duration ("PT1H20M", "P0DT0H20M", "PT90M") as minutes; None if the text is not one."""
    m = _ISO.match(text.strip())
    if not m or not any(m.groups()):
        return None
    d, h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
    return d * 1440 + h * 60 + mi + sec / 60


def to_minutes(value: Any) -> float | None:
    """ISO 8601 duration ("PT1H20M"), human text ("1 hr 20 mins") or a number -> minutes."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    if not s:
        return None
    iso = iso_duration_minutes(s)
    if iso is not None:
        return iso
    return human_minutes(s)


def human_minutes(text: str, strict: bool = False) -> float | None:
    """'1 hr 20 mins' -> 80.0, '1 day 2 hrs' -> 1560.0, '30 secs' -> 0.5; None when no number has a
    known unit (DURATION_UNITS).

    Lenient (labels, scoring): every number with a known unit counts, the rest of the text is
    ignored ('about 5 mins' -> 5.0). ``strict`` (source CSVs, distill.source.parse_duration): every
    number must carry a known unit and nothing but separators ('and', commas) may be left, else the
    whole value is None (a half-understood time is worse than none)."""
    parts = _DURATION_PART.findall(text)
    known = [(float(n), DURATION_UNITS[u.lower()]) for n, u in parts if u.lower() in DURATION_UNITS]
    if not known:
        return None
    if strict and (len(known) != len(parts)
                   or re.sub(r"\band\b|[\s,]", "", _DURATION_PART.sub("", text), flags=re.I)):
        return None
    return sum(n * per for n, per in known)


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


_NUM = r"(?:\d+\s+)?\d+/\d+|\d+(?:\.\d+)?"   # "1 1/2", "3/4", "12", "2.5"
_DOZEN = re.compile(rf"({_NUM})\s*dozen\b")


def _num(s: str) -> float:
    """'1 1/2' -> 1.5, '3/4' -> 0.75, '12' -> 12.0."""
    whole, _, frac = s.strip().rpartition(" ")
    if "/" in frac:
        a, b = frac.split("/")
        return (float(whole) if whole else 0.0) + (float(a) / float(b) if float(b) else 0.0)
    return float(s)


def numbers_in(value: Any) -> list[float]:
    """Every number in a yield, in order, with fractions read and "N dozen" as N*12.

    "1 9x13-inch cake, 12 pieces" -> [1, 9, 13, 12]; "2 dozen cookies" -> [24]; "½ dozen" -> [6].
    """
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    s = _DOZEN.sub(lambda m: f"{_num(m.group(1)) * 12:g}", normalize_text(str(value)))
    return [_num(x) for x in re.findall(_NUM, s)]


def _is_plain_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or bool(re.fullmatch(_NUM, normalize_text(value)))


def _yield_words(value: Any) -> set[str]:
    """A yield's words without its numbers, singular: "2 dozen cookies" -> {"cookie"}."""
    s = re.sub(_NUM, " ", _DOZEN.sub(" ", normalize_text(value)))
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in s.split()}


def same_count(value: Any, source: Any, tolerance: float = 0.0) -> bool:
    """Does a yield name the source's quantity?

    A numeric source (servings 12): any number of the value is within tolerance
    ("1 9x13-inch cake, 12 pieces", "1 dozen bars"). A yield text source ("1 9x5-inch
    loaf"): a number of the value matches one of the source's and the value's words
    all come from the source, so "1 loaf" or "1 pie" (for "1 9-inch deep-dish pie")
    pass and "1 serving" does not.
    """
    got, want = numbers_in(value), numbers_in(source)
    if not got or not want:
        return False
    if _is_plain_number(source):
        return any(abs(g - want[0]) <= tolerance for g in got)
    if not any(abs(g - w) <= tolerance for g in got for w in want):
        return False
    return _yield_words(value) <= _yield_words(source)


def to_number(value: Any) -> float | None:
    """The first number in a yield such as "8 servings" or "Makes 2 dozen" (24)."""
    nums = numbers_in(value)
    return nums[0] if nums else None


_FRACTIONS = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5",
              "⅗": "3/5", "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8"}


def normalize_text(s: Any) -> str:
    """Lower-case, unicode fractions spelled out, punctuation folded to spaces."""
    if s is None:
        return ""
    s = str(s)
    for k, v in _FRACTIONS.items():
        if k in s:  # most texts have none: skipping the regex pass makes this 2.6x faster on long posts
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


def _words_near(item_words: list[str], text_words: list[str], slack: int = 3, cover: float = 0.8) -> bool:
    """Do most of the item's words occur together (any order) in some window of the text?"""
    return _near_window(item_words, text_words, slack, cover) is not None


def _near_window(item_words: list[str], text_words: list[str], slack: int = 3, cover: float = 0.8) -> int | None:
    """The first word index of the window that _words_near accepts, or None."""
    k = len(item_words)
    if k < 2 or len(text_words) < 2:
        return None
    want = set(item_words)
    size = k + slack
    for start in range(0, max(1, len(text_words) - size + 1)):
        window = set(text_words[start:start + size])
        if len(want & window) >= cover * len(want):
            return start
    return None


def grounded_in(item: Any, text_norm: str, threshold: float = ITEM_MATCH) -> bool:
    """Does an extracted item appear (fuzzily) in the normalised input text?

    Either as a near-contiguous substring ("1 c. flour" in "...1 cup flour...") or
    as its words close together in another order ("3/4 cup white sugar" in
    "white sugar: 3/4 cup").
    """
    s = normalize_text(item_text(item))
    if not s:
        return True
    if s in text_norm:
        return True
    if fuzz.partial_ratio(s, text_norm) >= threshold:
        return True
    return _words_near(s.split(), text_norm.split())


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def normalize_with_offsets(s: Any) -> tuple[str, list[int]]:
    """normalize_text(s) and, for each of its characters, the index in s it comes from.

    The steps of normalize_text are replayed with offsets: ASCII runs map one to one, the
    other characters (fractions, NFKC, lower case) one by one, punctuation and dots are
    replaced in place, whitespace runs collapse onto their first character. Where that gives
    another string than normalize_text (NFKC composing a decomposed accent, fractions next
    to each other), the offsets are carried over by aligning the two, so they stay close.
    """
    s = "" if s is None else str(s)
    parts: list[str] = []
    src: list[int] = []
    last = ""   # the last non-space character so far: a fraction after a digit gets a space

    def put(text: str, idx) -> None:
        nonlocal last
        parts.append(text)
        src.extend(idx)
        stripped = text.rstrip()
        if stripped:
            last = stripped[-1]

    pos = 0
    for m in _NON_ASCII.finditer(s + "\x80"):   # the sentinel flushes the last ASCII run
        a, b = m.span()
        if a > pos:
            put(s[pos:a].lower(), range(pos, a))
        for i in range(a, min(b, len(s))):
            ch = s[i]
            if ch in _FRACTIONS:
                out = (" " if last.isdecimal() else "") + _FRACTIONS[ch]
            else:
                out = unicodedata.normalize("NFKC", ch).replace("\u2044", "/").lower()
            put(out, [i] * len(out))
        pos = b
    t = re.sub(r"[^\w/.\s]", " ", "".join(parts))
    t = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", t)   # both replacements keep every offset in place
    out_chars: list[str] = []
    offsets: list[int] = []
    for m in re.finditer(r"\S+", t):
        if out_chars:
            out_chars.append(" ")
            offsets.append(src[m.start() - 1])
        out_chars.append(m.group())
        offsets.extend(src[m.start():m.end()])
    mine = "".join(out_chars)
    want = normalize_text(s)
    if mine == want:
        return want, offsets
    from rapidfuzz.distance import Levenshtein

    mapped = [0] * len(want)
    for op in Levenshtein.opcodes(mine, want):
        for k in range(op.dest_start, op.dest_end):
            j = min(op.src_start + (k - op.dest_start), max(op.src_end - 1, op.src_start), len(offsets) - 1)
            mapped[k] = offsets[j] if offsets else 0
    return want, mapped


class GroundingIndex:
    """Where items occur in one raw text, by the same match as grounded_in.

    ``span(item)`` is the (start, end) character range in the raw text of an item that
    grounded_in accepts, and None for one it rejects (and for an empty item), so a page
    that highlights items and the verifier agree on what is "in the text".
    """

    def __init__(self, text: str):
        self.text = text or ""
        self.norm, self._src = normalize_with_offsets(self.text)
        self._words = [(m.start(), m.end()) for m in re.finditer(r"\S+", self.norm)]

    def _raw(self, a: int, b: int) -> tuple[int, int]:
        while a < b and self.norm[a] == " ":
            a += 1
        while b > a and self.norm[b - 1] == " ":
            b -= 1
        b = max(b, a + 1)
        return self._src[a], self._src[b - 1] + 1

    def _to_words(self, a: int, b: int) -> tuple[int, int]:
        """Widen a range of the normalised text to whole words (a fuzzy alignment may cut one)."""
        for ws, we in self._words:
            if ws < a < we:
                a = ws
            if ws < b < we:
                b = we
        return a, b

    def span(self, item: Any, threshold: float = ITEM_MATCH) -> tuple[int, int] | None:
        s = normalize_text(item_text(item))
        if not s or not self.norm:
            return None
        i = self.norm.find(s)
        if i >= 0:
            return self._raw(i, i + len(s))
        al = fuzz.partial_ratio_alignment(s, self.norm)
        if al is not None and al.score >= threshold:
            return self._raw(*self._to_words(al.dest_start, al.dest_end))
        item_words, text_words = s.split(), self.norm.split()
        start = _near_window(item_words, text_words)
        if start is None:
            return None
        want = set(item_words)
        hits = [k for k in range(start, min(start + len(item_words) + 3, len(text_words))) if text_words[k] in want]
        return self._raw(self._words[hits[0]][0], self._words[hits[-1]][1])


def name_similarity(value: Any, source: Any) -> float:
    """0-1 similarity of a title to the source title, allowing the post's extra words.

    "Spiced Pumpkin Pie" or "The Best Pumpkin Pie Ever" name the source "Pumpkin Pie":
    when nearly all of the source's words are in the value, the order-free subset
    score (token_set_ratio) counts; otherwise the plain order-free score does.
    """
    nv, ns = normalize_text(value), normalize_text(source)
    if not nv or not ns:
        return 1.0 if nv == ns else 0.0
    plain = fuzz.token_sort_ratio(nv, ns) / 100.0
    src_words = set(ns.split())
    covered = sum(1 for w in src_words if any(fuzz.ratio(w, v) >= 85 for v in nv.split()))
    if covered >= 0.8 * len(src_words):
        return max(plain, fuzz.token_set_ratio(nv, ns) / 100.0)
    return plain


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def is_blank(value: Any) -> bool:
    """Empty for verification: None, blank text, an empty container, or a list of blank items.

    Stricter than :func:`is_empty` (which 07 uses for scoring): ``[""]`` or
    ``[{"@type": "HowToStep", "text": " "}]`` says nothing, so it is no answer either.
    """
    if is_empty(value):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return all(not item_text(i).strip() for i in value)
    return False


# --- "stated in the text": does the input say the source value? ------------------------
# 03 rejects a label that leaves a field empty while the text plainly states the record's
# value (the post was written from the record). Each detector is conservative: it only
# answers yes when the value is written next to a word that says what it is, so a label
# is never rejected for missing a value the text only hints at.

_UNIT_MINUTES = {"day": 1440, "days": 1440, "d": 1440, "hour": 60, "hours": 60, "hr": 60, "hrs": 60, "h": 60,
                 "minute": 1, "minutes": 1, "min": 1, "mins": 1, "m": 1}
_NUM_TOKEN = re.compile(r"^(?:\d+(?:\.\d+)?|\d+/\d+)$")
_GLUED = re.compile(r"^(\d+(?:\.\d+)?)([a-z]+)$")   # "30mins", "1hr", "2dozen"
# At most this many words between a keyword and its value: "prep time: 15 mins",
# "cook for about 1 hour", "serves about 4".
KEYWORD_GAP = 3


def _tokens(text_norm: str) -> list[str]:
    out = []
    for t in _DOZEN.sub(lambda m: f"{_num(m.group(1)) * 12:g}", text_norm).split():
        g = _GLUED.match(t)
        out.extend(g.groups() if g else (t,))
    return out


def _read_number(tokens: list[str], i: int) -> tuple[float, int] | None:
    """The number starting at tokens[i] ("1 1/2" spans two tokens) and the index after it."""
    if i >= len(tokens) or not _NUM_TOKEN.match(tokens[i]):
        return None
    if "/" not in tokens[i] and i + 1 < len(tokens) and re.fullmatch(r"\d+/\d+", tokens[i + 1]):
        return _num(f"{tokens[i]} {tokens[i + 1]}"), i + 2
    return _num(tokens[i]), i + 1


def durations_in(tokens: list[str]) -> list[tuple[int, float]]:
    """(start token, minutes) of every duration: "30 mins", "1 hr 20 min", "1 1/2 hours", "1 hour and 5 minutes"."""
    out, i = [], 0
    while i < len(tokens):
        start, total, j, found = i, 0.0, i, False
        while True:
            n = _read_number(tokens, j)
            if n is None or n[1] >= len(tokens) or tokens[n[1]] not in _UNIT_MINUTES:
                break
            total += n[0] * _UNIT_MINUTES[tokens[n[1]]]
            j, found = n[1] + 1, True
            if j + 1 < len(tokens) and tokens[j] == "and" and _read_number(tokens, j + 1):
                j += 1
        if found:
            out.append((start, total))
            i = j
        else:
            i += 1
    return out


def _keyword_before(tokens: list[str], start: int, keywords: Iterable[str]) -> bool:
    """Does a keyword phrase end at most KEYWORD_GAP words before ``start``, with no number in between?"""
    for kw in keywords:
        k = normalize_text(kw).split()
        if not k:
            continue
        for end in range(start - 1, max(-1, start - 2 - KEYWORD_GAP), -1):
            if any(_NUM_TOKEN.match(t) for t in tokens[end + 1:start]):
                break
            if tokens[max(0, end - len(k) + 1):end + 1] == k:
                return True
    return False


def stated_in_text(method: str | None, source: Any, text_norm: str, keywords: Iterable[str] = (),
                   tolerance: float = 0.0) -> bool:
    """Is the source value clearly written in the (normalised) input text?

    ``name``/``text``: the whole source text appears, word for word after normalising.
    ``minutes``: a duration equal to the source ("30 mins", "1 hr 20 min", "1 1/2 hours")
    comes right after one of the field's keywords ("prep: 30 mins", "cook for 1 hour").
    Without a keyword a duration says nothing about which time it is: with prep 15 and
    total 15, "ready in 15 minutes" states the total only if "ready in" is a total
    keyword, and never the prep time.
    ``count``/``number``: a number of the source follows a keyword ("serves 8",
    "makes 2 dozen", "yield: 1 loaf").
    ``set_f1``: at least half of the source's items appear in the text.
    ``exact``: never; a category is the teacher's judgement, not a quotation.
    """
    if is_empty(source) or not text_norm:
        return False
    if method in ("name", "text"):
        s = normalize_text(source)
        return len(s) >= 3 and re.search(rf"(?<!\w){re.escape(s)}(?!\w)", text_norm) is not None
    if method == "set_f1":
        items = source if isinstance(source, list) else [source]
        hits = sum(1 for it in items if grounded_in(it, text_norm))
        return hits >= max(1, (len(items) + 1) // 2)
    if method in ("minutes", "count", "number") and keywords:
        tokens = _tokens(text_norm)
        if method == "minutes":
            want = to_minutes(source)
            return want is not None and any(abs(m - want) <= tolerance and _keyword_before(tokens, s, keywords)
                                            for s, m in durations_in(tokens))
        want = numbers_in(source)
        want = want[:1] if method == "number" or _is_plain_number(source) else want
        for i in range(len(tokens)):
            n = _read_number(tokens, i)
            if n and any(abs(n[0] - w) <= tolerance for w in want) and _keyword_before(tokens, i, keywords):
                return True
    return False


def value_in_text(method: str | None, value: Any, text_norm: str) -> bool:
    """Can a reader find this single value anywhere in the (normalised) text, keyword or not?

    ``minutes``: a duration of the same length ("PT1H30M" and "1 hr 30 mins", "90 minutes");
    ``count``/``number``: the value's first number. Weaker than :func:`stated_in_text`, which also
    wants the keyword that says which value it is: this asks only whether the value is readable at
    all, so that a label made from page markup does not teach a value the page never shows (a
    total time the markup computed). Other methods: True (nothing to look for).
    """
    if is_empty(value):
        return True
    tokens = _tokens(text_norm)
    if method == "minutes":
        want = to_minutes(value)
        return want is not None and any(abs(m - want) < 0.5 for _, m in durations_in(tokens))
    if method in ("count", "number"):
        want = numbers_in(value)[:1]
        for i in range(len(tokens)):
            n = _read_number(tokens, i)
            if n and any(abs(n[0] - w) < 1e-9 for w in want):
                return True
        return False
    return True


# --- paraphrased items (steps): grounded when their content words are in the text ---------

_STOPWORDS = frozenset(
    "a an and or but nor the of to in on at for with without into onto from by as is are be been it its this that "
    "these those then than so if when while until till about over under up down out off all each every some any "
    "you your yours we our us i my me they them their there here also just very well more most much few again "
    "will can may should would could do does did not no yes let lets let's get got".split())
# A content word of a step also counts as in the text when a text word is this similar
# (rapidfuzz ratio): "mash"/"mashed", "whisk"/"whisking", a typo.
WORD_MATCH = 80.0
# An item is grounded when this share of its content words occurs together in one
# stretch of the text, or STEP_COVER_ANYWHERE of them anywhere (a terse "mash, mix, bake
# 1hr" method whose step "Mash the bananas" takes its noun from the ingredient list).
# On 300 real recipe pages (text by trafilatura, the reader of 08 then) 97.4% of the pages' own steps pass and
# 3.4% of steps taken from another page do; the steps that fail are mostly pages whose
# extracted text lost the method.
STEP_COVER = 0.6
STEP_COVER_ANYWHERE = 0.9


def content_words(s: Any) -> list[str]:
    """The words that carry a step's meaning: no stop words, numbers kept."""
    return [t for t in _tokens(normalize_text(item_text(s)))
            if t not in _STOPWORDS and (len(t) >= 3 or any(c.isdigit() for c in t))]


def step_coverage(item: Any, text_tokens: list[str], vocab: dict[str, list[int]] | None = None) -> tuple[float, float]:
    """Shares (0-1) of an item's content words found (a) within one window of the text, (b) anywhere.

    The window is twice the item's length plus ten words: a reworded step keeps its
    words close together ("in a big bowl whisk the flour and sugar" covers "Combine
    flour and sugar in a large bowl" but for "combine" and "large"), while a step made
    up from words scattered over a long post does not.
    """
    words = list(dict.fromkeys(content_words(item)))
    if not words:
        return 1.0, 1.0
    if vocab is None:
        vocab = {}
        for pos, t in enumerate(text_tokens):
            vocab.setdefault(t, []).append(pos)
    keys = list(vocab)
    hits: list[tuple[int, int]] = []   # (text position, index of the content word)
    for wi, w in enumerate(words):
        if w in vocab:
            matches = [w]
        elif w.isalpha() and len(w) >= 4:
            matches = [m for m, _, _ in process.extract(w, keys, scorer=fuzz.ratio, score_cutoff=WORD_MATCH,
                                                         limit=None) if m.isalpha()]
        else:
            matches = []  # numbers and short words only count when written the same
        hits.extend((pos, wi) for m in matches for pos in vocab[m])
    hits.sort()
    size = 2 * len(normalize_text(item_text(item)).split()) + 10
    best, lo, counts = 0, 0, Counter()
    for hi in range(len(hits)):
        counts[hits[hi][1]] += 1
        while hits[hi][0] - hits[lo][0] >= size:
            counts[hits[lo][1]] -= 1
            if not counts[hits[lo][1]]:
                del counts[hits[lo][1]]
            lo += 1
        best = max(best, len(counts))
    return best / len(words), len({wi for _, wi in hits}) / len(words)


def text_segments(text: str) -> int:
    """Sentences and lines of a text with at least one word: the most steps it can state."""
    parts = re.split(r"[\n\r]+|(?<=[.!?;])\s+", text)
    return sum(1 for p in parts if re.search(r"[^\W\d_]{2,}", p))


def check_paraphrased(items: list, text: str) -> dict:
    """Steps-like items against the text: coverage of each, and their count against the text's sentences.

    Returns {"not_in_text": [the items not grounded], "too_many": bool, "segments": n}.
    """
    tokens = _tokens(normalize_text(text))
    vocab: dict[str, list[int]] = {}
    for pos, t in enumerate(tokens):
        vocab.setdefault(t, []).append(pos)
    texts = [item_text(i) for i in items if item_text(i).strip()]
    low = []
    for t in texts:
        near, anywhere = step_coverage(t, tokens, vocab)
        if near < STEP_COVER and anywhere < STEP_COVER_ANYWHERE:
            low.append(t)
    segments = text_segments(text)
    return {"not_in_text": low, "too_many": len(texts) > segments, "segments": segments}
