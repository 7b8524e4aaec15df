"""Running a model on extraction inputs: the one inference path of 07_evaluate.py and 08_extract.py.

What is evaluated is what users run: 08 and 07 (through distill.evaluate) open models with :func:`load_predictor`::

    with load_predictor("models/student") as pred:          # adapter or merged folder from 05
        for p in pred.predict(texts):
            p.output, p.schema_errors, p.parse_error, p.truncated_input

``spec`` selects the backend (parsed by :func:`distill.spec.parse_model`, which also says which
function opens each kind):

* a folder with ``distill_config.json`` (05's ``--save-dir``, or its ``merged/``): transformers
  (+ PEFT for an adapter), greedy ``generate`` in batches of ``concurrency``;
* a ``.gguf`` file: a llama.cpp server started for the run (``n_parallel = concurrency``).
  When a training config is found next to it (the GGUF's folder or the two above it, which
  is where 05 writes ``gguf/``) the prompt is rendered by the saved training chat template,
  tokenised by the saved tokenizer and sent as token ids to ``/completion``: byte- and
  token-identical to training, whatever template the GGUF carries. A GGUF without a
  training config is a base model: its own chat template via ``/v1/chat/completions``;
* ``openai:URL`` (with ``model_id``): any OpenAI-compatible server (teacher, LM Studio,
  Ollama, a llama-server you started); the server applies its chat template;
* a chain folder (``chain.json``, see distill.chain): its steps run one after another;
* anything else (hub id, HF folder): a base model through transformers with its own template.

The prompt is always ``task.student_messages(text)``; for a trained model the task's
system prompt and user template are the ones saved in ``distill_config.json`` at training.
Decoding is greedy (temperature 0). By default (``constrain="schema"``) the answer is decoded
under the task's JSON Schema and a loop guard stops runaway repetition; see distill.constrain.

Long inputs (documented rule, counted in :attr:`Prediction.truncated_input`): when the
prompt plus ``max_new_tokens`` would exceed the context, the *head* of the input text is
kept, cut at a token boundary, so that prompt + answer fit. Recipes, like most documents,
state what matters first; the tail of a long page is usually comments and footers. With a
remote ``openai:`` model there is no tokenizer, so truncation happens only when ``context``
is given, estimating 3 characters per token (conservative for English text).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .answers import parse_answer, split_reasoning
from .constrain import (
    CLOSED_STOPS,
    CONSTRAIN_MODES,
    STOP_REASONS,
    THINK_CLOSE,
    LoopGuard,
    close_stopped,
    complete_required,
    is_think_prefix,
    resume_loops,
    stream_post,
)
from .io import StageError
from .labels import validate
from .llamacpp import LlamaServer
from .llm import LLMClient, LLMConfig, LLMError, LLMUnavailable, run_concurrently, run_sync
from .spec import DISTILL_CONFIG, find_training_config, load_config, parse_model
from .tasks import Task, load_task
from .train.data import render_prompt

log = logging.getLogger("distill.infer")

CHARS_PER_TOKEN = 3  # truncation estimate when no tokenizer is available (openai: backends)
DEFAULT_CONTEXT = 8192  # cap on the automatic context (the model's window); --context overrides


@dataclass
class Prediction:
    text: str                          # the input text as given
    prompt_messages: list[dict]        # the chat messages sent (after any truncation)
    raw: str = ""                      # model output as generated
    reasoning: str | None = None       # <think> text, if any
    answer: str = ""                   # raw without reasoning
    output: dict | None = None         # parsed JSON (None if it did not parse)
    parse_error: str | None = None     # why there is no output: empty, no_json, bad_json, length, http_400, ...
    schema_errors: list[str] = field(default_factory=list)
    truncated_input: bool = False
    kept_chars: int | None = None      # characters of the input the prompt holds (< len(text) when truncated)
    latency_s: float = 0.0
    repaired: bool = False             # JSON needed json-repair to parse
    finish_reason: str | None = None   # stop | length
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    output_tokens: list[int] | None = None  # generated token ids (local backends), for equivalence checks
    stopped: str | None = None         # why generation was cut: repetition | max_items (loop guard) | length
    resumed: int = 0                   # times decoding went on after the guard closed a loop (constrain.resume_loops)

    @property
    def valid(self) -> bool:
        """Parsed and schema-valid: the only answers 08 writes as results."""
        return self.output is not None and not self.schema_errors and self.parse_error is None

    @property
    def error(self) -> str | None:
        """One line saying why the answer is not valid (None if valid)."""
        if self.parse_error:
            return self.parse_error
        if self.schema_errors:
            return "schema: " + "; ".join(self.schema_errors[:5])
        return None


# ------------------------------------------------------------------ training configs and tasks

def task_for_config(dcfg: dict, task: Task | None = None) -> Task:
    """The task with the prompt the model was trained on (system prompt and user template from the config)."""
    if task is None:
        name = dcfg.get("task")
        if not name:
            raise StageError("the training config names no task: pass --task")
        task = load_task(name)
    system, user = dcfg.get("system_prompt"), dcfg.get("user_template")
    if system is None or user is None:
        return task
    if (system, user) != (task.student_system_prompt, task.student_user_template):
        log.warning("task %s's prompt differs from the one saved at training; using the saved prompt", task.name)
    return dataclasses.replace(task, student_system_prompt=system, student_user_template=user)


# ------------------------------------------------------------------ answers

def closed_stopped_answer(answer: str, schema: dict) -> tuple[dict | None, list[str]]:
    """An answer that was stopped (the loop guard or the token limit), closed at its last complete
    field or list item (distill.constrain.close_stopped) and finished the shortest way the schema
    accepts (distill.constrain.complete_required: required fields it never reached are null or
    empty): (the object if it fits ``schema``, else None; its schema errors). An answer cut before
    its first complete member (``{"name": "Pan``, or prose with a stray ``{``) is None: finishing it
    would make an answer of nothing the model wrote."""
    obj = close_stopped(answer)
    if not obj:
        return None, []   # nothing the model wrote survives the cut: no answer, not an empty one
    obj = complete_required(obj, schema)
    errors = validate(obj, schema)
    return (None if errors else obj), errors


def complete_prediction(pred: Prediction, raw: str, task: Task, finish_reason: str | None) -> Prediction:
    """Split reasoning, parse, validate: the end of every backend's answer.

    An answer that was stopped — by the loop guard (``repetition``, ``max_items``) or by the
    token limit (``length``) — is closed at its last complete field or list item, its required
    fields never reached left empty (:func:`closed_stopped_answer`), and is a result when that
    fits the schema: what the model wrote before the stop is kept, nothing is added that says
    anything. ``stopped`` records the reason either way (07 reports the rate; an adversarial
    case answered by a stopped answer never passes), and an answer that does not close into a
    valid one keeps ``parse_error`` = the reason (with the closed answer's schema errors).
    """
    pred.raw = raw
    pred.finish_reason = finish_reason
    pred.reasoning, pred.answer = split_reasoning(raw or "")
    if finish_reason in CLOSED_STOPS:
        pred.stopped = finish_reason
        pred.output, pred.schema_errors = closed_stopped_answer(pred.answer, task.schema)
        if pred.output is None:
            pred.parse_error = finish_reason
        return pred
    # Only an object is a result 08 writes; a JSON null stays ``not_object`` here and 07 reads it
    # again as the empty answer (distill.evaluate._pred_output).
    answer = parse_answer(pred.answer, expect="object")
    if not answer.ok:
        pred.parse_error = answer.error
        return pred
    pred.output, pred.repaired = answer.value, answer.repaired
    pred.schema_errors = validate(pred.output, task.schema)
    return pred


def answer_fits(schema: dict):
    """``fits(text, finish)`` for :func:`distill.constrain.resume_loops`: whether the answer, read
    as :func:`complete_prediction` reads it (a stopped one closed and finished, a finished one
    parsed), fits ``schema``."""
    def fits(text: str, finish: str | None) -> bool:
        if finish in CLOSED_STOPS:
            return closed_stopped_answer(text, schema)[0] is not None
        answer = parse_answer(text, expect="object")
        return answer.ok and not validate(answer.value, schema)
    return fits


def _guarded(pred: Prediction, usage: dict) -> Prediction:
    """A prediction whose decoding resumed after a loop still says the guard stopped it once."""
    pred.resumed = usage.get("resumed", 0)
    if usage.get("guard") and not pred.stopped:
        pred.stopped = usage["guard"]
    return pred


def _resume_after_loop(tok, max_new: int, ids: list[int], text: str, finish: str, usage: dict,
                       generate, max_resumes: int = 2, schema: dict | None = None) -> tuple[str, str | None, dict]:
    """distill.constrain.resume_loops for a local backend: ``generate(prefix_ids, tokens_left)`` ->
    (new token ids, finish) continues the answer after the closed prefix; usage gets ``resumed``,
    ``guard``, the tokens spent and the answer's tokens. With ``schema``, a continuation whose
    result does not fit it is undone (:func:`answer_fits`)."""
    spent, last = [0], [usage["tokens"]]

    def text_ids(t: str) -> list[int]:
        return tok(t, add_special_tokens=False)["input_ids"]

    def cont(prefix: str, left: int) -> tuple[str, str, int]:
        pids = text_ids(prefix)
        more, fin = generate(pids, left)
        spent[0] += len(more)
        last[0] = pids + more
        return tok.decode(more, skip_special_tokens=True, clean_up_tokenization_spaces=False), fin, len(more)

    text, finish, info = resume_loops(text, finish, max_new, lambda t: len(text_ids(t)), cont, max_resumes,
                                      fits=answer_fits(schema) if schema is not None else None)
    return text, finish, usage | info | {"completion_tokens": usage["completion_tokens"] + spent[0],
                                         "tokens": last[0]}


# ------------------------------------------------------------------ truncation

class _Truncator:
    """Keeps the head of an input so that prompt + max_new_tokens fit in ``context`` tokens."""

    def __init__(self, task: Task, context: int | None, max_new_tokens: int, count_fn=None, prompt_fn=None):
        self.task, self.context, self.max_new = task, context, max_new_tokens
        self.count = count_fn          # text -> tokens (None: estimate from characters)
        self.prompt_tokens = prompt_fn  # messages -> prompt token count

    def budget(self) -> int | None:
        if self.context is None:
            return None
        if getattr(self, "_room", None) is not None:
            return self._room
        overhead = (self.prompt_tokens(self.task.student_messages("")) if self.prompt_tokens
                    else len(self._render_chars(self.task.student_messages(""))) // CHARS_PER_TOKEN + 16)
        room = self.context - self.max_new - overhead
        if room < 16:
            raise StageError(f"context {self.context} leaves no room for the input after the prompt ({overhead} tokens) "
                             f"and --max-new-tokens {self.max_new}: raise --context or lower --max-new-tokens")
        self._room = room
        return room

    @staticmethod
    def _render_chars(messages: list[dict]) -> str:
        return "".join(m["content"] for m in messages)

    def __call__(self, text: str, tokenizer=None) -> tuple[str, bool]:
        room = self.budget()
        if room is None:
            return text, False
        if tokenizer is None:
            limit = room * CHARS_PER_TOKEN
            return (text, False) if len(text) <= limit else (text[:limit], True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= room:
            return text, False
        cut = tokenizer.decode(ids[:room], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # Decoding then re-encoding can merge differently at the cut; shrink until it fits.
        while len(tokenizer(cut, add_special_tokens=False)["input_ids"]) > room and cut:
            cut = cut[: max(0, len(cut) - 8)]
        return cut, True


# ------------------------------------------------------------------ backends

class _Backend:
    name = "?"
    batch = 1  # items per call of generate_many (HF) / parallel requests (servers)

    def prepare(self, text: str) -> tuple[list[dict], bool, int]:
        """(messages, truncated, characters of the input kept)."""
        raise NotImplementedError

    is_async = False  # True: agenerate() runs on distill.llm's event loop

    def generate(self, messages: list[dict]) -> tuple[str, str | None, dict]:
        raise NotImplementedError

    async def agenerate(self, messages: list[dict]) -> tuple[str, str | None, dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HFBackend(_Backend):
    """transformers (+ PEFT adapter); greedy, left-padded batches."""

    def __init__(self, model, tok, task: Task, max_new_tokens: int, batch: int, context: int,
                 constrain: str = "schema", allow_think: bool = False, resumes: int = 2):
        from .constrain_hf import HFConstraint

        self.name, self.resumes = "transformers", resumes
        self.model, self.tok, self.task = model, tok, task
        self.max_new, self.batch, self.context = max_new_tokens, max(1, batch), context
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        vocab = model.get_output_embeddings().weight.shape[0]
        self.constraint = HFConstraint(tok, vocab, task.schema, allow_think) if constrain == "schema" else None
        self.guard = LoopGuard(task.schema)
        self.trunc = _Truncator(task, context, max_new_tokens, prompt_fn=lambda m: len(self._ids(m)))

    def render(self, messages: list[dict]) -> str:
        return render_prompt(self.tok, messages, self.tok.chat_template)

    def _ids(self, messages: list[dict]) -> list[int]:
        # Training tokenised the rendered conversation with add_special_tokens=False (the
        # template itself writes any BOS); the same here, so prompt tokens match training.
        return self.tok(self.render(messages), add_special_tokens=False)["input_ids"]

    def prepare(self, text: str) -> tuple[list[dict], bool, int]:
        cut, truncated = self.trunc(text, self.tok)
        return self.task.student_messages(cut), truncated, len(cut)

    def eos_ids(self) -> list[int]:
        ids = {self.tok.eos_token_id}
        cfg_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])
        return [i for i in ids if i is not None]

    def generate_many(self, batch: list[list[dict]]) -> list[tuple[str, str, dict]]:
        import torch

        prompts = [self._ids(m) for m in batch]
        width = max(len(p) for p in prompts)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        eos = self.eos_ids()
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from .constrain_hf import GuardCriteria

        guard = GuardCriteria(self.guard, self.tok, width, len(batch), eos)
        procs = [self.constraint.processor(width, len(batch), eos)] if self.constraint is not None else []
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=self.max_new,
                                      do_sample=False, eos_token_id=eos, pad_token_id=pad,
                                      logits_processor=LogitsProcessorList(procs),
                                      stopping_criteria=StoppingCriteriaList([guard]))
        results = []
        for k, (p, row) in enumerate(zip(prompts, out[:, width:].tolist())):
            stop = next((i for i, t in enumerate(row) if t in eos), None)
            gen = row[:stop] if stop is not None else row
            finish = "stop" if stop is not None else "length"
            if guard.reasons[k] is not None:
                gen, finish = row[:guard.lengths[k]], guard.reasons[k]
            text = self.tok.decode(gen, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            usage = {"prompt_tokens": len(p), "completion_tokens": len(gen), "tokens": gen}
            if finish in STOP_REASONS:
                text, finish, usage = self._resume(p, text, finish, usage)
            results.append((text, finish, usage))
        return results

    def _generate_one(self, ids: list[int], max_new: int, prefix: list[int]) -> tuple[list[int], str]:
        """One row after ``prefix`` (answer tokens already written): (new tokens, finish). Under the
        schema the matcher consumes the prefix first, so the continuation stays valid JSON."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from .constrain_hf import GuardCriteria

        eos = self.eos_ids()
        full = ids + prefix
        width = len(full)
        guard = GuardCriteria(self.guard, self.tok, width, 1, eos)
        procs = []
        if self.constraint is not None and not self.constraint.allow_think:
            proc = self.constraint.processor(width, 1, eos)
            if proc.matchers[0].consume_tokens(prefix):
                procs = [proc]
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([full]), attention_mask=torch.ones(1, width, dtype=torch.long),
                                      max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                                      pad_token_id=self.tok.pad_token_id, logits_processor=LogitsProcessorList(procs),
                                      stopping_criteria=StoppingCriteriaList([guard]))
        row = out[0, width:].tolist()
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        if guard.reasons[0] is not None:
            return row[:guard.lengths[0]], guard.reasons[0]
        return (row[:stop], "stop") if stop is not None else (row, "length")

    def _resume(self, ids: list[int], text: str, finish: str, usage: dict) -> tuple[str, str | None, dict]:
        """Past a loop, one row at a time, under the schema when constrained."""
        return _resume_after_loop(self.tok, self.max_new, ids, text, finish, usage,
                                  lambda pids, left: self._generate_one(ids, left, pids), self.resumes,
                                  self.task.schema)


class _ServerBackend(_Backend):
    """An OpenAI-compatible server, optionally a llama.cpp server fed token ids of our own rendering."""

    def __init__(self, client, task: Task, max_new_tokens: int, concurrency: int, context: int | None,
                 tokenizer=None, server=None, name: str = "openai", constrain: str = "schema",
                 allow_think: bool = False, resumes: int = 2):
        self.name, self.resumes = name, resumes
        self.schema = task.schema if constrain == "schema" else None
        self.allow_think, self.guard = allow_think, LoopGuard(task.schema)
        # llama.cpp /completion: reuse the KV cache of the prompt prefix a slot already holds (the
        # system turn); bench/bench_serving.py measures it against off.
        self.cache_prompt = True
        self.client, self.task, self.max_new = client, task, max_new_tokens
        self.batch = max(1, concurrency)
        self.tok, self.server = tokenizer, server
        self.eos_ids = {tokenizer.eos_token_id} if tokenizer is not None else set()
        prompt_fn = (lambda m: len(self._ids(m))) if tokenizer is not None else None
        self.trunc = _Truncator(task, context, max_new_tokens, prompt_fn=prompt_fn)

    def _ids(self, messages: list[dict]) -> list[int]:
        return self.tok(render_prompt(self.tok, messages, self.tok.chat_template), add_special_tokens=False)["input_ids"]

    def prepare(self, text: str) -> tuple[list[dict], bool, int]:
        cut, truncated = self.trunc(text, self.tok)
        return self.task.student_messages(cut), truncated, len(cut)

    @property
    def is_async(self) -> bool:
        """openai: replies come from the client's event loop (distill.llm), many in flight at once."""
        return self.tok is None

    async def agenerate(self, messages: list[dict]) -> tuple[str, str | None, dict]:
        """openai: the schema goes as response_format (LLMClient probes json_schema, json_object +
        schema, none). Not streamed: the loop guard classifies the finished reply."""
        try:
            c = await self.client.acomplete(messages, response_schema=self.schema)
        except LLMError as exc:
            if exc.completion is not None:  # length / empty: the server did answer
                c = exc.completion
                raw = (f"<think>{c.reasoning}</think>\n" if c.reasoning else "") + c.content
                # a reply that ran to the limit because it loops is counted as the loop it is
                return raw, self.guard.check(raw) or c.finish_reason or exc.reason, c.usage
            raise
        raw = (f"<think>{c.reasoning}</think>\n" if c.reasoning else "") + c.content
        return raw, self.guard.check(raw) or c.finish_reason, c.usage

    def generate(self, messages: list[dict]) -> tuple[str, str | None, dict]:
        if self.tok is None:
            return run_sync(self.agenerate(messages))
        # llama.cpp /completion with the training prompt as token ids: exact tokens, no second BOS,
        # no dependence on the GGUF's embedded template.
        # The answer comes back as token ids and is decoded by the training tokenizer, exactly as
        # the transformers backend decodes: a GGUF whose embedded vocabulary metadata decodes
        # differently (seen with GGUFs converted from GGUF-derived folders) cannot change the text.
        # Streamed, so that the loop guard can drop the connection (llama-server then stops the slot).
        ids = self._ids(messages)
        if self.schema is not None and self.allow_think:
            # Reasoning-first: the reasoning runs free; the JSON after </think> is a constrained continuation.
            think, finish = self._stream(ids, self.max_new, None, think=True)
            if finish == "think_done":
                rest, finish = self._stream(ids + think, self.max_new - len(think), self.schema)
                tokens = think + rest
            elif finish == "not_think":
                tokens, finish = self._stream(ids, self.max_new, self.schema)
            else:
                tokens = think
        else:
            tokens, finish = self._stream(ids, self.max_new, self.schema)
        text = self.tok.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "tokens": tokens}
        if finish in STOP_REASONS:
            text, finish, usage = self._resume(ids, text, finish, usage)
        return text, finish, usage

    def _resume(self, ids: list[int], text: str, finish: str, usage: dict) -> tuple[str, str | None, dict]:
        """Past a loop: a free continuation (llama.cpp cannot start a grammar in the middle of an
        object), validated after like every answer."""
        return _resume_after_loop(self.tok, self.max_new, ids, text, finish, usage,
                                  lambda pids, left: self._stream(ids + pids, left, None), self.resumes,
                                  self.task.schema)

    def _stream(self, ids: list[int], n_predict: int, schema: dict | None, think: bool = False) -> tuple[list[int], str]:
        """One streamed /completion: (generated tokens without EOS, finish). finish: stop | length |
        repetition | max_items, and with ``think``: not_think (the answer does not open with <think>)
        or think_done (</think> was written)."""
        if n_predict < 1:
            return [], "length"
        body = {"prompt": ids, "n_predict": n_predict, "temperature": 0.0, "top_k": 1,
                "cache_prompt": self.cache_prompt, "return_tokens": True}
        if schema is not None:
            body["json_schema"] = schema
        tokens: list[int] = []
        state = {"finish": "stop"}

        def on_event(ev: dict) -> bool:
            tokens.extend(t for t in ev.get("tokens") or [] if t not in self.eos_ids)
            if ev.get("stop"):
                state["finish"] = "length" if ev.get("stop_type") == "limit" else "stop"
                return True
            if not ev.get("tokens"):
                return False
            if think or len(tokens) % 4 == 0:
                text = self.tok.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if think and not is_think_prefix(text):
                    state["finish"] = "not_think"
                    return True
                if think and THINK_CLOSE in text:
                    state["finish"] = "think_done"
                    return True
                reason = self.guard.check(text)
                if reason is not None:
                    state["finish"] = reason
                    return True
            return False

        stream_post(self.client, self.server.root_path("/completion"), body, on_event)
        return tokens, state["finish"]

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.__exit__(None, None, None)


class _LlamaServerHandle:
    """A started distill.llamacpp.LlamaServer plus the URL helpers this module needs."""

    def __init__(self, gguf: Path, n_parallel: int, ctx: int, threads: int | None = None,
                 server_args: Sequence[str] = ()):
        self._cm = LlamaServer(str(gguf), n_parallel=n_parallel, ctx=ctx, threads=threads, extra_args=server_args)
        self._srv = self._cm.__enter__()
        base = (getattr(self._srv, "base_url", None) or self._cm.base_url).rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.root = self.base_url[: -len("/v1")]

    def root_path(self, path: str) -> str:
        # LLMClient's httpx client has base_url .../v1; llama.cpp's native endpoints live at the root.
        return self.root + path

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


# ------------------------------------------------------------------ predictor

class Predictor:
    """Runs one model on texts; see the module docstring. Use as a context manager or call close()."""

    def __init__(self, backend: _Backend, task: Task, spec: str, info: dict):
        self.backend, self.task, self.spec, self.info = backend, task, spec, info
        try:
            backend.trunc.budget()  # a context too small for prompt + answer fails now, not per input
        except BaseException:
            backend.close()
            raise

    @property
    def name(self) -> str:
        return self.backend.name

    def _start(self, text: str) -> tuple[Prediction, list[dict]]:
        messages, truncated, kept = self.backend.prepare(text)
        return Prediction(text=text, prompt_messages=messages, truncated_input=truncated, kept_chars=kept), messages

    def _failed(self, pred: Prediction, t0: float, exc: Exception) -> Prediction:
        if isinstance(exc, LLMUnavailable) or not isinstance(exc, LLMError):
            raise exc  # unreachable servers and bugs stop the run; request failures are per input
        pred.parse_error, pred.latency_s = exc.reason, time.monotonic() - t0
        return pred

    def _finish(self, pred: Prediction, t0: float, raw: str, finish: str | None, usage: dict) -> Prediction:
        pred.latency_s = time.monotonic() - t0
        pred.prompt_tokens, pred.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        pred.output_tokens = usage.get("tokens")
        return _guarded(complete_prediction(pred, raw, self.task, finish), usage)

    def _one(self, text: str) -> Prediction:
        pred, messages = self._start(text)
        t0 = time.monotonic()
        try:
            out = self.backend.generate(messages)
        except Exception as exc:  # noqa: BLE001 - sorted by _failed
            return self._failed(pred, t0, exc)
        return self._finish(pred, t0, *out)

    async def _aone(self, text: str) -> Prediction:
        pred, messages = self._start(text)
        t0 = time.monotonic()
        try:
            out = await self.backend.agenerate(messages)
        except Exception as exc:  # noqa: BLE001 - sorted by _failed
            return self._failed(pred, t0, exc)
        return self._finish(pred, t0, *out)

    def predict_iter(self, texts: list[str], progress: bool = True, desc: str = "extracting") -> Iterator[tuple[int, Prediction]]:
        """Yield (index, Prediction) as each input finishes (completion order for servers)."""
        from tqdm.auto import tqdm

        items = list(enumerate(texts))
        if isinstance(self.backend, _HFBackend):
            bar = tqdm(total=len(items), desc=desc, unit="input", disable=not progress, dynamic_ncols=True)
            try:
                for start in range(0, len(items), self.backend.batch):
                    chunk = items[start:start + self.backend.batch]
                    prepared = [self.backend.prepare(t) for _, t in chunk]
                    t0 = time.monotonic()
                    outs = self.backend.generate_many([p[0] for p in prepared])
                    dt = (time.monotonic() - t0) / len(chunk)
                    for (i, text), (msgs, trunc, kept), (raw, finish, usage) in zip(chunk, prepared, outs):
                        pred = Prediction(text=text, prompt_messages=msgs, truncated_input=trunc, kept_chars=kept,
                                          latency_s=dt,
                                          prompt_tokens=usage["prompt_tokens"],
                                          completion_tokens=usage["completion_tokens"], output_tokens=usage["tokens"])
                        bar.update(1)
                        yield i, _guarded(complete_prediction(pred, raw, self.task, finish), usage)
            finally:
                bar.close()
            return
        # Servers: --concurrency requests in flight (coroutines on the client's event loop for
        # openai:, daemon threads for llama.cpp's streamed endpoint), results in completion order
        # so each one can be written at once; Ctrl-C abandons what is in flight.
        if self.backend.is_async:
            async def one(item: tuple[int, str]) -> Prediction:
                return await self._aone(item[1])
        else:
            def one(item: tuple[int, str]) -> Prediction:
                return self._one(item[1])

        # errors per input are Predictions; whatever raises is fatal
        for (i, _), pred in run_concurrently(items, one, concurrency=self.backend.batch, desc=desc,
                                             fatal=(Exception,), progress=progress, unit="input"):
            yield i, pred

    def predict(self, texts: list[str], progress: bool = True) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(texts)
        for i, pred in self.predict_iter(texts, progress=progress):
            out[i] = pred
        return out  # type: ignore[return-value]

    def render_prompt(self, text: str) -> str | None:
        """The exact prompt string for ``text`` when this backend renders it itself (None: the server does)."""
        b = self.backend
        tok = getattr(b, "tok", None)
        if tok is None:
            return None
        messages = b.prepare(text)[0]
        return render_prompt(tok, messages, tok.chat_template)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------ loading

def _context_default(dcfg: dict | None, model_max: int | None) -> int:
    """The model's own context window, at most DEFAULT_CONTEXT tokens (KV cache memory and CPU time
    grow with it; --context raises it). Not the training --max-seq-length: that bounds prompt + answer
    of the training rows, not what the model can read."""
    if isinstance(model_max, int) and model_max > 0:
        return min(model_max, DEFAULT_CONTEXT)
    return DEFAULT_CONTEXT


def _allow_think(dcfg: dict | None) -> bool:
    """Reasoning-first decoding (``<think>`` may open the answer) for models trained with reasoning kept."""
    return dcfg is not None and dcfg.get("reasoning", "keep") == "keep"


def load_hf(spec: str, *, model_id: str | None = None, task: Task | None = None, max_new_tokens: int = 1024,
            concurrency: int = 1, context: int | None = None, constrain: str = "schema",
            resumes: int = 2) -> Predictor:
    """A trained folder (adapter or merged) or a base model through transformers (spec kinds trained, base)."""
    cfg_path = find_training_config(spec) if Path(spec).is_dir() else None
    if cfg_path is not None and cfg_path.parent == Path(spec):
        from distill.train.core import load_for_inference

        model, tok, dcfg = load_for_inference(spec)
        task = task_for_config(dcfg, task)
        kind = "adapter" if (Path(spec) / "adapter_config.json").exists() else "merged"
    else:
        if task is None:
            raise StageError(f"{spec} is not a folder trained by 05_finetune.py (no {DISTILL_CONFIG}): pass --task "
                             f"to run it as a base model with the task's student prompt")
        from transformers import AutoModelForCausalLM

        from distill.train.models import load_tokenizer, resolve_model

        path = resolve_model(spec)
        tok = load_tokenizer(path)
        if not tok.chat_template:
            raise StageError(f"{spec}: the tokenizer has no chat template (a base model, not an instruct model?)")
        model = AutoModelForCausalLM.from_pretrained(path)
        model.eval()
        dcfg, kind = None, "base"
    model_max = getattr(model.config, "max_position_embeddings", None)
    ctx = context or _context_default(dcfg, model_max)
    backend = _HFBackend(model, tok, task, max_new_tokens, concurrency, ctx, constrain, _allow_think(dcfg), resumes)
    return Predictor(backend, task, spec, {"backend": "transformers", "kind": kind, "context": ctx,
                                           "training_config": dcfg is not None, "constrain": constrain,
                                           "resume_loops": resumes})


def training_tokenizer(cfg_path: Path, dcfg: dict):
    """The tokenizer saved with a training run, rendering the exact chat template of training."""
    from transformers import AutoTokenizer  # deferred: heavy, not on the --help path

    tok = AutoTokenizer.from_pretrained(cfg_path.parent)
    tok.chat_template = dcfg["chat_template"]
    return tok


def gguf_context_length(gguf: Path) -> int | None:
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(gguf))
        for key, f in r.fields.items():
            if key.endswith(".context_length"):
                return int(f.parts[f.data[0]][0])
    except Exception:  # noqa: BLE001 - metadata is a nicety; the server still knows its own limit
        return None
    return None


def load_gguf(spec: str, *, model_id: str | None = None, task: Task | None = None, max_new_tokens: int = 1024,
              concurrency: int = 1, context: int | None = None, constrain: str = "schema",
              resumes: int = 2, threads: int | None = None, server_args: Sequence[str] = ()) -> Predictor:
    """A GGUF through a llama-server started for the run (spec kind gguf). ``threads`` and
    ``server_args`` go to :class:`distill.llamacpp.LlamaServer` (bench/bench_serving.py sweeps them)."""
    gguf = Path(spec)
    if not gguf.is_file():
        raise StageError(f"{spec}: no such GGUF file")
    cfg_path = find_training_config(gguf)
    tok, dcfg = None, None
    if cfg_path is not None:
        dcfg = load_config(cfg_path)
        task = task_for_config(dcfg, task)
        tok = training_tokenizer(cfg_path, dcfg)
    elif task is None:
        raise StageError(f"no {DISTILL_CONFIG} next to {spec} (or in the two folders above): pass --task to run it as "
                         f"a base model with the task's student prompt")
    ctx = context or _context_default(dcfg, gguf_context_length(gguf))
    n = max(1, concurrency)
    # llama-server splits -c across its slots: give every slot the full per-input context.
    server = _LlamaServerHandle(gguf, n_parallel=n, ctx=ctx * n, threads=threads, server_args=server_args)
    client = LLMClient(LLMConfig(base_url=server.base_url, model=gguf.stem, temperature=0.0,
                                 max_tokens=max_new_tokens, concurrency=n, timeout=600.0, retries=2,
                                 # a base GGUF goes through /v1/chat/completions: the schema as response_format
                                 response_format="json_schema" if constrain == "schema" else "prompt"))
    backend = _ServerBackend(client, task, max_new_tokens, n, ctx, tokenizer=tok, server=server, name="llama.cpp",
                             constrain=constrain, allow_think=_allow_think(dcfg), resumes=resumes)
    return Predictor(backend, task, spec, {"backend": "llama.cpp", "kind": "gguf", "context": ctx,
                                           "training_config": dcfg is not None, "constrain": constrain,
                                           "resume_loops": resumes,
                                           "prompt": "training template, token ids" if tok is not None
                                           else "the GGUF's chat template"})


def load_openai(spec: str, *, model_id: str | None = None, task: Task | None = None, max_new_tokens: int = 1024,
                concurrency: int = 1, context: int | None = None, constrain: str = "schema",
                resumes: int = 2) -> Predictor:
    """Any OpenAI-compatible server (spec kind openai); a chat API cannot continue a partial reply,
    so ``resumes`` does not apply."""
    url = spec[len("openai:"):]
    if not url.startswith(("http://", "https://")):
        raise StageError(f"--model {spec}: expected openai:http://host:port/v1")
    if task is None:
        raise StageError("an openai: model needs --task (a task name, or the trained folder whose prompt it was "
                         "trained with)")
    client = LLMClient(LLMConfig(base_url=url, model=model_id or "", temperature=0.0, max_tokens=max_new_tokens,
                                 concurrency=max(1, concurrency), retries=2,
                                 response_format="auto" if constrain == "schema" else "prompt"))
    backend = _ServerBackend(client, task, max_new_tokens, concurrency, context, name="openai", constrain=constrain)
    pred = Predictor(backend, task, spec, {"backend": "openai", "kind": "server", "url": url, "context": context,
                                           "constrain": constrain})
    try:
        client.ping()  # a server that is down fails here, once, with what to do
    except BaseException:
        pred.close()
        raise
    pred.info["model_id"] = client.model
    return pred


def load_predictor(spec: str, *, model_id: str | None = None, task: Task | None = None, max_new_tokens: int = 1024,
                   concurrency: int = 1, context: int | None = None, constrain: str = "schema",
                   resumes: int = 2, threads: int | None = None) -> Predictor:
    """A Predictor for ``spec`` (trained folder, .gguf, openai:URL, or base model + task); see the module docstring.

    ``threads``: llama-server's threads for a ``.gguf`` (None: :func:`distill.llamacpp.default_threads`);
    an error for other kinds, which have no such server.

    ``constrain``: ``schema`` decodes under the task's JSON Schema, ``none`` decodes freely (distill.constrain).
    ``resumes``: times a local model's decoding goes on after the loop guard closed a repeating list
    (distill.constrain.resume_loops); 0 ends the answer at the loop. An ``openai:`` model is never resumed."""
    if constrain not in CONSTRAIN_MODES:
        raise StageError(f"constrain must be one of {', '.join(CONSTRAIN_MODES)}, got {constrain!r}")
    if max_new_tokens < 1:
        raise StageError("max_new_tokens must be at least 1")
    if resumes < 0:
        raise StageError(f"resume_loops must be 0 or more, got {resumes}")
    if context is not None and context < 64:
        raise StageError("context must be at least 64 tokens")
    ms = parse_model(spec, model_id)
    extra = {}
    if threads is not None:
        if ms.kind != "gguf":
            raise StageError(f"--threads sets llama-server's threads: it applies to a .gguf model, not to {spec}")
        if threads < 1:
            raise StageError(f"--threads must be at least 1, got {threads}")
        extra["threads"] = threads
    return ms.opener()(ms.value, model_id=model_id, task=task, max_new_tokens=max_new_tokens,
                       concurrency=concurrency, context=context, constrain=constrain, resumes=resumes, **extra)


def resolve_task(value: str | None) -> Task | None:
    """--task: a task name/folder, or a trained folder whose saved prompt should be used (openai: students)."""
    if not value:
        return None
    cfg = find_training_config(value) if Path(value).is_dir() and not (Path(value) / "task.yaml").exists() else None
    if cfg is not None:
        return task_for_config(load_config(cfg))
    return load_task(value)
