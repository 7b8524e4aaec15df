"""Stage 07: score model outputs field by field, aggregate, compare models, write reports.

Scoring is declared per field in the task (``fields.<name>.score``), never hard-coded
per task:

  text      fuzzy similarity of normalised strings (0-1); "exact" = equal after normalising
  exact     equal after normalising (strings) or as numbers; score 0/1
  minutes   both read as durations (ISO 8601 or "1 hr 5 mins"); equal within the field's tolerance
  number    the first number of each ("8 servings" = 8); equal within the field's tolerance
  list_f1   one-to-one fuzzy matching of list items: precision, recall, F1 (score = F1)
  set_f1    as list_f1 after dropping repeated items (order and repeats do not matter)
  mae       numbers, or an object of numbers (one dimension per key, e.g. scores 0-10):
            absolute error per dimension; aggregated as MAE and RMSE per dimension

Scores that cannot be gamed: every field has one ``outcome``:

  scored        reference and prediction have a value: the method's score
  omitted       the reference has a value, the prediction is empty: score 0
  hallucinated  the reference is empty, the prediction invents a value: score None, a penalty
  abstained     both empty (the right answer): score None, reported as its own rate
  invalid       the reply is not valid JSON and the reference is empty: score None; neither
                an abstention nor a hallucination (where the reference has a value: omitted)

Field means (score, exact, F1, ...) are over scored + omitted only, with that n. Each
example gets a weighted overall score (field ``weight``): sum(w * score) over the fields
whose reference has a value, divided by their sum(w) plus the sum(w) of hallucinated
fields. So ``{}`` scores 0 wherever the reference has values, an unparseable reply 0, an
invented field lowers the score, and an example whose reference has no value at all has
no score (None) while its abstentions and hallucinations still count. A split with no
scorable example is an error (exit 1), never a perfect score. Also per example: JSON
valid, schema valid, missing / spurious / abstained fields, and hallucinated items
(items of ``grounded`` fields that do not appear in the input text); aggregated as
rates: omission (``missing_rate``) = omitted / reference has a value, hallucination
(``spurious_rate``) and abstention = hallucinated or abstained / reference empty.

A task with ``price_check:`` also gets the menu price validation of :mod:`distill.menu`
(items on the menu, total equal to the menu price of the predicted items, total equal to
the reference).

Adversarial cases (``tasks/<name>/adversarial.jsonl``; one JSON object per line)::

    {"id": "...", "kind": "no_recipe", "text": "...",
     "reference": {...full expected label...},          # optional: scored like a test example
     "expect": {"name": null, "recipeYield": "4"}}      # optional: field -> value; null = must be empty

A case passes when the reply is valid JSON and every ``expect`` entry holds (an
expected null only as an abstention; an expected value counts as found when the field's
score is at least PASS_SCORE); a case with only a reference passes when its overall score
is at least PASS_SCORE, or, for a reference with no value, when no field is invented.
Pass rates are reported per kind.

Saved pages (``07_evaluate.py --pages DIR``, :func:`load_pages`): each page's input is what
``08_extract.py`` sends, its reference the sibling ``<stem>.json`` or the page's own schema.org
markup; pages with neither are listed and skipped; scores also by host, and pages/min.

Reports: ``eval.json`` (per example and aggregate), ``report.md`` (side-by-side table,
by style and host, adversarial kinds, worst examples), ``fields.png``, ``styles.png`` and ``review.html``
(:mod:`distill.review`).
:func:`format_table` renders the comparison for a terminal.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from . import fields as F
from .answers import drop_reasoning_block, parse_answer
from .constrain import STOP_REASONS
from .io import StageError, atomic_write_text, read_json, read_jsonl, write_json
from .tasks import SCORE_METHODS, FieldRule, Task

# Score at or above which an expected adversarial value counts as found, and a
# reference-only adversarial case counts as passed.
PASS_SCORE = 0.8
LIST_METHODS = {"list_f1", "set_f1"}
NUMERIC_METHODS = {"minutes", "number"}
EVAL_FILE = "eval.json"

# ============================================================== parsing a prediction

def parse_prediction(pred: Any) -> tuple[dict | None, dict]:
    """A prediction as (object or None, info).

    ``pred`` is a parsed dict, a raw reply string (read by :func:`distill.answers.parse_answer`
    as in stage 03: reasoning and code fences stripped, broken JSON repaired), or None (no
    usable reply). JSON ``null`` or ``{}`` is a valid, empty answer (the right reply to a text
    with nothing to extract); anything else that is not an object is invalid.
    """
    info = {"json_valid": False, "repaired": False, "parse_error": None}
    if isinstance(pred, dict):
        return pred, info | {"json_valid": True}
    if pred is None:
        return None, info | {"parse_error": "no_output"}
    if not isinstance(pred, str):
        return None, info | {"parse_error": "not_object"}
    answer = parse_answer(pred, expect="object_or_null")
    if not answer.ok:
        return None, info | {"parse_error": answer.error}
    return answer.value, info | {"json_valid": True, "repaired": answer.repaired}


# ============================================================== one field

def _value_range(prop: Any) -> tuple[float, float] | None:
    """(minimum, maximum) declared for a numeric field in its schema (searched depth-first)."""
    if not isinstance(prop, dict):
        return None
    if isinstance(prop.get("minimum"), (int, float)) and isinstance(prop.get("maximum"), (int, float)):
        return float(prop["minimum"]), float(prop["maximum"])
    subs: list[Any] = list((prop.get("properties") or {}).values())
    for key in ("additionalProperties", "items"):
        subs.append(prop.get(key))
    for key in ("anyOf", "oneOf", "allOf"):
        subs.extend(prop.get(key) or [])
    for s in subs:
        r = _value_range(s)
        if r:
            return r
    return None


def _canon(v: Any) -> Any:
    """A value for exact comparison: normalised text, numbers as floats ("5" == 5)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = F.normalize_text(v)
        try:
            return float(s)
        except ValueError:
            return s
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _as_list(v: Any) -> list:
    if F.is_empty(v):
        return []
    return v if isinstance(v, list) else [v]


def _items(v: Any) -> list:
    """The list items that have text (the ones :func:`distill.fields.match_lists` compares)."""
    return [x for x in _as_list(v) if F.normalize_text(F.item_text(x))]


def _dedupe(items: list) -> list:
    seen, out = set(), []
    for x in items:
        k = F.normalize_text(F.item_text(x))
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return F.to_number(v) if isinstance(v, str) else None


def is_blank(v: Any) -> bool:
    """No value for scoring: None, "", whitespace, or a list/object with only blank members.

    Stricter than :func:`distill.fields.is_empty` so that a reply of ``"  "`` or ``[""]``
    counts as an abstention (both empty) or an omission, never as a value that matches.
    """
    if F.is_empty(v):
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, list):
        return all(is_blank(x) for x in v)
    if isinstance(v, dict):
        return all(is_blank(x) for x in v.values())
    return False


def field_outcome(pred_empty: bool, ref_empty: bool) -> str:
    """scored (both have a value), omitted (only the reference), hallucinated (only the
    prediction) or abstained (neither)."""
    if ref_empty:
        return "abstained" if pred_empty else "hallucinated"
    return "omitted" if pred_empty else "scored"


def score_field(rule: FieldRule, pred: Any, ref: Any, schema_prop: dict | None = None) -> dict:
    """Score one field; ``outcome`` says which of four cases it is (see :func:`field_outcome`).

    Only a reference with a value is scored: ``score`` (0-1) and ``exact`` (bool) for
    outcome scored, 0 and False for omitted. Where the reference is empty there is nothing
    to match, so ``score`` and ``exact`` are None: an abstention is reported as its own
    rate, never as a perfect match, and a hallucination is penalised in the example's
    overall score (:func:`score_example`), not averaged into the field's mean.
    """
    m = rule.score
    if m not in SCORE_METHODS:
        raise ValueError(f"unknown score method {m!r} for field {rule.name}")
    pe, re_ = is_blank(pred), is_blank(ref)
    if m in LIST_METHODS:   # a list of blank items ([{"@type": "HowToStep", "text": ""}]) has none
        pe, re_ = pe or not _items(pred), re_ or not _items(ref)
    outcome = field_outcome(pe, re_)
    out: dict[str, Any] = {"method": m, "outcome": outcome, "pred_empty": pe, "ref_empty": re_}
    tol = rule.verify_tolerance

    if re_:
        out.update(score=None, exact=None)
        if m in LIST_METHODS:   # the invented items, for micro precision over all fields
            n_pred = len(_dedupe(_items(pred)) if m == "set_f1" else _items(pred)) if not pe else 0
            out.update(tp=0, fp=n_pred, fn=0, precision=None, recall=None, f1=None)
        elif m == "mae":
            out["errors"] = {}
        return out

    if m == "text":
        out["score"] = 0.0 if pe else F.text_similarity(pred, ref)
        out["exact"] = not pe and F.normalize_text(pred) == F.normalize_text(ref)
    elif m == "exact":
        out["exact"] = not pe and _canon(pred) == _canon(ref)
        out["score"] = float(out["exact"])
    elif m in NUMERIC_METHODS:
        conv = F.to_minutes if m == "minutes" else F.to_number
        pv, rv = (None if pe else conv(pred)), conv(ref)
        if pv is None or rv is None:
            out["exact"] = False
            if not pe and pv is None:
                out["unreadable"] = True
        else:
            out["abs_error"] = abs(pv - rv)
            out["exact"] = out["abs_error"] <= tol + 1e-9
        out["score"] = float(out["exact"])
    elif m in LIST_METHODS:
        p, r = ([] if pe else _as_list(pred)), _as_list(ref)
        if m == "set_f1":
            p, r = _dedupe(p), _dedupe(r)
        res = F.match_lists(p, r)
        out.update({k: res[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")})
        out["score"] = res["f1"]
        out["exact"] = res["fp"] == 0 and res["fn"] == 0
    else:   # mae
        rng = _value_range(schema_prop)
        if isinstance(ref, dict):
            refs = {k: _num(v) for k, v in ref.items() if _num(v) is not None}
            preds = {k: _num(pred.get(k)) if isinstance(pred, dict) else None for k in refs}
        else:
            refs = {rule.name: _num(ref)}
            preds = {rule.name: None if pe or isinstance(pred, dict) else _num(pred)}
        errors = {k: (abs(preds[k] - rv) if preds[k] is not None and rv is not None else None)
                  for k, rv in refs.items()}

        def dim_score(e: float | None) -> float:
            if e is None:
                return 0.0
            if rng and rng[1] > rng[0]:
                return max(0.0, 1.0 - e / (rng[1] - rng[0]))
            return float(e <= tol + 1e-9)

        out["errors"] = errors
        out["score"] = sum(dim_score(e) for e in errors.values()) / len(errors) if errors else 0.0
        out["exact"] = bool(errors) and all(e is not None and e <= tol + 1e-9 for e in errors.values())
    return out


@lru_cache(maxsize=8)
def _menu(path: Path):
    from .menu import load_menu

    return load_menu(path)


def _scored_fields(task: Task) -> dict[str, FieldRule]:
    return {n: r for n, r in task.fields.items() if r.score}


def _schema_prop(task: Task, name: str) -> dict | None:
    return ((task.schema or {}).get("properties") or {}).get(name)


# ============================================================== one example

def _unparseable_field(rule: FieldRule, ref: Any, error: str | None, schema_prop: dict | None) -> dict:
    """A field of a reply that is not valid JSON: 0 where the reference has a value (omitted);
    where it has none, outcome ``invalid``: the model did not answer, so it is neither a
    correct abstention nor a hallucination (it counts against the abstention rate)."""
    if is_blank(ref):
        fr = score_field(rule, None, None, schema_prop) | {"outcome": "invalid"}
    else:
        fr = score_field(rule, None, ref, schema_prop)
    return fr | {"error": error}


def score_example(pred_output: Any, reference: dict | None, task: Task, text: str,
                  source: dict | None = None) -> dict:
    """Score one prediction against its reference label (and source record, where present).

    Returns json_valid, repaired, parse_error, schema_valid, schema_errors, fields
    (name -> score_field result with its ``outcome``), score, missing / spurious /
    abstained (names of the omitted, hallucinated and abstained fields), ref_filled /
    ref_empty (counts, the denominators of those rates), hallucination (items of grounded
    fields and those not in the text) and source_checks (field -> ok | mismatch | missing
    | unverifiable, from stage 03's checks).

    score = sum(weight * field score over fields whose reference has a value)
            / (sum(weight over those fields) + sum(weight over hallucinated fields)),
    so an empty prediction scores 0, an unparseable reply scores 0, and each invented
    field lowers the score. None when the reference has no value at all (or there is no
    reference): such an example is not in the mean, its abstentions still count.
    """
    from .labels import validate, verify

    obj, info = parse_prediction(pred_output)
    res: dict[str, Any] = dict(info)
    res["schema_errors"] = validate(obj, task.schema)[:5] if obj is not None else ["not valid JSON"]
    res["schema_valid"] = obj is not None and not res["schema_errors"]

    rules = _scored_fields(task)
    text_norm = F.normalize_text(text)
    items = ungrounded = 0
    not_in_text: list[str] = []
    if obj is not None:
        for name, rule in task.fields.items():
            if not rule.grounded:
                continue
            for it in _as_list(obj.get(name)):
                items += 1
                if not F.grounded_in(it, text_norm):
                    ungrounded += 1
                    not_in_text.append(F.item_text(it))
    res["hallucination"] = {"items": items, "ungrounded": ungrounded, "not_in_text": not_in_text[:5]}

    res["fields"], res["missing"], res["spurious"], res["abstained"] = {}, [], [], []
    res["ref_filled"] = res["ref_empty"] = 0
    res["score"] = None
    if reference is not None:
        total = wsum = penalty = 0.0
        for name, rule in rules.items():
            ref = reference.get(name)
            if obj is None:
                fr = _unparseable_field(rule, ref, info["parse_error"], _schema_prop(task, name))
            else:
                fr = score_field(rule, obj.get(name), ref, _schema_prop(task, name))
            fr["pred"], fr["ref"] = (None if obj is None else obj.get(name)), ref
            res["fields"][name] = fr
            res["ref_empty" if fr["ref_empty"] else "ref_filled"] += 1
            outcome = fr["outcome"]
            if outcome == "omitted":
                res["missing"].append(name)
            elif outcome == "hallucinated":
                res["spurious"].append(name)
                penalty += rule.weight
            elif outcome == "abstained":
                res["abstained"].append(name)
            if not fr["ref_empty"]:
                total += rule.weight * fr["score"]
                wsum += rule.weight
        # Only fields whose reference has a value are scored; each hallucinated field adds its
        # weight to the denominator (a 0 on a field that should have stayed empty). A reference
        # with no value at all leaves nothing to score: None, not a free 1.0.
        res["score"] = total / (wsum + penalty) if wsum else None

    pc = task.extra.get("price_check")
    if pc:
        from . import menu as M

        res["price_check"] = M.price_check(_menu(task.dir / pc["menu"]), obj, reference, items=pc["items"],
                                           total=pc["total"], tolerance=float(pc.get("tolerance", 0.01)))

    res["source_checks"] = {}
    if source and obj is not None:
        checks, _, _ = verify(obj, task, source, text)
        res["source_checks"] = {n: c["status"] for n, c in checks.items() if c["status"] != "unverifiable"}
    return res


def check_expectations(pred_output: Any, expect: dict, task: Task) -> dict:
    """Check an adversarial case's ``expect`` (field -> value; None = must be empty).

    Each check has the field's ``outcome`` as in :func:`field_outcome` (``invalid`` when the
    reply is not valid JSON): an expected null passes only as an abstention.
    """
    obj, info = parse_prediction(pred_output)
    checks = {}
    for name, want in expect.items():
        got = None if obj is None else obj.get(name)
        outcome = "invalid" if obj is None else field_outcome(is_blank(got), is_blank(want))
        if obj is None:
            ok, why = False, f"no valid JSON ({info['parse_error']})"
        elif is_blank(want):
            ok = outcome == "abstained"
            why = "" if ok else "expected empty/null"
        else:
            rule = task.fields.get(name)
            if rule is not None and rule.score:
                s = score_field(rule, got, want, _schema_prop(task, name))["score"]
            else:
                s = float(_canon(got) == _canon(want))
            ok = s >= PASS_SCORE
            why = "" if ok else f"score {s:.2f} < {PASS_SCORE}"
        checks[name] = {"expected": want, "got": got, "outcome": outcome, "passed": ok,
                        **({"why": why} if why else {})}
    return {"passed": obj is not None and all(c["passed"] for c in checks.values()), "checks": checks}


def load_adversarial(path: str | Path, task: Task) -> list[dict]:
    """Read and validate an adversarial case file (errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"adversarial case file {path} not found")
    cases = read_jsonl(path)
    seen = set()
    for i, c in enumerate(cases, 1):
        where = f"{path} case {i}"
        for k in ("id", "kind", "text"):
            if not isinstance(c.get(k), str) or not c[k].strip():
                raise StageError(f"{where}: needs a non-empty string {k!r}")
        if c["id"] in seen:
            raise StageError(f"{where}: duplicate id {c['id']!r}")
        seen.add(c["id"])
        if "reference" not in c and "expect" not in c:
            raise StageError(f"{where}: give 'reference' (the full expected label) and/or 'expect'")
        if "reference" in c and not isinstance(c["reference"], dict):
            raise StageError(f"{where}: 'reference' must be a JSON object")
        if "expect" in c:
            if not isinstance(c["expect"], dict) or not c["expect"]:
                raise StageError(f"{where}: 'expect' must be a non-empty object of field -> value (null = empty)")
            unknown = set(c["expect"]) - set(task.schema.get("properties", {})) - set(task.fields)
            if unknown:
                raise StageError(f"{where}: 'expect' names unknown field(s) {sorted(unknown)}")
        extra = set(c) - {"id", "kind", "text", "reference", "expect", "note"}
        if extra:
            raise StageError(f"{where}: unknown key(s) {sorted(extra)}")
    return cases


def score_case(case: dict, pred_output: Any, task: Task) -> dict:
    """Score an adversarial case: like a test example (if it has a reference) plus its expectations."""
    res = score_example(pred_output, case.get("reference"), task, case["text"])
    if "expect" in case:
        exp = check_expectations(pred_output, case["expect"], task)
        res["expect"] = exp["checks"]
        res["passed"] = exp["passed"]
    elif res["score"] is None:   # a reference with no value: pass = valid JSON that invents nothing
        res["passed"] = bool(res["json_valid"]) and not res["spurious"]
    else:
        res["passed"] = bool(res["json_valid"]) and res["score"] >= PASS_SCORE
    return res


# ============================================================== aggregates

def _mean(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _ratio(a: int | float, b: int | float) -> float | None:
    return a / b if b else None


def _mae_rmse(errors: list[float]) -> dict:
    if not errors:
        return {"mae": None, "rmse": None, "n": 0}
    return {"mae": sum(errors) / len(errors), "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
            "n": len(errors)}


OUTCOMES = ("scored", "omitted", "hallucinated", "abstained", "invalid")


def _outcome_rates(frs: list[dict]) -> dict:
    """Counts per outcome and the three rates, each over the fields it can happen to.

    missing_rate (omission) = omitted / reference has a value; spurious_rate (hallucinated
    field) and abstention_rate = hallucinated or abstained / reference empty. A reply that
    is not valid JSON is in both denominators and neither abstains nor hallucinates.
    """
    counts = Counter(f.get("outcome") for f in frs)
    filled = counts["scored"] + counts["omitted"]
    empty = len(frs) - filled
    return {"outcomes": {o: counts[o] for o in OUTCOMES},
            "missing_rate": _ratio(counts["omitted"], filled),
            "spurious_rate": _ratio(counts["hallucinated"], empty),
            "abstention_rate": _ratio(counts["abstained"], empty)}


def _aggregate_fields(examples: list[dict], task: Task) -> dict:
    """Per field: means over the examples whose reference has a value (n); outcome rates."""
    out = {}
    for name, rule in _scored_fields(task).items():
        frs = [e["fields"][name] for e in examples if name in (e.get("fields") or {})]
        if not frs:
            continue
        filled = [f for f in frs if not f["ref_empty"]]
        a: dict[str, Any] = {"method": rule.score, "n": len(filled), "n_fields": len(frs),
                             "score": _mean(f["score"] for f in filled),
                             "exact": _mean(float(f["exact"]) for f in filled)}
        a.update(_outcome_rates(frs))
        if rule.score in LIST_METHODS:
            for k in ("precision", "recall", "f1"):
                a[k] = _mean(f.get(k) for f in filled)
            # micro counts over every field, so the items of a hallucinated list are false positives
            tp, fp, fn = (sum(f.get(k, 0) for f in frs) for k in ("tp", "fp", "fn"))
            p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
            a["micro"] = {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r,
                          "f1": (2 * p * r / (p + r)) if p is not None and r is not None and p + r else 0.0}
        if rule.score in NUMERIC_METHODS:
            err = _mae_rmse([f["abs_error"] for f in filled if f.get("abs_error") is not None])
            a.update(mae=err["mae"], rmse=err["rmse"], n_errors=err["n"])
        if rule.score == "mae":
            dims: dict[str, list[float]] = defaultdict(list)
            seen: Counter = Counter()
            for f in filled:
                for d, e in (f.get("errors") or {}).items():
                    seen[d] += 1
                    if e is not None:
                        dims[d].append(e)
            a["dims"] = {d: _mae_rmse(dims[d]) | {"coverage": len(dims[d]) / seen[d]} for d in sorted(seen)}
            err = _mae_rmse([e for d in dims for e in dims[d]])
            a.update(mae=err["mae"], rmse=err["rmse"], n_errors=err["n"])
        checks = [e["source_checks"][name] for e in examples if name in (e.get("source_checks") or {})]
        if checks:
            a["source_agreement"] = checks.count("ok") / len(checks)
        out[name] = a
    return out


def aggregate(examples: list[dict], task: Task, by_style: bool = True) -> dict:
    """Means over scored examples: rates, overall score, per-field metrics, and the same per style.

    ``n`` counts examples, ``n_scored`` those with an overall score (a reference with a
    value), the n of ``score``. Field outcomes are pooled over all fields of all examples.
    """
    n = len(examples)
    scores = [e["score"] for e in examples if e.get("score") is not None]
    agg: dict[str, Any] = {
        "n": n,
        "n_scored": len(scores),
        "json_valid": _ratio(sum(bool(e["json_valid"]) for e in examples), n),
        "schema_valid": _ratio(sum(bool(e["schema_valid"]) for e in examples), n),
        "repaired": _ratio(sum(bool(e.get("repaired")) for e in examples), n),
        "score": _mean(scores),
        "hallucination_rate": _ratio(sum(e["hallucination"]["ungrounded"] for e in examples),
                                     sum(e["hallucination"]["items"] for e in examples)),
        **_outcome_rates([f for e in examples for f in (e.get("fields") or {}).values()]),
        "parse_errors": dict(Counter(e["parse_error"] for e in examples if e.get("parse_error"))),
        # cut off by the loop guard (repetition, max_items) or the token limit (length)
        "stopped_rate": _ratio(sum(bool(e.get("stopped")) for e in examples), n),
        "stopped": dict(Counter(e["stopped"] for e in examples if e.get("stopped"))),
        # of those, answers whose decoding went on past the closed loop (distill.constrain.resume_loops)
        "resumed_rate": _ratio(sum(bool(e.get("resumed")) for e in examples), n),
        "fields": _aggregate_fields(examples, task),
    }
    checks = [e["price_check"] for e in examples if e.get("price_check")]
    if checks:
        from .menu import summarize_price_checks

        agg["price_check"] = summarize_price_checks(checks)
    lat = [e["latency_s"] for e in examples if e.get("latency_s") is not None]
    agg["latency_s"] = {"mean": _mean(lat), "p50": statistics.median(lat) if lat else None}
    if by_style:
        styles: dict[str, list[dict]] = defaultdict(list)
        for e in examples:
            styles[e.get("style") or "?"].append(e)
        agg["by_style"] = {s: aggregate(v, task, by_style=False) for s, v in sorted(styles.items())}
        hosts: dict[str, list[dict]] = defaultdict(list)
        for e in examples:
            if e.get("host"):   # saved pages (07 --pages): the site each came from
                hosts[e["host"]].append(e)
        if hosts:
            agg["by_host"] = {h: aggregate(v, task, by_style=False) for h, v in sorted(hosts.items())}
    return agg


def aggregate_adversarial(cases: list[dict]) -> dict:
    """Pass rates overall and per kind."""
    kinds: dict[str, list[bool]] = defaultdict(list)
    for c in cases:
        kinds[c.get("kind") or "?"].append(bool(c["passed"]))
    passed = sum(bool(c["passed"]) for c in cases)
    return {"n": len(cases), "passed": passed, "pass_rate": _ratio(passed, len(cases)),
            "by_kind": {k: {"n": len(v), "passed": sum(v), "pass_rate": sum(v) / len(v)}
                        for k, v in sorted(kinds.items())}}


# ============================================================== loading and comparing runs

def load_eval(run_dir: str | Path) -> dict:
    p = Path(run_dir)
    if p.suffix != ".json":
        p = p / EVAL_FILE
    if not p.is_file():
        raise StageError(f"{p} not found: run 07_evaluate.py --model ... --output-dir {Path(run_dir)} first")
    ev = read_json(p)
    if not isinstance(ev, dict) or "aggregate" not in ev:
        raise StageError(f"{p} is not an eval.json written by 07_evaluate.py")
    return ev


def compare(dirs: Iterable[str | Path]) -> list[dict]:
    """Load earlier runs for one table; they must be of one task."""
    evals = [load_eval(d) for d in dirs]
    tasks = {e.get("task") for e in evals}
    if len(tasks) > 1:
        raise StageError(f"cannot compare runs of different tasks: {sorted(map(str, tasks))}")
    names = Counter(e.get("name") for e in evals)
    for e, d in zip(evals, dirs):
        if names[e.get("name")] > 1:   # two runs named alike: tell them apart by folder
            e["name"] = f"{e.get('name')} ({Path(d).name})"
    return evals


# ============================================================== tables

def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num3(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _num2(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _int(v: int | None) -> str:
    return "n/a" if v is None else str(v)


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table_rows(evals: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) rows shared by the terminal and the Markdown table."""
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fmt, *path: str, src: str = "aggregate", always: bool = False) -> None:
        cells = [fmt(_get(e.get(src), *path)) for e in evals]
        if always or any(c != "n/a" for c in cells):
            rows.append((label, cells))

    rows.append(("examples", [str(_get(e, "aggregate", "n") or 0) for e in evals]))
    add("  scored (reference has a value)", _int, "n_scored")
    add("JSON valid", _pct, "json_valid")
    add("schema valid", _pct, "schema_valid")
    add("overall score", _num3, "score")
    fields: dict[str, str] = {}
    for e in evals:
        for name, fa in (_get(e, "aggregate", "fields") or {}).items():
            fields.setdefault(name, fa["method"])
    for name, method in fields.items():
        # a field's first row stays when no run has a mean (n=0 everywhere): its outcome rows follow it
        if method in LIST_METHODS:
            add(f"{name} F1", _num3, "fields", name, "f1", always=True)
            add("  precision", _num3, "fields", name, "precision")
            add("  recall", _num3, "fields", name, "recall")
        elif method == "text":
            add(f"{name} similarity", _num3, "fields", name, "score", always=True)
            add("  exact match", _pct, "fields", name, "exact")
        elif method == "mae":
            add(f"{name} MAE", _num2, "fields", name, "mae", always=True)
            add("  RMSE", _num2, "fields", name, "rmse")
            dims = sorted({d for e in evals for d in (_get(e, "aggregate", "fields", name, "dims") or {})})
            if len(dims) > 1 or (dims and dims[0] != name):
                for d in dims:
                    add(f"  {d} MAE", _num2, "fields", name, "dims", d, "mae")
                    add(f"  {d} RMSE", _num2, "fields", name, "dims", d, "rmse")
        else:
            add(f"{name} ({method}) match", _pct, "fields", name, "exact", always=True)
        # what the means above are over, and what happened where the reference is empty
        add("  n (reference has a value)", _int, "fields", name, "n")
        add("  omitted", _pct, "fields", name, "missing_rate")
        add("  invented (reference empty)", _pct, "fields", name, "spurious_rate")
        add("  abstained (reference empty)", _pct, "fields", name, "abstention_rate")
    add("priced items on menu", _pct, "price_check", "priced_rate")
    add("total = menu price", _pct, "price_check", "consistent_rate")
    add("total = reference", _pct, "price_check", "correct_rate")
    add("hallucinated items", _pct, "hallucination_rate")
    add("missing fields", _pct, "missing_rate")
    add("invented fields", _pct, "spurious_rate")
    add("abstained fields", _pct, "abstention_rate")
    add("adversarial passed", _pct, "pass_rate", src="adversarial")
    kinds = sorted({k for e in evals for k in (_get(e, "adversarial", "by_kind") or {})})
    for k in kinds:
        add(f"  {k}", _pct, "by_kind", k, "pass_rate", src="adversarial")
    add("stopped (loop guard / limit)", _pct, "stopped_rate")
    add("  went on past the loop", _pct, "resumed_rate")
    add("latency p50 (s)", _num2, "latency_s", "p50")
    unit = "pages" if evals and all(e.get("split") == "pages" for e in evals) else "inputs"
    add(f"{unit}/min (generation wall time)", _num2, "per_min", src="throughput")
    return rows


def format_table(evals: list[dict], width: int = 14) -> str:
    """The comparison as a fixed-width text table for a terminal (one column per run)."""
    rows = table_rows(evals)
    names = [str(e.get("name") or "?") for e in evals]
    w = max([width] + [len(n) + 1 for n in names])
    label_w = max([len("metric")] + [len(r[0]) for r in rows]) + 2
    lines = ["metric".ljust(label_w) + "".join(n.rjust(w) for n in names),
             "-" * (label_w + w * len(names))]
    lines += [label.ljust(label_w) + "".join(c.rjust(w) for c in cells) for label, cells in rows]
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown_table(evals: list[dict]) -> str:
    return _md_table(["metric"] + [str(e.get("name")) for e in evals],
                     [[label.replace("  ", "&nbsp;&nbsp;")] + cells for label, cells in table_rows(evals)])


# ============================================================== plots

def _styles(evals: list[dict]) -> list[str]:
    return sorted({s for e in evals for s in (_get(e, "aggregate", "by_style") or {})})


def _grouped_bars(path: Path, groups: list[str], evals: list[dict], value, title: str, ylabel: str) -> Path | None:
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    n = max(1, len(evals))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, n / 2)), 4.2))
    for i, e in enumerate(evals):
        # a mean over nothing (n=0) gets no bar, only "n/a": a 0 would read as a measured score
        pts = [(j + (i - (n - 1) / 2) * width, value(e, g)) for j, g in enumerate(groups)]
        ax.bar([x for x, v in pts if v is not None], [v for _, v in pts if v is not None], width,
               label=str(e.get("name")))
        for x, v in pts:
            if v is None:
                ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_fields(evals: list[dict], path: Path) -> Path | None:
    """Per-field score (F1 for lists, similarity for text, match rate for scalars) by model."""
    fields = list(dict.fromkeys(f for e in evals for f in (_get(e, "aggregate", "fields") or {})))
    return _grouped_bars(Path(path), fields, evals, lambda e, f: _get(e, "aggregate", "fields", f, "score"),
                         "Per-field score by model (where the reference has a value; F1 for lists)", "score (0-1)")


def plot_styles(evals: list[dict], path: Path) -> Path | None:
    """Overall score per input style by model."""
    return _grouped_bars(Path(path), _styles(evals), evals,
                         lambda e, s: _get(e, "aggregate", "by_style", s, "score"),
                         "Overall score by input style", "score (0-1)")


# ============================================================== Markdown report

def _short(v: Any, n: int = 90) -> str:
    """One line (whitespace folded, so Markdown lists stay intact), at most n characters."""
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    s = " ".join(s.split()).replace("`", "'")
    return s if len(s) <= n else s[:n - 1] + "…"


def worst_examples(ev: dict, n: int = 5) -> list[dict]:
    """The n lowest-scoring examples that are not perfect."""
    exs = [e for e in ev.get("examples", []) if e.get("score") is not None and e["score"] < 1.0]
    return sorted(exs, key=lambda e: (e["score"], e.get("id", "")))[:n]


def _worst_md(ev: dict, n: int) -> list[str]:
    lines = [f"### Worst examples: {ev.get('name')}", ""]
    worst = worst_examples(ev, n)
    n_scored = sum(e.get("score") is not None for e in ev.get("examples", []))
    if not n_scored:
        return lines + ["(no example scored: no reference has a value)", ""]
    if not worst:
        return lines + [f"(none: all {n_scored} scored examples scored 1.0)", ""]
    for e in worst:
        lines.append(f"- **{e.get('id')}** ({e.get('style') or '?'}): score {e['score']:.3f}"
                     + ("" if e["json_valid"] else f", no valid JSON ({e.get('parse_error')})")
                     + (f", missing {', '.join(e['missing'])}" if e["missing"] else "")
                     + (f", invented {', '.join(e['spurious'])}" if e["spurious"] else ""))
        if not e["json_valid"]:
            lines.append(f"  - answer: `{_short(e.get('answer') or '', 160)}`")
        else:
            bad = sorted(((k, f) for k, f in e["fields"].items()
                          if f.get("outcome") == "hallucinated" or (f["score"] is not None and f["score"] < 1.0)),
                         key=lambda kv: kv[1]["score"] or 0.0)
            for k, f in bad[:3]:
                lines.append(f"  - `{k}` {'invented' if f['score'] is None else format(f['score'], '.2f')}: "
                             f"got `{_short(f.get('pred'))}`, expected `{_short(f.get('ref'))}`")
        if e.get("host"):   # a saved page: the whole of what the model saw matters, head and tail
            lines.append(f"  - page `{e.get('page')}` ({e['host']}), reference from its {e.get('reference_from')}; "
                         f"the model read {len(e.get('text') or '')} characters: {_excerpt(e.get('text') or '', 400)}")
        elif e.get("text"):
            lines.append(f"  - input: {_short(e['text'], 160)}")
    return lines + [""]


def _excerpt(text: str, n: int) -> str:
    """One line of at most about n characters: the head and the tail of ``text`` when it is longer."""
    s = " ".join(text.split()).replace("`", "'")
    if len(s) <= n:
        return f"`{s}`"
    half = n // 2
    return f"`{s[:half]}` … `{s[-half:]}`"


def _pages_md(evals: list[dict]) -> list[str]:
    """Where the references of page runs came from, and the pages skipped (no reference), by name."""
    lines: list[str] = []
    for e in evals:
        pg = e.get("pages")
        if not pg:
            continue
        refs = pg.get("references") or {}
        skipped = pg.get("skipped") or []
        lines += [f"### Pages: {e.get('name')}", "",
                  f"{pg.get('pages_read')} of the {pg.get('pages_found')} pages in `{pg.get('pages_dir')}` read; "
                  f"references from a sibling .json: {refs.get('json', 0)}, from the page's own markup: "
                  f"{refs.get('markup', 0)}; skipped (no reference, not scored): {len(skipped)}."]
        if pg.get("input_errors"):
            lines.append("Pages with no readable text (no request sent, scored as no answer): "
                         + ", ".join(f"{k} {v}" for k, v in pg["input_errors"].items()) + ".")
        lines.append("")
        lines += [f"- skipped `{sk['path']}`: {sk['reason']}" for sk in skipped]
        if skipped:
            lines.append("")
    return (["## Pages", ""] + lines) if lines else []


def _style_cell(a: dict | None) -> str:
    """Overall score (n scored of n), then the field outcome rates."""
    if not a:
        return "n/a"
    n, n_scored = a.get("n") or 0, a.get("n_scored", a.get("n") or 0)
    return (f"{_num3(a.get('score'))} (n={n_scored} of {n}); omitted {_pct(a.get('missing_rate'))}, "
            f"invented {_pct(a.get('spurious_rate'))}, abstained {_pct(a.get('abstention_rate'))}")


def write_report(out_dir: str | Path, evals: list[dict], title: str = "Evaluation", n_worst: int = 5) -> Path:
    """report.md + fields.png + styles.png + review.html in out_dir for one or more runs; returns report.md's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields_png = plot_fields(evals, out_dir / "fields.png")
    styles_png = plot_styles(evals, out_dir / "styles.png")
    lines = [f"# {title}", ""]
    lines.append(_md_table(["run", "model", "task", "split", "examples", "finished"],
                           [[str(e.get("name")), f"`{e.get('model')}`" + (f" ({e['model_id']})" if e.get("model_id") else ""),
                             str(e.get("task")), str(e.get("split")), str(_get(e, "aggregate", "n")),
                             str(e.get("finished_at", ""))] for e in evals]))
    lines += ["", "## Scores", "", markdown_table(evals), ""]
    lines += ["Scores: F1 for list fields (fuzzy one-to-one item matching), similarity for text fields, "
              "match rate for times (minutes) and numbers, each a mean over the examples whose reference has "
              "a value (n); an empty prediction there scores 0 (omitted). Where the reference is empty there is "
              "nothing to match: the model abstains (gives nothing, the right answer) or invents a value, each "
              "a rate of the fields whose reference is empty, never averaged into a field's score. The overall "
              "score of an example is the weighted mean over its fields whose reference has a value, with "
              "each invented field adding its weight to the denominator as a 0; an answer that is not valid "
              "JSON scores 0 on every field. Missing fields = omitted; invented fields = hallucinated fields; "
              "hallucinated items = items of grounded fields not found in the input text.", ""]
    if fields_png:
        lines += [f"![per-field scores]({fields_png.name})", ""]
    styles = _styles(evals)
    if styles:
        lines += ["## By input style", "",
                  _md_table(["style"] + [str(e.get("name")) for e in evals],
                            [[s] + [_style_cell(_get(e, "aggregate", "by_style", s)) for e in evals]
                             for s in styles]), ""]
        if styles_png:
            lines += [f"![scores by style]({styles_png.name})", ""]
    hosts = sorted({h for e in evals for h in (_get(e, "aggregate", "by_host") or {})})
    if hosts:
        lines += ["## By host", "",
                  _md_table(["host"] + [str(e.get("name")) for e in evals],
                            [[h] + [_style_cell(_get(e, "aggregate", "by_host", h)) for e in evals]
                             for h in hosts]), ""]
    lines += _pages_md(evals)
    kinds = sorted({k for e in evals for k in (_get(e, "adversarial", "by_kind") or {})})
    if kinds:
        lines += ["## Adversarial cases", "",
                  _md_table(["kind"] + [str(e.get("name")) for e in evals],
                            [[k] + [(f"{b['passed']}/{b['n']}" if (b := _get(e, "adversarial", "by_kind", k)) else "n/a")
                                    for e in evals] for k in kinds]), ""]
        for e in evals:
            failed = [c for c in (_get(e, "adversarial", "cases") or []) if not c["passed"]]
            if failed:
                lines.append(f"Failed by {e.get('name')}:")
                for c in failed:
                    why = "; ".join(f"`{k}` {ch.get('why', '')}, got `{_short(ch['got'], 60)}`"
                                    for k, ch in (c.get("expect") or {}).items() if not ch["passed"])
                    lines.append(f"- {c['id']} ({c['kind']}): "
                                 + (why or (f"no valid JSON ({c.get('parse_error')})" if not c["json_valid"]
                                            else f"invented {', '.join(c.get('spurious') or [])}"
                                            if c.get("score") is None else f"score {c['score']:.2f}")))
                lines.append("")
    lines += ["## Worst examples", ""]
    for e in evals:
        lines += _worst_md(e, n_worst)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    from .review import write_eval_review  # review.html: every example next to its input

    write_eval_review(out_dir, evals, title)
    return path


def write_eval(out_dir: str | Path, ev: dict) -> Path:
    return write_json(Path(out_dir) / EVAL_FILE, ev)


# ============================================================== running a model (07_evaluate.py)

# Reasons a reply is the model's own failure (scored as invalid JSON). Any other reason of a
# Prediction without output is a failed request (timeout, 5xx, dropped connection): not saved,
# so a re-run retries it, and not scored, so a flaky server does not look like a bad model.
MODEL_ERRORS = {"length", "empty", "no_json", "bad_json", "not_object", "repetition", "max_items"}
PREDICTIONS_FILE = "predictions.jsonl"


def default_name(spec: str, model_id: str | None = None) -> str:
    """A short run label from --model: folder name, GGUF stem, or the served model id."""
    if spec.startswith("openai:"):
        return re.sub(r"[^\w.-]+", "-", model_id or "openai").strip("-") or "openai"
    p = Path(spec.rstrip("/"))
    name = p.stem if p.suffix == ".gguf" else p.name
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "model"


def default_concurrency(spec: str) -> int:
    if spec.startswith("openai:"):
        return 4
    return 2 if spec.endswith(".gguf") else 1


def model_fingerprint(spec: str, model_id: str | None = None) -> str:
    """Changes when the weights at ``spec`` change (re-training into the same folder re-evaluates)."""
    from .io import stable_hash

    if spec.startswith("openai:"):
        return stable_hash(spec, model_id)
    p = Path(spec)
    files = [p] if p.is_file() else sorted(
        f for f in p.glob("*") if f.is_file() and (f.suffix in (".safetensors", ".bin", ".gguf", ".pt")
                                                  or f.name in ("distill_config.json", "adapter_config.json",
                                                                "config.json", "chain.json"))) if p.is_dir() else []
    return stable_hash(spec, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])


def resolve_eval_task(spec: str, task: "Task | str | None", dataset_manifest: dict | None) -> tuple[Task, dict | None]:
    """The task and exact prompt the model is run with, and its training config (if any).

    A trained model's saved prompt wins; otherwise --task, else the dataset's task.
    """
    from .infer import find_training_config, load_config, resolve_task, task_for_config
    from .tasks import load_task

    task_obj = resolve_task(task) if isinstance(task, str) else task
    cfg_path = None
    if not spec.startswith("openai:"):
        p = Path(spec)
        if p.is_dir() and (p / "distill_config.json").is_file():
            cfg_path = p / "distill_config.json"
        elif spec.endswith(".gguf") and p.is_file():
            cfg_path = find_training_config(p)
    dcfg = load_config(cfg_path) if cfg_path else None
    if dcfg is not None:
        if task_obj is None and not dcfg.get("task") and dataset_manifest and dataset_manifest.get("task"):
            task_obj = load_task(dataset_manifest["task"])
        return task_for_config(dcfg, task_obj), dcfg
    if task_obj is None:
        if dataset_manifest and dataset_manifest.get("task"):
            task_obj = load_task(dataset_manifest["task"])
        else:
            raise StageError("which task? pass --task (the dataset manifest names none)")
    return task_obj, None


def load_split(dataset_dir: str | Path, split: str, task: Task, limit: int = 0) -> tuple[list[dict], dict]:
    """Rows of one split of a 04 dataset with text and reference; --limit draws a style-balanced sample."""
    from .io import require_manifest
    from .labels import stratified_sample

    dataset_dir = Path(dataset_dir)
    manifest = require_manifest(dataset_dir, "04_build_dataset.py")
    if manifest.get("task") and manifest["task"] != task.name:
        raise StageError(f"{dataset_dir} is a dataset of task {manifest['task']!r} but the model runs task "
                         f"{task.name!r}: pass the matching --dataset-dir or --task")
    path = dataset_dir / f"{split}.jsonl"
    if not path.is_file():
        raise StageError(f"{path} not found: --split must be one of train, val, test")
    rows = read_jsonl(path)
    if not rows:
        raise StageError(f"{path} is empty: build a larger dataset (04_build_dataset.py --split) or pick another split")
    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("text"), str) or not r.get("id"):
            raise StageError(f"{path} row {i} has no 'id'/'text': rebuild the dataset with 04_build_dataset.py")
        ref = r.get("reference")
        if ref is None:
            try:
                ref = json.loads(drop_reasoning_block(r["messages"][-1]["content"]))
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
                raise StageError(f"{path} row {i} has no 'reference' label and no parseable assistant turn") from exc
        if ref is None:   # a JSON null label: nothing to extract, every field's reference is empty
            ref = {}
        if not isinstance(ref, dict):
            raise StageError(f"{path} row {i}: the reference label is a {type(ref).__name__}, not a JSON object")
        out.append(r | {"reference": ref})
    if limit and limit < len(out):
        order = {r["id"]: i for i, r in enumerate(out)}
        out = sorted(stratified_sample(out, limit, seed=0), key=lambda r: order[r["id"]])
    return out, manifest


PAGE_STYLE = "real_page"   # the input style of a saved page (02 gives real page inputs the same style)


def load_pages(pages_dir: str | Path, task: Task, limit: int = 0) -> tuple[list[dict], dict]:
    """Rows for ``--pages DIR``: each saved page's model input and reference, and what was skipped.

    The input is exactly what ``08_extract.py`` sends for the page (:func:`distill.documents.document_from_bytes`,
    then the task's window ``pages.max_chars``); the reference is the sibling ``<stem>.json`` mapped by the
    task, else the page's own schema.org markup (:func:`distill.pages.load_page`). A page with neither is
    skipped and listed, never scored. ``limit`` stops after N pages with a reference (in path order).
    Returns (rows, info) with info = pages found / read, reference counts by origin, skipped pages.
    """
    from .documents import document_from_bytes, output_names
    from .pages import list_pages, load_page

    pages_dir = Path(pages_dir)
    paths = list_pages(pages_dir)
    names = output_names(paths, pages_dir)
    max_chars = (task.pages or {}).get("max_chars")
    rows: list[dict] = []
    skipped: list[dict] = []
    origins: Counter = Counter()
    read = 0
    for path in paths:
        if limit and len(rows) >= limit:
            break
        read += 1
        page = load_page(path, task, name=names[path])
        rel = path.relative_to(pages_dir).as_posix()
        if page.reference is None:
            skipped.append({"name": page.name, "path": rel, "host": page.host,
                            "reason": f"no reference: no {path.with_suffix('.json').name} beside it and no "
                                      f"schema.org {task.pages['type']} markup in it"})
            continue
        # 08_extract.py's path for an HTML input: read the document, then re-window it to the task's pages.max_chars.
        doc = document_from_bytes(page.html, name=page.name, source=str(path), suffix=path.suffix)
        if max_chars:
            doc.refocus(max_chars)
        origins[page.reference_from] += 1
        rows.append({"id": page.name, "style": PAGE_STYLE, "host": page.host, "page": rel,
                     "reference_from": page.reference_from, "reference": page.reference, "text": doc.text,
                     # 08 sends no request for these: scored as no answer (every field with a value omitted)
                     "input_error": "binary_input" if doc.error else None if doc.text.strip() else "empty_input"})
    info = {"pages_dir": str(pages_dir), "pages_found": len(paths), "pages_read": read,
            "references": {"json": origins["json"], "markup": origins["markup"]},
            "skipped": skipped}
    return rows, info


def read_predictions(path: Path) -> dict[str, dict]:
    """key -> saved prediction. A torn last line (a crash mid-write) is skipped and redone."""
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("key"):
                out[rec["key"]] = rec
    return out


def append_prediction(path: Path, rec: dict) -> None:
    """Append one line and fsync: what was written survives a crash; a torn tail is never merged."""
    import os

    line = json.dumps(rec, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _pred_output(rec: dict, task: Task) -> tuple[Any, str | None]:
    """What to score for a saved prediction, and the upstream parse error to report."""
    if isinstance(rec.get("output"), dict):
        return rec["output"], None
    if rec.get("stopped") in STOP_REASONS and rec.get("answer"):
        # saved before stopped answers were closed: closed here as distill.infer closes them now
        from .infer import closed_stopped_answer

        obj, _ = closed_stopped_answer(rec["answer"], task.schema)
        if obj is not None:
            return obj, None
    if rec.get("parse_error") == "not_object":
        return rec.get("answer") or "", None   # JSON null is a valid empty answer; re-parsed here
    return None, rec.get("parse_error") or "no_output"


def _example_record(item: dict, rec: dict, scored: dict) -> dict:
    page = {k: item[k] for k in ("host", "page", "reference_from") if item.get(k) is not None}
    return {"id": item["id"], "style": item.get("style"), "source_id": item.get("source_id"), **page,
            "text": item["text"], "answer": (rec.get("answer") or "")[:4000],
            "reasoning": (rec.get("reasoning") or "")[:4000] or None,
            "latency_s": rec.get("latency_s"), "truncated_input": rec.get("truncated_input", False),
            "stopped": rec.get("stopped"), "resumed": rec.get("resumed", 0), **scored}


def _throughput(generated: int, wall_s: float, out_dir: Path) -> dict:
    """Inputs per minute over this run's generation wall time; a run that generated nothing (all
    resumed) keeps the rate measured by the run that did."""
    if generated and wall_s > 0:
        return {"generated": generated, "wall_s": round(wall_s, 3), "per_min": generated / wall_s * 60}
    prev = out_dir / EVAL_FILE
    if prev.is_file():
        try:
            old = read_json(prev).get("throughput")
        except (StageError, ValueError, AttributeError):
            old = None
        if isinstance(old, dict) and old.get("per_min") is not None:
            return old
    return {"generated": 0, "wall_s": None, "per_min": None}


def run_evaluation(spec: str, *, task: "Task | str | None" = None, model_id: str | None = None,
                   dataset_dir: str | Path = "data/04_dataset", split: str = "test",
                   pages_dir: str | Path | None = None,
                   output_dir: str | Path | None = None, name: str | None = None, limit: int = 0,
                   concurrency: int = 0, max_new_tokens: int = 1024, context: int | None = None,
                   adversarial: bool | None = None, progress: bool = True,
                   compare_dirs: Iterable[str | Path] = (), constrain: str = "schema", resumes: int = 2) -> dict:
    """Run ``spec`` on a split (+ adversarial cases), score, and write eval.json, report.md, plots, manifest.

    ``pages_dir``: score on a folder of saved pages instead of a split (:func:`load_pages`: the model
    reads what 08_extract.py sends; references from sibling .json files or the pages' own markup;
    pages with neither are listed in ``eval.json`` under ``pages.skipped``). Adversarial cases are
    off by default there.

    Resumable: predictions are appended to predictions.jsonl as they arrive, keyed by example
    id, model spec and weights, prompt and max_new_tokens; a re-run only generates the rest
    (and does not load the model when nothing is left). Returns the eval dict.
    """
    import time

    from .chain import is_chain_dir, load_chain_predictor
    from .infer import load_predictor
    from .io import check_output_dir, clear_manifest, read_manifest, run_lock, stable_hash, write_manifest

    spec = str(spec)
    if limit < 0:
        raise StageError("--limit must be 0 (all) or more")
    pages_info = None
    if pages_dir is not None:
        task_obj, dcfg = resolve_eval_task(spec, task, None)
        rows, pages_info = load_pages(pages_dir, task_obj, limit)
        split, inputs_dir = "pages", Path(pages_dir)
        if not rows:   # n=0 is an error, never a score
            raise StageError(f"--pages {pages_dir}: none of its {pages_info['pages_read']} pages has a reference "
                             f"(a sibling .json or schema.org {task_obj.pages.get('type')} markup): nothing to score")
    else:
        ds_manifest = read_manifest(dataset_dir) if Path(dataset_dir).is_dir() else None
        task_obj, dcfg = resolve_eval_task(spec, task, ds_manifest)
        rows, _ = load_split(dataset_dir, split, task_obj, limit)
        inputs_dir = Path(dataset_dir)

    adv_path = task_obj.adversarial_path
    if adversarial is None:
        adversarial = pages_dir is None and adv_path is not None and adv_path.is_file()
    if adversarial and (adv_path is None or not adv_path.is_file()):
        raise StageError(f"task {task_obj.name} has no adversarial case file ({adv_path or 'no adversarial: key'}); "
                         f"drop --adversarial")
    cases = load_adversarial(adv_path, task_obj) if adversarial else []

    name = name or default_name(spec, model_id)
    out_dir = check_output_dir(Path(output_dir) if output_dir else Path("reports") / name, "07_evaluate", [inputs_dir])
    concurrency = concurrency or default_concurrency(spec)
    fp = model_fingerprint(spec, model_id)
    template = (dcfg or {}).get("chat_template")

    row_set = "page" if pages_dir is not None else "test"
    items = [{"set": row_set, **{k: r.get(k) for k in ("id", "style", "source_id", "text", "reference", "source",
                                                       "host", "page", "reference_from", "input_error")}}
             for r in rows]
    items += [{"set": "adversarial", "id": c["id"], "style": c["kind"], "text": c["text"]} for c in cases]
    for it in items:
        it["prompt_hash"] = stable_hash(task_obj.student_messages(it["text"]), template)
        it["key"] = stable_hash(it["set"], it["id"], spec, model_id, fp, it["prompt_hash"], max_new_tokens,
                                {"constrain": constrain, "loop_guard": 1, "resume_loops": resumes})

    pred_path = out_dir / PREDICTIONS_FILE
    failures: Counter = Counter()
    info: dict = {}
    generated, wall_s = 0, 0.0
    with run_lock(out_dir):
        clear_manifest(out_dir)
        saved = read_predictions(pred_path)
        # 08 sends no request for a page without readable text: no answer, scored as such
        saved.update({it["key"]: {"key": it["key"], "answer": "", "output": None, "parse_error": it["input_error"]}
                      for it in items if it.get("input_error")})
        pending = [it for it in items if it["key"] not in saved]
        if pending:
            print(f"07 {name}: {len(items) - len(pending)} of {len(items)} predictions already saved, "
                  f"running {len(pending)} ({spec}, concurrency {concurrency})", flush=True)
            # A chain folder (distill.chain: steps run one after another) is evaluated end to end.
            opener = load_chain_predictor if is_chain_dir(spec) else load_predictor
            with opener(spec, model_id=model_id, task=task_obj, max_new_tokens=max_new_tokens,
                        concurrency=concurrency, context=context, constrain=constrain,
                        resumes=resumes) as predictor:
                info = dict(predictor.info)
                t0 = time.monotonic()   # generation only: loading the model is not in pages/min
                for i, p in predictor.predict_iter([it["text"] for it in pending], progress=progress,
                                                   desc=f"07 {name}"):
                    it = pending[i]
                    if p.output is None and p.parse_error not in MODEL_ERRORS:
                        failures[p.parse_error or "unknown"] += 1
                        continue
                    generated += 1
                    rec = {"key": it["key"], "set": it["set"], "id": it["id"], "model": spec, "model_id": model_id,
                           "prompt_hash": it["prompt_hash"], "raw": p.raw, "reasoning": p.reasoning,
                           "answer": p.answer, "output": p.output, "parse_error": p.parse_error,
                           "schema_errors": p.schema_errors, "repaired": p.repaired,
                           "finish_reason": p.finish_reason, "stopped": p.stopped, "resumed": p.resumed,
                           "truncated_input": p.truncated_input,
                           "latency_s": round(p.latency_s, 4), "prompt_tokens": p.prompt_tokens,
                           "completion_tokens": p.completion_tokens}
                    append_prediction(pred_path, rec)
                    saved[it["key"]] = rec
                wall_s = time.monotonic() - t0

        examples, scored_cases = [], []
        cases_by_id = {c["id"]: c for c in cases}
        for it in items:
            rec = saved.get(it["key"])
            if rec is None:
                continue
            pred, upstream_error = _pred_output(rec, task_obj)
            if it["set"] != "adversarial":
                s = score_example(pred, it["reference"], task_obj, it["text"], it.get("source"))
            else:
                c = cases_by_id[it["id"]]
                s = score_case(c, pred, task_obj) | {"kind": c["kind"]}
            if upstream_error:
                s["parse_error"] = upstream_error
            (examples if it["set"] != "adversarial" else scored_cases).append(_example_record(it, rec, s))

        missing = len(items) - len(examples) - len(scored_cases)
        agg = aggregate(examples, task_obj)
        where = f"the pages in {pages_dir}" if pages_dir is not None else str(Path(dataset_dir) / f"{split}.jsonl")
        # n=0 is an error, never a score: nothing is written but the saved predictions.
        if not examples:
            raise StageError(f"07 {name}: nothing to score on {where}: no prediction for any of its {len(rows)} "
                             f"examples (failed requests: {dict(failures) or 'none'}); re-run to retry them")
        if not agg["n_scored"]:
            raise StageError(f"07 {name}: nothing to score on {where}: none of its {len(examples)} examples has "
                             f"a reference with a value for any scored field "
                             f"({', '.join(_scored_fields(task_obj))}); "
                             + ("check the pages' references" if pages_dir is not None
                                else "check the labels (04_build_dataset.py)"))
        ev = {
            "name": name, "model": spec, "model_id": model_id, "task": task_obj.name, "split": split,
            "dataset_dir": None if pages_dir is not None else str(dataset_dir),
            "max_new_tokens": max_new_tokens, "constrain": constrain, "resume_loops": resumes,
            "predictor": info,
            "n_examples": len(rows), "missing_predictions": missing, "request_failures": dict(failures),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "throughput": _throughput(generated, wall_s, out_dir),
            "aggregate": agg,
            "adversarial": None,
            "examples": examples,
        }
        if pages_info is not None:
            ev["pages"] = pages_info | {
                "input_errors": dict(Counter(it["input_error"] for it in items if it.get("input_error")))}
        if cases:
            ev["adversarial"] = aggregate_adversarial(scored_cases) | {
                # every case with a reference, so a no-recipe case's abstentions are counted too
                "aggregate": aggregate([c for c in scored_cases if c.get("fields")], task_obj, by_style=False),
                "cases": scored_cases}
        write_eval(out_dir, ev)
        others = compare(compare_dirs) if compare_dirs else []
        write_report(out_dir, [ev] + others, title=f"Evaluation: {name}" + (" vs " + ", ".join(
            str(o.get("name")) for o in others) if others else ""))
        write_manifest(out_dir, "07_evaluate", {"model": spec, "model_id": model_id, "task": task_obj.name,
                                                "split": split, "dataset_dir": ev["dataset_dir"],
                                                "pages_dir": None if pages_dir is None else str(pages_dir),
                                                "limit": limit, "max_new_tokens": max_new_tokens,
                                                "adversarial": adversarial, "constrain": constrain,
                                                "resume_loops": resumes},
                       {"examples": len(examples), "adversarial": len(scored_cases), "missing": missing,
                        **({"skipped_pages": len(pages_info["skipped"])} if pages_info else {}),
                        **{f"failed_{k}": v for k, v in failures.items()}})
    return ev


def run_compare(dirs: list[str | Path], output_dir: str | Path) -> list[dict]:
    """--compare: one table, report and plots from earlier runs, written to output_dir."""
    from .io import check_output_dir, write_manifest

    if len(dirs) < 1:
        raise StageError("--compare needs at least one run folder")
    check_output_dir(output_dir, "07_evaluate_compare", dirs)
    evals = compare(dirs)
    write_report(output_dir, evals, title="Comparison: " + " vs ".join(str(e.get("name")) for e in evals))
    write_json(Path(output_dir) / "compare.json",
               {"runs": [str(d) for d in dirs],
                "table": [{"metric": label, **dict(zip([str(e.get("name")) for e in evals], cells))}
                          for label, cells in table_rows(evals)],
                "aggregates": {str(e.get("name")): e["aggregate"] for e in evals},
                "adversarial": {str(e.get("name")): {k: v for k, v in (e.get("adversarial") or {}).items()
                                                     if k != "cases"} for e in evals}})
    write_manifest(output_dir, "07_evaluate_compare", {"compare": [str(d) for d in dirs]}, {"runs": len(evals)})
    return evals
