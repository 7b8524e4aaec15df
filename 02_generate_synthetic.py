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

from distill.cli import add_llm_args, llm_config_from_args, non_negative_int, positive_int, run
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
    return run(lambda: _main(args))


def _main(args) -> int:
    from distill import batch, synth
    from distill.io import StageError, check_output_dir, clear_manifest, run_lock, write_jsonl, write_manifest
    from distill.llm import LLMError, RunStats, run_concurrently
    from distill.source import load_records
    from distill.tasks import load_task

    batching = batch.check_flags(args)
    check_output_dir(args.output_dir, "02_generate_synthetic", [args.input])
    task = load_task(args.task)
    try:
        styles = synth.reweight_styles(task.styles, args.styles)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    records, _ = load_records(args.input, task.source.get("parser", "jsonl"))
    records = records[args.skip:]
    if args.limit:
        records = records[:args.limit]
    if not records:
        raise StageError(f"no source records in {args.input} after --skip {args.skip}")

    client = batch.client_for(args, llm_config_from_args(args, seed=args.seed), batching)
    teacher = synth.needs_teacher(records, args.per_record)
    if teacher and not args.model:
        client.ping()  # resolves the server's default model: part of every cache key
    model = client.model if teacher else args.model
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens, "extra_body": args.extra_body}
    items = synth.plan(task, records, per_record=args.per_record, seed=args.seed, model=model, params=params,
                       styles=styles)
    out = args.output_dir
    with run_lock(out):
        clear_manifest(out)
        todo = [it for it in items if not synth.is_done(out, it)]
        stats = RunStats()
        stats.skip(len(items) - len(todo))
        failures = []
        real = [it for it in todo if it.text is not None]
        todo = [it for it in todo if it.text is None]
        n_real = sum(it.text is not None for it in items)
        where = f"batch file {args.batch_out or args.batch_in}" if batching else ", ".join(args.base_url)
        by = f" with {model} at {where}" if teacher else " (no teacher needed)"
        print(f"02: {len(records)} records x {args.per_record} -> {len(items)} inputs, {n_real} of them real pages "
              f"({stats.skipped} already done, {len(todo) + len(real)} to write){by}")
        for item in real:  # passed on unchanged: no request
            synth.write_real_item(out, item, task)
        if todo:
            client.ping()

            async def work(item):  # on the client's event loop: --concurrency requests in flight
                batch.current_id.set(item.id)
                return await client.acomplete(item.messages, seed=item.seed)

            for item, res in run_concurrently(todo, work, concurrency=args.concurrency, desc="02 synthesize"):
                if isinstance(res, LLMError) and res.reason == "batched":
                    continue
                if isinstance(res, LLMError):
                    stats.fail(res)
                    failures.append({"id": item.id, "source_id": item.source_id, "reason": res.reason,
                                     "detail": str(res)[:300]})
                elif isinstance(res, BaseException):
                    raise res
                else:
                    synth.write_item(out, item, task, res)
                    stats.ok(res)
        if batching == "out":   # nothing was asked: the stage stays unfinished until its replies come back
            batch.report_out(client, args)
            return 0
        if batching == "in":
            batch.report_unused(client, args, "done already")
        write_jsonl(out / "failures.jsonl", failures)
        counts = {"planned": len(items), "written": stats.done + len(real), "real_pages": n_real,
                  "real_pages_written": len(real), "skipped": stats.skipped,
                  "failed": sum(stats.failed.values()), "failed_by_reason": dict(stats.failed),
                  "requests": stats.as_dict(), "endpoints": client.endpoint_stats()}
        by_style = {}
        for it in items:
            by_style[it.style.name] = by_style.get(it.style.name, 0) + 1
        counts["planned_by_style"] = by_style
        # The pass is finished even when some inputs failed: they are listed with a
        # reason and a re-run retries exactly those.
        write_manifest(out, "02_generate_synthetic", vars(args) | {"api_key": "***"}, counts,
                       task=task.name, task_fingerprint=task.fingerprint())
        print(stats.summary())
        if client.endpoint_summary():
            print(client.endpoint_summary())
        print(f"styles: {by_style}")
        if failures:
            print(f"{len(failures)} inputs failed (see {out / 'failures.jsonl'}); re-run the same command to retry them.")
        print(f"wrote {out}")
    if stats.all_failed():
        print(stats.all_failed() + f" (see {out / 'failures.jsonl'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
