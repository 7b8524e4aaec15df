#!/usr/bin/env python3
"""Stage 02: a teacher LLM writes messy inputs (posts, captions, scraped pages) from source records.

Each source record yields --per-record inputs, each in a style drawn by weight
(seeded) from the task's styles. One JSON file per input, named by a stable id.
Re-running skips finished inputs without a request; a changed prompt, model or
sampling parameter redoes them.

A record that carries a real text (01 --from-pages) gives that text, unchanged, as its
first input, in style real_page and with no teacher call; --per-record N adds N-1
synthetic variants of the same record. With page records only and --per-record 1 no
teacher is needed at all.

Usage:
    python 02_generate_synthetic.py --limit 200                          # LM Studio on localhost:1234
    python 02_generate_synthetic.py --base-url http://localhost:11434/v1 --model qwen3:14b   # Ollama
    python 02_generate_synthetic.py --input data/01_source --per-record 2 --concurrency 8
    python 02_generate_synthetic.py --styles instagram_short=2,chaotic_unstructured=1   # only these styles
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import synth
from distill.cli import add_llm_args, non_negative_int, positive_int, run
from distill.io import SOURCE_DIR, SYNTHETIC_DIR


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # What to read and write
    p.add_argument("--input", type=Path, default=SOURCE_DIR,
                   help="01's output directory (records.jsonl) or a source CSV/JSONL file")
    p.add_argument("--output-dir", type=Path, default=SYNTHETIC_DIR, help="where the generated inputs go")
    p.add_argument("--task", default="recipe", help="task folder under tasks/ (see: python 01_download_dataset.py --list-tasks)")
    # How much
    p.add_argument("--limit", type=non_negative_int, default=2, help="source records to use (default 2: a quick try; 0 = all)")
    p.add_argument("--skip", type=non_negative_int, default=0, help="skip the first N source records")
    p.add_argument("--per-record", type=positive_int, default=1,
                   help="inputs per source record; for a page record (01 --from-pages) the first is the page's "
                        "own text (style real_page, no request) and the rest are synthetic variants")
    p.add_argument("--seed", type=int, default=42, help="seed for style choice and sampling")
    p.add_argument("--styles", default=None, metavar="NAME=W,...",
                   help="override the task's style weights, e.g. 'instagram_short=2,minimal_organized=1' "
                        "(styles not named are not used; default: the weights in task.yaml)")
    add_llm_args(p, default_max_tokens=2048)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: synth.run_stage(args))



if __name__ == "__main__":
    sys.exit(main())
