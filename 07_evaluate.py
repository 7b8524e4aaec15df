#!/usr/bin/env python3
"""Stage 07: run a model on a held-out split and score it field by field against the labels.

The model gets the exact training prompt, greedy. Every output is scored per field as the
task declares (text similarity, exact, minutes, number, list/set F1 with fuzzy matching, MAE),
only where the reference has a value: an empty answer there scores 0, an empty answer to an
empty reference is an abstention (its own rate, not a match), an invented value lowers the
overall score. Also JSON/schema validity and hallucinated items (not in the input), broken
down by input style. Nothing to score (no reference value, no prediction) is an error. The task's adversarial cases (a post with no recipe,
two recipes, missing fields) run too and are reported as pass rates per kind.

Writes to --output-dir (default reports/<name>): predictions.jsonl (resumable: a re-run
only generates what is missing), eval.json (per example and aggregate), report.md (table,
by style, adversarial, worst examples), review.html (every example next to its input, to open
in a browser), fields.png, styles.png, manifest.json.

--pages DIR scores the model on a folder of saved pages (<host>/<name>.html) instead of a split:
it reads exactly what 08_extract.py sends for each page; the reference is the sibling <name>.json
(mapped by the task's pages.reference), else the page's own schema.org markup, which never
reaches the model. Pages with neither are listed and skipped, never scored. Adds per-host scores
and pages/min.

Usage:
    python 07_evaluate.py --model gemma-3/ --split test                  # the LoRA adapter from 05
    python 07_evaluate.py --model gemma-3/gguf/model-Q8_0.gguf           # the exported GGUF, through llama.cpp
    python 07_evaluate.py --model openai:http://localhost:1234/v1 --model-id qwen3-14b --task recipe --name teacher
    python 07_evaluate.py --model path/to/base.gguf --task recipe --name base   # a base model, student prompt
    python 07_evaluate.py --model coffee-chain/ --dataset-dir data/04_dataset   # a chain from 05 (task with steps), end to end
    python 07_evaluate.py --model gemma-3/gguf/model-Q8_0.gguf --pages saved_pages/ --name student-pages
    python 07_evaluate.py --compare reports/base reports/student reports/teacher   # one table from earlier runs
    python 07_evaluate.py --model gemma-3/ --compare reports/base reports/teacher  # evaluate, then side by side
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import evaluate as E
from distill.cli import add_model_args, non_negative_int, positive_int, run
from distill.io import DATASET_DIR


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, required=False)
    g = p.add_argument_group("data")
    # default None: given with --pages they are an error, not silently ignored
    g.add_argument("--dataset-dir", type=Path, default=None, help=f"04's output (default {DATASET_DIR})")
    g.add_argument("--split", default=None, choices=("train", "val", "test"),
                   help="which split to evaluate (default test)")
    g.add_argument("--pages", type=Path, default=None, metavar="DIR",
                   help="evaluate on a folder of saved .html pages instead of a split (references: sibling "
                        ".json, else the page's schema.org markup); not with --dataset-dir/--split")
    g.add_argument("--limit", type=non_negative_int, default=0,
                   help="evaluate N examples, spread evenly over styles, or the first N pages with a reference "
                        "(0 = the whole split or folder)")
    adv = g.add_mutually_exclusive_group()
    adv.add_argument("--adversarial", dest="adversarial", action="store_true", default=None,
                     help="also run the task's adversarial cases (default: on when the task has a case file)")
    adv.add_argument("--no-adversarial", dest="adversarial", action="store_false", help="skip the adversarial cases")
    g = p.add_argument_group("generation")
    g.add_argument("--concurrency", type=int, default=0,
                   help="requests in flight (servers) or batch size (transformers); "
                        "0 = auto: 4 for openai:, 2 for a .gguf, 1 for a local folder")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="llama-server threads for .gguf models (default: every core; fewer when other work shares "
                        "the machine)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="token limit per answer; a cut-off answer counts as invalid JSON")
    g.add_argument("--constrain", choices=("schema", "none"), default="schema",
                   help="decode the answer under the task's JSON Schema (default) or freely (none); see README "
                        "'Constrained decoding'")
    g.add_argument("--resume-loops", type=non_negative_int, default=2, metavar="N",
                   help="times a local model's answer goes on after the loop guard closed a repeating list "
                        "(default 2; 0 ends the answer at the loop); see README 'Going on past a loop'")
    g.add_argument("--context", type=int, default=None,
                   help="context window in tokens; longer inputs keep their head (default: the model's own "
                        "window, at most 8192; openai: models are only truncated when this is set)")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="where results go (default: reports/<name>; reports/comparison with --compare alone)")
    g.add_argument("--name", default=None, help="label of this run in tables (default: folder name, GGUF stem or model id)")
    g.add_argument("--compare", nargs="+", type=Path, default=None, metavar="DIR",
                   help="earlier run folders (with eval.json) to put side by side; alone it only merges them")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: E.run_stage(args))



if __name__ == "__main__":
    sys.exit(main())
