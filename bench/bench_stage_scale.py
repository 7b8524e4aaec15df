#!/usr/bin/env python3
"""The stage folders at scale: 01 -> 02 -> 03 -> 04 on N source records against the fake teacher.

For each size, N distinct random recipes (AllRecipes CSV layout) go through the real scripts, each
in a process of its own, against tests/fake_openai_server.py --oracle (a server process that writes
a post from each record and answers the right label, so every label is verified and accepted).
Per stage: wall time, ms per item, the stage's own peak RSS (os.wait4), and for 02/03 a second
run of the same command on the finished folder (the resume scan: zero requests). Then files per
folder and the folder sizes. A stage whose ms per item grows with N is not linear; the table
shows the ratio of the largest size to the smallest.

The server answers at once (no latency): the time is the client's and the stages' own work
(planning, cache keys, parsing, verification, atomic writes), plus the server's Python on the
same cores.

Usage:
    python bench/bench_stage_scale.py                        # 10,000 and 100,000 records
    python bench/bench_stage_scale.py --sizes 2000 --no-write
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_concurrency import FakeServerProcess, update_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Stage folders at scale: 01 -> 04 on 100,000 items (bench/bench_stage_scale.py)"

ADJ = ["smoky", "lemony", "crispy", "creamy", "spicy", "garlic", "herbed", "honey", "maple", "roasted", "grilled",
       "braised", "zesty", "golden", "rustic", "sweet", "tangy", "savory", "charred", "buttery"]
DISH = ["chicken", "lentil soup", "pasta", "salad", "tart", "stew", "noodles", "risotto", "tacos", "curry", "pie",
        "flatbread", "chili", "casserole", "gratin", "muffins", "bread", "dumplings", "skewers", "frittata"]
FOOD = ["onion", "carrot", "celery", "garlic clove", "potato", "tomato", "zucchini", "bell pepper", "mushroom",
        "spinach", "kale", "chickpeas", "black beans", "rice", "quinoa", "butter", "olive oil", "flour", "sugar",
        "egg", "milk", "cream", "parmesan", "cheddar", "feta", "lemon", "lime", "cilantro", "parsley", "basil",
        "thyme", "cumin", "paprika", "chili flakes", "ginger", "soy sauce", "honey", "vinegar", "broth", "tofu"]
UNIT = ["cup", "cups", "tablespoons", "teaspoon", "pound", "ounces", "grams", "large", "small", "cans"]


def make_csv(path: Path, n: int, seed: int = 0) -> None:
    """N distinct recipes: a numbered random title (01 keys records by name + ingredients), 4-10
    random ingredients with quantities, random times and servings."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["group", "name", "rating", "n_rater", "n_reviewer", "summary", "process", "ingredient"])
        for i in range(n):
            name = f"{rng.choice(ADJ).title()} {rng.choice(ADJ).title()} {rng.choice(DISH).title()} No. {i + 1}"
            ings = [f"{rng.randint(1, 6)} {rng.choice(UNIT)} {food}" for food in rng.sample(FOOD, rng.randint(4, 10))]
            prep, cook = rng.randint(5, 40), rng.randint(10, 90)
            process = f"prep: {prep} mins,cook: {cook} mins,total: {prep + cook} mins,Servings: {rng.randint(2, 12)}"
            w.writerow(["main-dish.bench", name, "4.5", "10", "8", f"A {name.lower()} for weeknights.", process,
                        " + ".join(ings)])


def run(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run one stage; (wall seconds, its peak RSS in MB, exit code). Output goes to ``log``."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=os.environ | {"TQDM_DISABLE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return secs, usage.ru_maxrss / 1024, proc.returncode


def folder_stats(d: Path) -> tuple[int, float]:
    files = [p for p in d.iterdir() if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 2**20


def measure(n: int, work: Path, url: str, concurrency: int) -> tuple[list[dict], dict]:
    py = sys.executable
    src, d01, d02, d03, d04 = work / "source.csv", work / "01", work / "02", work / "03", work / "04"
    log = work / "log.txt"
    make_csv(src, n)
    teacher = ["--base-url", url, "--model", "fake-model", "--concurrency", str(concurrency), "--retries", "2",
               "--timeout", "60"]
    steps = [
        ("01 import", [py, "01_download_dataset.py", "--from-file", str(src), "--output-dir", str(d01)]),
        ("02 synthesize", [py, "02_generate_synthetic.py", "--input", str(d01), "--output-dir", str(d02),
                           "--limit", "0", *teacher]),
        ("02 resume (all done)", None),
        ("03 label + verify", [py, "03_label_with_reasoning.py", "--input-dir", str(d02), "--output-dir", str(d03),
                               *teacher]),
        ("03 resume (all done)", None),
        ("04 build", [py, "04_build_dataset.py", "--synthetic-dir", str(d02), "--labeled-dir", str(d03),
                      "--output-dir", str(d04)]),
    ]
    rows, last = [], None
    for name, cmd in steps:
        cmd = cmd or last
        secs, rss, rc = run(cmd, log)
        if rc != 0:
            raise SystemExit(f"{name} failed at N={n} (exit {rc}); see {log}:\n" + log.read_text()[-3000:])
        rows.append({"n": n, "stage": name, "seconds": secs, "ms_per_item": 1000 * secs / n, "rss_mb": rss})
        last = cmd
    # The last 02/03 runs were the resumes: they must have found everything done and asked nothing.
    m02 = json.loads((d02 / "manifest.json").read_text())["counts"]
    m03 = json.loads((d03 / "manifest.json").read_text())["counts"]
    if m02["skipped"] != n or m02["requests"]["requests"] or m03["skipped"] != n or m03["requests"]["requests"]:
        raise SystemExit(f"a resume redid work at N={n}: 02 {m02}, 03 {m03}")
    if m03["accepted"] != n:
        raise SystemExit(f"the oracle's labels should all be accepted at N={n}: {m03}")
    splits = json.loads((d04 / "stats.json").read_text()).get("counts", {})
    folders = {name: folder_stats(d) for name, d in (("02", d02), ("03", d03), ("04", d04))}
    extra = {"n": n, "accepted": m03["accepted"], "splits": splits, "folders": folders}
    return rows, extra


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Usage:")[1])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="source records per run")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in 02 and 03")
    p.add_argument("--work-dir", type=Path, default=None, help="where the stage folders go (default: a temp folder, "
                   "removed after each size)")
    p.add_argument("--keep", action="store_true", help="keep the stage folders")
    p.add_argument("--benchmarks-file", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="only print, leave BENCHMARKS.md alone")
    args = p.parse_args()
    if min(args.sizes) < 10 or args.concurrency < 1:
        print("error: --sizes must be >= 10 and --concurrency >= 1", file=sys.stderr)
        return 1

    if args.work_dir:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    server = FakeServerProcess(slots=None, delay=0.0, oracle=True)
    rows, extras = [], []
    try:
        for n in sorted(args.sizes):
            work = Path(tempfile.mkdtemp(prefix=f"scale{n}-", dir=args.work_dir))
            t0 = time.perf_counter()
            try:
                r, e = measure(n, work, server.url, args.concurrency)
            finally:
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
            rows += r
            extras.append(e)
            print(f"N={n:,}: {time.perf_counter() - t0:.0f} s; " + "; ".join(
                f"{x['stage']} {x['seconds']:.1f} s ({x['ms_per_item']:.2f} ms/item, {x['rss_mb']:.0f} MB)" for x in r),
                flush=True)
            print(json.dumps(e), flush=True)
    finally:
        server.stop()

    sizes = sorted(args.sizes)
    lines = [f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; the fake "
             f"teacher answers at once (`tests/fake_openai_server.py --oracle`, its own process on the same cores), "
             f"`--concurrency {args.concurrency}`; each stage is the real script in a process of its own; peak RSS is "
             "that process's (os.wait4). One run.", "",
             "| stage | " + " | ".join(f"{n:,}: s | ms/item | peak MB" for n in sizes) + " | ms/item ratio |",
             "|---|" + "---:|---:|---:|" * len(sizes) + "---:|"]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        cells, per = [], []
        for n in sizes:
            x = next(r for r in rows if r["stage"] == stage and r["n"] == n)
            cells.append(f"{x['seconds']:.1f} | {x['ms_per_item']:.2f} | {x['rss_mb']:.0f}")
            per.append(x["ms_per_item"])
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {per[-1] / per[0]:.2f}× |")
    lines += ["", "| N | files in 02 | MB | files in 03 | MB | files in 04 | MB |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for e in extras:
        f = e["folders"]
        lines.append(f"| {e['n']:,} | {f['02'][0]:,} | {f['02'][1]:.0f} | {f['03'][0]:,} | {f['03'][1]:.0f} | "
                     f"{f['04'][0]:,} | {f['04'][1]:.0f} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section(args.benchmarks_file, SECTION, body)
        print(f"updated {args.benchmarks_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
