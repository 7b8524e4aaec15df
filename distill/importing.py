"""Stage 01: a source dataset (Kaggle through kagglehub, a local file, the task's sample, or saved
web pages) cleaned into ``records.jsonl``; the parsing itself is :mod:`distill.source` and
:func:`distill.pages.import_pages`."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from .io import (
    StageError,
    check_output_dir,
    clear_manifest,
    run_lock,
    stable_hash,
    write_json,
    write_jsonl,
    write_manifest,
)
from .pages import import_pages
from .source import (
    DEFAULT_KAGGLE_DATASET,
    copy_file_atomic,
    describe_encoding,
    download_kaggle,
    get_parser,
    pick_source_file,
)
from .tasks import list_tasks, load_task

STAGE = "01_download_dataset"


def _clear_stale(raw_dir: Path, keep: set[Path]) -> None:
    """raw/ mirrors this run's source only; files from an earlier source go."""
    if not raw_dir.is_dir():
        return
    for p in sorted(raw_dir.rglob("*"), reverse=True):
        if p.is_file() and p.resolve() not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def run_stage(args) -> int:
    """Stage 01 (``01_download_dataset.py``): fetch or copy the source, clean it into records.jsonl,
    write clean_report.json and the manifest last (``--from-pages``: :func:`from_pages`)."""
    if args.list_tasks:
        for name in list_tasks():
            print(name)
        return 0

    task = load_task(args.task)
    if args.from_pages is not None:
        return from_pages(args, task)
    parser_name = args.parser or task.source.get("parser") or "allrecipes_csv"
    parse = get_parser(parser_name)

    local: Path | None = None
    if args.from_file is not None:
        local = args.from_file.expanduser()
    elif args.sample:
        local = task.sample_path()
        if local is None:
            raise StageError(f"task {task.name} has no source.sample file; use --from-file or --dataset")
    elif args.dataset is None and task.source.get("file") and not task.source.get("kaggle"):
        local = task.dir / task.source["file"]
    if local is not None and not local.is_file():
        raise StageError(f"{local}: no such file")

    out = check_output_dir(args.output_dir, STAGE, [local])
    raw_dir = out / "raw"
    with run_lock(out):
        clear_manifest(out)
        if local is not None:
            dest = raw_dir / local.name
            if local.resolve() != dest.resolve():
                copy_file_atomic(local, dest)
            src_file = dest
            source = {"kind": "file", "path": str(local)}
            _clear_stale(raw_dir, {dest.resolve()})
        else:
            handle = args.dataset or task.source.get("kaggle") or DEFAULT_KAGGLE_DATASET
            print(f"fetching Kaggle dataset {handle} with kagglehub ...", flush=True)
            got = download_kaggle(handle, raw_dir)
            _clear_stale(raw_dir, {Path(f).resolve() for f in got["files"]})
            src_file = pick_source_file(got["files"], parser_name)
            source = {"kind": "kaggle", "handle": got["handle"], "version": got["version"],
                      "requested": handle, "credentials": got["credentials"]}
        source["file"] = src_file.name
        source["sha256"] = hashlib.sha256(src_file.read_bytes()).hexdigest()

        records, report = parse(src_file)
        if args.limit and len(records) > args.limit:
            records = records[: args.limit]
            report["limited_to"] = args.limit
        if not records:
            raise StageError(f"{src_file.name}: no usable records (see {out / 'clean_report.json'})")
        report["records_written"] = len(records)
        report["source"] = source

        write_jsonl(out / "records.jsonl", records)
        write_json(out / "clean_report.json", report)
        unparseable = sum(report.get("unparseable", {}).values())
        counts = {
            "rows_read": report.get("rows_read", len(records)),
            "duplicates_dropped": report.get("duplicates_dropped", 0),
            "duplicate_ids_dropped": report.get("duplicate_ids_dropped", 0),
            "group_rows_merged": report.get("group_rows_merged", 0),
            "unparseable": unparseable,
            "records": len(records),
        }
        write_manifest(out, STAGE, vars(args), counts, task=task.name, parser=parser_name, source=source,
                       encoding=report.get("encoding"), undecodable_bytes=report.get("undecodable_bytes", 0))

    where = f"{source['handle']} v{source['version']}" if source["kind"] == "kaggle" else source["path"]
    reasons = ", ".join(f"{k} {v}" for k, v in report.get("unparseable", {}).items()) or "none"
    print(f"01 source: {src_file.name} from {where} (parser {parser_name}, encoding {describe_encoding(report)})")
    if report.get("undecodable_bytes"):
        print(f"warning: {src_file.name}: {report['undecodable_bytes']} byte(s) are not valid {report['encoding']} "
              f"and were replaced by U+FFFD (see {out / 'records.jsonl'})", file=sys.stderr)
    print(f"  rows read            {counts['rows_read']}")
    print(f"  duplicates dropped   {counts['duplicates_dropped']} exact rows, {counts['duplicate_ids_dropped']} repeated recipes")
    if counts["group_rows_merged"]:
        print(f"  merged               {counts['group_rows_merged']} rows listing a recipe already read under another "
              f"group (one record, all its groups kept)")
    print(f"  unparseable          {unparseable} ({reasons})")
    if report.get("field_problems"):
        probs = ", ".join(f"{k} {v}" for k, v in report["field_problems"].items())
        print(f"  kept, field unparsed {probs}")
    if report.get("unicode_escapes_converted"):
        print(f"  <U+....> escapes     {report['unicode_escapes_converted']} converted")
    print(f"  records written      {len(records)}" + (f" (--limit {args.limit})" if "limited_to" in report else ""))
    print(f"  -> {out / 'records.jsonl'}")
    return 0


def from_pages(args, task) -> int:
    """01 --from-pages: one record per saved page whose schema.org markup gives an answer."""
    if args.parser:
        raise StageError("--parser does not apply to --from-pages (pages are read by their schema.org markup)")
    if not task.pages:
        raise StageError(f"task {task.name} has no pages: section (pages.type names the schema.org type whose "
                         f"markup is a page's answer); it cannot import pages")
    pages_dir = args.from_pages.expanduser()
    out = check_output_dir(args.output_dir, STAGE, [pages_dir])
    records, report = import_pages(pages_dir, task)
    if args.limit and len(records) > args.limit:
        records = records[: args.limit]
        report["limited_to"] = args.limit
    skipped = report["skipped"]
    for reason, names in skipped.items():
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        print(f"01: skipped {len(names)} page(s), {reason}: {shown}", file=sys.stderr)
    if not records:
        raise StageError(f"{pages_dir}: none of its {report['pages_read']} pages has usable {task.pages['type']} "
                         f"markup ({', '.join(f'{k} {len(v)}' for k, v in skipped.items())})")
    source = {"kind": "pages", "path": str(pages_dir), "pages": report["pages_read"],
              # one hash over the pages read, so a manifest says which set of pages this was
              "sha256": stable_hash(sorted((r["page"], r["html_sha256"]) for r in records), length=64)}
    report["records_written"] = len(records)
    report["source"] = source
    with run_lock(out):
        clear_manifest(out)
        _clear_stale(out / "raw", set())  # raw/ mirrors a file source; pages stay where they are
        write_jsonl(out / "records.jsonl", records)
        write_json(out / "clean_report.json", report)
        counts = {"pages_read": report["pages_read"], "skipped": sum(len(v) for v in skipped.values()),
                  "skipped_by_reason": {k: len(v) for k, v in skipped.items()},
                  "hosts": len({r["host"] for r in records}), "records": len(records)}
        write_manifest(out, STAGE, vars(args), counts, task=task.name, parser="pages", source=source)
    print(f"01 source: {report['pages_read']} saved pages from {pages_dir} ({task.pages['type']} markup, "
          f"reader window {report['max_chars']} chars)")
    print(f"  skipped              {counts['skipped']} (" +
          (", ".join(f"{k} {n}" for k, n in counts["skipped_by_reason"].items()) or "none") + ")")
    print(f"  texts windowed       {report['texts_windowed']} (longer than {report['max_chars']} chars)")
    print(f"  records written      {len(records)} from {counts['hosts']} host(s)"
          + (f" (--limit {args.limit})" if "limited_to" in report else ""))
    print(f"  -> {out / 'records.jsonl'}")
    return 0
