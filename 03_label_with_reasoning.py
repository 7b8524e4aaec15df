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
page inputs only, no teacher is needed.

Usage:
    python 03_label_with_reasoning.py                         # LM Studio on localhost:1234
    python 03_label_with_reasoning.py --calibrate 20          # label a stratified sample, print pass rates, stop
    python 03_label_with_reasoning.py --base-url http://localhost:8080/v1 --model smollm2 --concurrency 2
    python 03_label_with_reasoning.py --feedback-rounds 1      # rejected labels get one chance to be fixed
    python 03_label_with_reasoning.py --calibrate 20 --review  # ... and review.html to see why labels failed
    python 03_label_with_reasoning.py --label-from-record      # page inputs labeled by their own markup
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli import add_llm_args, llm_config_from_args, non_negative_int, run
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
    p.add_argument("--label-from-record", action="store_true",
                   help="label each real_page input (01 --from-pages) with its record's answer (the page's markup) "
                        "instead of the teacher; items not in the page's text are dropped and counted, a label "
                        "left without a required field is rejected. Needs the task's pages.records_complete")
    p.add_argument("--review", action="store_true",
                   help="also write review.html in --output-dir: each input with its label, the source record and "
                        "every failed check, to open in a browser")
    add_llm_args(p, default_max_tokens=4096)
    p.set_defaults(temperature=0.2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: _main(args))


def _main(args) -> int:
    from distill import batch
    from distill import labels as labeling
    from distill.io import StageError, check_output_dir, clear_manifest, require_manifest, run_lock, write_manifest
    from distill.llm import LLMError, RunStats, run_concurrently
    from distill.synth import load_synthetic
    from distill.tasks import load_task

    if args.feedback_rounds < 0:
        raise StageError("--feedback-rounds must be 0 or more (0 = no feedback rounds)")
    batching = batch.check_flags(args, args.feedback_rounds)
    m = require_manifest(args.input_dir, "02_generate_synthetic.py")
    check_output_dir(args.output_dir, "03_label_with_reasoning", [args.input_dir])
    task = load_task(args.task or m.get("task", "recipe"))
    rows = [r for r in load_synthetic(args.input_dir) if r.get("task", task.name) == task.name]
    rows = rows[args.skip:]
    if args.limit:
        rows = rows[:args.limit]
    if args.calibrate:
        rows = labeling.stratified_sample(rows, args.calibrate, seed=args.seed)
    if not rows:
        raise StageError(f"no inputs for task {task.name} in {args.input_dir}")

    if args.label_from_record and not (task.pages or {}).get("records_complete"):
        raise StageError(f"--label-from-record: task {task.name} does not say its records are complete answers "
                         f"(pages.records_complete: true in its task.yaml); label its pages with the teacher")
    from_record = {r["id"] for r in rows if args.label_from_record and labeling.record_answer(r) is not None}
    client = batch.client_for(args, llm_config_from_args(args, seed=args.seed), batching)
    teacher_needed = len(from_record) < len(rows)
    if teacher_needed and not args.model:
        client.ping()  # resolves the server's default model: part of every cache key
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens, "extra_body": args.extra_body, "seed": args.seed}
    items = [labeling.LabelItem.from_record_answer(task, r) if r["id"] in from_record
             else labeling.LabelItem.make(task, r, client.model, params) for r in rows]
    out = args.output_dir
    with run_lock(out):
        if not args.calibrate:
            clear_manifest(out)
        previous = {it.id: labeling.previous_label(out, it) for it in items}
        for it in items:  # an unverified label whose input has a source record now is verified again
            if it.from_record:
                continue
            rec = labeling.reverify_unverified(previous[it.id], it, task)
            if rec is not previous[it.id]:
                previous[it.id] = rec
                labeling.write_label(out, rec)
        # A record label is finished once written with the same key (asking again gives the same answer).
        todo = [it for it in items if not (previous[it.id] is not None if it.from_record
                                           else labeling.is_done(previous[it.id], args.feedback_rounds))]
        stats = RunStats()
        stats.skip(len(items) - len(todo))
        by_record = [it for it in todo if it.from_record]
        todo = [it for it in todo if not it.from_record]
        where = f"batch file {args.batch_out or args.batch_in}" if batching else ", ".join(args.base_url)
        by = f" with {client.model} at {where}" if teacher_needed else " (no teacher needed)"
        print(f"03: {len(items)} inputs, {len(from_record)} labeled from their record "
              f"({stats.skipped} already labeled, {len(todo) + len(by_record)} to label){by}")
        for it in by_record:  # distant supervision: no request
            labeling.write_label(out, labeling.label_from_record(it, task))
        if todo:
            client.ping()

            async def label(it):  # on the client's event loop: --concurrency labels in flight
                batch.current_id.set(it.id)
                return await labeling.label_item(client, task, it, args.feedback_rounds, previous=previous[it.id])

            for item, res in run_concurrently(todo, label, concurrency=args.concurrency, desc="03 label"):
                if isinstance(res, LLMError) and res.reason == "batched":
                    continue
                if isinstance(res, LLMError):
                    rec = labeling.failed_label(item, res.reason, str(res))
                    stats.fail(res)
                elif isinstance(res, BaseException):
                    raise res
                else:
                    rec, completions = res
                    for c in completions:
                        stats.ok(c)
                    if rec.get("feedback_error"):
                        stats.fail("feedback_" + rec["feedback_error"].split(":")[0])
                labeling.write_label(out, rec)
        if batching == "out":   # nothing was asked: the stage stays unfinished until its replies come back
            batch.report_out(client, args)
            return 0
        if batching == "in":
            batch.report_unused(client, args, "labeled already")
        report = labeling.report(out, [it.id for it in items], task)
        print(stats.summary())
        if client.endpoint_summary():
            print(client.endpoint_summary())
        print(labeling.format_report(report))
        if args.review:
            from distill.review import write_label_review
            print(f"review page: {write_label_review(out, [it.row for it in items], task)}")
        if args.calibrate:
            print("calibration only: no manifest written. Fix the prompt if pass rates are low, then run without --calibrate.")
            if stats.all_failed():
                print(stats.all_failed(), file=sys.stderr)
                return 1
            return 0
        write_manifest(out, "03_label_with_reasoning", vars(args) | {"api_key": "***"},
                       {"inputs": len(items), "labeled_now": len(todo) + len(by_record), "skipped": stats.skipped,
                        "labeled_from_record_now": len(by_record), **report["verdicts"],
                        "rejected_by_reason": report["rejected_by_reason"], "requests": stats.as_dict(),
                        "endpoints": client.endpoint_stats()},
                       task=task.name, task_fingerprint=task.fingerprint(), report=report)
        print(f"wrote {out}")
    if stats.all_failed():
        print(stats.all_failed() + f" (the failed labels in {out} say why; a re-run retries them)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
