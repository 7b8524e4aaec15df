#!/usr/bin/env python3
"""Use the trained student: extract JSON from real text, Markdown or saved web pages.

The prompt is the one the model was trained with (system prompt, user template and chat
template from the training run's distill_config.json); decoding is greedy; every answer is
validated against the task's JSON Schema and an invalid one is reported, never written as
a result. 07_evaluate.py runs the same inference code (distill/infer.py).

Usage:
    python 08_extract.py --model gemma-3/ page.html                       # one file -> JSON on stdout
    cat post.txt | python 08_extract.py --model gemma-3/ -                # stdin
    python 08_extract.py --model gemma-3/merged notes.md                  # the merged model
    python 08_extract.py --model gemma-3/gguf/model-Q8_0.gguf --input-dir pages/ --output-dir extracted/
    python 08_extract.py --model gemma-3/ --input-dir pages/ --output-dir extracted/ --review   # + review.html
    python 08_extract.py --model openai:http://localhost:1234/v1 --model-id my-student --task gemma-3/ notes.txt
    python 08_extract.py --model gemma-3/gguf/model-Q8_0.gguf --export-ollama gemma-3/gguf   # writes a Modelfile

Inputs: .txt/.md go to the model as they are; .html/.htm (and stdin that looks like HTML) are
reduced to their visible text, and a long page to its recipe window of the task's
pages.max_chars characters (distill/pages.py; the same reader made the real-page training
inputs): scripts, styles and embedded JSON-LD never reach the prompt. A directory gives one output per input, named by
the input's stem: <stem>.json (valid answers only), <stem>.error.json (why an answer was
invalid, with the raw output), <stem>.reasoning.txt with --keep-reasoning. Re-running the
same command skips inputs that already have <stem>.json (invalid ones are retried).

Long inputs: when prompt + --max-new-tokens would exceed the context, the head of the input
is kept (cut at a token boundary) so everything fits; truncated inputs are counted and flagged.

A binary input (a PDF, an image: NUL bytes or control bytes) is never sent to the model:
it is reported, and gets <stem>.error.json. Inputs with the same stem (a/post.txt, b/post.txt)
get names from their paths (a__post_txt.json), always inside --output-dir.

Exit code: 0 every input gave a valid answer (or --export-ollama alone wrote its Modelfile); 2 some
inputs gave no valid answer (invalid, empty or binary; the others are written); 1 an error stopped
the run (one line on stderr: bad inputs or flags, a model that does not load, a server that stops
answering; answers written before it stay); 2 also when argparse rejects the flags; 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from distill.cli import add_model_args, run
from distill.io import (
    StageError,
    atomic_write_text,
    check_output_dir,
    clear_manifest,
    read_json,
    run_lock,
    write_json,
    write_manifest,
)

RUN_STATE = ".extract_run.json"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("inputs", nargs="*", help="text (.txt), Markdown (.md) or HTML (.html) files; - reads stdin")
    g.add_argument("--input-dir", type=Path, default=None,
                   help="extract every .txt/.md/.html file in this folder (recursively); needs --output-dir")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="write <stem>.json per input here (default with a single input: JSON on stdout)")
    g.add_argument("--keep-reasoning", action="store_true",
                   help="keep the model's <think> reasoning: <stem>.reasoning.txt, or a <think> block before the "
                        "JSON on stdout (default: JSON only)")
    g.add_argument("--review", action="store_true",
                   help="also write review.html in --output-dir: each input with its extracted fields highlighted "
                        "in the text, to open in a browser")
    g.add_argument("--overwrite", action="store_true",
                   help="redo inputs that already have a result (default: skip them, so re-runs resume)")

    add_model_args(p, required=True)

    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="token limit for one answer (reasoning included)")
    g.add_argument("--context", type=int, default=0,
                   help="context window in tokens for truncating long inputs (0 = the model's own window, at most "
                        "8192; openai: models are only truncated when this is set)")
    g.add_argument("--constrain", choices=("schema", "none"), default="schema",
                   help="decode the answer under the task's JSON Schema (default) or freely (none); a loop guard "
                        "stops runaway repetition either way")
    g.add_argument("--concurrency", type=int, default=1,
                   help="inputs at once: batch size for adapter/merged models, parallel slots for .gguf and "
                        "requests in flight for openai:")

    g = p.add_argument_group("Ollama")
    g.add_argument("--export-ollama", type=Path, default=None, metavar="DIR",
                   help="write DIR/Modelfile for the model's GGUF (template, stop tokens and system prompt of "
                        "training, temperature 0); then: ollama create student -f DIR/Modelfile")
    return p


# ------------------------------------------------------------------ inputs

def collect_inputs(args) -> list:
    from distill.documents import list_input_dir, output_names, read_document, read_stdin

    docs = []
    if args.input_dir is not None:
        paths, ignored = list_input_dir(args.input_dir)
        if ignored:
            print(f"note: ignoring {len(ignored)} file(s) in {args.input_dir} without a .txt/.md/.html suffix",
                  file=sys.stderr)
        if not paths:
            raise StageError(f"--input-dir {args.input_dir}: no .txt, .md or .html files")
        names = output_names(paths, args.input_dir)
        for path in paths:
            doc = read_document(path)
            doc.name = names[path]
            docs.append(doc)
    files = [Path(x) for x in args.inputs if x != "-"]
    if args.inputs.count("-") > 1:
        raise StageError("stdin (-) can be given once")
    for path in files:
        if not path.is_file():
            raise StageError(f"{path}: no such file" + (" (use --input-dir for a folder)" if path.is_dir() else ""))
    names = output_names(files)
    for path in files:
        doc = read_document(path)
        doc.name = names[path]
        docs.append(doc)
    if "-" in args.inputs:
        docs.append(read_stdin())
    for d in docs:
        if d.name in ("manifest", RUN_STATE.removesuffix(".json")):
            d.name += "_"  # <out>/manifest.json is the run's manifest
    if len({d.name for d in docs}) != len(docs):
        raise StageError("two inputs would write the same output name; give them different file names")
    return docs


# ------------------------------------------------------------------ Ollama

def export_ollama(args, task) -> Path:
    from distill.infer import find_training_config, load_config, task_for_config
    from distill.ollama import modelfile_text

    spec = Path(args.model)
    if str(args.model).startswith("openai:"):
        raise StageError("--export-ollama needs the model's GGUF: pass --model path/to/model.gguf (or the trained "
                         "folder with a gguf/ inside)")
    if spec.suffix == ".gguf":
        gguf = spec
    else:
        found = sorted(spec.glob("gguf/*.gguf")) + sorted(spec.glob("*.gguf"))
        if not found:
            raise StageError(f"--export-ollama: no GGUF in {spec}/gguf: train with --save-gguf, or pass --model "
                             f"path/to/model.gguf")
        gguf = found[0]
    cfg_path = find_training_config(gguf)
    if cfg_path is None:
        raise StageError(f"--export-ollama: no distill_config.json next to {gguf}: the Modelfile needs the training "
                         f"chat template and prompt (export a GGUF trained by 05_finetune.py)")
    from transformers import AutoTokenizer

    dcfg = load_config(cfg_path)
    tok = AutoTokenizer.from_pretrained(cfg_path.parent)
    tok.chat_template = dcfg["chat_template"]
    task = task or task_for_config(dcfg)
    from distill.infer import DEFAULT_CONTEXT, _gguf_context_length

    context = args.context or min(_gguf_context_length(gguf) or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    out = args.export_ollama
    out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(out / "Modelfile", modelfile_text(gguf, out, tok, dcfg, task, context,
                                                               args.max_new_tokens))
    print(f"wrote {path}\n  ollama create student -f {path}\n  ollama run student \"$(cat post.txt)\"", file=sys.stderr)
    return path


# ------------------------------------------------------------------ outputs

def dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def error_record(doc, pred) -> dict:
    return {"source": doc.source, "error": pred.error, "parse_error": pred.parse_error,
            "schema_errors": pred.schema_errors, "truncated_input": pred.truncated_input,
            "finish_reason": pred.finish_reason, "stopped": pred.stopped, "resumed": pred.resumed, "raw": pred.raw}


def check_run_state(out: Path, state: dict, overwrite: bool) -> None:
    """Results in ``out`` from another model or task would silently mix with these: refuse."""
    path = out / RUN_STATE
    if path.exists() and not overwrite:
        old = read_json(path)
        if {k: old.get(k) for k in state} != state:
            raise StageError(f"{out} holds results of another run (model {old.get('model')}, task {old.get('task')}): "
                             f"use another --output-dir, or --overwrite to redo every input")
    write_json(path, state)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: _main(args))


def _main(args) -> int:
    if args.concurrency < 1:
        raise StageError("--concurrency must be at least 1")
    if args.max_new_tokens < 1:
        raise StageError("--max-new-tokens must be at least 1")
    if args.context < 0:
        raise StageError("--context must be 0 (automatic) or a token count")
    if args.input_dir is not None and args.output_dir is None:
        raise StageError("--input-dir needs --output-dir (one <stem>.json per input goes there)")
    if args.review:
        from distill.review import check_extract_review
        check_extract_review(args.output_dir, args.input_dir)
    if args.output_dir is not None:
        check_output_dir(args.output_dir, "08_extract", [args.input_dir])
    docs = collect_inputs(args)
    if len(docs) > 1 and args.output_dir is None:
        raise StageError(f"{len(docs)} inputs: pass --output-dir (stdout takes a single input)")
    if not docs and args.export_ollama is None:
        raise StageError("nothing to do: give input files, - for stdin, --input-dir, or --export-ollama DIR")

    from distill.infer import load_predictor, resolve_task

    task = resolve_task(args.task)
    if not docs:  # only the Modelfile: no model needs to run
        export_ollama(args, task)
        return 0

    out = args.output_dir
    todo, skipped = docs, []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        clear_manifest(out)  # present again only when this run finishes
        if not args.overwrite:
            skipped = [d for d in docs if (out / f"{d.name}.json").exists()]
            todo = [d for d in docs if not (out / f"{d.name}.json").exists()]
    unreadable = [d for d in todo if d.error]
    empty = [d for d in todo if not d.error and not d.text.strip()]
    todo = [d for d in todo if not d.error and d.text.strip()]

    import contextlib

    lock = run_lock(out) if out is not None else contextlib.nullcontext()
    counts = {"inputs": len(docs), "skipped": len(skipped), "empty": len(empty), "unreadable": len(unreadable),
              "valid": 0, "invalid": 0,
              "truncated": 0, "repaired": 0}
    reasons: dict[str, int] = {}
    t0 = time.monotonic()
    with lock:
        with load_predictor(args.model, model_id=args.model_id, task=task, max_new_tokens=args.max_new_tokens,
                            concurrency=args.concurrency, context=args.context or None,
                            constrain=args.constrain) as pred:
            if out is not None:
                check_run_state(out, {"model": str(args.model), "model_id": args.model_id, "task": pred.task.name,
                                      "task_prompt": [pred.task.student_system_prompt,
                                                      pred.task.student_user_template]}, args.overwrite)
            if args.export_ollama is not None:
                export_ollama(args, pred.task)
            page_chars = pred.task.pages.get("max_chars")
            if page_chars:
                for doc in todo:
                    doc.refocus(page_chars)
            print(f"model: {args.model} ({pred.info.get('backend')}, {pred.info.get('kind')}); task {pred.task.name}; "
                  f"{len(todo)} to extract" + (f", {len(skipped)} already done" if skipped else "")
                  + (f"; context {pred.info['context']} tokens" if pred.info.get("context") else ""), file=sys.stderr)
            for doc in unreadable:
                reasons["binary_input"] = reasons.get("binary_input", 0) + 1
                print(f"{doc.source}: not extracted: {doc.error}", file=sys.stderr)
                if out is not None:
                    write_json(out / f"{doc.name}.error.json", {"source": doc.source, "error": "binary_input",
                                                                "detail": doc.error})
            for doc in empty:
                reasons["empty_input"] = reasons.get("empty_input", 0) + 1
                print(f"{doc.source}: no text to extract (empty, or a page without readable text)", file=sys.stderr)
                if out is not None:
                    write_json(out / f"{doc.name}.error.json", {"source": doc.source, "error": "empty_input"})
            for i, p in pred.predict_iter([d.text for d in todo], progress=len(todo) > 1 or out is not None):
                doc = todo[i]
                counts["truncated"] += p.truncated_input
                counts["repaired"] += p.repaired
                if p.truncated_input:
                    print(f"{doc.source}: longer than the context; kept its first {p.kept_chars} of {len(doc.text)} "
                          f"characters", file=sys.stderr)
                if p.valid:
                    counts["valid"] += 1
                else:
                    counts["invalid"] += 1
                    reason = (p.parse_error or "schema").split(":")[0]
                    reasons[reason] = reasons.get(reason, 0) + 1
                    print(f"{doc.source}: invalid answer ({p.error})", file=sys.stderr)
                if out is None:
                    if p.valid:
                        think = f"<think>{p.reasoning}</think>\n" if args.keep_reasoning and p.reasoning else ""
                        sys.stdout.write(think + dump(p.output))
                    else:
                        sys.stderr.write(dump(error_record(doc, p)))
                    continue
                err_path = out / f"{doc.name}.error.json"
                if p.valid:
                    write_json(out / f"{doc.name}.json", p.output)
                    err_path.unlink(missing_ok=True)
                    if args.keep_reasoning and p.reasoning:
                        atomic_write_text(out / f"{doc.name}.reasoning.txt", p.reasoning + "\n")
                else:
                    write_json(err_path, error_record(doc, p))
                    (out / f"{doc.name}.json").unlink(missing_ok=True)  # an --overwrite run must not leave the old result
    elapsed = time.monotonic() - t0
    ran = counts["valid"] + counts["invalid"]
    rate = f"{ran / elapsed * 60:.1f} inputs/min" if ran and elapsed > 0 else ""
    no_answer = counts["invalid"] + counts["empty"] + counts["unreadable"]
    summary = (f"extracted {counts['valid']}/{ran} valid"
               + (f"; no valid answer for {no_answer} ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if reasons else "")
               + f"; {counts['truncated']} truncated to fit the context; {counts['skipped']} skipped (done before)"
               + (f"; {counts['empty']} empty" if counts["empty"] else "")
               + (f"; {counts['unreadable']} not text (binary)" if counts["unreadable"] else "")
               + (f" | {elapsed:.1f}s, {rate}" if rate else ""))
    print(summary, file=sys.stderr)
    if args.review:
        from distill.review import write_extract_review
        print(f"review page: {write_extract_review(out, docs, pred.task)}", file=sys.stderr)
    if out is not None:
        write_manifest(out, "08_extract", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       counts, reasons=reasons, backend=pred.info, elapsed_s=round(elapsed, 2))
    return 0 if counts["invalid"] == counts["empty"] == counts["unreadable"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
