"""Stage 07: run a model over a held-out split, adversarial cases or saved pages, score it
(distill.scoring) and write its reports (distill.reports).

Saved pages (``07_evaluate.py --pages DIR``, :func:`load_pages`): each page's input is what
``08_extract.py`` sends, its reference the sibling ``<stem>.json`` or the page's own schema.org
markup; pages with neither are listed and skipped; scores also by host, and pages/min.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from .answers import drop_reasoning_block
from .constrain import CLOSED_STOPS
from .documents import document_from_bytes, output_names
from .infer import closed_stopped_answer, load_predictor, resolve_task, task_for_config
from .io import (
    DATASET_DIR,
    StageError,
    check_output_dir,
    clear_manifest,
    read_json,
    read_jsonl,
    read_manifest,
    require_manifest,
    run_lock,
    stable_hash,
    write_json,
    write_manifest,
)
from .labels import stratified_sample
from .pages import list_pages, load_page
from .reports import EVAL_FILE, compare, format_table, table_rows, write_eval, write_report
from .review import write_eval_review
from .scoring import aggregate, aggregate_adversarial, load_adversarial, score_case, score_example, scored_fields
from .spec import ModelSpec, parse_model
from .tasks import Task, load_task

# ============================================================== running a model (07_evaluate.py)

# Reasons a reply is the model's own failure (scored as invalid JSON). Any other reason of a
# Prediction without output is a failed request (timeout, 5xx, dropped connection): not saved,
# so a re-run retries it, and not scored, so a flaky server does not look like a bad model.
MODEL_ERRORS = {"length", "empty", "no_json", "bad_json", "not_object", "repetition", "max_items"}
PREDICTIONS_FILE = "predictions.jsonl"


def resolve_eval_task(spec: ModelSpec, task: "Task | str | None", dataset_manifest: dict | None) -> tuple[Task, dict | None]:
    """The task and exact prompt the model is run with, and its training config (if any).

    A trained model's saved prompt wins; otherwise --task, else the dataset's task.
    """
    task_obj = resolve_task(task) if isinstance(task, str) else task
    dcfg = spec.config() if spec.kind != "gguf" or Path(spec.value).is_file() else None   # a missing GGUF fails at loading
    if dcfg is not None:
        if task_obj is None and not dcfg.get("task") and dataset_manifest and dataset_manifest.get("task"):
            task_obj = load_task(dataset_manifest["task"])
        return task_for_config(dcfg, task_obj), dcfg
    if task_obj is None:
        if dataset_manifest and dataset_manifest.get("task"):
            task_obj = load_task(dataset_manifest["task"])
        else:
            raise StageError("which task? pass --task (the dataset manifest names none)")
    return task_obj, None


def load_split(dataset_dir: str | Path, split: str, task: Task, limit: int = 0) -> tuple[list[dict], dict]:
    """Rows of one split of a 04 dataset with text and reference; --limit draws a style-balanced sample."""
    dataset_dir = Path(dataset_dir)
    manifest = require_manifest(dataset_dir, "04_build_dataset.py")
    if manifest.get("task") and manifest["task"] != task.name:
        raise StageError(f"{dataset_dir} is a dataset of task {manifest['task']!r} but the model runs task "
                         f"{task.name!r}: pass the matching --dataset-dir or --task")
    path = dataset_dir / f"{split}.jsonl"
    if not path.is_file():
        raise StageError(f"{path} not found: --split must be one of train, val, test")
    rows = read_jsonl(path)
    if not rows:
        raise StageError(f"{path} is empty: build a larger dataset (04_build_dataset.py --split) or pick another split")
    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("text"), str) or not r.get("id"):
            raise StageError(f"{path} row {i} has no 'id'/'text': rebuild the dataset with 04_build_dataset.py")
        ref = r.get("reference")
        if ref is None:
            try:
                ref = json.loads(drop_reasoning_block(r["messages"][-1]["content"]))
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
                raise StageError(f"{path} row {i} has no 'reference' label and no parseable assistant turn") from exc
        if ref is None:   # a JSON null label: nothing to extract, every field's reference is empty
            ref = {}
        if not isinstance(ref, dict):
            raise StageError(f"{path} row {i}: the reference label is a {type(ref).__name__}, not a JSON object")
        out.append(r | {"reference": ref})
    if limit and limit < len(out):
        order = {r["id"]: i for i, r in enumerate(out)}
        out = sorted(stratified_sample(out, limit, seed=0), key=lambda r: order[r["id"]])
    return out, manifest


PAGE_STYLE = "real_page"   # the input style of a saved page (02 gives real page inputs the same style)


def load_pages(pages_dir: str | Path, task: Task, limit: int = 0) -> tuple[list[dict], dict]:
    """Rows for ``--pages DIR``: each saved page's model input and reference, and what was skipped.

    The input is exactly what ``08_extract.py`` sends for the page (:func:`distill.documents.document_from_bytes`,
    then the task's window ``pages.max_chars``); the reference is the sibling ``<stem>.json`` mapped by the
    task, else the page's own schema.org markup (:func:`distill.pages.load_page`). A page with neither is
    skipped and listed, never scored. ``limit`` stops after N pages with a reference (in path order).
    Returns (rows, info) with info = pages found / read, reference counts by origin, skipped pages.
    """
    pages_dir = Path(pages_dir)
    paths = list_pages(pages_dir)
    names = output_names(paths, pages_dir)
    max_chars = (task.pages or {}).get("max_chars")
    rows: list[dict] = []
    skipped: list[dict] = []
    origins: Counter = Counter()
    read = 0
    for path in paths:
        if limit and len(rows) >= limit:
            break
        read += 1
        page = load_page(path, task, name=names[path])
        rel = path.relative_to(pages_dir).as_posix()
        if page.reference is None:
            skipped.append({"name": page.name, "path": rel, "host": page.host,
                            "reason": f"no reference: no {path.with_suffix('.json').name} beside it and no "
                                      f"schema.org {task.pages['type']} markup in it"})
            continue
        # 08_extract.py's path for an HTML input: read the document, then re-window it to the task's pages.max_chars.
        doc = document_from_bytes(page.html, name=page.name, source=str(path), suffix=path.suffix)
        if max_chars:
            doc.refocus(max_chars)
        origins[page.reference_from] += 1
        rows.append({"id": page.name, "style": PAGE_STYLE, "host": page.host, "page": rel,
                     "reference_from": page.reference_from, "reference": page.reference, "text": doc.text,
                     # 08 sends no request for these: scored as no answer (every field with a value omitted)
                     "input_error": "binary_input" if doc.error else None if doc.text.strip() else "empty_input"})
    info = {"pages_dir": str(pages_dir), "pages_found": len(paths), "pages_read": read,
            "references": {"json": origins["json"], "markup": origins["markup"]},
            "skipped": skipped}
    return rows, info


def read_predictions(path: Path) -> dict[str, dict]:
    """key -> saved prediction. A torn last line (a crash mid-write) is skipped and redone."""
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("key"):
                out[rec["key"]] = rec
    return out


def append_prediction(path: Path, rec: dict) -> None:
    """Append one line and fsync: what was written survives a crash; a torn tail is never merged."""
    line = json.dumps(rec, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _pred_output(rec: dict, task: Task) -> tuple[Any, str | None]:
    """What to score for a saved prediction, and the upstream parse error to report."""
    if isinstance(rec.get("output"), dict):
        return rec["output"], None
    if rec.get("stopped") in CLOSED_STOPS and rec.get("answer"):
        # saved before stopped answers were closed (or before they were finished to the schema and
        # the token limit's were closed too): closed here as distill.infer closes them now
        obj, _ = closed_stopped_answer(rec["answer"], task.schema)
        if obj is not None:
            return obj, None
    if rec.get("parse_error") == "not_object":
        return rec.get("answer") or "", None   # JSON null is a valid empty answer; re-parsed here
    return None, rec.get("parse_error") or "no_output"


def _example_record(item: dict, rec: dict, scored: dict) -> dict:
    page = {k: item[k] for k in ("host", "page", "reference_from") if item.get(k) is not None}
    return {"id": item["id"], "style": item.get("style"), "source_id": item.get("source_id"), **page,
            "text": item["text"], "answer": (rec.get("answer") or "")[:4000],
            "reasoning": (rec.get("reasoning") or "")[:4000] or None,
            "latency_s": rec.get("latency_s"), "truncated_input": rec.get("truncated_input", False),
            "stopped": rec.get("stopped"), "resumed": rec.get("resumed", 0), **scored}


def _throughput(generated: int, wall_s: float, out_dir: Path) -> dict:
    """Inputs per minute over this run's generation wall time; a run that generated nothing (all
    resumed) keeps the rate measured by the run that did. With adversarial cases beside a split
    or pages, only the split's inputs count, up to the last of their answers (the cases are
    queued after them), so pages/min is the pages' own rate."""
    if generated and wall_s > 0:
        return {"generated": generated, "wall_s": round(wall_s, 3), "per_min": generated / wall_s * 60}
    prev = out_dir / EVAL_FILE
    if prev.is_file():
        try:
            old = read_json(prev).get("throughput")
        except (StageError, ValueError, AttributeError):
            old = None
        if isinstance(old, dict) and old.get("per_min") is not None:
            return old
    return {"generated": 0, "wall_s": None, "per_min": None}


def run_evaluation(spec: str, *, task: "Task | str | None" = None, model_id: str | None = None,
                   dataset_dir: str | Path = "data/04_dataset", split: str = "test",
                   pages_dir: str | Path | None = None,
                   output_dir: str | Path | None = None, name: str | None = None, limit: int = 0,
                   concurrency: int = 0, max_new_tokens: int = 1024, context: int | None = None,
                   adversarial: bool | None = None, progress: bool = True,
                   compare_dirs: Iterable[str | Path] = (), constrain: str = "schema", resumes: int = 2,
                   threads: int | None = None) -> dict:
    """Run ``spec`` on a split (+ adversarial cases), score, and write eval.json, report.md, plots, manifest.

    ``pages_dir``: score on a folder of saved pages instead of a split (:func:`load_pages`: the model
    reads what 08_extract.py sends; references from sibling .json files or the pages' own markup;
    pages with neither are listed in ``eval.json`` under ``pages.skipped``). Adversarial cases are
    off by default there.

    Resumable: predictions are appended to predictions.jsonl as they arrive, keyed by example
    id, model spec and weights, prompt and max_new_tokens; a re-run only generates the rest
    (and does not load the model when nothing is left). Returns the eval dict.
    """
    ms = parse_model(spec, model_id)
    spec = ms.value
    if limit < 0:
        raise StageError("--limit must be 0 (all) or more")
    pages_info = None
    if pages_dir is not None:
        task_obj, dcfg = resolve_eval_task(ms, task, None)
        rows, pages_info = load_pages(pages_dir, task_obj, limit)
        split, inputs_dir = "pages", Path(pages_dir)
        if not rows:   # n=0 is an error, never a score
            raise StageError(f"--pages {pages_dir}: none of its {pages_info['pages_read']} pages has a reference "
                             f"(a sibling .json or schema.org {task_obj.pages.get('type')} markup): nothing to score")
    else:
        ds_manifest = read_manifest(dataset_dir) if Path(dataset_dir).is_dir() else None
        task_obj, dcfg = resolve_eval_task(ms, task, ds_manifest)
        rows, _ = load_split(dataset_dir, split, task_obj, limit)
        inputs_dir = Path(dataset_dir)

    adv_path = task_obj.adversarial_path
    if adversarial is None:
        adversarial = pages_dir is None and adv_path is not None and adv_path.is_file()
    if adversarial and (adv_path is None or not adv_path.is_file()):
        raise StageError(f"task {task_obj.name} has no adversarial case file ({adv_path or 'no adversarial: key'}); "
                         f"drop --adversarial")
    cases = load_adversarial(adv_path, task_obj) if adversarial else []

    name = name or ms.default_name
    out_dir = check_output_dir(Path(output_dir) if output_dir else Path("reports") / name, "07_evaluate", [inputs_dir])
    concurrency = concurrency or ms.default_concurrency
    fp = ms.fingerprint()
    template = (dcfg or {}).get("chat_template")

    row_set = "page" if pages_dir is not None else "test"
    items = [{"set": row_set, **{k: r.get(k) for k in ("id", "style", "source_id", "text", "reference", "source",
                                                       "host", "page", "reference_from", "input_error")}}
             for r in rows]
    items += [{"set": "adversarial", "id": c["id"], "style": c["kind"], "text": c["text"]} for c in cases]
    for it in items:
        it["prompt_hash"] = stable_hash(task_obj.student_messages(it["text"]), template)
        it["key"] = stable_hash(it["set"], it["id"], spec, model_id, fp, it["prompt_hash"], max_new_tokens,
                                {"constrain": constrain, "loop_guard": 1, "resume_loops": resumes})

    pred_path = out_dir / PREDICTIONS_FILE
    failures: Counter = Counter()
    info: dict = {}
    generated, wall_s = 0, 0.0
    main_done, main_wall = 0, 0.0   # answers to the split's (or the pages') inputs, and when the last came
    with run_lock(out_dir):
        clear_manifest(out_dir)
        saved = read_predictions(pred_path)
        # 08 sends no request for a page without readable text: no answer, scored as such
        saved.update({it["key"]: {"key": it["key"], "answer": "", "output": None, "parse_error": it["input_error"]}
                      for it in items if it.get("input_error")})
        pending = [it for it in items if it["key"] not in saved]
        if pending:
            print(f"07 {name}: {len(items) - len(pending)} of {len(items)} predictions already saved, "
                  f"running {len(pending)} ({spec}, concurrency {concurrency})", flush=True)
            # A chain folder (distill.chain: steps run one after another) is evaluated end to end.
            with load_predictor(spec, model_id=model_id, task=task_obj, max_new_tokens=max_new_tokens,
                                concurrency=concurrency, context=context, constrain=constrain,
                                resumes=resumes, threads=threads) as predictor:
                info = dict(predictor.info)
                t0 = time.monotonic()   # generation only: loading the model is not in pages/min
                for i, p in predictor.predict_iter([it["text"] for it in pending], progress=progress,
                                                   desc=f"07 {name}"):
                    it = pending[i]
                    if p.output is None and p.parse_error not in MODEL_ERRORS:
                        failures[p.parse_error or "unknown"] += 1
                        continue
                    generated += 1
                    if it["set"] != "adversarial":   # the rate is the split's or the pages': the
                        main_done, main_wall = main_done + 1, time.monotonic() - t0   # cases come last
                    rec = {"key": it["key"], "set": it["set"], "id": it["id"], "model": spec, "model_id": model_id,
                           "prompt_hash": it["prompt_hash"], "raw": p.raw, "reasoning": p.reasoning,
                           "answer": p.answer, "output": p.output, "parse_error": p.parse_error,
                           "schema_errors": p.schema_errors, "repaired": p.repaired,
                           "finish_reason": p.finish_reason, "stopped": p.stopped, "resumed": p.resumed,
                           "truncated_input": p.truncated_input,
                           "latency_s": round(p.latency_s, 4), "prompt_tokens": p.prompt_tokens,
                           "completion_tokens": p.completion_tokens}
                    append_prediction(pred_path, rec)
                    saved[it["key"]] = rec
                wall_s = time.monotonic() - t0
                if main_done:
                    generated, wall_s = main_done, main_wall

        examples, scored_cases = [], []
        cases_by_id = {c["id"]: c for c in cases}
        for it in items:
            rec = saved.get(it["key"])
            if rec is None:
                continue
            pred, upstream_error = _pred_output(rec, task_obj)
            if it["set"] != "adversarial":
                s = score_example(pred, it["reference"], task_obj, it["text"], it.get("source"))
            else:
                c = cases_by_id[it["id"]]
                s = score_case(c, pred, task_obj, stopped=rec.get("stopped")) | {"kind": c["kind"]}
            if upstream_error:
                s["parse_error"] = upstream_error
            (examples if it["set"] != "adversarial" else scored_cases).append(_example_record(it, rec, s))

        missing = len(items) - len(examples) - len(scored_cases)
        agg = aggregate(examples, task_obj)
        where = f"the pages in {pages_dir}" if pages_dir is not None else str(Path(dataset_dir) / f"{split}.jsonl")
        # n=0 is an error, never a score: nothing is written but the saved predictions.
        if not examples:
            raise StageError(f"07 {name}: nothing to score on {where}: no prediction for any of its {len(rows)} "
                             f"examples (failed requests: {dict(failures) or 'none'}); re-run to retry them")
        if not agg["n_scored"]:
            raise StageError(f"07 {name}: nothing to score on {where}: none of its {len(examples)} examples has "
                             f"a reference with a value for any scored field "
                             f"({', '.join(scored_fields(task_obj))}); "
                             + ("check the pages' references" if pages_dir is not None
                                else "check the labels (04_build_dataset.py)"))
        ev = {
            "name": name, "model": spec, "model_id": model_id, "task": task_obj.name, "split": split,
            "dataset_dir": None if pages_dir is not None else str(dataset_dir),
            "max_new_tokens": max_new_tokens, "constrain": constrain, "resume_loops": resumes,
            "predictor": info,
            "n_examples": len(rows), "missing_predictions": missing, "request_failures": dict(failures),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "throughput": _throughput(generated, wall_s, out_dir),
            "aggregate": agg,
            "adversarial": None,
            "examples": examples,
        }
        if pages_info is not None:
            ev["pages"] = pages_info | {
                "input_errors": dict(Counter(it["input_error"] for it in items if it.get("input_error")))}
        if cases:
            ev["adversarial"] = aggregate_adversarial(scored_cases) | {
                # every case with a reference, so a no-recipe case's abstentions are counted too
                "aggregate": aggregate([c for c in scored_cases if c.get("fields")], task_obj, by_style=False),
                "cases": scored_cases}
        write_eval(out_dir, ev)
        others = compare(compare_dirs) if compare_dirs else []
        title = f"Evaluation: {name}" + (" vs " + ", ".join(str(o.get("name")) for o in others) if others else "")
        write_report(out_dir, [ev] + others, title=title)
        write_eval_review(out_dir, [ev] + others, title)   # review.html: every example next to its input
        write_manifest(out_dir, "07_evaluate", {"model": spec, "model_id": model_id, "task": task_obj.name,
                                                "split": split, "dataset_dir": ev["dataset_dir"],
                                                "pages_dir": None if pages_dir is None else str(pages_dir),
                                                "limit": limit, "max_new_tokens": max_new_tokens,
                                                "adversarial": adversarial, "constrain": constrain,
                                                "resume_loops": resumes},
                       {"examples": len(examples), "adversarial": len(scored_cases), "missing": missing,
                        **({"skipped_pages": len(pages_info["skipped"])} if pages_info else {}),
                        **{f"failed_{k}": v for k, v in failures.items()}})
    return ev


def run_compare(dirs: list[str | Path], output_dir: str | Path) -> list[dict]:
    """--compare: one table, report and plots from earlier runs, written to output_dir."""
    if len(dirs) < 1:
        raise StageError("--compare needs at least one run folder")
    check_output_dir(output_dir, "07_evaluate_compare", dirs)
    evals = compare(dirs)
    title = "Comparison: " + " vs ".join(str(e.get("name")) for e in evals)
    write_report(output_dir, evals, title=title)
    write_eval_review(output_dir, evals, title)
    write_json(Path(output_dir) / "compare.json",
               {"runs": [str(d) for d in dirs],
                "table": [{"metric": label, **dict(zip([str(e.get("name")) for e in evals], cells))}
                          for label, cells in table_rows(evals)],
                "aggregates": {str(e.get("name")): e["aggregate"] for e in evals},
                "adversarial": {str(e.get("name")): {k: v for k, v in (e.get("adversarial") or {}).items()
                                                     if k != "cases"} for e in evals}})
    write_manifest(output_dir, "07_evaluate_compare", {"compare": [str(d) for d in dirs]}, {"runs": len(evals)})
    return evals


def run_stage(args) -> int:
    """``07_evaluate.py``: evaluate --model (a split, --pages or the adversarial cases) and/or put
    --compare runs side by side; print the table and the summary."""
    if not args.model and not args.compare:
        raise StageError("give --model to evaluate a model, or --compare DIR... to merge earlier runs")
    if args.concurrency < 0 or args.max_new_tokens < 1:
        raise StageError("--concurrency must be 0 (auto) or more and --max-new-tokens at least 1")
    if args.pages is not None and (args.dataset_dir is not None or args.split is not None):
        raise StageError("--pages evaluates a folder of pages, not a dataset split: drop --dataset-dir/--split")
    if args.pages is not None and not args.model:
        raise StageError("--pages needs --model (the model to evaluate on the pages)")

    if not args.model:
        out = args.output_dir or Path("reports") / "comparison"
        evals = run_compare(args.compare, out)
        print(format_table(evals))
        print(f"\nwrote {out}/report.md, review.html, fields.png, styles.png, compare.json")
        return 0

    ev = run_evaluation(args.model, task=args.task, model_id=args.model_id,
                          dataset_dir=args.dataset_dir or DATASET_DIR, split=args.split or "test",
                          pages_dir=args.pages, output_dir=args.output_dir, name=args.name, limit=args.limit,
                          concurrency=args.concurrency, max_new_tokens=args.max_new_tokens, context=args.context,
                          adversarial=args.adversarial, progress=not args.no_progress,
                          compare_dirs=args.compare or (), constrain=args.constrain, resumes=args.resume_loops,
                          threads=args.threads)
    out = args.output_dir or Path("reports") / ev["name"]
    evals = [ev] + (compare(args.compare) if args.compare else [])
    print()
    print(format_table(evals))
    if ev["missing_predictions"]:
        print(f"\nwarning: {ev['missing_predictions']} inputs have no prediction (failed requests: "
              f"{ev['request_failures']}); they are not scored. Re-run the same command to retry them.",
              file=sys.stderr)
    agg = ev["aggregate"]
    unscored = agg["n"] - agg["n_scored"]
    print(f"\n07: {ev['name']} on {ev['task']}/{ev['split']}: {agg['n_scored']} examples scored"
          + (f" ({unscored} more have no reference value: only their abstentions count)" if unscored else "")
          + (f", {ev['adversarial']['passed']}/{ev['adversarial']['n']} adversarial cases passed"
             if ev.get("adversarial") else ""))
    if ev.get("pages"):
        pg = ev["pages"]
        skipped = pg["skipped"]
        print(f"pages: references from .json {pg['references']['json']}, from markup {pg['references']['markup']}; "
              f"{len(skipped)} skipped (no reference)" + (": " + ", ".join(sk["path"] for sk in skipped[:10])
                                                         + (" …" if len(skipped) > 10 else "") if skipped else ""))
    print(f"wrote {out}/eval.json, report.md, review.html, fields.png, styles.png, predictions.jsonl")
    return 0
