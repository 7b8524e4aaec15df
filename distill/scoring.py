"""Scoring a model's answers field by field (07_evaluate.py; the methods of a task's ``fields.<name>.score``).

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
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from . import fields as F
from . import menu as M
from .answers import parse_answer
from .io import StageError, read_jsonl

if TYPE_CHECKING:   # distill.tasks reads SCORE_METHODS from here: no import back at run time
    from .tasks import FieldRule, Task

# Score at or above which an expected adversarial value counts as found, and a
# reference-only adversarial case counts as passed.
PASS_SCORE = 0.8

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


# ============================================================== the score methods

Row = tuple[str, str, tuple, bool]   # (label, format: pct | num3 | num2 | int, path in a field's aggregate, always)


class Scorer:
    """One score method: how a field is scored, aggregated over examples and shown in the tables.

    :func:`score_field` handles what every method shares (the four outcomes; only a reference with
    a value is scored); a method adds its own keys. Register a new one in :data:`SCORERS`.
    """
    name = ""

    def blank(self, v: Any) -> bool:
        return is_blank(v)

    def score(self, rule: FieldRule, pred: Any, ref: Any, pred_empty: bool, schema_prop: dict | None) -> dict:
        """``score`` (0-1) and ``exact`` (bool) of a field whose reference has a value, and any keys of its own."""
        raise NotImplementedError

    def empty_reference(self, pred: Any, pred_empty: bool) -> dict:
        """The method's own keys where the reference is empty (nothing to score)."""
        return {}

    def aggregate(self, filled: list[dict], frs: list[dict]) -> dict:
        """Extra aggregate keys: ``filled`` are the fields whose reference has a value, ``frs`` all of them."""
        return {}

    def rows(self, name: str, evals: list[dict]) -> list[Row]:
        """Table rows of field ``name``; the first one is kept even where no run has a value."""
        return [(f"{name} ({self.name}) match", "pct", ("exact",), True)]


class TextScorer(Scorer):
    """Fuzzy similarity of normalised strings (0-1); exact = equal after normalising."""
    name = "text"

    def score(self, rule, pred, ref, pred_empty, schema_prop):
        return {"score": 0.0 if pred_empty else F.text_similarity(pred, ref),
                "exact": not pred_empty and F.normalize_text(pred) == F.normalize_text(ref)}

    def rows(self, name, evals):
        return [(f"{name} similarity", "num3", ("score",), True), ("  exact match", "pct", ("exact",), False)]


class ExactScorer(Scorer):
    """Equal after normalising (strings) or as numbers ("5" == 5); score 0/1."""
    name = "exact"

    def score(self, rule, pred, ref, pred_empty, schema_prop):
        exact = not pred_empty and _canon(pred) == _canon(ref)
        return {"exact": exact, "score": float(exact)}


class NumericScorer(Scorer):
    """Both read as a number (``minutes``: a duration, ISO 8601 or "1 hr 5 mins"; ``number``: the
    first number, "8 servings" = 8); a match within the field's tolerance; MAE/RMSE of the errors."""

    def __init__(self, name: str, convert):
        self.name, self.convert = name, convert

    def score(self, rule, pred, ref, pred_empty, schema_prop):
        pv, rv = (None if pred_empty else self.convert(pred)), self.convert(ref)
        out: dict[str, Any] = {}
        if pv is None or rv is None:
            out["exact"] = False
            if not pred_empty and pv is None:
                out["unreadable"] = True
        else:
            out["abs_error"] = abs(pv - rv)
            out["exact"] = out["abs_error"] <= rule.verify_tolerance + 1e-9
        out["score"] = float(out["exact"])
        return out

    def aggregate(self, filled, frs):
        err = _mae_rmse([f["abs_error"] for f in filled if f.get("abs_error") is not None])
        return {"mae": err["mae"], "rmse": err["rmse"], "n_errors": err["n"]}


class ListScorer(Scorer):
    """One-to-one fuzzy matching of list items: precision, recall, F1 (score = F1); ``set_f1``
    drops repeated items first (order and repeats do not matter)."""

    def __init__(self, name: str, dedupe: bool):
        self.name, self.dedupe = name, dedupe

    def blank(self, v):
        # a list of blank items ([{"@type": "HowToStep", "text": ""}]) has none
        return is_blank(v) or not _items(v)

    def empty_reference(self, pred, pred_empty):
        # the invented items, for micro precision over all fields
        n_pred = 0 if pred_empty else len(_dedupe(_items(pred)) if self.dedupe else _items(pred))
        return {"tp": 0, "fp": n_pred, "fn": 0, "precision": None, "recall": None, "f1": None}

    def score(self, rule, pred, ref, pred_empty, schema_prop):
        p, r = ([] if pred_empty else _as_list(pred)), _as_list(ref)
        if self.dedupe:
            p, r = _dedupe(p), _dedupe(r)
        res = F.match_lists(p, r)
        return {**{k: res[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")},
                "score": res["f1"], "exact": res["fp"] == 0 and res["fn"] == 0}

    def aggregate(self, filled, frs):
        a: dict[str, Any] = {k: _mean(f.get(k) for f in filled) for k in ("precision", "recall", "f1")}
        # micro counts over every field, so the items of a hallucinated list are false positives
        tp, fp, fn = (sum(f.get(k, 0) for f in frs) for k in ("tp", "fp", "fn"))
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        a["micro"] = {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r,
                      "f1": (2 * p * r / (p + r)) if p is not None and r is not None and p + r else 0.0}
        return a

    def rows(self, name, evals):
        return [(f"{name} F1", "num3", ("f1",), True), ("  precision", "num3", ("precision",), False),
                ("  recall", "num3", ("recall",), False)]


class MaeScorer(Scorer):
    """Numbers, or an object of numbers (one dimension per key, e.g. scores 0-10): absolute error
    per dimension, scored against the schema's range; aggregated as MAE and RMSE per dimension."""
    name = "mae"

    def empty_reference(self, pred, pred_empty):
        return {"errors": {}}

    def score(self, rule, pred, ref, pred_empty, schema_prop):
        rng, tol = _value_range(schema_prop), rule.verify_tolerance
        if isinstance(ref, dict):
            refs = {k: _num(v) for k, v in ref.items() if _num(v) is not None}
            preds = {k: _num(pred.get(k)) if isinstance(pred, dict) else None for k in refs}
        else:
            refs = {rule.name: _num(ref)}
            preds = {rule.name: None if pred_empty or isinstance(pred, dict) else _num(pred)}
        errors = {k: (abs(preds[k] - rv) if preds[k] is not None and rv is not None else None)
                  for k, rv in refs.items()}

        def dim_score(e: float | None) -> float:
            if e is None:
                return 0.0
            if rng and rng[1] > rng[0]:
                return max(0.0, 1.0 - e / (rng[1] - rng[0]))
            return float(e <= tol + 1e-9)

        return {"errors": errors,
                "score": sum(dim_score(e) for e in errors.values()) / len(errors) if errors else 0.0,
                "exact": bool(errors) and all(e is not None and e <= tol + 1e-9 for e in errors.values())}

    def aggregate(self, filled, frs):
        dims: dict[str, list[float]] = defaultdict(list)
        seen: Counter = Counter()
        for f in filled:
            for d, e in (f.get("errors") or {}).items():
                seen[d] += 1
                if e is not None:
                    dims[d].append(e)
        err = _mae_rmse([e for d in dims for e in dims[d]])
        return {"dims": {d: _mae_rmse(dims[d]) | {"coverage": len(dims[d]) / seen[d]} for d in sorted(seen)},
                "mae": err["mae"], "rmse": err["rmse"], "n_errors": err["n"]}

    def rows(self, name, evals):
        rows: list[Row] = [(f"{name} MAE", "num2", ("mae",), True), ("  RMSE", "num2", ("rmse",), False)]
        dims = sorted({d for e in evals
                       for d in ((((e.get("aggregate") or {}).get("fields") or {}).get(name) or {}).get("dims") or {})})
        if len(dims) > 1 or (dims and dims[0] != name):
            for d in dims:
                rows += [(f"  {d} MAE", "num2", ("dims", d, "mae"), False),
                         (f"  {d} RMSE", "num2", ("dims", d, "rmse"), False)]
        return rows


SCORERS: dict[str, Scorer] = {s.name: s for s in (
    TextScorer(), ExactScorer(), NumericScorer("minutes", F.to_minutes), NumericScorer("number", F.to_number),
    ListScorer("list_f1", dedupe=False), ListScorer("set_f1", dedupe=True), MaeScorer())}
SCORE_METHODS = tuple(SCORERS)   # what a task's fields.<name>.score may name (distill.tasks checks it)


def score_field(rule: FieldRule, pred: Any, ref: Any, schema_prop: dict | None = None) -> dict:
    """Score one field; ``outcome`` says which of four cases it is (see :func:`field_outcome`).

    Only a reference with a value is scored: ``score`` (0-1) and ``exact`` (bool) for
    outcome scored, 0 and False for omitted. Where the reference is empty there is nothing
    to match, so ``score`` and ``exact`` are None: an abstention is reported as its own
    rate, never as a perfect match, and a hallucination is penalised in the example's
    overall score (:func:`score_example`), not averaged into the field's mean.
    """
    scorer = SCORERS.get(rule.score)
    if scorer is None:
        raise ValueError(f"unknown score method {rule.score!r} for field {rule.name}")
    pe, re_ = scorer.blank(pred), scorer.blank(ref)
    out: dict[str, Any] = {"method": rule.score, "outcome": field_outcome(pe, re_), "pred_empty": pe, "ref_empty": re_}
    if re_:
        return out | {"score": None, "exact": None} | scorer.empty_reference(pred, pe)
    return out | scorer.score(rule, pred, ref, pe, schema_prop)


@lru_cache(maxsize=8)
def _menu(path: Path):
    return M.load_menu(path)


def scored_fields(task: Task) -> dict[str, FieldRule]:
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
    from .labels import validate, verify  # deferred: labels imports tasks, which imports this module

    obj, info = parse_prediction(pred_output)
    res: dict[str, Any] = dict(info)
    res["schema_errors"] = validate(obj, task.schema)[:5] if obj is not None else ["not valid JSON"]
    res["schema_valid"] = obj is not None and not res["schema_errors"]

    rules = scored_fields(task)
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


def score_case(case: dict, pred_output: Any, task: Task, stopped: str | None = None) -> dict:
    """Score an adversarial case: like a test example (if it has a reference) plus its expectations.

    An answer that was stopped (``stopped``: the loop guard or the token limit) never passes, even
    when what was closed of it meets the expectations: a loop cut short on a text with no recipe
    leaves empty fields by accident, not because the model abstained."""
    res = score_example(pred_output, case.get("reference"), task, case["text"])
    if "expect" in case:
        exp = check_expectations(pred_output, case["expect"], task)
        res["expect"] = exp["checks"]
        res["passed"] = exp["passed"]
    elif res["score"] is None:   # a reference with no value: pass = valid JSON that invents nothing
        res["passed"] = bool(res["json_valid"]) and not res["spurious"]
    else:
        res["passed"] = bool(res["json_valid"]) and res["score"] >= PASS_SCORE
    if stopped:
        res["passed"] = False
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
    for name, rule in scored_fields(task).items():
        frs = [e["fields"][name] for e in examples if name in (e.get("fields") or {})]
        if not frs:
            continue
        filled = [f for f in frs if not f["ref_empty"]]
        a: dict[str, Any] = {"method": rule.score, "n": len(filled), "n_fields": len(frs),
                             "score": _mean(f["score"] for f in filled),
                             "exact": _mean(float(f["exact"]) for f in filled)}
        a.update(_outcome_rates(frs))
        a.update(SCORERS[rule.score].aggregate(filled, frs))
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
        agg["price_check"] = M.summarize_price_checks(checks)
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
