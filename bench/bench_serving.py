#!/usr/bin/env python3
"""llama.cpp serving for 07/08 on real pages: pages/min against threads, parallel slots, prompt
caching and batch size, through distill.infer exactly as 08_extract.py runs a GGUF student.

Each configuration starts its own llama-server for the student GGUF, extracts one warm-up page,
then the same --pages real pages (read by distill.pages, the reader of 08) with
``--concurrency = slots`` requests in flight. A configuration is written ``SxT`` (S slots, T
threads) with optional suffixes: ``/nocache`` (``cache_prompt: false``: every request processes the
whole prompt, the shared system turn included), ``/ubN`` (llama-server ``-ub N``, the physical
batch of prompt processing; default 512) and ``/bN`` (``-b N``, the logical batch; default 2048).

The default student is bench_extract.py's SmolLM2-135M Q8_0 (2 training updates: speed does not
depend on quality; its answers do not end by themselves, so most run into the loop guard or the
--max-new-tokens cap, and the configurations do about the same work: the completion tokens are
reported). ``--gguf`` measures your own trained student instead (its training config beside it).

Usage:
    python bench/bench_serving.py --pages-dir PAGES                    # ~25 min on 2 cores
    python bench/bench_serving.py --pages-dir PAGES --configs 1x1 2x2 2x2/nocache --pages 6 --no-write
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from bench_concurrency import update_section
from bench_extract import build_student

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## llama.cpp serving on real pages: threads, slots, prompt cache, batch (bench/bench_serving.py)"
DEFAULT_CONFIGS = ["1x1", "1x2", "2x1", "2x2", "4x2", "1x2/nocache", "2x2/nocache", "2x2/ub128", "2x2/ub2048/b2048"]
_CONFIG = re.compile(r"^(\d+)x(\d+)((?:/(?:nocache|ub\d+|b\d+))*)$")


def parse_config(text: str) -> dict:
    m = _CONFIG.match(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a configuration is SLOTSxTHREADS[/nocache][/ubN][/bN], e.g. 2x2/nocache")
    cfg = {"name": text, "slots": int(m.group(1)), "threads": int(m.group(2)), "cache": True, "args": []}
    for part in filter(None, m.group(3).split("/")):
        if part == "nocache":
            cfg["cache"] = False
        elif part.startswith("ub"):
            cfg["args"] += ["-ub", part[2:]]
        else:
            cfg["args"] += ["-b", part[1:]]
    return cfg


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages-dir", type=Path, required=True, help="saved pages: <host>/<name>.html (recursively)")
    p.add_argument("--pages", type=int, default=8, help="pages per configuration, spread evenly over the folder")
    p.add_argument("--configs", nargs="+", type=parse_config, default=[parse_config(c) for c in DEFAULT_CONFIGS],
                   help=f"configurations (default: {' '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--gguf", type=Path, default=None, help="a trained student's GGUF (default: bench_extract's SmolLM2)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the default student is built (reused)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer cap per page")
    p.add_argument("--context", type=int, default=3072, help="per-request context (the real-page students' length)")
    p.add_argument("--no-write", action="store_true", help="print the table, do not update BENCHMARKS.md")
    return p


def pick_pages(pages_dir: Path, n: int) -> list[str]:
    from distill.documents import read_document
    from distill.pages import list_pages

    paths = list_pages(pages_dir, "--pages-dir")
    step = max(1, len(paths) // n)
    return [read_document(p).text for p in paths[::step][:n]]


def measure(gguf: Path, texts: list[str], cfg: dict, max_new: int, context: int) -> dict:
    from distill.infer import load_gguf
    from distill.tasks import load_task

    t0 = time.monotonic()
    pred = load_gguf(str(gguf), task=load_task("recipe"), max_new_tokens=max_new, concurrency=cfg["slots"],
                     context=context, threads=cfg["threads"], server_args=cfg["args"])
    try:
        pred.backend.cache_prompt = cfg["cache"]
        load_s = time.monotonic() - t0
        pred.predict(texts[:1], progress=False)  # warm-up: first-call allocations (and the system turn's cache)
        load0 = os.getloadavg()[0]
        t1 = time.monotonic()
        out = pred.predict(texts, progress=False)
        wall = time.monotonic() - t1
    finally:
        pred.close()
    return {"config": cfg["name"], "slots": cfg["slots"], "threads": cfg["threads"], "cache": cfg["cache"],
            "load_s": load_s, "wall_s": wall, "pages_per_min": len(texts) / wall * 60,
            "prompt_tokens": statistics.median(p.prompt_tokens or 0 for p in out),
            "completion_tokens": sum(p.completion_tokens or 0 for p in out),
            "tok_per_s": sum(p.completion_tokens or 0 for p in out) / wall,
            "valid": sum(p.valid for p in out), "stopped": sum(p.stopped is not None for p in out), "load_avg": load0}


def markdown(rows: list[dict], args, gguf: Path, n_pages: int) -> str:
    best = max(rows, key=lambda r: r["pages_per_min"])
    base = next((r for r in rows if r["config"] == "1x1"), rows[0])
    lines = [f"Student: `{gguf.name}` ({'yours' if args.gguf else 'bench_extract.py SmolLM2-135M, Q8_0'}), "
             f"{n_pages} real recipe pages (every k-th of the folder, read as 08 reads them; median "
             f"{statistics.median(r['prompt_tokens'] for r in rows):.0f} prompt tokens), `--constrain schema`, answers "
             f"capped at {args.max_new_tokens} new tokens, per-request context {args.context}, one warm-up page per "
             f"configuration. Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"{date.today()}; 1-min load average when each run started in the last column (above the CPU count: "
             f"other work shared the cores).", "",
             "| configuration | slots | threads | prompt cache | pages/min | vs 1x1 | completion tok/s | completion tokens "
             "| valid | stopped by guard/cap | load avg |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['config']}` | {r['slots']} | {r['threads']} | {'on' if r['cache'] else 'off'} | "
                     f"{r['pages_per_min']:.2f} | {r['pages_per_min'] / base['pages_per_min']:.2f}x | {r['tok_per_s']:.1f} | "
                     f"{r['completion_tokens']} | {r['valid']}/{n_pages} | {r['stopped']} | {r['load_avg']:.1f} |")
    lines += ["", f"Fastest here: `{best['config']}` ({best['pages_per_min']:.2f} pages/min).", "",
              f"Reproduce: `python bench/bench_serving.py --pages-dir PAGES --pages {n_pages}"
              f" --configs {' '.join(r['config'] for r in rows)}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.pages < 1 or args.max_new_tokens < 1 or args.context < 256:
        print("error: --pages and --max-new-tokens must be >= 1, --context >= 256", file=sys.stderr)
        return 1
    from distill.llamacpp import cache_dir

    if args.gguf is not None:
        if not args.gguf.is_file():
            print(f"error: --gguf {args.gguf}: no such file", file=sys.stderr)
            return 1
        gguf = args.gguf
    else:
        work = args.work_dir or cache_dir() / "bench-extract"
        work.mkdir(parents=True, exist_ok=True)
        _, gguf, _ = build_student(work)
    texts = pick_pages(args.pages_dir, args.pages)
    rows = []
    for cfg in args.configs:
        r = measure(gguf, texts, cfg, args.max_new_tokens, args.context)
        rows.append(r)
        print(f"{r['config']}: {r['pages_per_min']:.2f} pages/min, {r['tok_per_s']:.1f} completion tok/s "
              f"({r['completion_tokens']} tokens in {r['wall_s']:.1f}s, {r['valid']} valid, load avg {r['load_avg']:.1f})",
              flush=True)
    body = markdown(rows, args, gguf, len(texts))
    print("\n" + body)
    if not args.no_write:
        update_section(ROOT / "BENCHMARKS.md", SECTION, body)
        print(f"\nwrote the section {SECTION[3:]!r} of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
