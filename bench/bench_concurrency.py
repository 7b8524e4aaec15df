"""Benchmark: does distill.llm's bounded thread pool actually use a server's parallel slots?

Times M requests at concurrency 1 and at concurrency N through the real client path
(LLMClient.complete inside run_concurrently), repeats a few times, prints the medians and the
speed-up, and writes a section into BENCHMARKS.md (other sections are kept).

By default it runs against the fault-injecting fake server (tests/fake_openai_server.py) with
N slots and a fixed delay per request, so the ideal speed-up is exactly N and anything below it
is client overhead. Point --base-url at a real server to measure that instead
(e.g. llama-server -np 4 → --slots 4); the fake server is then not started.

Usage:
    python bench/bench_concurrency.py                       # fake server, 4 slots, 40 requests x 3
    python bench/bench_concurrency.py --slots 8 --requests 80 --delay 0.1
    python bench/bench_concurrency.py --base-url http://localhost:8080/v1 --slots 4 --requests 16 --no-write
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import runpy
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SECTION = "## LLM client concurrency (bench/bench_concurrency.py)"  # + ": fake server" / ": real server"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("Usage:")[1])
    g = p.add_argument_group("workload")
    g.add_argument("--requests", type=int, default=40, help="requests per timed run (M)")
    g.add_argument("--slots", type=int, default=4, help="server parallel slots = the concurrency compared with 1 (N)")
    g.add_argument("--delay", type=float, default=0.05, help="fake server: seconds each request takes")
    g.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the median is reported")
    g = p.add_argument_group("server")
    g.add_argument("--base-url", default="", help="a real OpenAI-compatible server ('' = start the fake server)")
    g.add_argument("--model", default="", help="model id for --base-url ('' = the first one the server lists)")
    g.add_argument("--max-tokens", type=int, default=16, help="real server: tokens per reply (kept small)")
    g.add_argument("--note", default="", help="real server: how it was started, written into the section")
    g = p.add_argument_group("output")
    g.add_argument("--benchmarks-file", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown file to update")
    g.add_argument("--no-write", action="store_true", help="only print, leave BENCHMARKS.md alone")
    return p


def time_run(client, requests: int, concurrency: int) -> float:
    from distill.llm import LLMError, run_concurrently

    # A prompt no model finishes within a small max_tokens: every real reply is exactly max_tokens
    # long ("length"), so runs compare the same amount of generation. The fake server just echoes.
    msgs = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
    t0 = time.perf_counter()
    failed: Counter = Counter()
    for _, res in run_concurrently(range(requests), lambda i: client.complete(msgs), concurrency, desc=f"c={concurrency}"):
        if isinstance(res, LLMError) and res.reason != "length":
            failed[res.reason] += 1
    if failed:
        print(f"  warning: failed requests at concurrency {concurrency}: {dict(failed)}", file=sys.stderr)
    return time.perf_counter() - t0


def update_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section headed ``title``; everything else in the file is kept as is."""
    from distill.io import atomic_write_text

    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# Benchmarks\n\nSpeed measurements from the scripts in bench/. Each section says how to reproduce it.\n"
    )
    block = f"{title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if min(args.requests, args.slots, args.repeats) < 1 or args.delay < 0:
        print("error: --requests, --slots and --repeats must be >= 1, --delay >= 0", file=sys.stderr)
        return 1
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars would interleave with the timing lines

    from distill.llm import LLMClient, LLMConfig, LLMUnavailable

    server = None
    if args.base_url:
        base_url, target = args.base_url, f"server at {args.base_url} ({args.max_tokens} tokens per reply)"
    else:
        # tests/ is not a package: the fake server's module is run from its path
        FakeOpenAIServer = runpy.run_path(str(ROOT / "tests" / "fake_openai_server.py"))["FakeOpenAIServer"]
        server = FakeOpenAIServer(slots=args.slots, delay=args.delay).start()
        base_url = server.url
        target = f"fake server, {args.slots} slots, {args.delay * 1000:.0f} ms per request"
    try:
        client = LLMClient(LLMConfig(base_url=base_url, model=args.model, max_tokens=args.max_tokens,
                                     temperature=0.0, concurrency=args.slots, retries=1, timeout=120))
        client.ping()
        time_run(client, min(args.requests, 2 * args.slots), args.slots)  # warm up connections / server
        results: dict[int, list[float]] = {}
        for conc in (1, args.slots):
            results[conc] = []
            for r in range(args.repeats):
                s = time_run(client, args.requests, conc)
                results[conc].append(s)
                print(f"concurrency {conc:>2}  run {r + 1}: {s:6.2f} s  ({args.requests / s:6.1f} req/s)")
        client.close()
    except LLMUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()

    med1 = statistics.median(results[1])
    medn = statistics.median(results[args.slots])
    ratio = med1 / medn
    ideal = ""
    if server:
        overhead_ms = (med1 - args.requests * args.delay) / args.requests * 1000
        ideal = (f" (ideal {args.slots}.0x, client efficiency {ratio / args.slots:.0%}; "
                 f"overhead {overhead_ms:.1f} ms per request over the server's {args.delay * 1000:.0f} ms)")
    print(f"median: concurrency 1 {med1:.2f} s, concurrency {args.slots} {medn:.2f} s -> speed-up {ratio:.2f}x{ideal}")

    reproduce = f"--slots {args.slots} --requests {args.requests} --repeats {args.repeats}" + (
        f" --base-url {args.base_url}" if args.base_url else f" --delay {args.delay:g}")
    body = f"""
{args.requests} chat requests through `LLMClient.complete` in `run_concurrently`, {target};
median of {args.repeats} runs (machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};
{time.strftime("%Y-%m-%d")}).

| concurrency | median time (s) | requests/s |
|---:|---:|---:|
| 1 | {med1:.2f} | {args.requests / med1:.1f} |
| {args.slots} | {medn:.2f} | {args.requests / medn:.1f} |

Speed-up {ratio:.2f}x{ideal}.
{("Server: " + args.note) if args.note else ""}
Reproduce: `python bench/bench_concurrency.py {reproduce}`
"""
    if args.no_write:
        return 0
    update_section(args.benchmarks_file, f"{SECTION}: {'fake server' if server else 'real server'}", body)
    print(f"wrote section to {args.benchmarks_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
