"""Stage 03 logic: turn a teacher reply into a checked label.

make_label     a teacher reply read by distill.answers.parse_answer (fences, prose, json-repair
               where safe; never a reply cut off by the token limit), validated and verified
validate       JSON Schema validation with readable error paths
verify         per-field checks against the source record and the input text,
               declared in the task's ``fields:`` rules, giving a verdict
label_from_record
               distant supervision (03 --label-from-record): a page record's own answer
               (its schema.org markup) as the label of the page's text — with ``all`` also
               of the teacher's variants of that record, minus what their style must lack,
               and of the "no recipe" posts of any record (every field empty; :func:`record_answer`)
               — checked by the same verify; items the text does not show are dropped (see
               its docstring)
"""
from __future__ import annotations

import datetime as _dt
import json
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import batch
from . import fields as F
from .answers import parse_answer
from .cli import llm_config_from_args
from .constrain import complete_required
from .io import (
    StageError,
    check_output_dir,
    clear_manifest,
    read_json,
    require_manifest,
    run_lock,
    stable_hash,
    write_json,
    write_manifest,
)
from .llm import LLMError, RunStats, run_concurrently
from .pages import REAL_STYLE
from .synth import load_synthetic, text_sha256
from .tasks import Task, load_task


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
    if F.is_blank(value):
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


def verify(label: dict, task: Task, record: dict | None, text: str, style: str | None = None) -> tuple[dict, str, str]:
    """Check a schema-valid label. Returns (checks, verdict, reason).

    verdict ``rejected`` (reasons ``<field>_<problem>``, comma-separated) when a field
    disagrees with the source record (``mismatch``), an item is not in the input text
    (``not_in_text``), a paraphrased list has more items than the text has sentences
    (``too_many``), a ``required`` field is empty (``missing``), a field is empty while
    the text states its source value (``omitted``: the post was written from the record,
    so what it states must be extracted), a field the input's style must leave empty
    has a value, or a time or number the record lacks has a value the text never shows
    (``invented``). Otherwise ``unverified`` when nothing could be checked
    against a source (no source record, or none of its values): such a label is only
    trained on with 04 --include-unverified. Else ``accepted``. An empty field that the
    text does not state is recorded as ``missing`` and is not a failure.
    """
    checks: dict[str, dict] = {}
    text_norm = F.normalize_text(text)
    must_be_empty = set(task.style_empty(style))
    failures = []
    for name, rule in task.fields.items():
        value = label.get(name)
        blank = F.is_blank(value)
        if name in must_be_empty:
            # The input has nothing to extract for this field: any value is made up, and the
            # source record (the seed the input was written from) does not apply.
            checks[name] = {"status": "ok" if blank else "invented", "expected": "empty"}
            if not blank:
                failures.append(f"{name}_invented")
            elif rule.verify_method in _LEAK_METHODS and any(
                    F.stated_in_text(rule.verify_method, src, text_norm, rule.verify_keywords, rule.verify_tolerance)
                    for src in _source_values(rule, record)):
                # ... but the text states the record's value after all (a "no recipe" review
                # that lists the ingredients, a "no times" post with "prep: 20 min"): the input
                # is not of its style, so an empty answer would teach the wrong thing.
                checks[name] = {"status": "stated", "expected": "empty"}
                failures.append(f"{name}_stated")
            continue
        c = _check_field(rule, value, record)
        if (not blank and record is not None and c["status"] == "unverifiable" and "why" in c
                and not F.value_in_text(rule.verify_method, value, text_norm)):
            # The record has no such value and the text shows none either: the teacher made it up
            # (a cook time for a salad whose post states only the prep and total time).
            c = c | {"status": "invented"}
        if blank and rule.required:
            c = c | {"status": "missing", "required": True}
        elif blank and c["status"] == "missing" and any(
                F.stated_in_text(rule.verify_method, src, text_norm, rule.verify_keywords, rule.verify_tolerance)
                for src in _source_values(rule, record)):
            c["status"] = "omitted"
        if not blank and rule.grounded:
            items = value if isinstance(value, list) else [value]
            missing = [F.item_text(i) for i in items if not F.grounded_in(i, text_norm)]
            c["grounded"] = not missing
            if missing:
                c["not_in_text"] = missing[:5]
        if not blank and rule.grounded_paraphrase:
            res = F.check_paraphrased(value if isinstance(value, list) else [value], text)
            c["grounded"] = not res["not_in_text"]
            if res["not_in_text"]:
                c["not_in_text"] = res["not_in_text"][:5]
            if res["too_many"]:
                c["too_many"] = {"items": len(value) if isinstance(value, list) else 1,
                                 "text_sentences": res["segments"]}
        checks[name] = c
        if c["status"] == "missing" and c.get("required"):
            failures.append(f"{name}_missing")
        elif c["status"] in ("mismatch", "omitted", "invented"):
            failures.append(f"{name}_{c['status']}")
        if c.get("grounded") is False:
            failures.append(f"{name}_not_in_text")
        if c.get("too_many"):
            failures.append(f"{name}_too_many")
    if failures:
        return checks, "rejected", ",".join(failures)
    if record is None:
        return checks, "unverified", "no_source_record"
    if not any(c["status"] == "ok" for c in checks.values()):
        return checks, "unverified", "no_source_values"
    return checks, "accepted", "ok"


# Rules whose record value can be recognised in a text (a dish name is not one: a "no recipe"
# review names the dish on purpose).
_LEAK_METHODS = ("set_f1", "minutes", "count", "number")


def _source_values(rule, record: dict | None) -> list:
    """The record's non-empty values for a rule's source field(s)."""
    if rule.verify_method is None or record is None:
        return []
    names = [rule.verify_source] if isinstance(rule.verify_source, str) else list(rule.verify_source)
    return [record[n] for n in names if not F.is_empty(record.get(n))]


# --- stage orchestration -------------------------------------------------------------

VERDICTS = ("accepted", "rejected", "unverified", "failed")


@dataclass
class LabelItem:
    id: str
    row: dict          # the stage-02 input (text, style, source record)
    messages: list[dict]
    key: str
    model: str
    from_record: bool = False   # labeled with its record's answer (03 --label-from-record), no request

    @classmethod
    def make(cls, task: Task, row: dict, model: str, params: dict) -> "LabelItem":
        msgs = task.label_messages(row["text"])
        # The key covers everything that shapes the label, so a changed prompt,
        # schema, model or parameter re-labels, and nothing else does.
        # The style's empty fields change the checks too.
        key = stable_hash(msgs, task.schema, model, params, [r.__dict__ for r in task.fields.values()],
                          list(task.style_empty(row.get("style"))))
        return cls(id=row["id"], row=row, messages=msgs, key=key, model=model)

    @classmethod
    def from_record_answer(cls, task: Task, row: dict) -> "LabelItem":
        """An input labeled with its record's own answer (``record_answer``): no teacher, no messages."""
        key = stable_hash("label_from_record", record_answer(row, task), text_sha256(row["text"]), task.schema,
                          [r.__dict__ for r in task.fields.values()], list(task.style_empty(row.get("style"))))
        return cls(id=row["id"], row=row, messages=[], key=key, model=RECORD_MODEL, from_record=True)


# The "model" of a label that is its record's answer (03 --label-from-record).
RECORD_MODEL = "record"


def record_answer(row: dict, task: Task | None = None) -> dict | None:
    """The answer an input's record holds (a saved page's markup mapped to the output schema), or None.

    For an input of style ``real_page`` that is the page's own answer. A synthetic variant of
    the same record (the teacher's rewriting, 02 --per-record > 1) gets it only when ``task`` is
    given (03 ``--label-from-record all``): the post was written from that record, so its answer
    is the record's, with the fields its style must lack (``empty:``) emptied — all of them for
    a "no recipe" review, the times and yield for a "no times" post, nothing for the first of
    two recipes. A style that empties every field needs no record answer: its posts of any record
    (a CSV row too) get the all-empty answer. :func:`label_from_record` then keeps only what the
    post's text shows.
    """
    src = row.get("source") or {}
    answer = src.get("answer")
    if task is not None and not isinstance(answer, dict) and src and _empties_everything(task, row.get("style")):
        # A "no recipe" post needs no record answer: every field is empty, whatever the record held
        # (verify still rejects the label if the post states the record's values: <field>_stated).
        answer = {}
    if not isinstance(answer, dict):
        return None
    if row.get("style") == REAL_STYLE:
        return answer
    if task is None:
        return None
    out = dict(answer)
    props = task.schema.get("properties") or {}
    for name in task.style_empty(row.get("style")):
        out[name] = [] if props.get(name, {}).get("type") == "array" else None
    out = complete_required(out, task.schema)
    # In the schema's order, as the teacher's labels and the constrained decoder write it (a label
    # with "@context" last taught a student an answer the schema's grammar cannot start).
    return {k: out[k] for k in [*props, *out] if k in out}


def _empties_everything(task: Task, style: str | None) -> bool:
    """Whether inputs of ``style`` must leave every field of the task empty (a "no recipe" text)."""
    return bool(task.fields) and set(task.fields) <= set(task.style_empty(style))


def drop_ungrounded(output: dict, checks: dict, task: Task, text: str) -> tuple[dict, dict[str, list]]:
    """``output`` without the items its checks found not in the text: (new output, {field: dropped items}).

    A list field keeps the items the text shows (the same tests as :func:`verify`: ``grounded``
    items as written, ``paraphrase`` items by their words); a single value that is not in the
    text becomes null.
    """
    text_norm = F.normalize_text(text)
    out, dropped = dict(output), {}
    for name, c in checks.items():
        if c.get("grounded") is not False:
            continue
        rule, value = task.fields[name], output.get(name)
        if not isinstance(value, list):
            out[name], dropped[name] = None, [value]
            continue
        if rule.grounded_paraphrase:
            bad = set(F.check_paraphrased(value, text)["not_in_text"])
            keep = [i for i in value if F.item_text(i) not in bad]
        else:
            keep = [i for i in value if F.grounded_in(i, text_norm)]
        out[name] = keep
        dropped[name] = [i for i in value if i not in keep]
    return out, dropped


def drop_unreadable_values(output: dict, task: Task, text: str) -> tuple[dict, dict[str, list]]:
    """``output`` with single values (times, yield) nulled where the text never shows them.

    Markup often carries values the page does not print (a total time computed from prep and
    cook); a label must not teach the student to write those. On 178 real pages, 40 of 152 total
    times, 15 of 144 cook times and 9 of 157 prep times appeared nowhere in the text.
    """
    text_norm = F.normalize_text(text)
    out, dropped = dict(output), {}
    for name, rule in task.fields.items():
        value = output.get(name)
        if isinstance(value, list) or rule.verify_method not in ("minutes", "count", "number"):
            continue
        if not F.value_in_text(rule.verify_method, value, text_norm):
            out[name], dropped[name] = None, [value]
    return out, dropped


def label_from_record(item: LabelItem, task: Task) -> dict:
    """Distant supervision: the record's answer as the label of its real text, verified like a teacher's.

    The answer comes from the page's markup, which the model never sees; so every item is
    checked against the text the model reads (:func:`verify`: ``grounded`` / ``paraphrase``),
    and an item the text does not show (an ingredient only in the markup, a step the page
    words differently) is **dropped** from the label, listed under ``dropped``: a label must
    not teach the student to write what it cannot read. The label is then verified again from
    scratch and kept if it passes, so it is rejected (``<field>_missing``) when a required field
    ends empty, as ``<field>_mismatch`` when so many items went that the rest no longer agrees
    with the record (set F1 under the rule's ``min``: the text the model reads lacks most of the
    recipe), or for any other failed check (a paraphrased list longer than the text's
    sentences). Single values (times, yield) the text never shows are nulled and listed under
    ``dropped`` too (:func:`drop_unreadable_values`).
    """
    answer = record_answer(item.row, task)
    record, text, style = item.row.get("source"), item.row["text"], item.row.get("style")
    rec = _base(item) | {"label_from": "record", "reasoning": None, "raw_content": None, "usage": None,
                         "output": None, "repaired": False, "schema_errors": [], "checks": {}, "dropped": {}}
    if answer is None:
        return rec | {"verdict": "failed", "reason": "no_record_answer"}
    errors = validate(answer, task.schema)
    if errors:
        return rec | {"output": answer, "verdict": "rejected", "reason": "schema", "schema_errors": errors[:10]}
    checks, verdict, reason = verify(answer, task, record, text, style)
    output, dropped = drop_ungrounded(answer, checks, task, text)
    output, unreadable = drop_unreadable_values(output, task, text)
    dropped.update(unreadable)
    if dropped:
        errors = validate(output, task.schema)
        if errors:
            return rec | {"output": output, "dropped": dropped, "verdict": "rejected", "reason": "schema",
                          "schema_errors": errors[:10]}
        checks, verdict, reason = verify(output, task, record, text, style)
    return rec | {"output": output, "record_answer": answer, "dropped": dropped, "checks": checks,
                  "verdict": verdict, "reason": reason}


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


def reverify_unverified(rec: dict | None, item: LabelItem, task: Task) -> dict | None:
    """An earlier ``unverified`` label whose input has a source record now: verify its answer
    against it again (no request). Other labels come back as they are."""
    if rec is None or rec.get("verdict") != "unverified" or not item.row.get("source") or rec.get("output") is None:
        return rec
    checks, verdict, reason = verify(rec["output"], task, item.row["source"], item.row["text"], item.row.get("style"))
    return rec | {"checks": checks, "verdict": verdict, "reason": reason}


def is_done(rec: dict | None, feedback_rounds: int = 0) -> bool:
    """Is this earlier label (from ``previous_label``) finished? Yes when it was accepted or
    unverified (asking again cannot give it a source record: it stays unverified, counted
    apart, and is not trained on by default), or rejected after the feedback rounds asked
    for. Failures are retried; a label rejected with fewer rounds than asked for now gets
    its remaining rounds (from its last answer)."""
    if rec is None:
        return False
    if rec.get("verdict") == "rejected":
        return rec.get("feedback_rounds", 0) >= feedback_rounds or feedback_message(rec) is None
    return rec.get("verdict") in ("accepted", "unverified")


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
    answer = parse_answer(completion.content)
    if not answer.ok:
        return rec | {"verdict": "rejected", "reason": answer.error, "detail": answer.detail}
    obj, rec["repaired"] = answer.value, answer.repaired
    errors = validate(obj, task.schema)
    if errors:
        return rec | {"output": obj, "verdict": "rejected", "reason": "schema", "schema_errors": errors[:10]}
    checks, verdict, reason = verify(obj, task, item.row.get("source"), item.row["text"], item.row.get("style"))
    return rec | {"output": obj, "checks": checks, "verdict": verdict, "reason": reason}


_PARSE_FEEDBACK = "Your reply was not one JSON object. Answer with the JSON object only."
_FIELD_FEEDBACK = {
    "mismatch": "{field} = {value} is not what the text says. Read the text again and give the value it "
                "states; use null only if the text does not state one.",
    "not_in_text": "{field}: these items are not written in the text: {items}. List only what the text "
                   "says, as it is written there.",
    "missing": "{field} is empty, but every answer needs it. Read the text again and give what it says.",
    "omitted": "{field} is empty, but the text states it. Read the text again and give the value it states.",
    "invented": "{field} = {value}, but this text has nothing for {field}: leave it empty.",
    "too_many": "{field} has more items than the text has sentences. List only what the text says, "
                "one item per step it describes.",
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
        if (c.get("status") == "missing" and c.get("required")) or c.get("status") in ("omitted", "invented"):
            lines.append(_FIELD_FEEDBACK[c["status"]].format(field=field, value=json.dumps(out.get(field))))
        if c.get("grounded") is False:
            items = ", ".join(json.dumps(i) for i in c.get("not_in_text", []))
            lines.append(_FIELD_FEEDBACK["not_in_text"].format(field=field, items=items))
        if c.get("too_many"):
            lines.append(_FIELD_FEEDBACK["too_many"].format(field=field))
    if not lines:
        return None
    return ("Some fields of your answer failed the checks:\n- " + "\n- ".join(lines)
            + "\nAnswer again with the corrected JSON object, keeping the fields that were right.")


async def label_item(client, task: Task, item: LabelItem, feedback_rounds: int = 0,
                     previous: dict | None = None) -> tuple[dict, list]:
    """Label one input (a coroutine on the client's event loop, distill.llm): ask the teacher, verify, and on a rejection give it up to
    ``feedback_rounds`` chances to fix the fields that failed (the same conversation plus
    a user turn from ``feedback_message``). Returns (label record, completions).

    ``previous``: a label rejected earlier with fewer rounds, continued instead of asking
    again from scratch. The first request's LLMError propagates (the caller records a
    failed label); an error in a feedback round keeps the rejected label, so a later run
    retries the round.
    """
    completions = []
    if previous is not None and previous.get("verdict") == "rejected":
        rec = previous
    else:
        completion = await client.acomplete(item.messages, response_schema=task.schema)
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
            completion = await client.acomplete(msgs, response_schema=task.schema)
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
    """Verdicts (accepted / rejected / unverified / failed, always all four), the reasons per
    verdict, and per-field / per-style pass rates over the given ids."""
    verdicts: Counter = Counter({v: 0 for v in VERDICTS})
    by_verdict: dict[str, Counter] = defaultdict(Counter)
    fixed = 0  # accepted only after a feedback round
    reasons: Counter = Counter()
    field_status: dict[str, Counter] = defaultdict(Counter)
    style_verdicts: dict[str, Counter] = defaultdict(Counter)
    from_record = 0
    dropped_items: Counter = Counter()   # items dropped from record labels as not in the text, per field
    dropped_labels: Counter = Counter()  # record labels that lost items of the field
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
        if rec.get("label_from") == "record":
            from_record += 1
            for f, items in (rec.get("dropped") or {}).items():
                dropped_items[f] += len(items)
                dropped_labels[f] += 1
        if rec["verdict"] != "accepted":
            for r in str(rec.get("reason", "")).split(","):
                reasons[r] += 1
                by_verdict[rec["verdict"]][r] += 1
        for f, c in (rec.get("checks") or {}).items():
            status = c.get("status", "?")
            field_status[f]["missing_required" if status == "missing" and c.get("required") else status] += 1
            if c.get("grounded") is False:
                field_status[f]["not_in_text"] += 1
            if c.get("too_many"):
                field_status[f]["too_many"] += 1
    return {"verdicts": dict(verdicts), "accepted_after_feedback": fixed, "rejected_by_reason": dict(reasons.most_common()),
            "reasons": {v: dict(by_verdict[v].most_common()) for v in VERDICTS if by_verdict[v]},
            "fields": {f: dict(c) for f, c in field_status.items()},
            "styles": {s: dict(c) for s, c in style_verdicts.items()},
            "labels_from_record": from_record,
            "ungrounded_dropped": {f: {"items": dropped_items[f], "labels": dropped_labels[f]}
                                   for f in sorted(dropped_items)}}


_BAD = ("mismatch", "not_in_text", "omitted", "invented", "too_many", "missing_required")


def _rate(c: dict, good: str = "ok", bad: tuple = _BAD) -> str:
    n = c.get(good, 0) + sum(c.get(b, 0) for b in bad)
    return f"{c.get(good, 0) / n:6.1%}" if n else "   n/a"


def format_report(rep: dict) -> str:
    v = rep["verdicts"]
    total = sum(v.values()) or 1
    fixed = f", {rep['accepted_after_feedback']} of them after feedback" if rep.get("accepted_after_feedback") else ""
    lines = [f"labels: {v.get('accepted', 0)} accepted ({v.get('accepted', 0) / total:.0%}){fixed}, "
             f"{v.get('rejected', 0)} rejected, {v.get('unverified', 0)} unverified (no source to check against: "
             f"not trained on unless 04 --include-unverified), {v.get('failed', 0)} failed"]
    if rep.get("labels_from_record"):
        drops = ", ".join(f"{f} {d['items']} item(s) in {d['labels']} label(s)"
                          for f, d in rep["ungrounded_dropped"].items()) or "none"
        lines.append(f"labels from the record (--label-from-record): {rep['labels_from_record']}; "
                     f"items not in the text, dropped: {drops}")
    for verdict, reasons in (rep.get("reasons") or {}).items():
        lines.append(f"{verdict}, by reason: " + ", ".join(f"{k} {n}" for k, n in reasons.items()))
    if rep["fields"]:
        lines.append("pass rate per field (ok / checked; unverifiable and unstated missing values not counted):")
        for f, c in rep["fields"].items():
            lines.append(f"  {f:<22} {_rate(c)}   {c}")
    if rep["styles"]:
        lines.append("accepted per style:")
        for s, c in sorted(rep["styles"].items()):
            n = sum(c.values())
            lines.append(f"  {s:<22} {c.get('accepted', 0)}/{n}")
    return "\n".join(lines)


def run_stage(args) -> int:
    """Stage 03 (``03_label_with_reasoning.py``): label each input (the teacher, or its record's answer
    with --label-from-record), verify it, write it as it arrives, skip finished labels, report
    verdicts by reason, write the manifest last. Returns the exit code."""
    if args.feedback_rounds < 0:
        raise StageError("--feedback-rounds must be 0 or more (0 = no feedback rounds)")
    batching = batch.check_flags(args, args.feedback_rounds)
    m = require_manifest(args.input_dir, "02_generate_synthetic.py")
    check_output_dir(args.output_dir, "03_label_with_reasoning", [args.input_dir])
    task = load_task(args.task or m.get("task", "recipe"))
    rows = [r for r in load_synthetic(args.input_dir) if r.get("task", task.name) == task.name]
    rows = rows[args.skip:]
    if args.limit:
        rows = rows[:args.limit]
    if args.calibrate:
        rows = stratified_sample(rows, args.calibrate, seed=args.seed)
    if not rows:
        raise StageError(f"no inputs for task {task.name} in {args.input_dir}")

    if args.label_from_record and not (task.pages or {}).get("records_complete"):
        raise StageError(f"--label-from-record: task {task.name} does not say its records are complete answers "
                         f"(pages.records_complete: true in its task.yaml); label its pages with the teacher")
    variants = task if args.label_from_record == "all" else None
    from_record = {r["id"] for r in rows if args.label_from_record and record_answer(r, variants) is not None}
    client = batch.client_for(args, llm_config_from_args(args, seed=args.seed), batching)
    teacher_needed = len(from_record) < len(rows)
    if teacher_needed and not args.model:
        client.ping()  # resolves the server's default model: part of every cache key
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens, "extra_body": args.extra_body, "seed": args.seed}
    items = [LabelItem.from_record_answer(task, r) if r["id"] in from_record
             else LabelItem.make(task, r, client.model, params) for r in rows]
    out = args.output_dir
    with run_lock(out):
        if not args.calibrate:
            clear_manifest(out)
        previous = {it.id: previous_label(out, it) for it in items}
        for it in items:  # an unverified label whose input has a source record now is verified again
            if it.from_record:
                continue
            rec = reverify_unverified(previous[it.id], it, task)
            if rec is not previous[it.id]:
                previous[it.id] = rec
                write_label(out, rec)
        # A record label is finished once written with the same key (asking again gives the same answer).
        todo = [it for it in items if not (previous[it.id] is not None if it.from_record
                                           else is_done(previous[it.id], args.feedback_rounds))]
        stats = RunStats()
        stats.skip(len(items) - len(todo))
        by_record = [it for it in todo if it.from_record]
        todo = [it for it in todo if not it.from_record]
        where = f"batch file {args.batch_out or args.batch_in}" if batching else ", ".join(args.base_url)
        by = f" with {client.model} at {where}" if teacher_needed else " (no teacher needed)"
        print(f"03: {len(items)} inputs, {len(from_record)} labeled from their record "
              f"({stats.skipped} already labeled, {len(todo) + len(by_record)} to label){by}")
        for it in by_record:  # distant supervision: no request
            write_label(out, label_from_record(it, task))
        if todo:
            client.ping()

            async def label(it):  # on the client's event loop: --concurrency labels in flight
                batch.current_id.set(it.id)
                return await label_item(client, task, it, args.feedback_rounds, previous=previous[it.id])

            for item, res in run_concurrently(todo, label, concurrency=args.concurrency, desc="03 label"):
                if isinstance(res, LLMError) and res.reason == "batched":
                    continue
                if isinstance(res, LLMError):
                    rec = failed_label(item, res.reason, str(res))
                    stats.fail(res)
                elif isinstance(res, BaseException):
                    raise res
                else:
                    rec, completions = res
                    for c in completions:
                        stats.ok(c)
                    if rec.get("feedback_error"):
                        stats.fail("feedback_" + rec["feedback_error"].split(":")[0])
                write_label(out, rec)
        if batching == "out":   # nothing was asked: the stage stays unfinished until its replies come back
            batch.report_out(client, args)
            return 0
        if batching == "in":
            batch.report_unused(client, args, "labeled already")
        rep = report(out, [it.id for it in items], task)
        print(stats.summary())
        if client.endpoint_summary():
            print(client.endpoint_summary())
        print(format_report(rep))
        if args.review:
            from .review import write_label_review  # review imports this module
            print(f"review page: {write_label_review(out, [it.row for it in items], task)}")
        if args.calibrate:
            print("calibration only: no manifest written. Fix the prompt if pass rates are low, then run without --calibrate.")
            if stats.all_failed():
                print(stats.all_failed(), file=sys.stderr)
                return 1
            return 0
        write_manifest(out, "03_label_with_reasoning", vars(args) | {"api_key": "***"},
                       {"inputs": len(items), "labeled_now": len(todo) + len(by_record), "skipped": stats.skipped,
                        "labeled_from_record_now": len(by_record), **rep["verdicts"],
                        "rejected_by_reason": rep["rejected_by_reason"], "requests": stats.as_dict(),
                        "endpoints": client.endpoint_stats()},
                       task=task.name, task_fingerprint=task.fingerprint(), report=rep)
        print(f"wrote {out}")
    if stats.all_failed():
        print(stats.all_failed() + f" (the failed labels in {out} say why; a re-run retries them)", file=sys.stderr)
        return 1
    return 0
