"""Constrained decoding and the loop guard for the student's answers (07 and 08, through distill.infer).

Constrained decoding (``--constrain schema``, the default) makes the model's next token one
that keeps the answer a valid prefix of JSON matching the task's schema:

* transformers (adapter, merged, base folder): llguidance's token masks, applied by
  :class:`SchemaLogitsProcessor` inside ``model.generate``. llguidance was picked over
  xgrammar (see README "Constrained decoding"): same speed on CPU, no extra dependencies
  (xgrammar pulls triton and a TVM runtime), and it compiles every keyword of the recipe
  schema, ``pattern`` included.
* llama.cpp (GGUF): ``json_schema`` on ``/completion``; llama.cpp turns it into a grammar and
  skips what it does not support (it warns about the duration ``pattern``), so answers are
  validated afterwards anyway.
* ``openai:`` servers: ``response_format`` ``json_schema`` (then ``json_object`` + schema, then
  none, the first the server accepts).

JSON is constrained to the training format (``json.dumps``: ``", "`` and ``": "``, one line):
flexible whitespace lets a weak model fill the answer with newlines until the token limit.

Reasoning-first answers (``<think>...</think>`` then JSON) constrain only the JSON: the first
tokens may open ``<think>``, the reasoning runs free, and the constraint starts after
``</think>`` (transformers: per-row state in the logits processor; llama.cpp: the reasoning
is generated free, then the JSON is generated constrained as a continuation).

The loop guard (:class:`LoopGuard`) stops an answer that repeats itself (the text ends in a
chunk repeated back to back, e.g. the same ingredient line again and again, or endless
newlines) or that writes more items into an array than the schema's ``maxItems``. The
prediction records ``stopped`` = ``repetition`` | ``max_items`` | ``length`` (token limit). An
answer the guard stopped is closed where its last complete field or list item ends
(:func:`close_stopped`: the JSON text is cut back to that point and its open brackets are
closed; a list that ends in the loop keeps one copy of the repeated items), its required
fields never reached are given the value that says nothing (:func:`complete_required`: null,
``[]``, the schema's ``const``), and it is validated like any answer: a result only if it fits
the schema. An answer cut by the token limit is closed the same way (``stopped`` =
``length``). Scoring counts an empty field as omitted, so closing never scores what the model
did not write; an adversarial case answered by a stopped answer never passes.

Decoding resumes after a loop (:func:`resume_loops`, GGUF and transformers backends): the
stopped answer is closed with its loop kept once, and the model goes on from there with its
next field (free decoding for llama-server, which cannot start a grammar mid-object; under the
schema for transformers, whose llguidance matcher first consumes the prefix), at most twice.
The prediction records ``resumed`` and keeps ``stopped`` = the guard's first reason.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

CONSTRAIN_MODES = ("schema", "none")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
STOP_REASONS = ("repetition", "max_items")  # guard stops; "length" is the token limit
CLOSED_STOPS = (*STOP_REASONS, "length")      # stops whose answer is closed at its last complete item


# ------------------------------------------------------------------ loop guard

def repeated_tail(text: str, min_chars: int = 64, min_copies: int = 3, max_period: int = 256) -> bool:
    """True when ``text`` ends in one chunk repeated back to back: at least ``min_copies`` copies
    covering at least ``min_chars`` characters. A list item written 3+ times in a row, or 64
    newlines, is a loop; a real recipe does not repeat itself like that."""
    n = len(text)
    for p in range(1, min(max_period, n // min_copies) + 1):
        copies = max(min_copies, math.ceil(min_chars / p))
        if p * copies > n:
            break
        unit = text[n - p:]
        if text[n - p * copies:] == unit * copies:
            return True
    return False


def max_items_of(schema: Any) -> bool:
    """Whether the schema limits any array's length (only then is the partial answer parsed)."""
    if isinstance(schema, dict):
        return "maxItems" in schema or any(max_items_of(v) for v in schema.values())
    if isinstance(schema, list):
        return any(max_items_of(v) for v in schema)
    return False


def over_max_items(value: Any, schema: Any) -> bool:
    """True if an array in ``value`` has more items than its schema's ``maxItems`` (properties,
    items, anyOf/oneOf branches are followed)."""
    if not isinstance(schema, dict):
        return False
    if isinstance(value, list):
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            return True
        items = schema.get("items")
        if any(over_max_items(v, items) for v in value):
            return True
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        if any(over_max_items(v, props.get(k)) for k, v in value.items()):
            return True
    return any(over_max_items(value, s) for key in ("anyOf", "oneOf", "allOf") for s in schema.get(key) or [])


class LoopGuard:
    """Decides whether a growing answer should be stopped; one instance can check many answers.

    ``check(text)`` returns ``"repetition"``, ``"max_items"`` or None. The repetition rule looks
    only at the end of the text, so it can run every few tokens; the maxItems rule parses the
    JSON part with json-repair and runs only for schemas that have a ``maxItems``.
    """

    def __init__(self, schema: dict | None = None, min_chars: int = 64, min_copies: int = 3,
                 max_period: int = 256):
        self.schema = schema if schema is not None and max_items_of(schema) else None
        self.min_chars, self.min_copies, self.max_period = min_chars, min_copies, max_period

    def check(self, text: str) -> str | None:
        tail = text[-(self.max_period * self.min_copies + self.min_chars):]
        if repeated_tail(tail, self.min_chars, self.min_copies, self.max_period):
            return "repetition"
        if self.schema is not None:
            answer = text.rpartition(THINK_CLOSE)[2] if THINK_CLOSE in text else text
            start = answer.find("{")
            if start >= 0:
                import json_repair

                try:
                    partial = json_repair.loads(answer[start:])
                except Exception:  # noqa: BLE001 - a prefix json-repair cannot read is not over any limit
                    return None
                if over_max_items(partial, self.schema):
                    return "max_items"
        return None


# ------------------------------------------------------------------ closing a stopped answer

_SCALAR_END = set(",]} \t\r\n")


def _last_complete_prefix(s: str) -> str | None:
    """``s`` (the start of one JSON object) cut after its last complete field or list item, with
    its open brackets closed: valid JSON, or None when no prefix of it can be closed so.

    A small scanner over the prefix: a cut is allowed right after an opening bracket or after a
    complete value (a string, a number or literal followed by a delimiter, a closed container),
    never after a key, a comma or inside a string. An item of a list is whole or left out: no
    cut inside it (a step object without its text is no step). Scanning stops at the first
    character that cannot continue valid JSON, or when the object closes by itself.
    """
    stack: list[list] = []   # [bracket, state, empty]; state: key | colon | value | comma
    best: tuple[int, str] | None = None
    i, n = 0, len(s)

    def mark(pos: int) -> None:
        nonlocal best
        if all(stack[k - 1][0] != "[" for k in range(1, len(stack))):   # not inside a list item
            best = pos, "".join("}" if f[0] == "{" else "]" for f in reversed(stack))

    def value_done(pos: int) -> None:
        stack[-1][1], stack[-1][2] = "comma", False
        mark(pos)

    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
            continue
        state = stack[-1][1] if stack else "value"
        if c == '"' and stack and state in ("key", "value"):
            j, esc = i + 1, False
            while j < n and (esc or s[j] != '"'):
                esc = not esc and s[j] == "\\"
                j += 1
            if j >= n:
                break   # a string still open: cut before it
            try:
                json.loads(s[i:j + 1])
            except json.JSONDecodeError:
                break
            i = j + 1
            if state == "key":
                stack[-1][1] = "colon"
            else:
                value_done(i)
            continue
        if (c in "{[" and stack and state == "value") or (c == "{" and not stack):
            stack.append([c, "key" if c == "{" else "value", True])
            i += 1
            mark(i)
            continue
        if stack and c == ("}" if stack[-1][0] == "{" else "]") and (state == "comma" or stack[-1][2]):
            stack.pop()
            i += 1
            if not stack:
                return s[:i]   # the object closed by itself
            value_done(i)
            continue
        if c == ":" and state == "colon":
            stack[-1][1] = "value"
            i += 1
            continue
        if c == "," and state == "comma":
            stack[-1][1] = "key" if stack[-1][0] == "{" else "value"
            i += 1
            continue
        if stack and state == "value" and c not in _SCALAR_END:
            j = i
            while j < n and s[j] not in _SCALAR_END:
                j += 1
            if j >= n and s[i:j] not in ("true", "false", "null"):
                break   # a number that may still go on
            try:
                json.loads(s[i:j])
            except json.JSONDecodeError:
                break
            i = j
            value_done(i)
            continue
        break
    if best is None:
        return None
    pos, closers = best
    return s[:pos] + closers


def _one_copy_of_tail_loop(items: list) -> list:
    """``items`` whose end repeats a block of items back to back (two copies or more, the last
    perhaps partial), cut after the block's first copy: ``[a, b, a, b, a]`` -> ``[a, b]``."""
    n = len(items)
    for q in range(1, n // 2 + 1):
        start = n - q   # the run of items equal to the item q later, back from the end
        while start > 0 and items[start - 1] == items[start - 1 + q]:
            start -= 1
        if n - start >= 2 * q:
            return items[: start + q]
    return items


def close_stopped(answer: str) -> dict | None:
    """An answer the loop guard stopped, closed at its last complete field or list item; None if
    there is no JSON object to close.

    The containers still open where the answer stops (the last member of each, from the root
    down) get their trailing loop cut to one copy: ``["salt", "salt", "salt", "sa`` gives
    ``["salt"]``. The result is not checked against the schema here: the caller validates it.
    """
    start = answer.find("{")
    if start < 0:
        return None
    closed = _last_complete_prefix(answer[start:])
    if closed is None:
        return None
    try:
        obj = json.loads(closed)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    parent: Any = obj
    key: Any = next(reversed(obj), None)
    while key is not None:   # down the last member of each container: the ones open at the stop
        node = parent[key]
        if isinstance(node, list):
            node = parent[key] = _one_copy_of_tail_loop(node)
        parent = node
        key = (len(node) - 1 if node else None) if isinstance(node, list) else \
            (next(reversed(node), None) if isinstance(node, dict) else None)
    return obj


_NO_VALUE = object()


def _empty_value(schema: Any) -> Any:
    """The value that says nothing which ``schema`` admits: its ``const``, null, an empty list, an
    object of its required properties' empty values; ``_NO_VALUE`` when it admits none (a required
    string or number has no empty value to give)."""
    if not isinstance(schema, dict):
        return _NO_VALUE
    if "const" in schema:
        return schema["const"]
    for branch in schema.get("anyOf") or schema.get("oneOf") or []:
        value = _empty_value(branch)
        if value is not _NO_VALUE:
            return value
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "null" in types:
        return None
    if "array" in types and not schema.get("minItems"):
        return []
    if "object" in types or "properties" in schema:
        return complete_required({}, schema)
    return _NO_VALUE


def complete_required(obj: dict, schema: Any) -> dict:
    """``obj`` (a stopped answer closed by :func:`close_stopped`) with every required property it
    never reached given the value that says nothing (:func:`_empty_value`: the schema's ``const``,
    null, ``[]``), down the objects it holds: the shortest way to finish the answer that the
    schema accepts. Items it wrote are kept as written; a property with no empty value (a
    required string) stays missing, so the answer stays invalid. Scoring counts an empty field
    as omitted, never as a match, and the prediction keeps ``stopped``."""
    if not isinstance(schema, dict) or not isinstance(obj, dict):
        return obj
    props = schema.get("properties") or {}
    for key, value in obj.items():
        if isinstance(value, dict):
            complete_required(value, props.get(key))
    for key in schema.get("required") or []:
        if key not in obj:
            value = _empty_value(props.get(key))
            if value is not _NO_VALUE:
                obj[key] = value
    return obj


def resume_prefix(answer: str) -> str | None:
    """Where decoding resumes after the loop guard stopped ``answer``: the answer closed at its
    last complete field or list item (:func:`close_stopped`, the loop kept once), written in the
    training format with only the root object left open, so the model goes on with the next field
    or closes the object. None when there is nothing to resume from: no object, an empty one, or
    a reasoning-first answer (its JSON follows free text the prefix would have to repeat)."""
    if THINK_OPEN in answer or not answer.lstrip().startswith("{"):
        return None
    obj = close_stopped(answer)
    if not obj:
        return None
    return json.dumps(obj, ensure_ascii=False)[:-1]


def resume_loops(text: str, finish: str | None, budget: int, count, cont, max_resumes: int = 2,
                 fits=None) -> tuple[str, str | None, dict]:
    """Decoding that goes on past a loop instead of ending the answer there.

    When the guard stops an answer (``finish`` in :data:`STOP_REASONS`), the answer is closed at
    its last complete item with the loop kept once (:func:`resume_prefix`) and ``cont(prefix,
    tokens_left)`` generates on from there -> (continuation text, finish, tokens used); at most
    ``max_resumes`` times, and only while the prefix moves on. A small student that copies a list
    from a long page can lose its place and repeat a line; closing that list and letting it write
    the next field keeps what it would otherwise never reach (the steps after a looping
    ingredient list). ``count(text)`` is the prefix's length in tokens (it counts against
    ``budget``, the answer's token limit).

    Never worse than stopping: if a continuation runs to the token limit or the result does not
    parse, the answer is the last prefix closed, as the guard alone would have left it. With
    ``fits(text, finish) -> bool`` (the answer as it would be read: a stopped one closed, a
    finished one parsed, then checked against the schema), a result that does not fit — a free
    continuation that wrote keys the schema forbids — gives way to the latest state before it
    that does, down to the answer as the guard stopped it.
    Returns (text, finish, info); info: ``resumed`` (times) and ``guard`` (the first stop reason).
    """
    info = {"resumed": 0, "guard": finish if finish in STOP_REASONS else None}
    states = [(text, finish)]   # what each resume started from
    last = None
    while finish in STOP_REASONS and info["resumed"] < max_resumes:
        prefix = resume_prefix(text)
        if prefix is None or prefix == last:
            break
        left = budget - count(prefix)
        if left < 2:
            break
        more, finish, _ = cont(prefix, left)
        text, last = prefix + more, prefix
        info["resumed"] += 1
        states.append((text, finish))
    if info["resumed"] and (finish == "length" or (finish not in STOP_REASONS and not _parses(text))):
        text, finish = last + "}", info["guard"]   # the continuation went wrong: keep what was closed
    if info["resumed"] and fits is not None and not fits(text, finish):
        text, finish = next(((t, f) for t, f in reversed(states[:-1]) if fits(t, f)), states[0])
    return text, finish, info


def _parses(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


# ------------------------------------------------------------------ servers (streamed, so the guard can abort)

def _sse_events(resp) -> Any:
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError:
            continue


def stream_post(client, url: str, body: dict, on_event) -> None:
    """POST ``body`` with ``stream: true`` through ``client.http`` (llama.cpp's native endpoints are
    not the OpenAI API, so the SDK is not involved); ``on_event(event)`` returning
    True closes the stream (the server stops generating when the connection drops).

    Errors map to the client's own: unreachable -> LLMUnavailable, others -> LLMError(reason)."""
    import httpx

    from .llm import LLMError, LLMUnavailable, _error_detail

    try:
        with client.http.stream("POST", url, json=body | {"stream": True}) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise LLMError(f"http_{resp.status_code}", _error_detail(resp))
            for event in _sse_events(resp):
                if on_event(event):
                    return
    except httpx.ConnectError as exc:
        raise LLMUnavailable(client._unreachable_message(str(exc))) from None
    except httpx.TimeoutException:
        raise LLMError("timeout", f"no answer within {client.config.timeout:g}s") from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise LLMError("disconnected", str(exc) or type(exc).__name__) from None


def is_think_prefix(text: str) -> bool:
    """Whether ``text`` is, or may still become, a ``<think>`` opening."""
    return THINK_OPEN.startswith(text) or text.startswith(THINK_OPEN)


_FORMAT_REFUSED = re.compile(r"response_format|json_schema|json_object|schema|grammar", re.I)


def format_refused(status: str, detail: str) -> bool:
    """An openai: server that answered 400/422/500 about response_format does not support it."""
    return status in ("http_400", "http_422", "http_500") and bool(_FORMAT_REFUSED.search(detail or ""))
