#!/usr/bin/env python3
"""Stage 04: pair inputs with their accepted labels and write chat-format JSONL splits.

Rows are {"messages": [system, user, assistant], id, source_id, style, task,
reference, ...}. The assistant turn is "<think>reasoning</think>" then the JSON,
or the JSON alone with --reasoning strip (a label taken from a page's record, 03
--label-from-record, has no reasoning: the JSON alone). Splits are grouped by source record
(all inputs written from one record land in one split) and, for saved pages (01
--from-pages), by site (no host in two splits), stratified by style,
seeded; near-duplicate inputs are dropped first. Stats (counts per split and
style, labels by verdict, the rest by reason, length percentiles) are printed and saved.
Only accepted labels are used; --include-unverified adds the unverified ones (no
source record to check them against), counted apart in stats.json and the manifest.
A label is used only if it was made from the input's current text (same
text_sha256): after 02 rewrote inputs, re-run 03, or build without them with --skip-stale.
--abstention-share F caps the share of training rows whose style declares empty fields (a
text with no recipe, a post without times: their label is empty or partial) at F, dropping
a seeded choice of them from the train split only; val and test keep the mix 02 drew.

Usage:
    python 04_build_dataset.py                                   # 0.8,0.1,0.1 split
    python 04_build_dataset.py --split 0.9,0.1 --reasoning strip
    python 04_build_dataset.py --tokenizer path/to/hf-model      # real token-length percentiles
    python 04_build_dataset.py --include-unverified              # also labels with no source record
    python 04_build_dataset.py --abstention-share 0.1             # at most 10% of train rows empty/partial
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import dataset as D
from distill.cli import fraction, non_negative_int, run
from distill.io import DATASET_DIR, LABELED_DIR, SYNTHETIC_DIR


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic-dir", type=Path, default=SYNTHETIC_DIR, help="02's output (the inputs)")
    p.add_argument("--labeled-dir", type=Path, default=LABELED_DIR, help="03's output (the labels)")
    p.add_argument("--output-dir", type=Path, default=DATASET_DIR, help="where train/val/test.jsonl go")
    p.add_argument("--task", default=None, help="task name (default: the one 03 used)")
    p.add_argument("--split", default="0.8,0.1,0.1",
                   help="train,val,test fractions summing to 1; 'A,B' means train,test with no val")
    p.add_argument("--seed", type=int, default=42, help="seed for the split")
    p.add_argument("--reasoning", choices=("keep", "strip"), default="keep",
                   help="keep the teacher's reasoning as <think>...</think> before the JSON, or train on JSON alone")
    p.add_argument("--dedupe-threshold", type=float, default=95.0,
                   help="drop an input whose text is this similar (0-100, rapidfuzz ratio) to an earlier one; 100 = exact only")
    p.add_argument("--limit", type=non_negative_int, default=0, help="use at most N accepted examples (0 = all)")
    p.add_argument("--skip-stale", action="store_true",
                   help="build without labels made from an older text of their input (02 re-run since 03); "
                        "default: refuse and list them, since re-running 03 re-labels exactly those")
    p.add_argument("--include-unverified", action="store_true",
                   help="also train on 'unverified' labels (schema-valid and not rejected, but with no source "
                        "record to check them against); counted in stats.json and the manifest")
    p.add_argument("--abstention-share", type=fraction, default=1.0, metavar="F",
                   help="at most this share (0-1) of the train split's rows may be of a style that declares "
                        "empty fields (the recipe task: no_recipe_*, no_times), whose label is empty or partial; "
                        "a seeded choice of them is dropped from train only (val/test keep 02's mix); "
                        "1 = no cap (default), 0 = none in train; counted in stats.json")
    p.add_argument("--tokenizer", default=None,
                   help="local HF tokenizer folder for real token-length percentiles (default: chars/4 estimate)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: D.run_stage(args))



if __name__ == "__main__":
    sys.exit(main())
