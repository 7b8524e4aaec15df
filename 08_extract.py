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
import sys
from pathlib import Path

from distill import extract as X
from distill.cli import add_model_args, non_negative_int, positive_int, run


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
    g.add_argument("--resume-loops", type=non_negative_int, default=2, metavar="N",
                   help="times a local model's answer goes on after the loop guard closed a repeating list "
                        "(default 2; 0 ends the answer at the loop)")
    g.add_argument("--concurrency", type=int, default=1,
                   help="inputs at once: batch size for adapter/merged models, parallel slots for .gguf and "
                        "requests in flight for openai:")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="llama-server threads for a .gguf (default: every core; give fewer when other work "
                        "shares the machine: llama.cpp's threads wait for each other after every step)")

    g = p.add_argument_group("Ollama")
    g.add_argument("--export-ollama", type=Path, default=None, metavar="DIR",
                   help="write DIR/Modelfile for the model's GGUF (template, stop tokens and system prompt of "
                        "training, temperature 0); then: ollama create student -f DIR/Modelfile")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run(lambda: X.run_stage(args))



if __name__ == "__main__":
    sys.exit(main())
