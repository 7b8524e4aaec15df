"""Benchmark: does distill.llm keep a server's parallel slots busy, and at what client CPU cost?

For each server size (--slots) and each --concurrency, times M chat requests through the real
client path (``LLMClient.acomplete`` in ``run_concurrently``, as 02/03/07/08 run them) and
reports the wall time against the ideal, and the client's CPU time per request.

By default it runs against the fake server (tests/fake_openai_server.py) started in a process
of its own, with N slots and a fixed latency per request. The ideal time is then exact:
ceil(M / min(concurrency, slots)) x latency, and "capacity used" = ideal / wall time is what the
client achieves of what the server offers. Client CPU = this process's CPU time (both threads:
the caller and the event loop) over the run, per request; the server's CPU is not in it.
M defaults to --waves x concurrency (at least --min-requests), so every point takes about
--waves latencies when the client keeps up. Point --base-url at a real server to measure that
instead (one --slots value: what the server was started with); the fake server is not started.

Usage:
    python bench/bench_concurrency.py                       # the grid: 256 and 512 slots, 1 s, c=1..512
    python bench/bench_concurrency.py --slots 64 --concurrency 64 --delay 0.2 --requests 64 --no-write
    python bench/bench_concurrency.py --base-url http://localhost:8000/v1 --slots 256 --concurrency 1 64 256 --no-write
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import subprocess
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
    g.add_argument("--slots", type=int, nargs="+", default=[256, 512], help="server parallel slots, one grid row each")
    g.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256, 512],
                   help="requests in flight, one grid column each")
    g.add_argument("--delay", type=float, default=1.0, help="fake server: seconds each request takes")
    g.add_argument("--requests", type=int, default=0, help="requests per point (0 = --waves x concurrency)")
    g.add_argument("--waves", type=int, default=8,
                   help="with --requests 0: requests = waves x concurrency (a long run is many waves; 2 measures mostly the ramp-up)")
    g.add_argument("--min-requests", type=int, default=16, help="with --requests 0: at least this many per point")
    g = p.add_argument_group("server")
    g.add_argument("--base-url", default="", help="a real OpenAI-compatible server ('' = start the fake server)")
    g.add_argument("--model", default="", help="model id for --base-url ('' = the first one the server lists)")
    g.add_argument("--max-tokens", type=int, default=16, help="real server: tokens per reply (kept small)")
    g.add_argument("--pin", action="store_true",
                   help="fake server: run it on the last CPU and the client on the others (a server on a machine of "
                        "its own, as vLLM would be; without it both share every core)")
    g.add_argument("--note", default="", help="real server: how it was started, written into the section")
    g = p.add_argument_group("output")
    g.add_argument("--benchmarks-file", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown file to update")
    g.add_argument("--no-write", action="store_true", help="only print, leave BENCHMARKS.md alone")
    return p


class FakeServerProcess:
    """tests/fake_openai_server.py in a child process: its threads' CPU is not the client's."""

    def __init__(self, slots: int | None, delay: float, oracle: bool = False, cpus: set[int] | None = None):
        cmd = [sys.executable, str(ROOT / "tests" / "fake_openai_server.py"), "--delay", str(delay)]
        cmd += (["--slots", str(slots)] if slots else []) + (["--oracle"] if oracle else [])
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=pin)
        self.url = (self.proc.stdout.readline() if self.proc.stdout else "").strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError("the fake server did not start (see its error above)")

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # it serves until stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def time_run(client, requests: int, concurrency: int) -> tuple[float, float, Counter]:
    """(wall s, client CPU s, failures by reason) for ``requests`` requests, ``concurrency`` in flight."""
    from distill.llm import LLMError, run_concurrently

    # A prompt no model finishes within a small max_tokens: every real reply is exactly max_tokens
    # long ("length"), so runs compare the same amount of generation. The fake server just echoes.
    msgs = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]

    async def ask(i: int):
        return await client.acomplete(msgs)

    failed: Counter = Counter()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _, res in run_concurrently(range(requests), ask, concurrency, desc=f"c={concurrency}", progress=False):
        if isinstance(res, LLMError) and res.reason != "length":
            failed[res.reason] += 1
    return time.perf_counter() - t0, time.process_time() - cpu0, failed


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
    if min(*args.slots, *args.concurrency, args.waves, args.min_requests) < 1 or args.delay < 0 or args.requests < 0:
        print("error: --slots, --concurrency, --waves and --min-requests must be >= 1, --delay and --requests >= 0",
              file=sys.stderr)
        return 1
    if args.base_url and len(args.slots) != 1:
        print("error: with --base-url give one --slots value (what the server runs with)", file=sys.stderr)
        return 1

    from distill.llm import LLMClient, LLMConfig, LLMUnavailable

    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and not args.base_url and len(cpus) > 1
    if args.pin and not pinned:
        print("error: --pin needs the fake server (no --base-url) and at least 2 CPUs", file=sys.stderr)
        return 1
    if pinned:
        os.sched_setaffinity(0, set(cpus[:-1]))
    rows = []  # (slots, concurrency, requests, ideal s or None, wall s, cpu s, failures, server cpu s or None)
    for slots in args.slots:
        server = None if args.base_url else FakeServerProcess(slots, args.delay, cpus={cpus[-1]} if pinned else None)
        base_url = args.base_url or server.url
        try:
            client = LLMClient(LLMConfig(base_url=base_url, model=args.model, max_tokens=args.max_tokens,
                                         temperature=0.0, concurrency=max(args.concurrency), retries=1, timeout=120))
            client.ping()
            warm = min(max(args.concurrency), slots)
            time_run(client, warm, warm)  # open the connections, import everything once
            for conc in args.concurrency:
                n = args.requests or max(args.waves * conc, args.min_requests)
                server_cpu0 = server.cpu_seconds() if server else 0.0
                wall, cpu, failed = time_run(client, n, conc)
                server_cpu = server.cpu_seconds() - server_cpu0 if server else None
                ideal = None if args.base_url else math.ceil(n / min(conc, slots)) * args.delay
                rows.append((slots, conc, n, ideal, wall, cpu, failed, server_cpu))
                used = f", capacity used {ideal / wall:.2f}x (ideal {ideal:.2f} s)" if ideal else ""
                print(f"slots {slots:>4}  concurrency {conc:>4}  {n:>5} requests: {wall:7.2f} s{used}, "
                      f"client CPU {cpu / n * 1000:.2f} ms/request"
                      + (f", server CPU {server_cpu / n * 1000:.2f} ms/request" if server else "") + (f"  FAILED {dict(failed)}" if failed else ""),
                      flush=True)
            client.close()
        except LLMUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.stop()

    target = (f"server at {args.base_url} ({args.max_tokens} tokens per reply)" if args.base_url
              else f"the fake server in its own process, {args.delay * 1000:.0f} ms per request"
              + (f", pinned to CPU {cpus[-1]} and the client to CPU {', '.join(map(str, cpus[:-1]))}" if pinned
                 else ", both sharing every CPU"))
    lines = ["| slots | concurrency | requests | ideal (s) | wall (s) | capacity used | client CPU (ms/request) "
             "| server CPU (ms/request) | failed |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for slots, conc, n, ideal, wall, cpu, failed, server_cpu in rows:
        lines.append(f"| {slots} | {conc} | {n} | {f'{ideal:.2f}' if ideal else '-'} | {wall:.2f} | "
                     f"{f'{ideal / wall:.2f}x' if ideal else '-'} | {cpu / n * 1000:.2f} | "
                     f"{f'{server_cpu / n * 1000:.2f}' if server_cpu is not None else '-'} | {sum(failed.values())} |")
    grid = " ".join(f"--{k} " + " ".join(map(str, getattr(args, k))) for k in ("slots", "concurrency"))
    reproduce = f"{grid} --delay {args.delay:g}" + (f" --requests {args.requests}" if args.requests else "") + (
        f" --base-url {args.base_url}" if args.base_url else "") + (" --pin" if pinned else "")
    body = f"""
Chat requests through `LLMClient.acomplete` in `run_concurrently` (the openai SDK's `AsyncOpenAI` on one
event loop), {target}. Capacity used = ideal time / wall time; client CPU = the benchmark process's CPU
time per request (machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; \
{time.strftime("%Y-%m-%d")}).

{chr(10).join(lines)}
{("Server: " + args.note) if args.note else ""}
Reproduce: `python bench/bench_concurrency.py {reproduce}`
"""
    if args.no_write:
        return 0
    update_section(args.benchmarks_file, f"{SECTION}: {'real server' if args.base_url else 'fake server'}", body)
    print(f"wrote section to {args.benchmarks_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
