#!/usr/bin/env python3
"""Stage 03: the teacher extracts structured JSON with a reasoning trace; every label is checked.

For each input from stage 02 the teacher reasons, then answers with JSON. The
reasoning is taken from wherever the server puts it (<think> tags, even half of
them, reasoning_content, reasoning). The JSON is parsed (fences stripped, only
safe repairs), validated against the task's JSON Schema, and verified against
the source record and the input text field by field. Each label is written with
its checks and a verdict: accepted, rejected (with reasons: a field that disagrees with
the record, an item not in the text, a required field left empty, a value the text states
left empty), unverified (nothing failed, but the input has no source record to check it
against) or failed (no usable reply). Only accepted labels are trained on (04
--include-unverified adds the unverified ones).

With --feedback-rounds N a rejected label gets N chances to be fixed: the teacher sees its
answer and which fields failed which check (never the source record's values), answers
again, and the new answer is verified from scratch. Earlier answers stay in the
label's "attempts".

With --label-from-record, an input that is a saved page's own text (style real_page, from
01 --from-pages) is labeled with its record's answer, the page's schema.org markup mapped to
the output schema, instead of asking the teacher (distant supervision; only for a task whose
pages.records_complete is true). That label is verified like a teacher's against the text the
model reads: items the text does not show are dropped from it and counted per field, and it
is rejected when a required field ends empty. Other inputs go to the teacher as before; with
page inputs only, no teacher is needed. --label-from-record all labels the synthetic variants
of page records the same way (the teacher only writes them): the record's answer with the
fields the variant's style must lack emptied, so "no recipe" reviews and "no times" posts
become abstention examples without a teacher label.

Usage:
    python 03_label_with_reasoning.py                         # LM Studio on localhost:1234
    python 03_label_with_reasoning.py --calibrate 20          # label a stratified sample, print pass rates, stop
    python 03_label_with_reasoning.py --base-url http://localhost:8080/v1 --model smollm2 --concurrency 2
    python 03_label_with_reasoning.py --feedback-rounds 1      # rejected labels get one chance to be fixed
    python 03_label_with_reasoning.py --calibrate 20 --review  # ... and review.html to see why labels failed
    python 03_label_with_reasoning.py --label-from-record      # page inputs labeled by their own markup
    python 03_label_with_reasoning.py --label-from-record all  # ... and the synthetic variants of their records
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import labels
from distill.cli import add_llm_args, non_negative_int, run
from distill.io import LABELED_DIR, SYNTHETIC_DIR


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input-dir", type=Path, default=SYNTHETIC_DIR, help="02's output directory")
    p.add_argument("--output-dir", type=Path, default=LABELED_DIR, help="where labels go")
    p.add_argument("--task", default=None, help="task name (default: the one 02 used)")
    p.add_argument("--limit", type=non_negative_int, default=0, help="inputs to label (0 = all)")
    p.add_argument("--skip", type=non_negative_int, default=0, help="skip the first N inputs (sorted by id)")
    p.add_argument("--calibrate", type=non_negative_int, default=0, metavar="N",
                   help="label a style-stratified sample of N inputs, print the pass rate per field and per "
                        "style, then stop without a manifest (0 = off): check the teacher before a long run")
    p.add_argument("--seed", type=int, default=42, help="seed for sampling and the calibration sample")
    p.add_argument("--feedback-rounds", type=int, default=0,
                   help="times a rejected label is sent back to the teacher with the failed checks to fix "
                        "(0 = never). Each round costs one more request per rejected label; re-running with "
                        "more rounds continues the rejected labels from their last answer. Worth it with a "
                        "strong teacher: the bundled 1.5B one fixed 1 of 14 and repeated itself in 7")
    p.add_argument("--label-from-record", nargs="?", const="real", choices=("real", "all"), default=None,
                   help="label each real_page input (01 --from-pages) with its record's answer (the page's markup) "
                        "instead of the teacher; items not in the page's text are dropped and counted, a label "
                        "left without a required field is rejected. 'all': synthetic variants of page records "
                        "too (02 --per-record > 1), with the fields their style must lack emptied (a 'no recipe' "
                        "review: every field) and rejected if the text states them after all. Needs the task's "
                        "pages.records_complete")
    p.add_argument("--review", action="store_true",
                   help="also write review.html in --output-dir: each input with its label, the source record and "
                        "every failed check, to open in a browser")
    add_llm_args(p, default_max_tokens=4096)
    p.set_defaults(temperature=0.2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: labels.run_stage(args))



if __name__ == "__main__":
    sys.exit(main())
