"""The review page: one self-contained HTML file to look at answers next to their inputs.

07 writes ``review.html`` next to ``report.md`` (one run, or several side by side with
``--compare``), ``03 --review`` one for the labels and ``08 --review`` one for the
extractions. Each example shows the input as the model saw it with every extracted item
highlighted where it occurs (:class:`distill.fields.GroundingIndex`: the verifier's own
grounding match, so "highlighted" and "in the text" agree; items it does not find are
listed apart), the answer as a field table beside the reference or the source record,
each field marked match / partial / mismatch / omitted / hallucinated / abstained with
its score, the reasoning folded, and for labels the verdict and every failed check.

The page needs no network and no server. The data is one JSON block
(``<script type="application/json">``, every ``<`` written as ``\\u003c`` so no input can
close the block), rendered a page at a time by a few lines of plain JavaScript that only
ever sets ``textContent``: an input holding ``<script>`` shows as text.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from . import fields as F
from .io import StageError, atomic_write_text, read_json
from .reports import table_rows
from .scoring import parse_prediction

REVIEW_FILE = "review.html"
TEMPLATE = "review.html.j2"
# Outcomes of one field; "failing" ones are what the field filter finds.
OUTCOMES = ("match", "partial", "mismatch", "omitted", "hallucinated", "abstained", "invalid")
FAILING = {"partial", "mismatch", "omitted", "hallucinated", "invalid"}
# Values of these scoring/verify methods are normalised (ISO durations, scores, categories),
# not text the input contains: they are not looked for in it (unless the field is grounded).
_NOT_TEXT = {"minutes", "mae", "exact"}
_MAX_CHARS = 8000   # of reasoning and raw answers per example: the page stays small


# ============================================================== highlighting

@lru_cache(maxsize=8)
def _grounding_index(text: str) -> F.GroundingIndex:
    return F.GroundingIndex(text)   # runs side by side share their inputs: indexed once


def highlight(text: str, values: Iterable[tuple[int, str, Any, bool]]) -> tuple[list, list]:
    """Spans of extracted items in ``text`` and the items not found there.

    ``values``: (field index, field name, value, grounded). A list value is looked up item
    by item. Returns spans ``[start, end, field index, item text]`` and not-found items
    ``{"field", "text", "grounded"}`` (grounded = the verifier counts it as invented).
    """
    index = _grounding_index(text or "")
    spans, missing = [], []
    for fi, name, value, grounded in values:
        items = value if isinstance(value, list) else [value]
        for it in items:
            if F.is_empty(it) or isinstance(it, bool) or isinstance(it, (int, float)):
                continue
            label = F.item_text(it)
            if not F.normalize_text(label):
                continue
            sp = index.span(it)
            if sp is None:
                missing.append({"field": name, "text": label, "grounded": grounded})
            else:
                spans.append([sp[0], sp[1], fi, f"{name}: {label}"])
    spans.sort(key=lambda s: (s[0], -s[1]))
    return spans, missing


def _text_fields(task) -> dict[str, bool]:
    """field -> grounded, for the fields whose values are looked for in the input."""
    if task is None:
        return {}
    return {n: bool(r.grounded) for n, r in task.fields.items()
            if r.grounded or (r.score not in _NOT_TEXT and r.verify_method not in _NOT_TEXT)}


def _extra_fields(task) -> list[str]:
    """Schema properties without a rule (a rationale, a description): shown where filled, never scored."""
    if task is None:
        return []
    return [n for n in ((task.schema or {}).get("properties") or {}) if n not in task.fields and not n.startswith("@")]


def _highlight_obj(text: str, obj: dict | None, fields: list[str], text_fields: dict[str, bool]) -> tuple[list, list]:
    if not isinstance(obj, dict):
        return [], []
    return highlight(text, [(fields.index(n), n, obj.get(n), g) for n, g in text_fields.items()
                            if n in fields and not F.is_empty(obj.get(n))])


# ============================================================== helpers

def _clip(s: Any, n: int = _MAX_CHARS) -> str | None:
    if s is None:
        return None
    s = str(s)
    return s if len(s) <= n else s[:n] + f"\n… ({len(s) - n} more characters)"


def _clean(v: Any) -> Any:
    """JSON-safe: NaN and infinities (which JSON.parse rejects) become null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _load_task(name: str | None):
    from .tasks import load_task

    if not name:
        return None
    try:
        return load_task(name)
    except (StageError, OSError, ValueError):
        return None   # a task folder not installed here: the page shows everything but the grounding


def field_outcome(fr: dict) -> str:
    """match | partial | mismatch | omitted | hallucinated | abstained | invalid, for one scored field of 07.

    Uses the scorer's ``outcome`` where it gives one, else derives it the same way from
    pred_empty / ref_empty (both empty = abstained; only the prediction empty = omitted;
    only the reference empty = hallucinated). ``invalid``: the reply was not valid JSON and
    the reference is empty, so no abstention credit.
    """
    o = fr.get("outcome")
    if o is None:
        pe, re_ = bool(fr.get("pred_empty")), bool(fr.get("ref_empty"))
        o = "abstained" if pe and re_ else "omitted" if pe else "hallucinated" if re_ else "scored"
    if o != "scored":
        return o
    if fr.get("exact") or fr.get("score") == 1.0:
        return "match"
    return "partial" if (fr.get("score") or 0.0) > 0.0 else "mismatch"


def _field_detail(fr: dict) -> str:
    bits = []
    if fr.get("exact"):
        return ""
    if fr.get("precision") is not None and fr.get("method") in ("list_f1", "set_f1"):
        bits.append(f"P {fr['precision']:.2f} R {fr['recall']:.2f} (tp {fr.get('tp')}, fp {fr.get('fp')}, "
                    f"fn {fr.get('fn')})")
    if fr.get("abs_error") is not None:
        bits.append(f"off by {fr['abs_error']:g}")
    if fr.get("unreadable"):
        bits.append("unreadable value")
    if fr.get("errors"):
        bits.append("errors " + ", ".join(f"{k} {'n/a' if e is None else f'{e:g}'}" for k, e in fr["errors"].items()))
    return "; ".join(bits)


# ============================================================== 07: evaluation runs

def _eval_verdict(e: dict) -> str:
    if "passed" in e:
        return "adversarial passed" if e["passed"] else "adversarial failed"
    if not e.get("json_valid"):
        return "no valid JSON"
    if not e.get("schema_valid"):
        return "schema errors"
    if (e.get("hallucination") or {}).get("ungrounded"):
        return "hallucinated items"
    return "perfect" if e.get("score") == 1.0 else "imperfect"


EVAL_VERDICTS = ["no valid JSON", "schema errors", "hallucinated items", "imperfect", "perfect",
                 "adversarial failed", "adversarial passed"]


def _eval_answer(e: dict, fields: list[str], text_fields: dict[str, bool]) -> dict:
    obj, _ = parse_prediction(e.get("answer") or None) if e.get("json_valid") else (None, None)
    obj = dict(obj or {})
    for name, fr in (e.get("fields") or {}).items():
        if e.get("json_valid"):
            obj[name] = fr.get("pred")
    cells = {}
    for name, fr in (e.get("fields") or {}).items():
        cells[name] = {"value": fr.get("pred"), "outcome": field_outcome(fr), "score": fr.get("score"),
                       "detail": _field_detail(fr) if e.get("json_valid") else ""}
    for name, ch in (e.get("expect") or {}).items():
        if name not in cells:
            cells[name] = {"value": ch.get("got"), "score": None, "detail": ch.get("why", ""),
                           "outcome": "match" if ch.get("passed") else
                           "hallucinated" if ch.get("expected") is None else "mismatch"}
    for name, v in obj.items():
        if name in fields and name not in cells:
            cells[name] = {"value": v, "outcome": "", "score": None, "detail": ""}
    spans, missing = _highlight_obj(e.get("text") or "", obj if e.get("json_valid") else None, fields, text_fields)
    notes = []
    if not e.get("json_valid"):
        notes.append(f"no valid JSON ({e.get('parse_error') or 'no output'})")
    notes += [f"schema: {s}" for s in (e.get("schema_errors") or []) if e.get("json_valid")]
    notes += [f"disagrees with the source record: {n} {st}" for n, st in (e.get("source_checks") or {}).items()
              if st != "ok"]
    pc = e.get("price_check")
    if isinstance(pc, dict) and e.get("json_valid"):
        if not pc.get("priced"):
            notes.append("price check: an item is not on the menu")
        elif not pc.get("consistent"):
            notes.append(f"price check: the total is not the menu price ({pc.get('menu_total')})")
        if pc.get("correct") is False:
            notes.append(f"price check: the total is not the reference's ({pc.get('reference_total')})")
    score = e.get("score")
    failing = sorted(n for n, c in cells.items() if c["outcome"] in FAILING)
    # Nothing to score (the reference has no value): worst when it invented or broke something.
    rank = score if score is not None else 0.0 if failing or not e.get("json_valid") else 1.0
    return {"verdict": _eval_verdict(e), "score": score, "rank": rank, "failing": failing,
            "cells": cells, "spans": spans, "missing": missing, "notes": notes,
            "reasoning": _clip(e.get("reasoning")),
            # The raw reply where the table cannot show it: no valid JSON, or JSON repaired.
            "raw": _clip(e.get("answer")) if not e.get("json_valid") or e.get("repaired") else None,
            "truncated": bool(e.get("truncated_input"))}


def _eval_ref(e: dict) -> dict:
    ref = {n: fr.get("ref") for n, fr in (e.get("fields") or {}).items()}
    for name, ch in (e.get("expect") or {}).items():
        ref.setdefault(name, "(must be empty)" if ch.get("expected") is None else ch.get("expected"))
    return ref


def eval_review_data(evals: list[dict], title: str) -> dict:
    """The page's data for one or more 07 runs (several: side by side on the same inputs)."""
    if not evals:
        raise StageError("the review page needs at least one evaluation run")
    task = _load_task(evals[0].get("task"))
    runs = [str(e.get("name") or f"run {i + 1}") for i, e in enumerate(evals)]
    fields: list[str] = list(task.fields) if task else []
    extra = _extra_fields(task)
    per_run: list[dict[tuple, dict]] = []
    order: list[tuple] = []
    for ev in evals:
        rows = {}
        exs = [("test", x) for x in ev.get("examples") or []]
        exs += [("adversarial", x) for x in ((ev.get("adversarial") or {}).get("cases") or [])]
        for kind, x in exs:
            key = (kind, x.get("id"))
            rows[key] = x
            if key not in order and not any(key in r for r in per_run):
                order.append(key)
            for n in list(x.get("fields") or {}) + list(x.get("expect") or {}):
                if n not in fields:
                    fields.append(n)
        per_run.append(rows)
    text_fields = _text_fields(task)
    scored = list(fields)
    fields += [n for n in extra if n not in fields]
    examples = []
    for key in order:
        first = next(r[key] for r in per_run if key in r)
        answers = [(_eval_answer(r[key], fields, text_fields) if key in r else None) for r in per_run]
        examples.append({"id": str(key[1]), "set": key[0], "style": first.get("kind") or first.get("style") or "?",
                         "text": first.get("text") or "", "ref": _eval_ref(first), "answers": answers})
    return {"kind": "compare" if len(evals) > 1 else "eval", "title": title, "runs": runs, "fields": fields,
            "extra_fields": [n for n in fields if n not in scored],
            "ref_label": "reference", "answer_label": "prediction",
            "verdicts": [v for v in EVAL_VERDICTS if any(a and a["verdict"] == v for x in examples for a in x["answers"])],
            "meta": [f"{r}: {e.get('model')}" + (f" ({e['model_id']})" if e.get("model_id") else "")
                     + f", task {e.get('task')}, split {e.get('split')}, finished {e.get('finished_at', '?')}"
                     for r, e in zip(runs, evals)],
            "summary": _eval_summary(evals, runs, scored, examples), "examples": examples}


def _eval_summary(evals: list[dict], runs: list[str], fields: list[str], examples: list[dict]) -> list[dict]:
    tables = [{"title": "Scores", "columns": ["metric"] + runs,
               "rows": [{"cells": [label.strip()] + cells, "indent": label.startswith("  ")}
                        for label, cells in table_rows(evals)]}]
    styles = sorted({s for e in evals for s in ((e.get("aggregate") or {}).get("by_style") or {})})
    if styles:
        tables.append({"title": "By input style (click to filter)", "columns": ["style"] + [f"{r}: score (n)" for r in runs],
                       "rows": [{"cells": [s] + [
                           (f"{_fmt(b.get('score'))} ({b.get('n', 0)})" if (b := ((e.get("aggregate") or {})
                                                                                  .get("by_style") or {}).get(s)) else "n/a")
                           for e in evals], "filter": ["style", s]} for s in styles]})
    rows = []
    for name in fields:
        cells = [name]
        for i, e in enumerate(evals):
            agg = ((e.get("aggregate") or {}).get("fields") or {}).get(name) or {}
            counts = Counter(x["answers"][i]["cells"][name]["outcome"] for x in examples
                             if x["set"] == "test" and x["answers"][i] and name in x["answers"][i]["cells"])
            cells.append(_fmt(agg.get("score")))
            cells.append(" · ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]) or "–")
        rows.append({"cells": cells, "filter": ["field", name]})
    cols = ["field"] + [c for r in runs for c in (f"{r}: score", f"{r}: outcomes (test examples)")]
    tables.append({"title": "By field (click to show the examples where it fails)", "columns": cols, "rows": rows})
    return tables


def write_eval_review(out_dir: str | Path, evals: list[dict], title: str = "Evaluation") -> Path:
    """review.html for 07 (one run, or a comparison of several on the same inputs)."""
    return write_review(Path(out_dir) / REVIEW_FILE, eval_review_data(evals, title))


# ============================================================== 03: labels

_VERDICT_RANK = {"missing": -1.0, "failed": 0.0, "rejected": 1.0, "unverified": 2.0, "accepted": 3.0}


def _check_outcome(check: dict | None, value: Any) -> str:
    if not check:
        return "" if F.is_empty(value) else "unchecked"
    if check.get("grounded") is False:
        return "hallucinated"
    st = check.get("status")
    if st == "ok":
        return "match"
    if st == "missing":
        return "omitted"
    if st == "unverifiable":   # "why" = the rule checks it but the source record has no value
        return "abstained" if F.is_empty(value) else "unchecked" if check.get("why") else ""
    return str(st or "")


def _check_detail(check: dict | None) -> str:
    if not check:
        return ""
    bits = [f"{k} {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
            for k, v in check.items() if k not in ("status", "source", "grounded", "not_in_text")]
    if check.get("not_in_text"):
        bits.append("not in the text: " + "; ".join(map(str, check["not_in_text"])))
    return ", ".join(bits)


def _source_value(rule, record: dict | None) -> Any:
    if record is None or rule is None or rule.verify_source is None:
        return None
    names = [rule.verify_source] if isinstance(rule.verify_source, str) else list(rule.verify_source)
    vals = {n: record.get(n) for n in names if not F.is_empty(record.get(n))}
    if not vals:
        return None
    if rule.verify_method == "minutes":   # the record's minutes, beside the label's ISO duration
        vals = {n: f"{v:g} min" if isinstance(v, (int, float)) else v for n, v in vals.items()}
    return next(iter(vals.values())) if len(names) == 1 else " · ".join(f"{k}: {v}" for k, v in vals.items())


def label_review_data(out_dir: str | Path, rows: list[dict], task, title: str | None = None) -> dict:
    """The page's data for 03's labels of ``rows`` (stage-02 inputs: id, style, text, source)."""
    out_dir = Path(out_dir)
    fields = list(task.fields)
    extra = _extra_fields(task)
    text_fields = _text_fields(task)
    examples = []
    verdicts: Counter = Counter()
    reasons: Counter = Counter()
    per_field: dict[str, Counter] = {n: Counter() for n in fields}
    per_style: dict[str, Counter] = {}
    for row in rows:
        p = out_dir / f"{row['id']}.json"
        rec = read_json(p) if p.is_file() else {"verdict": "missing", "reason": "no label written", "checks": {}}
        out = rec.get("output") if isinstance(rec.get("output"), dict) else None
        checks = rec.get("checks") or {}
        source = row.get("source") if isinstance(row.get("source"), dict) else None
        cells = {}
        for name in fields:
            value = out.get(name) if out else None
            c = checks.get(name)
            score = next((c[k] for k in ("similarity", "f1") if c and isinstance(c.get(k), (int, float))), None)
            cells[name] = {"value": value, "outcome": _check_outcome(c, value) if out else "",
                           "score": score, "detail": _check_detail(c)}
            if out:
                per_field[name][cells[name]["outcome"] or "empty"] += 1
        for name in extra:
            cells[name] = {"value": out.get(name) if out else None, "outcome": "", "score": None, "detail": ""}
        verdict = rec.get("verdict") or "?"
        verdicts[verdict] += 1
        per_style.setdefault(row.get("style") or "?", Counter())[verdict] += 1
        if verdict != "accepted":
            for r in str(rec.get("reason") or "").split(","):
                if r:
                    reasons[r] += 1
        notes = [f"{verdict}: {str(rec.get('reason') or '').replace(',', ', ')}"
                 + (f" ({rec['detail']})" if rec.get("detail") else "")]
        notes += [f"schema: {s}" for s in rec.get("schema_errors") or []]
        for name, c in checks.items():
            bad_status = c.get("status") not in ("ok", "unverifiable", "missing", None)
            if bad_status or c.get("grounded") is False:
                what = [str(c.get("status"))] if bad_status else []
                what += ["items not in the text"] if c.get("grounded") is False else []
                notes.append(f"failed check {name}: {' and '.join(what)}"
                             + (f" — {d}" if (d := _check_detail(c)) else ""))
        if rec.get("repaired"):
            notes.append("the JSON was repaired (json-repair)")
        if rec.get("feedback_error"):
            notes.append(f"feedback round failed: {rec['feedback_error']}")
        checked = [c for c in cells.values() if c["outcome"] in ("match", "mismatch", "hallucinated")]
        share = sum(c["outcome"] == "match" for c in checked) / len(checked) if checked else 0.0
        spans, missing = _highlight_obj(row.get("text") or "", out, fields, text_fields)
        attempts = [{"output": a.get("output"), "reason": a.get("reason"), "feedback": a.get("feedback")}
                    for a in rec.get("attempts") or []]
        answer = {"verdict": verdict, "score": round(share, 3) if checked else None,
                  "rank": _VERDICT_RANK.get(verdict, 1.5) + share,
                  "failing": sorted(n for n, c in cells.items() if c["outcome"] in FAILING),
                  "cells": cells, "spans": spans, "missing": missing, "notes": notes,
                  "reasoning": _clip(rec.get("reasoning")),
                  "raw": _clip(rec.get("raw_content")) if out is None else None,
                  "attempts": _clean(attempts), "truncated": False}
        examples.append({"id": str(row["id"]), "set": "label", "style": row.get("style") or "?",
                         "text": row.get("text") or "",
                         "ref": {n: _source_value(task.fields[n], source) for n in fields} | {n: None for n in extra},
                         "answers": [answer]})
    n = len(examples)
    summary = [
        {"title": "Verdicts (click to filter)", "columns": ["verdict", "labels", "share"],
         "rows": [{"cells": [v, str(c), _fmt(c / n if n else None, pct=True)], "filter": ["verdict", v]}
                  for v, c in verdicts.most_common()]},
        {"title": "Not accepted, by reason", "columns": ["reason", "labels"],
         "rows": [{"cells": [r, str(c)]} for r, c in reasons.most_common()]},
        {"title": "Checks per field (click to show where it fails)",
         "columns": ["field"] + list(OUTCOMES) + ["unchecked"],
         "rows": [{"cells": [f] + [str(per_field[f][o]) for o in OUTCOMES + ("unchecked",)], "filter": ["field", f]}
                  for f in fields]},
        {"title": "By input style (click to filter)", "columns": ["style", "accepted", "labels"],
         "rows": [{"cells": [s, str(c.get("accepted", 0)), str(sum(c.values()))], "filter": ["style", s]}
                  for s, c in sorted(per_style.items())]},
    ]
    return {"kind": "labels", "title": title or f"Labels: {out_dir.name} ({task.name})", "runs": ["teacher label"],
            "fields": fields + extra, "extra_fields": extra, "ref_label": "source record", "answer_label": "label",
            "verdicts": [v for v in ("failed", "rejected", "unverified", "accepted", "missing") if verdicts[v]]
            + sorted(v for v in verdicts if v not in _VERDICT_RANK),
            "meta": [f"{n} labels in {out_dir.name}/, task {task.name}"], "summary": summary, "examples": examples}


def write_label_review(out_dir: str | Path, rows: list[dict], task) -> Path:
    """review.html in 03's output folder for the labels of ``rows``."""
    return write_review(Path(out_dir) / REVIEW_FILE, label_review_data(out_dir, rows, task))


# ============================================================== 08: extractions

def check_extract_review(output_dir: Path | None, input_dir: Path | None) -> None:
    """--review needs a folder to write to, and not one 08 reads inputs from (it would read the page)."""
    if output_dir is None:
        raise StageError("--review writes review.html into --output-dir: pass --output-dir")
    if input_dir is not None and Path(output_dir).resolve().is_relative_to(Path(input_dir).resolve()):
        raise StageError(f"--review: --output-dir {output_dir} is inside --input-dir {input_dir}, so the next run "
                         f"would read review.html as an input; use an --output-dir outside it")


def extract_review_data(out_dir: str | Path, docs: list, task, title: str | None = None) -> dict:
    """The page's data for 08's results in ``out_dir`` of ``docs`` (distill.documents.Document)."""
    out_dir = Path(out_dir)
    fields = list(task.fields)
    extra = _extra_fields(task)
    text_fields = _text_fields(task)
    examples = []
    verdicts: Counter = Counter()
    filled: Counter = Counter()
    invented: Counter = Counter()
    for d in docs:
        ok, err = out_dir / f"{d.name}.json", out_dir / f"{d.name}.error.json"
        out, notes, raw, truncated = None, [], None, False
        if ok.is_file():
            out, verdict = read_json(ok), "valid"
        elif err.is_file():
            e = read_json(err)
            verdict = "empty input" if e.get("error") == "empty_input" else "invalid"
            notes.append(str(e.get("error") or e.get("parse_error") or "invalid answer"))
            notes += [f"schema: {s}" for s in e.get("schema_errors") or []]
            raw, truncated = _clip(e.get("raw")), bool(e.get("truncated_input"))
        else:
            verdict = "no result"
        verdicts[verdict] += 1
        out = out if isinstance(out, dict) else None
        spans, missing = _highlight_obj(d.text, out, fields, text_fields)
        not_found = {m["field"] for m in missing if m["grounded"]}
        cells = {}
        for name in fields:
            v = out.get(name) if out else None
            cells[name] = {"value": v, "score": None, "detail": "",
                           "outcome": "hallucinated" if name in not_found else ""}
            filled[name] += not F.is_empty(v)
            invented[name] += name in not_found
        for name in extra:
            cells[name] = {"value": out.get(name) if out else None, "outcome": "", "score": None, "detail": ""}
        reasoning = out_dir / f"{d.name}.reasoning.txt"
        examples.append({"id": d.name, "set": "input", "style": d.kind,
                         "text": d.text, "ref": None, "source": str(d.source),
                         "answers": [{"verdict": verdict, "score": None, "rank": 1.0 if out else 0.0,
                                      "failing": sorted(not_found), "cells": cells, "spans": spans,
                                      "missing": missing, "notes": notes, "raw": raw, "truncated": truncated,
                                      "reasoning": _clip(reasoning.read_text(encoding="utf-8"))
                                      if reasoning.is_file() else None}]})
    summary = [
        {"title": "Results (click to filter)", "columns": ["result", "inputs"],
         "rows": [{"cells": [v, str(c)], "filter": ["verdict", v]} for v, c in verdicts.most_common()]},
        {"title": "Fields (click to show items not found in the text)", "columns": ["field", "filled", "items not in text"],
         "rows": [{"cells": [f, str(filled[f]), str(invented[f])], "filter": ["field", f]} for f in fields]},
    ]
    return {"kind": "extract", "title": title or f"Extractions: {out_dir.name} ({task.name})", "runs": ["extraction"],
            "fields": fields + extra, "extra_fields": extra, "ref_label": None, "answer_label": "extraction",
            "verdicts": [v for v in ("invalid", "empty input", "no result", "valid") if verdicts[v]],
            "meta": [f"{len(docs)} inputs, results in {out_dir.name}/, task {task.name}"],
            "summary": summary, "examples": examples}


def write_extract_review(out_dir: str | Path, docs: list, task) -> Path:
    """review.html in 08's --output-dir for ``docs``."""
    return write_review(Path(out_dir) / REVIEW_FILE, extract_review_data(out_dir, docs, task))


# ============================================================== rendering

def data_json(data: dict) -> str:
    """The data as JSON safe inside a <script> block: no '<' at all, so neither '</script>'
    nor '<!--' in an input can end or change the block (JSON.parse reads \\u003c back as '<')."""
    s = json.dumps(_clean(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(data: dict) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True)
    return env.get_template(TEMPLATE).render(
        data=data, data_json=Markup(data_json(data)),
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def write_review(path: str | Path, data: dict) -> Path:
    return atomic_write_text(Path(path), render(data))
