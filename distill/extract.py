"""Stage 08: the trained student on the user's own files (08_extract.py orchestrates, this works).

* :func:`collect_inputs` reads the inputs (files, ``-`` for stdin, a folder) into
  :class:`distill.documents.Document` objects with unique output names inside the output folder.
* :func:`plan` splits them into what to extract, what is done already, what is empty and what is
  not text.
* :func:`extract` runs a :class:`distill.infer.Predictor` over them and files each answer as it
  arrives: ``<name>.json`` (valid answers only) or ``<name>.error.json`` (why not, with the raw
  output), or JSON on stdout for a single input without an output folder.
* :func:`export_ollama` writes the Modelfile of a trained GGUF (distill.ollama).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .documents import Document, list_input_dir, output_names, read_document, read_stdin
from .infer import (
    DEFAULT_CONTEXT,
    gguf_context_length,
    load_predictor,
    resolve_task,
    task_for_config,
    training_tokenizer,
)
from .io import (
    StageError,
    atomic_write_text,
    check_output_dir,
    clear_manifest,
    read_json,
    run_lock,
    write_json,
    write_manifest,
)
from .ollama import modelfile_text
from .review import check_extract_review, write_extract_review
from .spec import find_training_config, load_config, parse_model

# Which model and prompt wrote the results in an output folder (results of another run must not mix in).
RUN_STATE = ".extract_run.json"


# ------------------------------------------------------------------ inputs

def collect_inputs(input_dir: Path | None, inputs: list[str]) -> list[Document]:
    """The documents of ``--input-dir`` (recursively) and of ``inputs`` (paths; ``-`` = stdin, once)."""
    docs = []
    if input_dir is not None:
        paths, ignored = list_input_dir(input_dir)
        if ignored:
            print(f"note: ignoring {len(ignored)} file(s) in {input_dir} without a .txt/.md/.html suffix",
                  file=sys.stderr)
        if not paths:
            raise StageError(f"--input-dir {input_dir}: no .txt, .md or .html files")
        names = output_names(paths, input_dir)
        for path in paths:
            doc = read_document(path)
            doc.name = names[path]
            docs.append(doc)
    files = [Path(x) for x in inputs if x != "-"]
    if inputs.count("-") > 1:
        raise StageError("stdin (-) can be given once")
    for path in files:
        if not path.is_file():
            raise StageError(f"{path}: no such file" + (" (use --input-dir for a folder)" if path.is_dir() else ""))
    names = output_names(files)
    for path in files:
        doc = read_document(path)
        doc.name = names[path]
        docs.append(doc)
    if "-" in inputs:
        docs.append(read_stdin())
    for d in docs:
        if d.name in ("manifest", RUN_STATE.removesuffix(".json")):
            d.name += "_"  # <out>/manifest.json is the run's manifest
    if len({d.name for d in docs}) != len(docs):
        raise StageError("two inputs would write the same output name; give them different file names")
    return docs


@dataclass
class Plan:
    todo: list[Document]         # to extract now
    skipped: list[Document]      # a result from an earlier run is in the output folder
    empty: list[Document]        # no text (an empty file, a page without readable text)
    unreadable: list[Document]   # not text (binary): never sent to the model


def plan(docs: list[Document], out: Path | None, overwrite: bool) -> Plan:
    todo, skipped = docs, []
    if out is not None and not overwrite:
        skipped = [d for d in docs if (out / f"{d.name}.json").exists()]
        todo = [d for d in docs if not (out / f"{d.name}.json").exists()]
    return Plan(todo=[d for d in todo if not d.error and d.text.strip()], skipped=skipped,
                empty=[d for d in todo if not d.error and not d.text.strip()],
                unreadable=[d for d in todo if d.error])


def check_run_state(out: Path, state: dict, overwrite: bool) -> None:
    """Results in ``out`` from another model or task would silently mix with these: refuse."""
    path = out / RUN_STATE
    if path.exists() and not overwrite:
        old = read_json(path)
        if {k: old.get(k) for k in state} != state:
            raise StageError(f"{out} holds results of another run (model {old.get('model')}, task {old.get('task')}): "
                             f"use another --output-dir, or --overwrite to redo every input")
    write_json(path, state)


# ------------------------------------------------------------------ extracting

def dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def error_record(doc: Document, pred) -> dict:
    return {"source": doc.source, "error": pred.error, "parse_error": pred.parse_error,
            "schema_errors": pred.schema_errors, "truncated_input": pred.truncated_input,
            "finish_reason": pred.finish_reason, "stopped": pred.stopped, "resumed": pred.resumed, "raw": pred.raw}


@dataclass
class Result:
    counts: dict
    reasons: Counter = field(default_factory=Counter)   # why inputs have no valid answer
    elapsed: float = 0.0

    @property
    def all_valid(self) -> bool:
        return self.counts["invalid"] == self.counts["empty"] == self.counts["unreadable"] == 0

    def summary(self) -> str:
        c = self.counts
        ran = c["valid"] + c["invalid"]
        rate = f"{ran / self.elapsed * 60:.1f} inputs/min" if ran and self.elapsed > 0 else ""
        no_answer = c["invalid"] + c["empty"] + c["unreadable"]
        return (f"extracted {c['valid']}/{ran} valid"
                + (f"; no valid answer for {no_answer} ({', '.join(f'{k} {v}' for k, v in self.reasons.items())})"
                   if self.reasons else "")
                + (f" ({c['stopped']} of them stopped by the loop guard or the token limit and closed at "
                   f"their last complete item)" if c.get("stopped") else "")
                + f"; {c['truncated']} truncated to fit the context; {c['skipped']} skipped (done before)"
                + (f"; {c['empty']} empty" if c["empty"] else "")
                + (f"; {c['unreadable']} not text (binary)" if c["unreadable"] else "")
                + (f" | {self.elapsed:.1f}s, {rate}" if rate else ""))


def extract(pred, work: Plan, n_inputs: int, out: Path | None, *, keep_reasoning: bool = False,
            stdout: TextIO | None = None, stderr: TextIO | None = None) -> Result:
    """Run ``pred`` over ``work.todo`` and file every answer as it arrives (see the module docstring);
    empty and binary inputs get their error record without a request."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    res = Result(counts={"inputs": n_inputs, "skipped": len(work.skipped), "empty": len(work.empty),
                         "unreadable": len(work.unreadable), "valid": 0, "invalid": 0, "truncated": 0, "repaired": 0,
                         "stopped": 0})
    t0 = time.monotonic()
    page_chars = pred.task.pages.get("max_chars")
    if page_chars:
        for doc in work.todo:
            doc.refocus(page_chars)
    for doc in work.unreadable:
        res.reasons["binary_input"] += 1
        print(f"{doc.source}: not extracted: {doc.error}", file=stderr)
        if out is not None:
            write_json(out / f"{doc.name}.error.json", {"source": doc.source, "error": "binary_input",
                                                        "detail": doc.error})
    for doc in work.empty:
        res.reasons["empty_input"] += 1
        print(f"{doc.source}: no text to extract (empty, or a page without readable text)", file=stderr)
        if out is not None:
            write_json(out / f"{doc.name}.error.json", {"source": doc.source, "error": "empty_input"})
    for i, p in pred.predict_iter([d.text for d in work.todo], progress=len(work.todo) > 1 or out is not None):
        doc = work.todo[i]
        res.counts["truncated"] += p.truncated_input
        res.counts["repaired"] += p.repaired
        if p.truncated_input:
            print(f"{doc.source}: longer than the context; kept its first {p.kept_chars} of {len(doc.text)} "
                  f"characters", file=stderr)
        if p.valid:
            res.counts["valid"] += 1
            if p.stopped:
                res.counts["stopped"] += 1
                print(f"{doc.source}: stopped ({p.stopped}); the answer keeps what was complete before the stop",
                      file=stderr)
        else:
            res.counts["invalid"] += 1
            res.reasons[(p.parse_error or "schema").split(":")[0]] += 1
            print(f"{doc.source}: invalid answer ({p.error})", file=stderr)
        if out is None:
            if p.valid:
                think = f"<think>{p.reasoning}</think>\n" if keep_reasoning and p.reasoning else ""
                stdout.write(think + dump(p.output))
            else:
                stderr.write(dump(error_record(doc, p)))
            continue
        err_path = out / f"{doc.name}.error.json"
        if p.valid:
            write_json(out / f"{doc.name}.json", p.output)
            err_path.unlink(missing_ok=True)
            if keep_reasoning and p.reasoning:
                atomic_write_text(out / f"{doc.name}.reasoning.txt", p.reasoning + "\n")
        else:
            write_json(err_path, error_record(doc, p))
            (out / f"{doc.name}.json").unlink(missing_ok=True)  # an --overwrite run must not leave the old result
    res.elapsed = time.monotonic() - t0
    return res


# ------------------------------------------------------------------ Ollama

def find_gguf(model: str | Path) -> Path:
    """The GGUF of ``--model``: the file itself, or the first one in a trained folder's gguf/."""
    ms = parse_model(model)
    spec = Path(model)
    if ms.kind == "openai":
        raise StageError("--export-ollama needs the model's GGUF: pass --model path/to/model.gguf (or the trained "
                         "folder with a gguf/ inside)")
    if ms.kind == "gguf":
        return spec
    found = sorted(spec.glob("gguf/*.gguf")) + sorted(spec.glob("*.gguf"))
    if not found:
        raise StageError(f"--export-ollama: no GGUF in {spec}/gguf: train with --save-gguf, or pass --model "
                         f"path/to/model.gguf")
    return found[0]


def export_ollama(model: str | Path, dest: Path, task, context: int | None, max_new_tokens: int) -> Path:
    """dest/Modelfile for the model's GGUF: the training chat template, stop tokens and system prompt."""
    gguf = find_gguf(model)
    cfg_path = find_training_config(gguf)
    if cfg_path is None:
        raise StageError(f"--export-ollama: no distill_config.json next to {gguf}: the Modelfile needs the training "
                         f"chat template and prompt (export a GGUF trained by 05_finetune.py)")
    dcfg = load_config(cfg_path)
    tok = training_tokenizer(cfg_path, dcfg)
    task = task or task_for_config(dcfg)
    context = context or min(gguf_context_length(gguf) or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    dest.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(dest / "Modelfile", modelfile_text(gguf, dest, tok, dcfg, task, context, max_new_tokens))
    print(f"wrote {path}\n  ollama create student -f {path}\n  ollama run student \"$(cat post.txt)\"", file=sys.stderr)
    return path


def run_stage(args) -> int:
    """``08_extract.py``: extract every input (skipping finished ones in --output-dir), write one JSON
    or error record each, the manifest last; exit 2 when some answer is not valid."""
    if args.concurrency < 1:
        raise StageError("--concurrency must be at least 1")
    if args.max_new_tokens < 1:
        raise StageError("--max-new-tokens must be at least 1")
    if args.context < 0:
        raise StageError("--context must be 0 (automatic) or a token count")
    if args.input_dir is not None and args.output_dir is None:
        raise StageError("--input-dir needs --output-dir (one <stem>.json per input goes there)")
    if args.review:
        check_extract_review(args.output_dir, args.input_dir)
    out = args.output_dir
    if out is not None:
        check_output_dir(out, "08_extract", [args.input_dir])
    docs = collect_inputs(args.input_dir, args.inputs)
    if len(docs) > 1 and out is None:
        raise StageError(f"{len(docs)} inputs: pass --output-dir (stdout takes a single input)")
    if not docs and args.export_ollama is None:
        raise StageError("nothing to do: give input files, - for stdin, --input-dir, or --export-ollama DIR")
    task = resolve_task(args.task)
    if not docs:  # only the Modelfile: no model needs to run
        export_ollama(args.model, args.export_ollama, task, args.context or None, args.max_new_tokens)
        return 0

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        clear_manifest(out)  # present again only when this run finishes
    work = plan(docs, out, args.overwrite)
    with run_lock(out) if out is not None else contextlib.nullcontext():
        with load_predictor(args.model, model_id=args.model_id, task=task, max_new_tokens=args.max_new_tokens,
                            concurrency=args.concurrency, context=args.context or None,
                            constrain=args.constrain, resumes=args.resume_loops, threads=args.threads) as pred:
            if out is not None:
                check_run_state(out, {"model": str(args.model), "model_id": args.model_id, "task": pred.task.name,
                                        "task_prompt": [pred.task.student_system_prompt,
                                                        pred.task.student_user_template]}, args.overwrite)
            if args.export_ollama is not None:
                export_ollama(args.model, args.export_ollama, pred.task, args.context or None, args.max_new_tokens)
            print(f"model: {args.model} ({pred.info.get('backend')}, {pred.info.get('kind')}); task {pred.task.name}; "
                  f"{len(work.todo)} to extract" + (f", {len(work.skipped)} already done" if work.skipped else "")
                  + (f"; context {pred.info['context']} tokens" if pred.info.get("context") else ""), file=sys.stderr)
            res = extract(pred, work, len(docs), out, keep_reasoning=args.keep_reasoning)
    print(res.summary(), file=sys.stderr)
    if args.review:
        print(f"review page: {write_extract_review(out, docs, pred.task)}", file=sys.stderr)
    if out is not None:
        write_manifest(out, "08_extract", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       res.counts, reasons=dict(res.reasons), backend=pred.info, elapsed_s=round(res.elapsed, 2))
    return 0 if res.all_valid else 2
