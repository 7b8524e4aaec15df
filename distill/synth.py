"""Stage 02 logic: plan which messy inputs to write, and write each one as it arrives.

Each planned item gets a stable id from (task, source record id, index), a
style drawn by weight from ``random.Random(f"{seed}:{source_id}:{k}")`` so any
item can be reproduced alone, and a cache key over everything that shapes the
reply (messages, model, sampling parameters). A re-run skips items whose file
holds the same key and makes no request for them.

A record that carries a real input (a saved page imported by 01 --from-pages,
:func:`distill.pages.real_text`) gives its own text, unchanged and with no request, as
its first input (index 0, style ``real_page``); its further inputs (``per_record`` > 1)
are synthetic variants written from the same record like any other.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from . import batch
from .cli import llm_config_from_args
from .io import (
    StageError,
    check_output_dir,
    clear_manifest,
    json_files,
    read_json,
    read_json_object,
    run_lock,
    stable_hash,
    write_json,
    write_jsonl,
    write_manifest,
)
from .llm import LLMError, RunStats, run_concurrently
from .pages import REAL_STYLE, real_text, without_text
from .source import load_records
from .tasks import Style, Task, load_task

# The style an input that is a record's own real text carries (never drawn: it has no weight).
REAL = Style(REAL_STYLE, 0.0, "the page's own readable text, passed on unchanged")


@dataclass
class SynthItem:
    id: str
    source_id: str
    index: int
    style: Style
    record: dict
    messages: list[dict]
    key: str
    seed: int | None
    text: str | None = None   # a real input passed on as it is (style real_page): no request

    @property
    def path_name(self) -> str:
        return f"{self.id}.json"


def reweight_styles(styles: list[Style], spec: str | None) -> list[Style]:
    """The task's styles with weights from ``"name=weight,name=weight"``; unnamed styles get 0.

    ``None`` or ``""`` keeps the task's weights. Unknown names and weights that are not
    non-negative numbers (or all zero) are a ValueError naming what is allowed.
    """
    if not spec:
        return list(styles)
    names = [s.name for s in styles]
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, w = part.strip().partition("=")
        name = name.strip()
        if name == REAL_STYLE:
            raise ValueError(f"--styles: {REAL_STYLE} is not drawn: a page record's own text is its first input "
                             f"whatever the weights; this task's synthetic styles are {', '.join(names)}")
        if name not in names:
            raise ValueError(f"--styles: unknown style {name!r}; this task has {', '.join(names)}")
        try:
            weights[name] = float(w) if sep else 1.0
        except ValueError:
            raise ValueError(f"--styles: weight of {name!r} must be a number, got {w!r}") from None
        if weights[name] < 0:
            raise ValueError(f"--styles: weight of {name!r} must be >= 0")
    if not any(weights.values()):
        raise ValueError("--styles: at least one style needs a weight above 0")
    # Only the weight changes: a style's empty fields, prompt and record fields go with it.
    return [dataclasses.replace(s, weight=weights[s.name]) for s in styles if weights.get(s.name, 0) > 0]


def pick_style(styles: list[Style], seed: int, source_id: str, k: int) -> Style:
    rng = random.Random(f"{seed}:{source_id}:{k}")
    return rng.choices(styles, weights=[s.weight for s in styles], k=1)[0]


def needs_teacher(records: list[dict], per_record: int) -> bool:
    """Does planning these records ask the teacher for anything (a record without a real text,
    or synthetic variants beyond a page's own text)?"""
    return per_record > 1 or any(real_text(r) is None for r in records)


def plan(task: Task, records: list[dict], *, per_record: int, seed: int, model: str | None,
         params: dict, styles: list[Style] | None = None) -> list[SynthItem]:
    """One item per record and index; ``styles`` (default: the task's) with their weights.

    A record with a real text gives it as index 0 (style ``real_page``, no request); the
    other indexes are written by the teacher in a drawn style.
    """
    styles = task.styles if styles is None else styles
    if not styles and needs_teacher(records, per_record):
        raise ValueError(f"task {task.name} has no styles")
    items = []
    for rec in records:
        sid = str(rec["id"])
        real = real_text(rec)
        seed_rec = without_text(rec)  # the page text is the input itself: never a seed field, never a source field
        for k in range(per_record):
            item_id = f"{task.name}-{stable_hash(task.name, sid, k, length=12)}"
            if real is not None and k == 0:
                items.append(SynthItem(id=item_id, source_id=sid, index=0, style=REAL, record=seed_rec, messages=[],
                                       key=stable_hash(REAL_STYLE, text_sha256(real), seed_rec), seed=None, text=real))
                continue
            style = pick_style(styles, seed, sid, k)
            msgs = task.synthesis_messages(seed_rec, style)
            item_seed = int(stable_hash(seed, sid, k, length=8), 16) % (2**31)
            key = stable_hash(msgs, model, params, item_seed)
            items.append(SynthItem(id=item_id, source_id=sid, index=k, style=style, record=seed_rec, messages=msgs,
                                   key=key, seed=item_seed))
    return items


def is_done(out_dir: Path, item: SynthItem) -> bool:
    p = out_dir / item.path_name
    if not p.exists():
        return False
    try:
        return read_json(p).get("key") == item.key
    except Exception:  # a corrupt file is redone, never trusted
        return False


def clean_text(text: str) -> str:
    """The teacher's text as the student will see it: no wrapping quotes or fences."""
    t = text.strip()
    if t.startswith("```") and t.endswith("```"):
        t = t.strip("`").split("\n", 1)[-1].strip()
    return t


def text_sha256(text: str) -> str:
    """The hash that ties a label to the exact input text it was made from (02 -> 03 -> 04)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_item(out_dir: Path, item: SynthItem, task: Task, completion) -> Path:
    text = clean_text(completion.content)
    return write_json(out_dir / item.path_name, {
        "id": item.id,
        "source_id": item.source_id,
        "task": task.name,
        "style": item.style.name,
        "text": text,
        # A re-run with other settings rewrites the text under the same id; 04 pairs a label
        # with this input only if the label was made from a text with this hash.
        "text_sha256": text_sha256(text),
        "model": completion.model,
        "prompt_hash": stable_hash(item.messages),
        "key": item.key,
        "seed": item.seed,
        "usage": completion.usage,
        "finish_reason": completion.finish_reason,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # The source record travels with the input so stage 03 can verify labels against it.
        "source": item.record,
    })


def write_real_item(out_dir: Path, item: SynthItem, task: Task) -> Path:
    """A record's real text as an input of style ``real_page``: the text as the record has it."""
    return write_json(out_dir / item.path_name, {
        "id": item.id,
        "source_id": item.source_id,
        "task": task.name,
        "style": REAL_STYLE,
        "text": item.text,
        "text_sha256": text_sha256(item.text),
        "model": None,   # no teacher wrote it
        "prompt_hash": None,
        "key": item.key,
        "seed": None,
        "usage": None,
        "finish_reason": None,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": item.record,
    })


def load_synthetic(in_dir: Path) -> list[dict]:
    rows = []
    for p in json_files(in_dir, skip=("manifest.json", "stats.json")):
        row = read_json_object(p)
        if "text" in row and "id" in row:
            rows.append(row)
    return rows


def run_stage(args) -> int:
    """Stage 02 (``02_generate_synthetic.py``): plan the inputs, write each as its reply arrives, skip
    finished ones, list failures with a reason, write the manifest last. Returns the exit code."""
    batching = batch.check_flags(args)
    check_output_dir(args.output_dir, "02_generate_synthetic", [args.input])
    task = load_task(args.task)
    try:
        styles = reweight_styles(task.styles, args.styles)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    records, _ = load_records(args.input, task.source.get("parser", "jsonl"))
    records = records[args.skip:]
    if args.limit:
        records = records[:args.limit]
    if not records:
        raise StageError(f"no source records in {args.input} after --skip {args.skip}")

    client = batch.client_for(args, llm_config_from_args(args, seed=args.seed), batching)
    teacher = needs_teacher(records, args.per_record)
    if teacher and not args.model:
        client.ping()  # resolves the server's default model: part of every cache key
    model = client.model if teacher else args.model
    params = {"temperature": args.temperature, "max_tokens": args.max_tokens, "extra_body": args.extra_body}
    items = plan(task, records, per_record=args.per_record, seed=args.seed, model=model, params=params,
                       styles=styles)
    out = args.output_dir
    with run_lock(out):
        clear_manifest(out)
        todo = [it for it in items if not is_done(out, it)]
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
            write_real_item(out, item, task)
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
                    write_item(out, item, task, res)
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
