#!/usr/bin/env python3
"""04's near-duplicate detection at scale: all pairs (exact) against MinHash LSH candidates.

Synthetic posts (random words, 150-400 per post; or, with --corpus templated, 40-120 random words in
one of a few shared frames, as posts of one style are) of which --dup-share are copies of an earlier post
with 0.5-2% of their characters changed (rapidfuzz ratio ~96-99, above 04's default threshold 95).
For each size: wall time and peak memory of ``distill.dataset.dedupe`` per method, and how many
near-duplicates LSH drops compared with the exact rule (where the exact rule is affordable).

Usage:
    python bench/bench_dedupe.py                         # 2,000 both ways; 20,000 and 100,000 with LSH
    python bench/bench_dedupe.py --sizes 2000 --exact-max 2000
    python bench/bench_dedupe.py --corpus templated          # posts that share their boilerplate
"""
from __future__ import annotations

import argparse
import random
import string
import time
import tracemalloc

import distill.dataset as D

# Posts of one style share their frame (a teacher writing 100k posts in a handful of styles): each
# templated post is one of these frames around its own 40-120 random words.
FRAMES = [
    ("written as a typical recipe blog post a long personal story first tips and substitutions you need",
     "mix everything bake until golden enjoy and let me know in the comments"),
    ("quick instagram caption style dinner tonight was a hit swipe for the recipe",
     "link in bio for more easy weeknight ideas follow for more"),
    ("forum reply format someone asked for my version so here it is",
     "hope this helps let me know if you have questions about the method"),
]


def make_rows(n: int, dup_share: float, seed: int = 0, corpus: str = "random",
              edits: tuple[float, float] = (0.005, 0.02)) -> list[dict]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(5000)]

    def post() -> str:
        if corpus == "templated":
            head, tail = rng.choice(FRAMES)
            return f"{head} {' '.join(rng.choice(words) for _ in range(rng.randint(40, 120)))} {tail}"
        return " ".join(rng.choice(words) for _ in range(rng.randint(150, 400)))
    rows: list[dict] = []
    for i in range(n):
        if rows and rng.random() < dup_share:
            chars = list(rows[rng.randrange(len(rows))]["text"])
            for _ in range(int(len(chars) * rng.uniform(*edits))):
                chars[rng.randrange(len(chars))] = rng.choice(string.ascii_lowercase)
            rows.append({"id": str(i), "text": "".join(chars)})
        else:
            rows.append({"id": str(i), "text": post()})
    return rows


def measure(rows: list[dict], method: str) -> tuple[float, float, list[dict]]:
    D.EXACT_DEDUPE_MAX = 10**12 if method == "exact" else 0
    tracemalloc.start()
    t0 = time.perf_counter()
    _, dropped = D.dedupe(rows, threshold=95.0)
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return secs, peak, dropped


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    p.add_argument("--exact-max", type=int, default=2000, help="largest size also run all-pairs (quadratic)")
    p.add_argument("--dup-share", type=float, default=0.1)
    p.add_argument("--corpus", choices=["random", "templated"], default="random",
                   help="random: unrelated posts of random words; templated: posts sharing one of a few frames")
    p.add_argument("--edits", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN%", "MAX%"),
                   help="characters changed in a copy, percent (2-3%% puts many copies near the ratio-95 line)")
    args = p.parse_args()
    if not 0 <= args.edits[0] <= args.edits[1] <= 100 or not 0 <= args.dup_share <= 1 or min(args.sizes) < 1:
        p.error("--edits needs 0 <= MIN <= MAX <= 100, --dup-share 0..1 and --sizes >= 1")
    print("| rows | method | seconds | ms/row | peak MB (Python) | dropped | of the exact rule's |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        rows = make_rows(n, args.dup_share, corpus=args.corpus, edits=(args.edits[0] / 100, args.edits[1] / 100))
        exact = None
        for method in (["exact"] if n <= args.exact_max else []) + ["lsh"]:
            secs, peak, dropped = measure(rows, method)
            if method == "exact":
                exact = {r["id"] for r in dropped}
            share = (f"{len(exact & {r['id'] for r in dropped})}/{len(exact)}" if exact is not None else "–")
            print(f"| {n:,} | {method} | {secs:.1f} | {secs / n * 1000:.2f} | {peak:.0f} | {len(dropped):,} | {share} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
