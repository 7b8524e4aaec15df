#!/usr/bin/env python3
"""CPU training speed against the machine's own matmul peak, float32 vs bfloat16, both backends.

In one run:
1. the machine's float32 and bfloat16 matmul peak (GFLOP/s, PyTorch on the training's
   threads), at the shapes of the model being trained (rows x hidden @ hidden x MLP, and back)
   and at 2048^3; measured before and after the training cases, so a busy machine shows;
2. for each model x backend x precision a real training run through distill.train.core.run
   (each in its own process: Unsloth patches transformers on import) on demo-sized rows,
   batch 1, one epoch: tokens/s over all tokens and over supervised (answer) tokens, and the
   achieved GFLOP/s with the FLOP count below, as a fraction of each peak.

FLOPs counted per training row of T tokens, S of them supervised (the work the update
needs, whatever a backend spends on top):
- linear layers (q, k, v, o, gate, up, down): 4 x weights x T: the forward (2 per weight and
  token) and the input gradients (2 more); frozen weights get no weight gradients;
- LoRA: 6 x r x (in + out) x T per adapted layer (forward, input and weight gradients);
- attention scores and mixing, causal (half the T x T matrix): 2 x T^2 x d_q forward per
  layer, 4 x T^2 x d_q backward;
- the LM head on the S supervised tokens only (4 x vocab x hidden x S): only they enter the
  loss. Unsloth's CPU mode skips the others for Llama-type models; plain transformers
  computes logits for every token, and that extra work shows as a lower fraction of peak.

Rows: --dataset-dir (a 04_build_dataset.py folder, e.g. the demo's) or, by default,
demo-sized rows built from the recipe task's bundled sample (real recipes, ~850 tokens: a
messy page with the recipe in it, the JSON answer), see demo_rows().

Usage:
    python bench/bench_training.py                                 # SmolLM2 + Gemma-3, hf + unsloth, fp32 + bf16
    python bench/bench_training.py --models smollm2 --backends unsloth --rows 6
    python bench/bench_training.py --dataset-dir demo_run/data/04_dataset --write BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Training throughput against the CPU's matmul peak (05_finetune.py, CPU)"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------- rows

def demo_rows(n: int, seed: int = 0) -> list[dict]:
    """Demo-sized chat rows from the recipe task's bundled sample: a messy page in, the recipe JSON out."""
    task = ROOT / "tasks" / "recipe"
    system = (task / "prompts" / "student_system.md").read_text(encoding="utf-8").strip()
    with open(task / "sample.csv", encoding="utf-8", errors="replace", newline="") as fh:
        records = list(csv.DictReader(fh))
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        rec = records[i % len(records)]
        others = rnd.sample(records, 4)
        ingredients = [x.strip() for x in rec["ingredient"].split("+") if x.strip()]
        times = dict(p.split(":", 1) for p in rec["process"].split(",") if ":" in p)
        page = "\n".join([
            "Home > Recipes > " + rec["group"].replace(".", " > "), "", f"# {rec['name']}", "",
            f"Rated {rec['rating']} by {rec['n_rater']} cooks. Jump to recipe | Print | Save", "",
            "I have been making this for years and every time friends come over they ask for it, so here it "
            "is at last. The trick is patience and good ingredients; do not rush the steps. " * 4,
            rec["summary"], "", "ADVERTISEMENT", "",
            *[f"- {t.strip()}: {v.strip()}" for t, v in times.items()], "", "Ingredients", "",
            *[f"* {x}" for x in ingredients], "",
            "Directions: combine everything as listed, taste, adjust the seasoning and serve.", "",
            "You might also like: " + "; ".join(f"{o['name']} ({o['summary'][:80]})" for o in others), "",
            "Comments (5): 'Made this twice, perfect.' 'Needed more salt for us.' 'Kids loved it!' "
            "'Can I make it the day before? It keeps in the fridge for two days, covered.' 'Five stars from me.'",
            "Subscribe to the newsletter | Privacy | Terms | © the blog",
        ])
        answer = {"name": rec["name"], "description": rec["summary"], "recipeIngredient": ingredients,
                  "prepTime": times.get("prep", "").strip() or None, "cookTime": times.get("cook", "").strip() or None,
                  "totalTime": times.get("total", "").strip() or None,
                  "recipeYield": times.get("Yield", times.get("Servings", "")).strip() or None,
                  "recipeInstructions": ["Combine everything as listed.", "Taste and adjust the seasoning.", "Serve."],
                  "aggregateRating": {"ratingValue": rec["rating"], "ratingCount": rec["n_rater"]}}
        rows.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": page},
                                  {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False, indent=1)}]})
    return rows


# ---------------------------------------------------------------- FLOPs and peak

def model_shape(model_path: str) -> dict:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    c = getattr(c, "text_config", None) or c
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "ff": c.intermediate_size,
            "q": c.num_attention_heads * head_dim, "kv": c.num_key_value_heads * head_dim, "vocab": c.vocab_size}


def row_flops(s: dict, tokens: int, supervised: int, rank: int) -> float:
    """Training FLOPs of one row (see the module docstring for what is counted)."""
    h, ff, q, kv, L = s["hidden"], s["ff"], s["q"], s["kv"], s["layers"]
    weights = h * q + 2 * h * kv + q * h + 3 * h * ff  # per layer
    lora_io = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + ff) + (ff + h)
    linear = 4 * weights * tokens * L
    lora = 6 * rank * lora_io * tokens * L
    attention = 6 * tokens * tokens * q * L  # 2 T^2 d_q forward + 4 T^2 d_q backward, causal half
    lm_head = 4 * s["vocab"] * h * supervised
    return float(linear + lora + attention + lm_head)


def peak(shape: dict, tokens: int, rounds: int = 3, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Median over interleaved rounds of the best-of-5 GFLOP/s, per dtype and shape; peak = best shape.
    A dtype not in ``dtypes`` is not measured (bfloat16 on a CPU without it is emulated: one 2048^3
    matmul takes seconds, the whole peak over 8 minutes)."""
    import torch

    from distill.train.precision import matmul_gflops

    shapes = {"2048^3": (2048, 2048, 2048), f"{tokens}x{shape['hidden']}x{shape['ff']}": (tokens, shape["hidden"], shape["ff"]),
              f"{tokens}x{shape['ff']}x{shape['hidden']}": (tokens, shape["ff"], shape["hidden"]),
              f"{tokens}x{shape['hidden']}x{shape['q']}": (tokens, shape["hidden"], shape["q"])}
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}
    got: dict = {dt: {k: [] for k in shapes} for dt in dtypes}
    for _ in range(rounds):
        for name, (m, k, n) in shapes.items():
            for dt in dtypes:
                got[dt][name].append(matmul_gflops(torch_dtype[dt], m, k, n))
    out = {dt: {k: round(statistics.median(v), 1) for k, v in per.items()} for dt, per in got.items()}
    for dt in ("fp32", "bf16"):
        out[f"{dt}_peak"] = max(out[dt].values()) if dt in out else None
    out["threads"] = torch.get_num_threads()
    return out


# ---------------------------------------------------------------- one case (child process)

def one_case(spec: dict) -> dict:
    """Runs in a child process: one training run, returns its numbers."""
    if spec.get("unsloth_own_dtype"):
        # The demo before --precision: Unsloth's CPU mode loaded bf16 weights wherever the CPU
        # lists AVX512-BF16, with float32 LoRA and no autocast.
        from distill.train import unsloth_backend

        unsloth_backend._dtype = lambda precision: None
    from distill.train.config import TrainConfig
    from distill.train.core import run

    cfg = TrainConfig(**spec["config"])
    out = run(cfg)
    m = out["metrics"]
    return {"updates": m["updates"], "train_s": m["train_runtime_s"], "s_per_update": m["s_per_update"],
            "tokens": m["train_tokens"], "supervised_tokens": m["supervised_tokens"], "precision": m["precision"],
            "train_loss": m["train_loss"], "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def cpu_flags_line() -> str:
    from distill.train.precision import cpu_flags

    keep = [f for f in sorted(cpu_flags()) if f.startswith(("avx", "amx", "fma", "f16c")) or "bf16" in f or "vnni" in f]
    return " ".join(keep) or "(no /proc/cpuinfo flags)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", type=Path, help="train on this 04 folder's train.jsonl (default: demo-sized sample rows)")
    p.add_argument("--rows", type=int, default=6, help="training rows = updates (batch 1, one epoch)")
    p.add_argument("--models", default="smollm2,gemma3", help="comma-separated: smollm2, gemma3 (PyPI GGUFs)")
    p.add_argument("--backends", default="hf,unsloth", help="comma-separated: hf, unsloth")
    p.add_argument("--backends-for", action="append", default=[], metavar="MODEL=B1,B2",
                   help="other backends for one model, e.g. gemma3=unsloth (repeatable)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated --precision values to compare")
    p.add_argument("--unsloth-own-dtype", action="store_true",
                   help="also run Unsloth with its own CPU dtype choice (bf16 weights where AVX512-BF16 is listed)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--max-seq-length", type=int, default=1536)
    p.add_argument("--write", type=Path, help="replace the training section of this Markdown file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case (JSON spec) and print JSON
    args = p.parse_args(argv)
    if args.one:
        print("BENCH_RESULT " + json.dumps(one_case(json.loads(args.one))))
        return 0

    from distill.io import write_manifest
    from distill.train.models import packaged_gguf, resolve_model
    from distill.train.precision import resolve

    auto = resolve("auto")
    print(f"--precision auto here: {auto.compute} ({auto.reason})", flush=True)
    results, peaks, flops = [], {}, {}
    from distill.train.precision import cpu_bf16_instructions

    has_bf16, why = cpu_bf16_instructions()
    peak_dtypes = ("fp32", "bf16") if has_bf16 or "bf16" in args.precisions.split(",") else ("fp32",)
    if peak_dtypes == ("fp32",):
        print(f"bfloat16 peak not measured: {why}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        ds.mkdir()
        if args.dataset_dir:
            lines = (args.dataset_dir / "train.jsonl").read_text().splitlines()[:args.rows]
            rows_desc = f"the first {len(lines)} rows of {args.dataset_dir.name}/train.jsonl"
        else:
            lines = [json.dumps(r) for r in demo_rows(args.rows)]
            rows_desc = f"{len(lines)} demo-sized rows built from tasks/recipe/sample.csv (bench.demo_rows)"
        (ds / "train.jsonl").write_text("\n".join(lines) + "\n")
        # 05 trains only on a folder that carries 04's manifest.
        write_manifest(ds, "04_build_dataset", {"bench": "bench_training.py"}, {"train": len(lines)})
        for model in args.models.split(","):
            gguf = packaged_gguf(model)
            if gguf is None:
                print(f"error: the {model} GGUF package is not installed", file=sys.stderr)
                return 1
            path = resolve_model(str(gguf))  # convert once, outside the timings
            shape = model_shape(path)
            n_flops, mean_tokens = _dataset_flops(lines, path, shape, args.lora_rank, args.max_seq_length)
            flops[model] = n_flops
            peaks[model] = {"shape": shape, "before": peak(shape, mean_tokens, dtypes=peak_dtypes)}
            print(model, "peak before its cases", peaks[model]["before"], flush=True)
            backends = dict(x.split("=", 1) for x in args.backends_for).get(model, args.backends).split(",")
            cases = [(b, pr, False) for b in backends for pr in args.precisions.split(",")]
            if args.unsloth_own_dtype and "unsloth" in backends:
                cases.append(("unsloth", "fp32", True))
            for backend, prec, own in cases:
                cfg = {"dataset_dir": str(ds), "model_name": str(gguf), "backend": backend, "precision": prec,
                       "max_steps": -1, "num_epochs": 1, "batch_size": 1, "gradient_accumulation_steps": 1,
                       "lora_rank": args.lora_rank, "max_seq_length": args.max_seq_length, "learning_rate": 2e-4,
                       "warmup_steps": 2, "optimizer": "adamw_torch", "skip_inference_test": True, "eval_steps": -1,
                       "logging_steps": 1, "reasoning": "strip",
                       "save_dir": str(Path(tmp) / f"out-{model}-{backend}-{prec}"), "output_dir": str(Path(tmp) / "ckpt")}
                r = subprocess.run([sys.executable, __file__, "--one",
                                    json.dumps({"config": cfg, "unsloth_own_dtype": own})],
                                   capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
                if line is None:
                    print(f"{model} {backend} {prec}: failed\n{r.stdout[-1500:]}\n{r.stderr[-2500:]}", file=sys.stderr)
                    continue
                res = json.loads(line.removeprefix("BENCH_RESULT "))
                res.update(model=model, backend=backend, own=own,
                           setting="Unsloth's own CPU dtype (bf16 weights, no autocast)" if own else f"--precision {prec}")
                results.append(res)
                print(res, flush=True)
            peaks[model]["after"] = peak(shape, mean_tokens, dtypes=peak_dtypes)
            print(model, "peak after its cases", peaks[model]["after"], flush=True)
    if not results:
        return 1
    table = _table(results, peaks, flops, rows_desc, args, auto)
    print(table)
    if args.write:
        from distill.io import atomic_write_text

        old = args.write.read_text() if args.write.exists() else ""
        if SECTION in old:
            head, _, rest = old.partition(SECTION)
            nxt = rest.find("\n## ")
            old = head + (rest[nxt + 1:] if nxt != -1 else "")
        atomic_write_text(args.write, old.rstrip() + "\n\n" + table if old.strip() else table)
    return 0


def _dataset_flops(ds_lines, model_path, shape, rank, max_len) -> tuple[float, int]:
    """(FLOPs of one epoch over the rows, mean tokens per row), from the tokenization training uses."""
    from distill.train.data import load_split, tokenize_rows, training_chat_template
    from distill.train.models import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "train.jsonl"
        f.write_text("\n".join(ds_lines) + "\n")
        rows = load_split(f, "strip")
    tok = load_tokenizer(model_path)
    tokenized = tokenize_rows(tok, training_chat_template(tok), rows, max_len).rows
    total = sum(row_flops(shape, len(r["input_ids"]), sum(1 for x in r["labels"] if x != -100), rank)
                for r in tokenized)
    return total, round(statistics.mean(len(r["input_ids"]) for r in tokenized))


def _table(results, peaks, flops, rows_desc, args, auto) -> str:
    lines = [SECTION, "",
             f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, PyTorch {__import__('torch').__version__}, "
             f"{next(iter(peaks.values()))['after']['threads']} threads, {time.strftime('%Y-%m-%d')}. "
             f"CPU flags (vector/matrix part of /proc/cpuinfo): `{cpu_flags_line()}`. "
             f"`--precision auto` chose **{auto.compute}** here: {auto.reason}.", "",
             "Matmul peak measured in the same run (GFLOP/s, median of 3 interleaved rounds of best-of-5):", "",
             "| model | dtype | " + " | ".join(next(iter(peaks.values()))["after"]["fp32"]) + " | peak |",
             "|---|---|" + "---:|" * (len(next(iter(peaks.values()))["after"]["fp32"]) + 1)]
    for m, pk in peaks.items():
        for dt in ("fp32", "bf16"):
            b, a = pk["before"], pk["after"]
            if dt not in a:
                lines.append(f"| {m} | {dt} | " + " | ".join("–" for _ in a["fp32"]) + " | not measured (no bf16 in this CPU) |")
                continue
            lines.append(f"| {m} | {dt} | " + " | ".join(f"{b[dt][k]} / {a[dt][k]}" for k in a[dt])
                         + f" | {b[f'{dt}_peak']} / {a[f'{dt}_peak']} |")
    lines += ["", "(before / after the model's training cases; the fraction of peak below uses the higher.)"]
    lines += ["", f"Training: {rows_desc}; batch 1, one epoch (updates = rows, the first one included), "
              f"LoRA r{args.lora_rank} on q/k/v/o/gate/up/down, seq <= {args.max_seq_length}, adamw_torch, "
              "loss on answer tokens. GFLOP/s counts the FLOPs of the module docstring of "
              "`bench/bench_training.py` (linear 4 x weights per token, causal attention, LoRA, LM head on "
              "supervised tokens only).", "",
              "| model | backend | setting | matmuls in | s/update | tokens/s | supervised tokens/s | GFLOP/s | "
              "% of fp32 peak | % of bf16 peak | final loss | peak RSS (MB) |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        pk = {k: max(peaks[r["model"]]["before"][k] or 0, peaks[r["model"]]["after"][k] or 0) for k in ("fp32_peak", "bf16_peak")}
        g = flops[r["model"]] / r["train_s"] / 1e9
        of_bf16 = f"{100 * g / pk['bf16_peak']:.0f}%" if pk["bf16_peak"] else "–"
        lines.append(f"| {r['model']} | {r['backend']} | {r['setting']} | {'bf16' if r['own'] else r['precision']} | "
                     f"{r['s_per_update']} | {r['tokens'] / r['train_s']:.0f} | {r['supervised_tokens'] / r['train_s']:.0f} | "
                     f"{g:.0f} | {100 * g / pk['fp32_peak']:.0f}% | {of_bf16} | "
                     f"{r['train_loss']:.4f} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
