"""A model's answer: its reasoning split off, its JSON read out of fences and prose, repaired where safe.

The one parser of a reply, for the teacher's replies in 03 (:mod:`distill.labels`), the student's
in 07 (:func:`distill.scoring.parse_prediction`) and 08 (:func:`distill.infer.complete_prediction`),
and the check after training (:func:`distill.train.core.inference_test`)::

    a = parse_answer('<think>eggs first</think>Sure! ```json\\n{"name": "x"}\\n```')
    a.value, a.repaired, a.error, a.reasoning   # {'name': 'x'}, False, None, 'eggs first'

:func:`parse_answer`, in order:

* reasoning is split off (:func:`split_reasoning`: ``<think>`` blocks, a lone ``</think>``
  whose opening tag was in the prompt, a ``<think>`` cut off before its end);
* nothing left: error ``empty``;
* the JSON candidate is the first ```` ``` ```` / ```` ```json ```` fenced block, else the text
  from the first ``{`` to the last ``}`` (an opening fence with no closing one is dropped), else
  the whole text (so ``null``, ``[1, 2]`` and ``"x"`` parse as themselves);
* it is parsed with :func:`json.loads`; if that fails and the candidate has no ``{``: ``no_json``;
* otherwise json-repair may mend it (trailing commas, single quotes, a missing ``]}``) when
  ``repair`` is on, and only into a non-empty object (else ``bad_json``), flagged ``repaired``;
* ``expect`` says which values are an answer: ``any`` (the caller validates), ``object``, or
  ``object_or_null`` (JSON null is the empty answer ``{}``); anything else is ``not_object``.

A reply cut off by the token limit is never handed to the parser: the callers check
``finish_reason`` first (json-repair would close it into an answer nothing vouches for). 03
rejects such a teacher reply; 07 and 08 close a student's at its last complete item instead
(distill.constrain.close_stopped, recorded as ``stopped``), never inside a value.

Also here: :func:`drop_reasoning_block`, the inverse of 04's assistant turn
(``<think>...</think>`` then the JSON; :func:`distill.dataset.assistant_content`).

Standard library only at import: the Colab notebook installs distill without its dependencies,
and training never repairs (json-repair is imported when a broken reply needs it).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
# 04's assistant turn with reasoning kept: one leading block, then the JSON.
_LEADING_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_OPEN_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n")

Expect = Literal["any", "object", "object_or_null"]


@dataclass(frozen=True)
class Answer:
    """What :func:`parse_answer` read. ``value`` is meaningful only when ``error`` is None."""

    value: Any = None
    error: str | None = None      # empty | no_json | bad_json | not_object
    detail: str = ""              # one line for a person, with ``error``
    repaired: bool = False        # json-repair made ``value``
    reasoning: str | None = None  # the reasoning split off the reply
    text: str = ""                # the reply without its reasoning, stripped

    @property
    def ok(self) -> bool:
        return self.error is None


def split_reasoning(text: str, given: str | None = None) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a reply's text; ``given`` is reasoning the server sent apart.

    * ``<think>...</think>`` blocks anywhere are reasoning (joined in order);
    * a ``</think>`` left over: everything before it is reasoning (Qwen3-style templates put
      ``<think>`` into the prompt); it goes first, before ``given``;
    * a ``<think>`` left over (unterminated, usually cut off by max_tokens): everything after it
      is reasoning and there is no answer yet.

    The answer holds no think tag and is stripped; reasoning is None when there is none.
    """
    parts: list[str] = [given] if given else []
    parts.extend(m.strip() for m in _THINK_BLOCK.findall(text))
    text = _THINK_BLOCK.sub("", text)
    if THINK_CLOSE in text:
        before, _, text = text.rpartition(THINK_CLOSE)
        parts.insert(0, before.replace(THINK_OPEN, "").strip())
    if THINK_OPEN in text:
        text, _, after = text.partition(THINK_OPEN)
        parts.append(after.strip())
    reasoning = "\n\n".join(p for p in parts if p)
    return (reasoning or None), text.strip()


def drop_reasoning_block(text: str) -> str:
    """An assistant turn as 04 writes it without its leading ``<think>...</think>`` block.

    Only a leading block: this reads our own training data (``--reasoning strip``, 07's
    reference from a chat row), where a think tag later on is part of the answer's text.
    """
    return _LEADING_THINK.sub("", text, count=1)


def json_candidate(text: str) -> str:
    """The part of an answer that should be the JSON (see the module docstring)."""
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip()
    text = _OPEN_FENCE.sub("", text, count=1)
    start = text.find("{")
    if start < 0:
        return text.strip()
    end = text.rfind("}")
    return text[start:end + 1] if end > start else text[start:]


def parse_answer(reply: str | None, *, repair: bool = True, expect: Expect = "any") -> Answer:
    """Read the JSON answer of a reply (the module docstring has the rules).

    Options differ per caller only where the stage needs it: 03 and the training check take any
    value (03's schema check rejects a non-object; training compares values), 08 only an object
    (the results it writes), 07 also null as the empty answer; training alone passes
    ``repair=False`` (see :func:`distill.train.core.inference_test`).
    """
    reasoning, text = split_reasoning(reply or "")
    base = {"reasoning": reasoning, "text": text}
    if not text:
        return Answer(error="empty", detail="no content in the reply", **base)
    cand = json_candidate(text)
    repaired = False
    try:
        value = json.loads(cand)
    except json.JSONDecodeError as exc:
        if "{" not in cand:
            return Answer(error="no_json", detail="the reply contains no JSON object", **base)
        if not repair:
            return Answer(error="bad_json", detail=f"the JSON does not parse ({exc})", **base)
        import json_repair  # deferred: not installed with the training stack, only broken replies need it

        value, repaired = json_repair.loads(cand), True
        if not isinstance(value, dict) or not value:
            return Answer(error="bad_json", detail="the JSON could not be repaired safely", **base)
    if expect == "object_or_null" and value is None:
        value = {}
    if expect != "any" and not isinstance(value, dict):
        return Answer(error="not_object", detail=f"the answer is a JSON {type(value).__name__}, not an object",
                      **base)
    return Answer(value=value, repaired=repaired, **base)
