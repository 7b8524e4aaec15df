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
from collections import Counter
from pathlib import Path

from distill import dataset as D
from distill.cli import fraction, non_negative_int, run
from distill.io import (
    DATASET_DIR,
    LABELED_DIR,
    SYNTHETIC_DIR,
    StageError,
    check_output_dir,
    clear_manifest,
    require_manifest,
    run_lock,
    write_json,
    write_jsonl,
    write_manifest,
)
from distill.synth import load_synthetic
from distill.tasks import load_task


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
    return run(lambda: _main(args))


def _main(args) -> int:
    fractions = D.parse_split(args.split)
    require_manifest(args.synthetic_dir, "02_generate_synthetic.py")
    lm = require_manifest(args.labeled_dir, "03_label_with_reasoning.py")
    check_output_dir(args.output_dir, "04_build_dataset", [args.synthetic_dir, args.labeled_dir])
    task = load_task(args.task or lm.get("task", "recipe"))
    synthetic = {r["id"]: r for r in load_synthetic(args.synthetic_dir)}

    scan = D.scan_labels(args.labeled_dir, synthetic, args.include_unverified)
    verdicts, reasons, stale = scan.verdicts, scan.reasons, scan.stale
    if stale and not args.skip_stale:
        raise StageError(D.stale_message(stale, args.labeled_dir))
    if stale:
        print(f"04: --skip-stale: left out {len(stale)} stale label(s) ({D.list_ids([lab['id'] for lab in stale])}); "
              f"re-run 03 to label their inputs' current text")
    if not scan.trained:
        hint = (" (pass --include-unverified to train on the unverified ones)"
                if verdicts["unverified"] and not args.include_unverified else "")
        raise StageError(f"no accepted labels in {args.labeled_dir} ({dict(verdicts)}; not accepted by reason: "
                         f"{dict(reasons)}): check the teacher with 03 --calibrate{hint}")
    accepted = scan.trained[:args.limit] if args.limit else scan.trained

    rows = D.build_rows(task, synthetic, accepted, keep_reasoning=args.reasoning == "keep")
    rows, dropped = D.dedupe(rows, args.dedupe_threshold)
    splits, key, abstention = D.make_splits(task, rows, fractions, args.seed, args.abstention_share)
    capped = set(abstention["styles"])

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

    out = args.output_dir
    with run_lock(out):
        clear_manifest(out)
        for s in D.SPLITS:
            write_jsonl(out / f"{s}.jsonl", splits[s])
        stats = {
            "counts": {s: len(v) for s, v in splits.items()},
            "source_records": {s: len({r["source_id"] for r in v}) for s, v in splits.items()},
            # sites of page inputs per split (grouped: no host is in two splits)
            "page_hosts": {s: len({D.group_of(r) for r in v if D.group_of(r).startswith("host:")})
                           for s, v in splits.items()},
            "by_style": {s: dict(Counter(r["style"] for r in v)) for s, v in splits.items()},
            "stratified_by": key,
            "labels": dict(verdicts),
            "trained_on": dict(Counter(r["verdict"] for v in splits.values() for r in v)),
            "not_accepted_by_reason": dict(reasons.most_common()),
            "near_duplicates_dropped": len(dropped),
            # rows of styles with empty fields (empty or partial labels) and --abstention-share's cap
            "abstention": abstention,
            "labels_without_input": scan.orphans,
            "stale_labels_skipped": len(stale),
            "with_reasoning": sum(r["has_reasoning"] for r in rows),
            "length": {s: D.length_stats(v, tokenizer) for s, v in splits.items() if v},
        }
        write_json(out / "stats.json", stats)
        write_jsonl(out / "dropped_duplicates.jsonl",
                    [{"id": r["id"], "duplicate_of": r["duplicate_of"]} for r in dropped])
        write_manifest(out, "04_build_dataset", vars(args), stats["counts"], task=task.name,
                       system_prompt=task.student_system_prompt, user_template=task.student_user_template,
                       reasoning=args.reasoning, stats=stats)
    n_unverified = stats["trained_on"].get("unverified", 0)
    unverified = f" (of them {n_unverified} unverified)" if n_unverified else ""
    print(f"04: {sum(stats['counts'].values())} examples{unverified} from {len(accepted)} labels "
          f"({len(dropped)} near-duplicates dropped; labels: {dict(verdicts)})")
    for s in D.SPLITS:
        hosts = f"  {stats['page_hosts'][s]:>3} sites" if any(stats["page_hosts"].values()) else ""
        print(f"  {s:<5} {len(splits[s]):>5} examples  {stats['source_records'][s]:>4} records{hosts}  "
              f"styles {stats['by_style'][s]}  length {stats['length'].get(s, {})}")
    if capped:
        cap = (f", capped at {args.abstention_share:g}: {abstention['dropped_by_cap']} dropped"
               if args.abstention_share < 1 else "")
        print(f"  empty/partial labels ({', '.join(sorted(capped))}): {abstention['by_split']}{cap}")
    if reasons:
        print(f"not accepted, by reason: {dict(reasons.most_common())}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
