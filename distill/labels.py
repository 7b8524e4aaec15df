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
    """One field against its source value. status: ok | mismatch | missing | unverifiable."""
    if rule.verify_method is None or record is None:
        return {"status": "unverifiable"}
    src = record.get(rule.verify_source)
    if F.is_empty(src):
        return {"status": "unverifiable", "why": f"source has no {rule.verify_source}"}
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
    if m == "number":
        got, want = F.to_number(value), F.to_number(src)
        if got is None:
            return {"status": "mismatch", "why": f"no number in {value!r}", "source": src}
        ok = want is not None and abs(got - want) <= rule.verify_tolerance
        return {"status": "ok" if ok else "mismatch", "number": got, "source": src}
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
