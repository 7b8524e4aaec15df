"""Stage 03 logic: turn a teacher reply into a checked label.

parse_answer   strip ``` fences and surrounding prose, parse the JSON, repair
               only what is safe (json-repair on a syntactically broken object,
               never on a reply cut off by the token limit)
validate       JSON Schema validation with readable error paths
verify         per-field checks against the source record and the input text,
               declared in the task's ``fields:`` rules, giving a verdict
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from . import fields as F
from .tasks import Task

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


class LabelError(ValueError):
    """A reply that cannot become a label; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _json_candidate(content: str) -> str:
    m = _FENCE.search(content)
    if m:
        return m.group(1).strip()
    # An opening fence with no closing one: drop the fence line.
    content = re.sub(r"^\s*```(?:json|JSON)?\s*\n", "", content)
    start = content.find("{")
    if start < 0:
        return content.strip()
    end = content.rfind("}")
    return content[start:end + 1] if end > start else content[start:]


def parse_answer(content: str | None) -> tuple[Any, bool]:
    """Parse the JSON answer of a reply. Returns (object, repaired)."""
    if content is None or not content.strip():
        raise LabelError("empty", "no content in the reply")
    cand = _json_candidate(content)
    try:
        return json.loads(cand), False
    except json.JSONDecodeError:
        pass
    if "{" not in cand:
        raise LabelError("no_json", "the reply contains no JSON object")
    import json_repair  # only needed for broken replies

    repaired = json_repair.loads(cand)
    if not isinstance(repaired, dict) or not repaired:
        raise LabelError("bad_json", "the JSON could not be repaired safely")
    return repaired, True


@lru_cache(maxsize=32)
def _validator(schema_json: str):
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(schema_json))


def validate(obj: Any, schema: dict) -> list[str]:
    """Schema errors as 'path: message' strings (empty list = valid)."""
    v = _validator(json.dumps(schema, sort_keys=True))
    errors = []
    for e in sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        errors.append(f"{path}: {e.message}")
    return errors


def _check_field(rule, value: Any, record: dict | None) -> dict:
    """One field against its source value(s). status: ok | mismatch | missing | unverifiable.

    A rule with several source fields (``source: [servings, yield]``) passes when the
    value agrees with any of them; otherwise the first disagreement is reported.
    """
    if rule.verify_method is None or record is None:
        return {"status": "unverifiable"}
    names = [rule.verify_source] if isinstance(rule.verify_source, str) else list(rule.verify_source)
    results = []
    for name in names:
        src = record.get(name)
        if not F.is_empty(src):
            results.append(_compare(rule, value, src) | ({"source_field": name} if len(names) > 1 else {}))
    if not results:
        return {"status": "unverifiable", "why": f"source has no {' or '.join(names)}"}
    return next((r for r in results if r["status"] == "ok"), results[0])


def _compare(rule, value: Any, src: Any) -> dict:
    if F.is_empty(value):
        return {"status": "missing", "source": src}
    m = rule.verify_method
    if m == "text":
        sim = F.text_similarity(value, src)
        ok = sim >= (rule.verify_min if rule.verify_min is not None else 0.8)
        return {"status": "ok" if ok else "mismatch", "similarity": round(sim, 3), "source": src}
    if m == "minutes":
        got = F.to_minutes(value)
        if got is None:
            return {"status": "mismatch", "why": f"cannot read {value!r} as a duration", "source": src}
        ok = abs(got - float(src)) <= rule.verify_tolerance
        return {"status": "ok" if ok else "mismatch", "minutes": got, "source": src}
    if m == "name":
        sim = F.name_similarity(value, src)
        ok = sim >= (rule.verify_min if rule.verify_min is not None else 0.8)
        return {"status": "ok" if ok else "mismatch", "similarity": round(sim, 3), "source": src}
    if m == "count":
        # Any of the value's numbers, for yields that carry several ("1 9x13-inch cake,
        # 12 pieces"; "2 dozen" counts as 24); against a yield text, also its words.
        if not F.numbers_in(value):
            return {"status": "mismatch", "why": f"no number in {value!r}", "source": src}
        ok = F.same_count(value, src, rule.verify_tolerance)
        return {"status": "ok" if ok else "mismatch", "source": src}
    if m == "number":
        nums, want = F.numbers_in(value), F.to_number(src)
        if not nums:
            return {"status": "mismatch", "why": f"no number in {value!r}", "source": src}
        ok = want is not None and abs(nums[0] - want) <= rule.verify_tolerance
        return {"status": "ok" if ok else "mismatch", "number": nums[0], "source": src}
    if m == "set_f1":
        res = F.match_lists(value if isinstance(value, list) else [value], src if isinstance(src, list) else [src])
        ok = res["f1"] >= (rule.verify_min if rule.verify_min is not None else 0.6)
        return {"status": "ok" if ok else "mismatch", "f1": round(res["f1"], 3),
                "precision": round(res["precision"], 3), "recall": round(res["recall"], 3)}
    if m == "exact":
        ok = F.normalize_text(value) == F.normalize_text(src)
        return {"status": "ok" if ok else "mismatch", "source": src}
    raise ValueError(f"unknown verify method {m}")


def verify(label: dict, task: Task, record: dict | None, text: str) -> tuple[dict, str, str]:
    """Check a schema-valid label. Returns (checks, verdict, reason).

    A field fails when it disagrees with the source record or, for grounded
    fields, when an extracted item does not appear in the input text. Missing
    values are recorded but do not reject: the post may not state them.
    """
    checks: dict[str, dict] = {}
    text_norm = F.normalize_text(text)
    failures = []
    for name, rule in task.fields.items():
        value = label.get(name)
        c = _check_field(rule, value, record)
        if rule.grounded and not F.is_empty(value):
            items = value if isinstance(value, list) else [value]
            missing = [F.item_text(i) for i in items if not F.grounded_in(i, text_norm)]
            c["grounded"] = not missing
            if missing:
                c["not_in_text"] = missing[:5]
        checks[name] = c
        if c["status"] == "mismatch":
            failures.append(f"{name}_mismatch")
        elif c.get("grounded") is False:
            failures.append(f"{name}_not_in_text")
    if failures:
        return checks, "rejected", ",".join(failures)
    return checks, "accepted", "ok"


# --- stage orchestration -------------------------------------------------------------

import datetime as _dt  # noqa: E402
import random  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from .io import read_json, stable_hash, write_json  # noqa: E402
from .synth import text_sha256  # noqa: E402


@dataclass
class LabelItem:
    id: str
    row: dict          # the stage-02 input (text, style, source record)
    messages: list[dict]
    key: str
    model: str

    @classmethod
    def make(cls, task: Task, row: dict, model: str, params: dict) -> "LabelItem":
        msgs = task.label_messages(row["text"])
        # The key covers everything that shapes the label, so a changed prompt,
        # schema, model or parameter re-labels, and nothing else does.
        key = stable_hash(msgs, task.schema, model, params, [r.__dict__ for r in task.fields.values()])
        return cls(id=row["id"], row=row, messages=msgs, key=key, model=model)


def previous_label(out_dir: Path, item: LabelItem) -> dict | None:
    """The label written earlier for this item with the same key, if any.

    A label from before labels stored ``text_sha256`` gets it written in here, with no
    request: its key covers the messages, which hold the text, so the same key proves
    it was made from this very text.
    """
    p = out_dir / f"{item.id}.json"
    if not p.exists():
        return None
    try:
        rec = read_json(p)
    except Exception:
        return None
    if rec.get("key") != item.key:
        return None
    if "text_sha256" not in rec:
        rec["text_sha256"] = text_sha256(item.row["text"])
        write_label(out_dir, rec)
    return rec


def is_done(rec: dict | None, feedback_rounds: int = 0) -> bool:
    """Is this earlier label (from ``previous_label``) finished? Yes when it was accepted,
    or rejected after the feedback rounds asked for. Failures are retried; a label rejected
    with fewer rounds than asked for now gets its remaining rounds (from its last answer)."""
    if rec is None:
        return False
    if rec.get("verdict") == "rejected":
        return rec.get("feedback_rounds", 0) >= feedback_rounds or feedback_message(rec) is None
    return rec.get("verdict") == "accepted"


def _base(item: LabelItem) -> dict:
    return {"id": item.id, "source_id": item.row.get("source_id"), "task": item.row.get("task"),
            "style": item.row.get("style"), "key": item.key, "model": item.model,
            "text_sha256": text_sha256(item.row["text"]),  # the text labeled: 04 pairs by it
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def failed_label(item: LabelItem, reason: str, detail: str) -> dict:
    return _base(item) | {"reasoning": None, "output": None, "verdict": "failed", "reason": reason,
                          "detail": detail[:500], "checks": {}}


def make_label(item: LabelItem, task: Task, completion) -> dict:
    """Turn one teacher reply into a label record with checks and a verdict."""
    rec = _base(item) | {"reasoning": completion.reasoning, "raw_content": completion.content,
                         "usage": completion.usage, "response_format": completion.response_format_used,
                         "output": None, "repaired": False, "schema_errors": [], "checks": {}}
    if completion.finish_reason == "length":
        return rec | {"verdict": "failed", "reason": "length"}
    try:
        obj, repaired = parse_answer(completion.content)
    except LabelError as exc:
        return rec | {"verdict": "rejected", "reason": exc.reason, "detail": exc.detail}
    rec["repaired"] = repaired
    errors = validate(obj, task.schema)
    if errors:
        return rec | {"output": obj, "verdict": "rejected", "reason": "schema", "schema_errors": errors[:10]}
    checks, verdict, reason = verify(obj, task, item.row.get("source"), item.row["text"])
    return rec | {"output": obj, "checks": checks, "verdict": verdict, "reason": reason}


_PARSE_FEEDBACK = "Your reply was not one JSON object. Answer with the JSON object only."
_FIELD_FEEDBACK = {
    "mismatch": "{field} = {value} is not what the text says. Read the text again and give the value it "
                "states; use null only if the text does not state one.",
    "not_in_text": "{field}: these items are not written in the text: {items}. List only what the text "
                   "says, as it is written there.",
}


def feedback_message(rec: dict) -> str | None:
    """What a rejected label got wrong, as the user turn of a feedback round; None if nothing to say.

    It names the failing fields and the checks they failed, never the source record's
    values: the teacher has to find the answer in the text, so a fixed label is still
    the teacher's reading of the text, verified again like any other.
    """
    lines = []
    if rec.get("reason") in ("empty", "no_json", "bad_json"):
        lines.append(_PARSE_FEEDBACK)
    for err in rec.get("schema_errors") or []:
        lines.append(f"Schema error at {err}")
    out = rec.get("output") if isinstance(rec.get("output"), dict) else {}
    for field, c in (rec.get("checks") or {}).items():
        if c.get("status") == "mismatch":
            lines.append(_FIELD_FEEDBACK["mismatch"].format(field=field, value=json.dumps(out.get(field))))
        if c.get("grounded") is False:
            items = ", ".join(json.dumps(i) for i in c.get("not_in_text", []))
            lines.append(_FIELD_FEEDBACK["not_in_text"].format(field=field, items=items))
    if not lines:
        return None
    return ("Some fields of your answer failed the checks:\n- " + "\n- ".join(lines)
            + "\nAnswer again with the corrected JSON object, keeping the fields that were right.")


def label_item(client, task: Task, item: LabelItem, feedback_rounds: int = 0,
               previous: dict | None = None) -> tuple[dict, list]:
    """Label one input: ask the teacher, verify, and on a rejection give it up to
    ``feedback_rounds`` chances to fix the fields that failed (the same conversation plus
    a user turn from ``feedback_message``). Returns (label record, completions).

    ``previous``: a label rejected earlier with fewer rounds, continued instead of asking
    again from scratch. The first request's LLMError propagates (the caller records a
    failed label); an error in a feedback round keeps the rejected label, so a later run
    retries the round.
    """
    from .llm import LLMError

    completions = []
    if previous is not None and previous.get("verdict") == "rejected":
        rec = previous
    else:
        completion = client.complete(item.messages, response_schema=task.schema)
        completions.append(completion)
        rec = make_label(item, task, completion)
    rec = {"feedback_rounds": 0, "attempts": []} | rec
    rec.pop("feedback_error", None)
    while rec["verdict"] == "rejected" and rec["feedback_rounds"] < feedback_rounds:
        msg = feedback_message(rec)
        if msg is None or rec.get("raw_content") is None:
            break
        msgs = item.messages + [{"role": "assistant", "content": rec["raw_content"]}, {"role": "user", "content": msg}]
        try:
            completion = client.complete(msgs, response_schema=task.schema)
        except LLMError as exc:
            rec["feedback_error"] = f"{exc.reason}: {exc.detail[:300]}"
            break
        completions.append(completion)
        new = make_label(item, task, completion)
        if new["verdict"] == "failed":  # cut off by the token limit: keep the verified earlier answer
            rec = rec | {"feedback_rounds": rec["feedback_rounds"] + 1,
                         "feedback_error": f"{new['reason']}: the corrected answer was unusable"}
            break
        earlier = {k: rec.get(k) for k in ("output", "reason", "raw_content", "usage")} | {"feedback": msg}
        rec = new | {"feedback_rounds": rec["feedback_rounds"] + 1, "attempts": rec["attempts"] + [earlier]}
    return rec, completions


def write_label(out_dir: Path, rec: dict) -> Path:
    return write_json(out_dir / f"{rec['id']}.json", rec)


def stratified_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n rows spread evenly over styles (round-robin over shuffled per-style lists)."""
    rng = random.Random(seed)
    by_style: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_style[r.get("style") or "?"].append(r)
    for v in by_style.values():
        rng.shuffle(v)
    out: list[dict] = []
    while len(out) < n and any(by_style.values()):
        for style in sorted(by_style):
            if by_style[style] and len(out) < n:
                out.append(by_style[style].pop())
    return out


def report(out_dir: Path, ids: list[str], task: Task) -> dict:
    """Verdicts, rejection reasons and per-field / per-style pass rates over the given ids."""
    verdicts: Counter = Counter()
    fixed = 0  # accepted only after a feedback round
    reasons: Counter = Counter()
    field_status: dict[str, Counter] = defaultdict(Counter)
    style_verdicts: dict[str, Counter] = defaultdict(Counter)
    for i in ids:
        p = out_dir / f"{i}.json"
        if not p.exists():
            verdicts["missing"] += 1
            continue
        rec = read_json(p)
        verdicts[rec["verdict"]] += 1
        if rec["verdict"] == "accepted" and rec.get("feedback_rounds"):
            fixed += 1
        style_verdicts[rec.get("style") or "?"][rec["verdict"]] += 1
        if rec["verdict"] != "accepted":
            for r in str(rec.get("reason", "")).split(","):
                reasons[r] += 1
        for f, c in (rec.get("checks") or {}).items():
            field_status[f][c.get("status", "?")] += 1
            if c.get("grounded") is False:
                field_status[f]["not_in_text"] += 1
    return {"verdicts": dict(verdicts), "accepted_after_feedback": fixed, "rejected_by_reason": dict(reasons.most_common()),
            "fields": {f: dict(c) for f, c in field_status.items()},
            "styles": {s: dict(c) for s, c in style_verdicts.items()}}


def _rate(c: dict, good: str = "ok", bad: tuple = ("mismatch", "not_in_text")) -> str:
    n = c.get(good, 0) + sum(c.get(b, 0) for b in bad)
    return f"{c.get(good, 0) / n:6.1%}" if n else "   n/a"


def format_report(rep: dict) -> str:
    v = rep["verdicts"]
    total = sum(v.values()) or 1
    fixed = f", {rep['accepted_after_feedback']} of them after feedback" if rep.get("accepted_after_feedback") else ""
    lines = [f"labels: {v.get('accepted', 0)} accepted ({v.get('accepted', 0) / total:.0%}){fixed}, "
             f"{v.get('rejected', 0)} rejected, {v.get('failed', 0)} failed"]
    if rep["rejected_by_reason"]:
        lines.append("not accepted, by reason: " + ", ".join(f"{k} {n}" for k, n in rep["rejected_by_reason"].items()))
    if rep["fields"]:
        lines.append("pass rate per field (ok / checked; missing and unverifiable not counted):")
        for f, c in rep["fields"].items():
            lines.append(f"  {f:<22} {_rate(c)}   {c}")
    if rep["styles"]:
        lines.append("accepted per style:")
        for s, c in sorted(rep["styles"].items()):
            n = sum(c.values())
            lines.append(f"  {s:<22} {c.get('accepted', 0)}/{n}")
    return "\n".join(lines)
