"""Shared command-line pieces: the teacher/server flags and the error wrapper."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from .io import StageError

# argparse types: a bad value becomes argparse's one-line "error: argument --x: ..." and exit 2.

def non_negative_int(text: str) -> int:
    """0 or more (``--limit``/``--skip``: a negative value would silently take a tail)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str, ok, why: str, expected: str = "a number") -> float:
    """``text`` as a float that passes ``ok``; else argparse's one-line error ``why``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{why}, got {text}")
    return value


def positive_float(text: str) -> float:
    return _number(text, lambda v: 0 < v < float("inf"), "must be a number of seconds above 0")


def non_negative_float(text: str) -> float:
    """0 or more seconds (``--endpoint-cooldown``; 0 turns it off)."""
    return _number(text, lambda v: 0 <= v < float("inf"), "must be a number of seconds, 0 or more")


def fraction(text: str) -> float:
    """A share from 0 to 1 (``--abstention-share``)."""
    return _number(text, lambda v: 0 <= v <= 1, "must be from 0 to 1", expected="a number from 0 to 1")


def http_url(text: str) -> str:
    """An http(s) URL with a host: ``localhost:1234/v1`` is refused with the fix, not sent to httpx."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f"; did you mean http://{text.strip()}" if "://" not in text else ""
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}{hint}")
    return text.strip()


class _AppendURL(argparse.Action):
    """``--base-url`` given several times collects the URLs; the first one given replaces the
    default (argparse's ``append`` would add to it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        urls = getattr(namespace, self.dest)
        urls = [] if urls is self.default else list(urls)
        if values in urls:
            parser.error(f"argument {option_string}: {values} is given twice")
        setattr(namespace, self.dest, [*urls, values])


def add_llm_args(p: argparse.ArgumentParser, *, default_max_tokens: int = 2048) -> None:
    # Deferred: only the scripts that talk to a teacher (02, 03) import the client.
    from .llm import LLMConfig

    defaults = LLMConfig()  # the LM Studio defaults (URL, key) live in the client's config
    g = p.add_argument_group("teacher server (any OpenAI-compatible endpoint)")
    g.add_argument("--base-url", type=http_url, action=_AppendURL, metavar="URL",
                   default=[os.environ.get("OPENAI_BASE_URL") or defaults.base_url],
                   help="server URL: LM Studio http://localhost:1234/v1 (default, or $OPENAI_BASE_URL), Ollama "
                        "http://localhost:11434/v1, vLLM http://localhost:8000/v1, llama-server "
                        "http://localhost:8080/v1. Give it several times for several servers of the same model: "
                        "each request goes to the one with the fewest in flight, and one that fails is skipped "
                        "for --endpoint-cooldown seconds while its requests go to the others")
    g.add_argument("--endpoint-cooldown", type=non_negative_float, default=defaults.endpoint_cooldown,
                   metavar="SECONDS",
                   help="with several --base-url: how long an endpoint that cannot be reached or answers 5xx "
                        "(after --retries) is skipped (default: %(default)g; 0 = never skipped)")
    g.add_argument("--model", default="",
                   help="model id as the server names it, e.g. qwen3-14b (default: the first model the server lists)")
    g.add_argument("--api-key", default=defaults.api_key,
                   help="API key (default: $OPENAI_API_KEY, else 'lm-studio'; local servers ignore it)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    g.add_argument("--max-tokens", type=positive_int, default=default_max_tokens,
                   help="token limit per reply; a reply cut off at the limit is rejected, not used")
    g.add_argument("--timeout", type=positive_float, default=300.0, help="seconds to wait for one reply")
    g.add_argument("--retries", type=non_negative_int, default=4,
                   help="retries per request on connection errors, timeouts, 429 and 5xx (exponential backoff)")
    g.add_argument("--extra-body", type=json.loads, default={}, metavar="JSON",
                   help="extra request fields for server-specific sampling, e.g. '{\"repeat_penalty\": 1.15}' "
                        "for llama.cpp (small teachers loop without it)")
    g.add_argument("--concurrency", type=positive_int, default=4,
                   help="requests in flight at once; match the server's parallel slots (llama-server -np), "
                        "with several --base-url the sum of their slots")
    g = p.add_argument_group("batch files (very large runs: vllm run-batch, a hosted Batch API)")
    g.add_argument("--batch-out", type=Path, default=None, metavar="FILE.jsonl",
                   help="write every pending request to FILE in the OpenAI Batch input format (custom_id = the item "
                        "id) instead of calling a server; needs --model; the stage stays unfinished until --batch-in")
    g.add_argument("--batch-in", type=Path, default=None, metavar="FILE.jsonl",
                   help="read a Batch output file (vllm run-batch -o, or a hosted Batch API's) and file its replies "
                        "as live replies are; give the same flags as with --batch-out; see README 'Batch files'")


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
    return LLMConfig(base_urls=tuple(args.base_url), model=args.model, api_key=args.api_key,
                     temperature=args.temperature, max_tokens=args.max_tokens, timeout=args.timeout,
                     retries=args.retries, concurrency=args.concurrency, seed=seed, extra_body=args.extra_body,
                     endpoint_cooldown=args.endpoint_cooldown)


def check_train_dirs(cfg) -> None:
    """05/06: the adapter folder replaces ``--save-dir`` at the end, so it must not be the dataset,
    another stage's folder, or a folder of the user's own files."""
    from pathlib import Path

    from .io import MANIFEST, check_output_dir

    check_output_dir(cfg.save_dir, "05_finetune", [cfg.dataset_dir], flag="--save-dir")
    check_output_dir(cfg.output_dir, "05_finetune", [cfg.dataset_dir], flag="--output-dir")
    save = Path(cfg.save_dir)
    ours = (MANIFEST, "distill_config.json", "chain.json")
    if save.is_dir() and any(save.iterdir()) and not any((save / f).exists() for f in ours):
        raise StageError(f"--save-dir {save} holds files 05_finetune.py did not write, and training replaces that "
                         f"folder: pick a new or empty folder")


def _exit_now(signum, frame) -> None:
    # The second Ctrl-C: the user wants out now, not after cleanup or a traceback.
    os.write(2, b"\ninterrupted again: exiting now\n")
    os._exit(130)


def _first_interrupt(signum, frame) -> None:
    signal.signal(signal.SIGINT, _exit_now)
    raise KeyboardInterrupt


def run(main_fn: Callable[[], int]) -> int:
    """Run a stage: user errors become one line on stderr and exit code 1.

    Ctrl-C stops at once (requests in flight are abandoned on daemon threads and retried by
    the next run) with exit code 130; a second Ctrl-C during the cleanup exits immediately.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    # Installed only when Python's own handler is active: a SIGINT ignored by the parent
    # (nohup, a background job) stays ignored.
    if main_thread and previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _first_interrupt)
    try:
        return main_fn()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is saved; re-run the same command to resume.",
              file=sys.stderr)
        return 130
    finally:
        if main_thread and previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
