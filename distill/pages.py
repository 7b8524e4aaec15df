"""Saved web pages: what a model reads of them, and the answer their own markup gives.

One reader for every stage, so what the student learns to read is what it will read:
``08_extract.py`` (HTML inputs), ``07_evaluate.py --pages`` and ``01_download_dataset.py
--from-pages`` all call :func:`page_text`.

* **Reader.** The page's whole visible text, one block per line (``html-text`` with its layout
  guess, after dropping ``<script>`` — JSON-LD included — ``<style>``, ``<noscript>``,
  ``<template>``, ``<svg>`` and ``<iframe>``, and ``<nav>``/``<header>``/``<footer>`` blocks that
  are mostly links). Microdata attributes (``itemprop``,
  ``content="PT15M"``) are attributes, never text. A main-content extractor (trafilatura, the
  reader before) dropped the recipe card on about one page in nine: on the 300 development
  pages it kept 87.5% of the expected ingredients, the whole visible text keeps 95.5%.
* **Long pages.** Real pages are long (median ~10,000 characters of visible text, some over
  80,000) and the recipe card usually sits near the end, after the story, the comments
  before the footer. A page longer than ``max_chars`` is cut to the window of lines, at most
  ``max_chars`` long, that scores highest as a recipe (ingredient-like lines with a quantity and
  a unit, "Ingredients"/"Instructions" headings, time and yield lines, numbered steps), and the
  page's ``<h1>`` is put first when the window lost it (the title is usually the first heading,
  far above the card). The window is chosen from the text alone, never from the answer.
  Measured on the 300 development pages at the recipe task's 7,000 characters: 95.4% of the
  expected ingredients and 90.1% of the expected steps appear verbatim (normalised) in what the
  model reads (``bench/bench_realpages.py --coverage``).
* **Markup.** :func:`find_markup` reads the page's schema.org JSON-LD and microdata with
  ``extruct`` and returns the first object of the task's ``pages.type``;
  :func:`markup_to_output` maps it onto the task's output fields (property names are
  schema.org's, so the recipe task needs no renaming). The markup is a label or a reference,
  never an input.
* **References.** A sibling ``<stem>.json`` (the development pages' format) maps onto the output
  schema through the task's ``pages.reference`` table (:func:`reference_from_json`); without one,
  the page's markup is the reference.
* **Page records.** :func:`import_pages` (``01_download_dataset.py --from-pages``) turns a folder of
  pages into source records: the answer their markup gives (``answer``), the record fields the
  task's ``verify.source`` rules read (derived from that answer, :func:`record_values`), the
  page's host and path, and what the model reads of the page (``text``, :func:`page_text`). Such
  a record carries a real input (:func:`real_text`): 02 passes it on unchanged in style
  :data:`REAL_STYLE`. Pages without markup are skipped and listed, never guessed.
"""
from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fields import is_blank, iso_duration_minutes, minutes_to_iso
from .io import StageError, stable_hash

# The style of an input that is a page's own text (02 passes it on, no teacher writes it).
# Never drawn for synthesis; a task may not name a style so.
REAL_STYLE = "real_page"
# records.jsonl "kind" of a record imported from a saved page (it carries a real ``text``).
PAGE_KIND = "page"

# Tags whose contents never reach the model: code, styling and embedded data (JSON-LD).
_DROP_XPATH = "//script|//style|//noscript|//template|//svg|//iframe"
# Site chrome, dropped when it is mostly links (menus, breadcrumbs, link footers): one site of the
# 300 development pages wraps its whole recipe in <nav>, which link density keeps.
_CHROME_XPATH = "//nav|//header|//footer"
_LINK_DENSITY = 0.5


def _link_dense(el) -> bool:
    text = len(" ".join(el.text_content().split()))
    links = sum(len(" ".join(a.text_content().split())) for a in el.xpath(".//a"))
    return text == 0 or links / text >= _LINK_DENSITY

# ---------------------------------------------------------------- the reader


def _parse_html(html: str | bytes):
    import lxml.html

    if isinstance(html, bytes):
        html = html.decode("utf-8", errors="replace")
    # lxml refuses str input that declares an encoding in an XML prologue; strip the prologue.
    html = re.sub(r"^\s*<\?xml[^>]*\?>", "", html)
    if not html.strip():
        return None
    try:
        return lxml.html.fromstring(html)
    except Exception:  # lxml's ParserError on documents with no element at all
        return None


def visible_text(html: str | bytes) -> tuple[str, str | None]:
    """(the page's visible text, one block per line; its first ``<h1>`` or None)."""
    import html_text

    doc = _parse_html(html)
    if doc is None:
        return "", None
    for el in doc.xpath(_DROP_XPATH):
        el.drop_tree()
    for el in doc.xpath(_CHROME_XPATH):
        if el.getparent() is not None and _link_dense(el):
            el.drop_tree()
    h1 = next((" ".join(h.text_content().split()) for h in doc.xpath("//h1") if h.text_content().strip()), None)
    text = html_text.extract_text(doc, guess_layout=True)
    lines, out = [ln.strip() for ln in text.splitlines()], []
    for ln in lines:
        if ln and (not out or out[-1] != ln):  # blank lines and repeated lines (menus twice) go
            out.append(ln)
    return "\n".join(out), h1


_UNITS = (r"(?:cups?|c\.|tbsps?|tbs|tb|tablespoons?|tsps?|teaspoons?|g|grams?|kg|kilos?|oz|ounces?|lbs?|pounds?|"
          r"ml|millilit(?:er|re)s?|l|lit(?:er|re)s?|cloves?|pinch(?:es)?|dash(?:es)?|cans?|packages?|sticks?|"
          r"slices?|large|medium|small|handful|bunch(?:es)?|sprigs?|quarts?|pints?)")
_QTY = r"(?:\d+(?:[.,/]\d+)?|[½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞]|one|two|three|four|half|a)"
_ING_RE = re.compile(rf"^[\-•*▢□◻☐✓·\s]*{_QTY}[\s\-]*(?:{_QTY}\s*)?(?:{_UNITS}\b|\w+)", re.I)
_UNIT_RE = re.compile(rf"\b{_UNITS}\b", re.I)
_HEAD_RE = re.compile(r"^(?:#+\s*)?(?:ingredients?|ingredient list|you(?:'ll| will)? need|instructions?|directions?|"
                      r"method|preparation|steps?|how to make it)\s*:?\s*$", re.I)
_META_RE = re.compile(r"\b(?:prep|cook|total|active|bake|baking)\s*(?:time)?\b|\b(?:servings?|serves|yields?|makes)\b",
                      re.I)
_STEP_RE = re.compile(r"^(?:step\s*\d+|\d+[.)]\s+\S)", re.I)


def line_score(line: str) -> float:
    """How much a line looks like part of a recipe card (0 for story, navigation, comments)."""
    n = len(line)
    if n <= 40 and _HEAD_RE.match(line):
        return 6.0
    s = 0.0
    if n <= 120 and _ING_RE.match(line) and _UNIT_RE.search(line):
        s += 3.0
    elif n <= 80 and _ING_RE.match(line):
        s += 1.0
    if n <= 60 and _META_RE.search(line) and re.search(r"\d", line):
        s += 2.0
    if _STEP_RE.match(line):
        s += 1.5
    return s


def focus(text: str, max_chars: int) -> tuple[str, bool]:
    """(the text, or its best recipe window of at most ``max_chars`` characters; whether it was cut).

    The window is a run of whole lines maximising the sum of :func:`line_score` (two pointers over
    the lines, linear); the earliest of equal windows wins. A single line longer than the budget is
    cut at the budget.
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    lines = text.split("\n")
    sizes = [len(ln) + 1 for ln in lines]
    scores = [line_score(ln) for ln in lines]
    best, j, cur_s, cur_c = (-1.0, 0, 0), 0, 0.0, 0
    for i in range(len(lines)):
        if j < i:
            j, cur_s, cur_c = i, 0.0, 0
        while j < len(lines) and cur_c + sizes[j] <= max_chars + 1:
            cur_c += sizes[j]
            cur_s += scores[j]
            j += 1
        if cur_s > best[0] and j > i:
            best = (cur_s, i, j)
        if j > i:
            cur_c -= sizes[i]
            cur_s -= scores[i]
    _, i, j = best
    if j <= i:  # no line fits: the first line, cut
        return text[:max_chars], True
    return "\n".join(lines[i:j]), True


@dataclass
class PageText:
    text: str          # what the model reads
    chars_full: int    # visible text before the window
    focused: bool      # the text is a window of a longer page
    title_line: str | None  # the <h1> put first, when the window had lost it


def page_text(html: str | bytes, max_chars: int) -> PageText:
    """What a model reads of a saved page: its visible text, windowed to the recipe if long."""
    full, h1 = visible_text(html)
    text, focused = focus(full, max_chars)
    title_line = None
    if focused and h1 and h1 not in text:
        title_line = h1
        text = f"# {h1}\n{text}"
    return PageText(text=text, chars_full=len(full), focused=focused, title_line=title_line)


# ---------------------------------------------------------------- normalised "appears in"

_VULGAR = {"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5", "⅗": "3/5",
           "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8"}
_VULGAR_RE = re.compile("[" + "".join(_VULGAR) + "]")


def norm_text(s: str) -> str:
    """Lower case, words and numbers only: '1½ cups (200g) flour,' -> '1 1/2 cups 200 g flour'."""
    s = _VULGAR_RE.sub(lambda m: f" {_VULGAR[m.group()]} ", s)
    s = unicodedata.normalize("NFKC", s).replace("\u2044", "/").lower()
    s = re.sub(r"[^\w/]+", " ", s)
    s = re.sub(r"(\d)([^\W\d_])", r"\1 \2", s)
    s = re.sub(r"([^\W\d_])(\d)", r"\1 \2", s)
    return " ".join(s.split())


def coverage(items: list[str], text: str) -> tuple[int, int]:
    """(items that appear verbatim, normalised, in ``text``; items that are not blank)."""
    nt = norm_text(text)
    wanted = [n for n in (norm_text(i) for i in items if isinstance(i, str)) if n]
    return sum(1 for n in wanted if n in nt), len(wanted)


# ---------------------------------------------------------------- markup -> output


def _types(obj: dict) -> set[str]:
    t = obj.get("@type") or obj.get("type") or []
    t = t if isinstance(t, list) else [t]
    return {str(x).rsplit("/", 1)[-1] for x in t}


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for key in ("@graph", "mainEntity", "mainEntityOfPage", "itemListElement"):
            if key in node:
                yield from _walk(node[key])
    elif isinstance(node, list):
        for x in node:
            yield from _walk(x)


def _microdata_plain(item: dict) -> dict:
    """extruct's microdata item ({"type": ..., "properties": {...}}) as a JSON-LD-like object."""
    def conv(v):
        if isinstance(v, dict) and "properties" in v:
            return _microdata_plain(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    out = {k: conv(v) for k, v in (item.get("properties") or {}).items()}
    out["@type"] = item.get("type")
    return out


def find_markup(html: str | bytes, type_name: str) -> dict | None:
    """The page's first schema.org object of ``type_name`` (JSON-LD first, then microdata), or None."""
    import extruct

    if isinstance(html, bytes):
        html = html.decode("utf-8", errors="replace")
    try:
        data = extruct.extract(html, syntaxes=["json-ld", "microdata"], uniform=False, errors="ignore")
    except Exception:  # a page extruct cannot parse has, for our purposes, no markup
        return None
    for obj in _walk(data.get("json-ld") or []):
        if type_name in _types(obj):
            return obj
    for item in data.get("microdata") or []:
        for obj in _walk(_microdata_plain(item) if isinstance(item, dict) else item):
            if type_name in _types(obj):
                return obj
    return None


_TAG_RE = re.compile(r"<[^>]+>")


def clean_string(v: Any) -> str | None:
    """Markup strings carry HTML entities, tags and odd spacing: plain, single-spaced text."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        v = str(v)
    if isinstance(v, dict):
        v = v.get("text") or v.get("name") or v.get("@value")
    if isinstance(v, list):
        v = next((x for x in (clean_string(y) for y in v) if x), None)
    if not isinstance(v, str):
        return None
    v = html_lib.unescape(html_lib.unescape(_TAG_RE.sub(" ", v)))
    v = " ".join(v.split())
    return v or None


def _steps(v: Any) -> list[str]:
    """recipeInstructions in any of its shapes (text, list, HowToStep, HowToSection) as a list of steps."""
    if v is None:
        return []
    if isinstance(v, str):
        s = html_lib.unescape(v)
        # One string: its lines or <p>/<li> blocks are the steps.
        parts = re.split(r"\n+|<\s*/?\s*(?:p|li|br)\b[^>]*>", s, flags=re.I)
        return [x for x in (clean_string(p) for p in parts) if x]
    if isinstance(v, list):
        return [s for x in v for s in _steps(x)]
    if isinstance(v, dict):
        if "itemListElement" in v:  # HowToSection (or an ItemList of steps)
            return _steps(v["itemListElement"])
        text = clean_string(v.get("text")) or clean_string(v.get("name"))
        return [text] if text else []
    return []


def _strings(v: Any) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list):
        v = [v]
    return [x for x in (clean_string(y) for y in v) if x]


def iso_minutes(v: Any) -> int | None:
    """An ISO 8601 duration ('PT1H30M', 'P0DT0H20M', 'PT90M') as minutes; None if absent or not one."""
    if isinstance(v, list):
        v = next((x for x in v if x), None)
    if not isinstance(v, str):
        return None
    minutes = iso_duration_minutes(v)
    return None if minutes is None else int(round(minutes))


def _yield(v: Any) -> str | int | None:
    """recipeYield: markup often lists it twice (['4', '4 servings']); the most telling string wins."""
    vals = v if isinstance(v, list) else [v]
    strs = [clean_string(x) for x in vals]
    strs = [s for s in strs if s]
    if not strs:
        return None
    worded = [s for s in strs if re.search(r"[^\W\d_]", s)]
    best = worded[0] if worded else strs[0]
    return int(best) if best.isdigit() else best


def _output_field(name: str, prop: dict, value: Any) -> Any:
    types = prop.get("type")
    types = set(types if isinstance(types, list) else [types])
    if name == "recipeInstructions":
        return _steps(value)
    if "array" in types:
        return _strings(value)
    if "pattern" in prop and str(prop["pattern"]).startswith("^P"):  # an ISO duration field
        return minutes_to_iso(iso_minutes(value))
    if name == "recipeYield":
        return _yield(value)
    if "integer" in types or "number" in types:
        try:
            return int(value) if "integer" in types else float(value)
        except (TypeError, ValueError):
            return None
    return clean_string(value)


def output_fields(task) -> list[str]:
    """The output fields a page answer fills: the task's fields, in the schema's order."""
    props = task.schema.get("properties", {})
    return [f for f in props if f in task.fields]


def _constants(task) -> dict:
    return {k: p["const"] for k, p in task.schema.get("properties", {}).items() if isinstance(p, dict) and "const" in p}


def markup_to_output(obj: dict, task) -> dict:
    """A schema.org object mapped onto the task's output schema (constants such as @type included)."""
    props = task.schema.get("properties", {})
    rename = (task.pages or {}).get("markup_fields", {})
    out = _constants(task)
    for f in output_fields(task):
        out[f] = _output_field(f, props.get(f, {}), obj.get(rename.get(f, f)))
    return out


def reference_from_json(ref: dict, task) -> dict:
    """A sibling ``<stem>.json`` (e.g. {"title", "ingredients", "prep_time": 15}) mapped by ``pages.reference``."""
    props = task.schema.get("properties", {})
    table = (task.pages or {}).get("reference") or {}
    if not table:
        raise StageError(f"task {task.name} has no pages.reference table: it cannot read reference .json files")
    out = _constants(task)
    for f in output_fields(task):
        spec = table.get(f)
        if spec is None:
            out[f] = None if props.get(f, {}).get("type") != "array" else []
            continue
        key, convert = (spec, None) if isinstance(spec, str) else (spec["from"], spec.get("convert"))
        v = ref.get(key)
        if convert == "minutes":
            out[f] = minutes_to_iso(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
        elif f == "recipeInstructions":
            out[f] = _steps(v)
        else:
            out[f] = _output_field(f, props.get(f, {}), v)
    return out


# ---------------------------------------------------------------- a folder of pages


@dataclass
class Page:
    path: Path
    name: str          # unique stem in the folder (host__stem when stems clash)
    host: str          # the site: the reference's host, else the parent folder's name
    html: bytes
    reference: dict | None       # the expected answer (sibling .json mapped, else markup mapped), or None
    reference_from: str | None   # "json" | "markup" | None
    markup: dict | None          # the output mapped from the page's own markup, or None


def list_pages(pages_dir: str | Path, flag: str = "--pages") -> list[Path]:
    """The .html/.htm files below ``pages_dir``, sorted; ``flag`` names the option in errors."""
    d = Path(pages_dir)
    if not d.is_dir():
        raise StageError(f"{flag} {d}: not a folder")
    paths = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in (".html", ".htm"))
    if not paths:
        raise StageError(f"{flag} {d}: no .html pages in it")
    return paths


def load_page(path: Path, task, name: str | None = None) -> Page:
    type_name = (task.pages or {}).get("type")
    if not type_name:
        raise StageError(f"task {task.name} has no pages: section (pages.type names the schema.org type of its answer)")
    try:
        html = path.read_bytes()
    except OSError as exc:
        raise StageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    obj = find_markup(html, type_name)
    markup = markup_to_output(obj, task) if obj is not None else None
    ref, ref_from, host = None, None, path.parent.name
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StageError(f"{side}: not a JSON reference ({exc})") from exc
        if not isinstance(data, dict):
            raise StageError(f"{side}: a reference must be a JSON object")
        ref, ref_from = reference_from_json(data, task), "json"
        host = str(data.get("host") or host)
    elif markup is not None:
        ref, ref_from = markup, "markup"
    return Page(path=path, name=name or path.stem, host=host, html=html, reference=ref,
                reference_from=ref_from, markup=markup)


# ---------------------------------------------------------------- pages -> source records

# Keys of a page record besides the task's verify.source fields.
PAGE_RECORD_KEYS = ("id", "kind", "host", "page", "answer", "text", "text_focused", "chars_full", "html_sha256")


def real_text(record: Any) -> str | None:
    """The real input a source record carries (a page record's ``text``), or None for a seed record."""
    if isinstance(record, dict) and record.get("kind") == PAGE_KIND:
        text = record.get("text")
        if isinstance(text, str) and text.strip():
            return text
    return None


def without_text(record: dict) -> dict:
    """A record as a seed or as an input's ``source``: the page text is the input itself, not a field."""
    return {k: v for k, v in record.items() if k != "text"} if real_text(record) is not None else record


def record_values(answer: dict, task) -> dict:
    """The source-record fields the task's ``verify.source`` rules read, derived from an answer.

    So a label of the page (the teacher's, or the answer itself with 03 --label-from-record) is
    verified against the page's markup exactly as a label of a synthetic post is verified
    against its seed record. Durations (``method: minutes``) become minutes, like the seed
    records' ``prep_minutes``; other values are kept as the answer has them. A rule with several
    source fields (any may match, ``[servings, yield]``) gets the value under the first one.
    """
    out: dict = {}
    for rule in task.fields.values():
        if rule.verify_method is None:
            continue
        names = [rule.verify_source] if isinstance(rule.verify_source, str) else list(rule.verify_source)
        value = answer.get(rule.name)
        if rule.verify_method == "minutes":
            value = None if is_blank(value) else iso_minutes(value)
        elif is_blank(value):
            value = None
        for i, n in enumerate(names):
            if n in PAGE_RECORD_KEYS:
                raise StageError(f"task {task.name}: fields.{rule.name}.verify.source {n!r} is a key page records "
                                 f"keep for themselves ({', '.join(PAGE_RECORD_KEYS)}); rename the source field")
            out.setdefault(n, value if i == 0 else None)
    return out


def import_pages(pages_dir: str | Path, task) -> tuple[list[dict], dict]:
    """Saved pages -> source records (one per page with the task's markup), plus a report.

    Every page is accounted for: a record, or skipped with a reason (``no_markup``, a markup
    with a required field empty, a markup the schema refuses, a page with no visible text, the
    same answer and text as an earlier page) and its path listed under that reason.
    """
    from .labels import validate  # labels imports tasks, which imports this module

    root = Path(pages_dir)
    paths = list_pages(root, "--from-pages")
    max_chars = int((task.pages or {}).get("max_chars") or 0)
    records: list[dict] = []
    skipped: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    focused = 0
    for path in paths:
        rel = path.relative_to(root).as_posix()
        page = load_page(path, task, name=rel)

        def skip(reason: str) -> None:
            skipped.setdefault(reason, []).append(rel)  # noqa: B023 - called within this iteration only

        if page.markup is None:
            skip("no_markup")
            continue
        answer = page.markup
        empty = [f for f, r in task.fields.items() if r.required and is_blank(answer.get(f))]
        if empty:
            skip(f"markup_without_{empty[0]}")
            continue
        if validate(answer, task.schema):
            skip("markup_not_schema_valid")
            continue
        pt = page_text(page.html, max_chars)
        if not pt.text.strip():
            skip("no_visible_text")
            continue
        rid = "p-" + stable_hash(answer, pt.text, length=12)
        if rid in seen:
            skip("duplicate_page")
            continue
        seen[rid] = rel
        focused += pt.focused
        records.append({"id": rid, "kind": PAGE_KIND, "host": page.host, "page": rel,
                        **record_values(answer, task), "answer": answer,
                        "text": pt.text, "text_focused": pt.focused, "chars_full": pt.chars_full,
                        "html_sha256": hashlib.sha256(page.html).hexdigest()})
    report = {
        "parser": "pages",
        "source_dir": str(root),
        "rows_read": len(paths),
        "pages_read": len(paths),
        "duplicates_dropped": len(skipped.get("duplicate_page", [])),
        "unparseable": {k: len(v) for k, v in sorted(skipped.items()) if k != "duplicate_page"},
        "skipped": dict(sorted(skipped.items())),
        "records": len(records),
        "hosts": len({r["host"] for r in records}),
        "texts_windowed": focused,
        "max_chars": max_chars,
        "markup_type": (task.pages or {}).get("type"),
    }
    return records, report
