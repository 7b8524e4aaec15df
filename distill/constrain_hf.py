"""Constrained decoding and the loop guard inside transformers' ``generate`` (the adapter and merged
backends of distill.infer): llguidance's schema mask as a LogitsProcessor, the guard as a
StoppingCriteria. Imports torch, transformers and llguidance at the top, so only that backend loads
it; the rest of constrained decoding (the guard, closing and resuming stopped answers, llama-server
streaming) is distill.constrain, standard library only.
"""
from __future__ import annotations

import json
import math
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch as lgt
import torch
from transformers import LogitsProcessor, StoppingCriteria

from .constrain import THINK_CLOSE, THINK_OPEN, LoopGuard, is_think_prefix
from .io import StageError


class HFConstraint:
    """llguidance's view of one tokenizer and schema, built once per model (about a second)."""

    def __init__(self, tok, vocab_size: int, schema: dict, allow_think: bool):
        self.tok, self.vocab_size, self.allow_think = tok, vocab_size, allow_think
        self.ll_tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab_size)
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ",
                                          "key_separator": ": "})
        is_error, msgs = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar, self.ll_tok)
        if is_error:
            msg = "; ".join(msgs)
            raise StageError(f"the task's JSON Schema cannot be used for constrained decoding ({msg}): "
                             f"fix the schema or pass --constrain none")
        self._think_ids: list[int] | None = None
        self._space_ids: list[int] | None = None

    def matcher(self):
        return llguidance.LLMatcher(self.ll_tok, self.grammar)

    def token_sets(self) -> tuple[list[int], list[int], list[str]]:
        """Tokens that can start ``<think>``, whitespace-only tokens, and every token's text (reasoning-first only)."""
        if self._think_ids is None:
            texts = [self.tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                     for i in range(min(self.vocab_size, len(self.tok)))]
            self._think_ids = [i for i, s in enumerate(texts) if s and is_think_prefix(s)]
            self._space_ids = [i for i, s in enumerate(texts) if s and not s.strip()]
            self._texts = texts
        return self._think_ids, self._space_ids, self._texts

    def think_continuations(self, opened: str) -> list[int]:
        """Tokens that keep ``opened`` (a prefix of ``<think>``) on the way to the full tag."""
        return [i for i, s in enumerate(self.token_sets()[2]) if s and is_think_prefix(opened + s)]

    def processor(self, prompt_width: int, batch: int, eos_ids: list[int]) -> "SchemaLogitsProcessor":
        return SchemaLogitsProcessor(self, prompt_width, batch, eos_ids)


class SchemaLogitsProcessor(LogitsProcessor):
    """Masks each row's next-token logits to the schema grammar (one llguidance matcher per row).

    Rows of a left-padded batch share ``prompt_width``; a row that emitted EOS is left alone.
    Per-row phase for reasoning-first models: ``open`` (nothing yet: JSON or ``<think>``),
    ``opening`` (inside the ``<think>`` tag), ``think`` (free), ``json`` (constrained).
    """

    def __init__(self, c: HFConstraint, prompt_width: int, batch: int, eos_ids: list[int]):
        self.c, self.width, self.eos = c, prompt_width, set(eos_ids)
        self.matchers = [c.matcher() for _ in range(batch)]
        self.phase = ["open" if c.allow_think else "json"] * batch
        self.opened = [""] * batch          # text of the <think> tag written so far
        self.started_json = [False] * batch  # after </think>: a JSON token was consumed
        self.done = [False] * batch
        self.bitmask = lgt.allocate_token_bitmask(batch, c.vocab_size)
        self.lgt = lgt

    def _advance(self, i: int, gen: list[int]) -> None:
        last = gen[-1]
        if last in self.eos:
            self.done[i] = True
            return
        ph = self.phase[i]
        if ph == "json":
            if self.c.allow_think and not self.started_json[i] and last in self.c.token_sets()[1]:
                return  # whitespace between </think> and the JSON, as in training
            self.started_json[i] = True
            if not self.matchers[i].consume_token(last):
                self.done[i] = True  # cannot happen with the mask applied; never raise inside generate
            return
        think_ids, _, texts = self.c.token_sets()
        if ph == "open":
            if last in think_ids:
                self.phase[i], self.opened[i] = "opening", texts[last]
            else:
                self.phase[i] = "json"
                self.started_json[i] = True
                self.matchers[i].consume_token(last)
                return
        elif ph == "opening":
            self.opened[i] += texts[last] if last < len(texts) else ""
        if self.phase[i] == "opening" and self.opened[i].startswith(THINK_OPEN):
            self.phase[i] = "think"
        if self.phase[i] == "think":
            tail = self.c.tok.decode(gen[-8:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if THINK_CLOSE in tail:
                self.phase[i] = "json"

    def __call__(self, input_ids, scores):
        n = input_ids.shape[1] - self.width
        if n > 0:
            rows = input_ids[:, self.width:].tolist()
            for i, gen in enumerate(rows):
                if not self.done[i]:
                    self._advance(i, gen)
        keep: dict[int, tuple[list[int], Any]] = {}
        for i in range(scores.shape[0]):
            ph = self.phase[i]
            if self.done[i] or ph == "think":
                self.bitmask[i].fill_(-1)
                continue
            if ph == "opening":
                ids = self.c.think_continuations(self.opened[i])
                self.bitmask[i].fill_(0)
                keep[i] = (ids, scores[i, ids].clone())
                continue
            m = self.matchers[i]
            if m.is_stopped():
                self.bitmask[i].fill_(0)
                ids = sorted(self.eos)
                keep[i] = (ids, scores[i, ids].clone())
                continue
            self.lgt.fill_next_token_bitmask(m, self.bitmask, i)
            if ph == "open":
                ids = self.c.token_sets()[0]
                keep[i] = (ids, scores[i, ids].clone())
            elif self.c.allow_think and not self.started_json[i]:
                ids = self.c.token_sets()[1]
                keep[i] = (ids, scores[i, ids].clone())
        width = scores.shape[1]
        self.lgt.apply_token_bitmask_inplace(scores, self.bitmask[:, : math.ceil(width / 32)])
        for i, (ids, vals) in keep.items():
            scores[i, ids] = vals
        if scores.shape[1] > self.c.vocab_size:  # padded embedding rows beyond the tokenizer are never valid
            scores[:, self.c.vocab_size:] = -torch.inf
        return scores


class GuardCriteria(StoppingCriteria):
    """transformers StoppingCriteria running the loop guard on each row every ``every`` tokens.

    ``reasons[i]`` / ``lengths[i]``: why and after how many generated tokens row ``i`` was stopped.
    """

    def __init__(self, guard: LoopGuard, tok, prompt_width: int, batch: int, eos_ids: list[int], every: int = 4):
        self.guard, self.tok, self.width, self.every = guard, tok, prompt_width, every
        self.eos = set(eos_ids)
        self.reasons: list[str | None] = [None] * batch
        self.lengths: list[int | None] = [None] * batch

    def __call__(self, input_ids, scores, **kwargs):
        n = input_ids.shape[1] - self.width
        out = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if n <= 0 or n % self.every:
            for i, r in enumerate(self.reasons):
                out[i] = r is not None
            return out
        for i, row in enumerate(input_ids[:, self.width:].tolist()):
            if self.reasons[i] is not None:
                out[i] = True
                continue
            stop = next((k for k, t in enumerate(row) if t in self.eos), None)
            if stop is not None:
                continue  # finished by itself
            text = self.tok.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            reason = self.guard.check(text)
            if reason is not None:
                self.reasons[i], self.lengths[i] = reason, len(row)
                out[i] = True
        return out


