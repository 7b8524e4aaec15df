"""Shared command-line pieces: the teacher/server flags and the error wrapper."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from .io import StageError


def add_llm_args(p: argparse.ArgumentParser, *, default_max_tokens: int = 2048) -> None:
    g = p.add_argument_group("teacher server (any OpenAI-compatible endpoint)")
    g.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://localhost:1234/v1"),
                   help="server URL: LM Studio http://localhost:1234/v1 (default), Ollama http://localhost:11434/v1, "
                        "vLLM http://localhost:8000/v1, llama-server http://localhost:8080/v1")
    g.add_argument("--model", default="",
                   help="model id as the server names it, e.g. qwen3-14b (default: the first model the server lists)")
    g.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "lm-studio"),
                   help="API key (default: $OPENAI_API_KEY, else 'lm-studio'; local servers ignore it)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    g.add_argument("--max-tokens", type=int, default=default_max_tokens,
                   help="token limit per reply; a reply cut off at the limit is rejected, not used")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one reply")
    g.add_argument("--retries", type=int, default=4,
                   help="retries per request on connection errors, timeouts, 429 and 5xx (exponential backoff)")
    g.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON",
                   help="extra request fields for server-specific sampling, e.g. '{\"repeat_penalty\": 1.15}' "
                        "for llama.cpp (small teachers loop without it)")
    g.add_argument("--concurrency", type=int, default=4,
                   help="requests in flight at once; match the server's parallel slots (llama-server -np)")


def add_model_args(p: argparse.ArgumentParser, *, required: bool) -> argparse._ArgumentGroup:
    """The model flags shared by 07 (evaluate) and 08 (extract): both run distill.infer."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, default=None,
                   help="trained folder from 05 (adapter, or its merged/), a .gguf file (served by llama.cpp for "
                        "the run), openai:URL for a served model (with --model-id), or a base model (hub id / HF "
                        "folder) with --task")
    g.add_argument("--model-id", default=None,
                   help="model name on an openai: server, e.g. qwen3-14b (default: the first model it lists)")
    g.add_argument("--task", default=None,
                   help="task name or folder, or a trained folder whose saved prompt to use (needed for openai: "
                        "and base models; default: the task saved with the trained model, else the dataset's)")
    return g


def llm_config_from_args(args: argparse.Namespace, seed: int | None = None):
    from .llm import LLMConfig

    if args.concurrency < 1:
        raise StageError("--concurrency must be at least 1")
    if args.retries < 0:
        raise StageError("--retries must be 0 or more")
    if not isinstance(args.extra_body, dict):
        raise StageError("--extra-body must be a JSON object, e.g. '{\"repeat_penalty\": 1.15}'")
    return LLMConfig(base_url=args.base_url, model=args.model, api_key=args.api_key,
                     temperature=args.temperature, max_tokens=args.max_tokens, timeout=args.timeout,
                     retries=args.retries, concurrency=args.concurrency, seed=seed, extra_body=args.extra_body)


def run(main_fn: Callable[[], int]) -> int:
    """Run a stage: user errors become one line on stderr and exit code 1."""
    try:
        return main_fn()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is saved; re-run the same command to resume.",
              file=sys.stderr)
        return 130
