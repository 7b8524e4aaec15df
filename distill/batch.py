"""Batch files: teacher requests for 02 and 03 written out and read back instead of sent live.

For very large runs the same requests can go through ``vllm run-batch`` on a GPU machine or a
hosted Batch API (about half the price of live calls) instead of a server the stage talks to:

1. ``02/03 ... --batch-out requests.jsonl``: every pending request (what a live run would send
   now) as one line of the OpenAI Batch input format, ``custom_id`` = the item's id; the stage
   writes nothing else and stays unfinished (no manifest).
2. the file runs elsewhere, e.g. ``vllm run-batch -i requests.jsonl -o replies.jsonl --model M``.
3. ``02/03 ... --batch-in replies.jsonl`` (same flags as step 1): the replies are filed exactly as
   live replies are (03 verifies them against the source record); an item whose reply is
   missing or failed is a failure with a reason, retried by the next run, live or batched.

Only the first request of an item is batched: 03's ``--feedback-rounds`` continue a conversation
with the teacher's answer, so they run live (a later run without the batch flags).
"""
from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Any

from .io import StageError, atomic_write_text
from .llm import (
    RESPONSE_FORMATS,
    Completion,
    LLMClient,
    LLMConfig,
    LLMError,
    chat_body,
    completion_from_reply,
    parse_chat_data,
)

BATCH_URL = "/v1/chat/completions"

# The id of the item a coroutine works on: the stages set it before the client is asked, so a
# batch client knows which line a request is (each coroutine runs in a context of its own).
current_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("distill_batch_item", default=None)


def check_flags(args, feedback_rounds: int = 0) -> str | None:
    """'out', 'in' or None for a stage's ``--batch-out`` / ``--batch-in``; bad combinations are one line."""
    out, inp = getattr(args, "batch_out", None), getattr(args, "batch_in", None)
    if out is not None and inp is not None:
        raise StageError("--batch-out writes requests and --batch-in reads replies: give one of them")
    if out is None and inp is None:
        return None
    if not args.model:
        raise StageError("--batch-out/--batch-in need --model: the batch names the model, and it is part of "
                         "every item's cache key (no server is asked which model it serves)")
    if feedback_rounds:
        raise StageError("--feedback-rounds continue a conversation with the teacher's answer, so they run live: "
                         "label with --batch-in first, then run 03 --feedback-rounds N without the batch flags")
    if inp is not None and not Path(inp).is_file():
        raise StageError(f"--batch-in {inp}: no such file")
    if out is not None and Path(out).is_dir():
        raise StageError(f"--batch-out {out} is a folder: give the file to write, e.g. requests.jsonl")
    return "out" if out is not None else "in"


def _mode(cfg: LLMConfig, schema: dict | None) -> str:
    if schema is None:
        return "prompt"
    # A batch engine is told the format up front (there is no probing a file): json_schema unless forced.
    return cfg.response_format if cfg.response_format in RESPONSE_FORMATS else "json_schema"


class _BatchClient:
    """What 02/03 use of distill.llm.LLMClient, for a run without a server."""

    def __init__(self, cfg: LLMConfig):
        self.config, self.model = cfg, cfg.model

    def ping(self) -> list[str]:
        return [self.model]

    def endpoint_stats(self) -> list[dict]:
        return []

    def endpoint_summary(self) -> str | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _id(self) -> str:
        item = current_id.get()
        if item is None:
            raise RuntimeError("a batch request outside an item (distill.batch.current_id is not set)")
        return item


class BatchWriter(_BatchClient):
    """Collects each request as a Batch input line and answers it with LLMError('batched')."""

    def __init__(self, cfg: LLMConfig):
        super().__init__(cfg)
        self.lines: dict[str, dict] = {}

    async def acomplete(self, messages: list[dict], response_schema: dict | None = None,
                        seed: int | None = None) -> Completion:
        item = self._id()
        if item in self.lines:
            raise LLMError("batched", "a second request of one item cannot be batched")
        body = chat_body(self.config, self.model, messages, response_schema, _mode(self.config, response_schema), seed)
        self.lines[item] = {"custom_id": item, "method": "POST", "url": BATCH_URL, "body": body}
        raise LLMError("batched", "written to the batch file")

    def write(self, path: Path) -> int:
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in self.lines.values())
        atomic_write_text(Path(path), text)
        return len(self.lines)


def read_batch_output(path: Path) -> dict[str, dict]:
    """custom_id -> output line of a Batch output file (OpenAI's format, which vLLM's run-batch writes)."""
    replies: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise StageError(f"{path} line {n}: not JSON ({exc.msg}): is it a Batch output file?") from None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                raise StageError(f"{path} line {n}: no custom_id: not a Batch output line")
            if "response" not in line and "error" not in line:
                raise StageError(f"{path} line {n}: neither response nor error: a Batch input file, not its output?")
            replies[line["custom_id"]] = line
    return replies


class BatchReader(_BatchClient):
    """Answers each item's request from a Batch output file, as a live reply would be."""

    def __init__(self, cfg: LLMConfig, path: Path):
        super().__init__(cfg)
        self.path = Path(path)
        self.replies = read_batch_output(self.path)
        self.used: set[str] = set()

    async def acomplete(self, messages: list[dict], response_schema: dict | None = None,
                        seed: int | None = None) -> Completion:
        item = self._id()
        line = self.replies.get(item)
        if line is None or item in self.used:
            raise LLMError("not_in_batch", f"no reply for {item} in {self.path.name}")
        self.used.add(item)
        if line.get("error"):
            err = line["error"]
            raise LLMError("batch_error", str(err.get("message", err) if isinstance(err, dict) else err)[:300])
        resp = line.get("response") or {}
        status = resp.get("status_code", 200)
        if status != 200:
            raise LLMError(f"http_{status}", json.dumps(resp.get("body"), default=str)[:300])
        body = resp.get("body")
        return completion_from_reply(parse_chat_data(body), _mode(self.config, response_schema),
                                     self.config.max_tokens)

    def unused(self) -> list[str]:
        return sorted(set(self.replies) - self.used)


def report_out(writer: "BatchWriter", args) -> None:
    """Write --batch-out's file and say how to run it and read it back."""
    n = writer.write(args.batch_out)
    print(f"wrote {n} requests to {args.batch_out} (OpenAI Batch input format); run them, e.g.\n"
          f"  vllm run-batch -i {args.batch_out} -o replies.jsonl --model {args.model}\n"
          f"then re-run this command with --batch-in replies.jsonl instead of --batch-out")


def report_unused(reader: "BatchReader", args, done: str) -> None:
    if reader.unused():
        print(f"note: {len(reader.unused())} replies in {args.batch_in} match no pending input "
              f"({done}, or from another run): ignored")


def client_for(args, cfg: LLMConfig, mode: str | None):
    """The stage's teacher client: a live distill.llm.LLMClient, or a batch writer / reader."""
    if mode == "out":
        return BatchWriter(cfg)
    if mode == "in":
        return BatchReader(cfg, args.batch_in)
    return LLMClient(cfg)
