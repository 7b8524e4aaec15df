#!/usr/bin/env python3
"""How well students extract from real recipe pages: the benchmark behind README's "How well it works
on real pages".

The saved pages (``<host>/<name>.html`` + ``<name>.json`` references, one page per host) are split by
host with a fixed seed (default 200 train / 100 test). Every case is scored on the same test pages with
``07_evaluate.py --pages`` (the reader of 08, the honest scoring rules), so the numbers compare:

  coverage  what the reader keeps: expected ingredients / steps that appear verbatim (normalised) in the
            text a model reads, for the whole visible text and for the task's window (no model)
  base      the base model, zero-shot, with the student's prompt
  synthetic a student trained on synthetic posts only (--synthetic-student DIR: e.g. the demo's)
  real      a student trained on the train pages, labels from their own schema.org markup:
            01 --from-pages -> 02 (real_page inputs) -> 03 --label-from-record -> 04 -> 05 --save-gguf
  mixed     real + synthetic: the synthetic dataset of --synthetic-dataset DIR (04's folder, e.g. the
            demo's), and/or --variants N: the first N train records also get one post the bundled
            teacher writes in --variant-styles (default: the abstention styles, "no recipe" reviews,
            "no times" posts, two recipes), labeled from the record (03 --label-from-record all)
  teacher   the bundled teacher (Qwen2.5-Coder-1.5B-Instruct) zero-shot, same prompt (--teacher-limit pages)
  trained   an existing trained folder (--trained DIR, e.g. --out/best), as it is: for ablations of
            decoding settings on the same model (--resume-loops 0, --constrain none; --tag names the row)

The best real-page student (adapter + GGUF) is kept in ``--out/best/`` (bench/results/realpages/best by
default; git-ignored). Results: ``--out/results.json`` and ``--out/results.md`` (the table for
BENCHMARKS.md and README). Long: training is ~20-40 min per epoch for SmolLM2-135M on 2 CPU cores.

Usage:
    python bench/bench_realpages.py --pages-dir PAGES --coverage                  # the reader only, ~10 s
    python bench/bench_realpages.py --pages-dir PAGES --cases base,real,teacher   # SmolLM2-135M
    python bench/bench_realpages.py --pages-dir PAGES --cases real --student gemma3 --epochs 2
    python bench/bench_realpages.py --pages-dir PAGES --cases trained --trained OUT/best --resume-loops 0 --tag noresume
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = ("base", "synthetic", "real", "mixed", "teacher", "trained")
# The recipe task's styles whose answer is empty or partial (its task.yaml), weighted for --variants.
VARIANT_STYLES = "no_recipe_review=1,no_recipe_product=1,no_recipe_menu=1,two_recipes=1.5,no_times=0.5"


def make_parser() -> argparse.ArgumentParser:
    from distill.cli import non_negative_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages-dir", type=Path, required=True, help="saved pages: <host>/<name>.html + <name>.json")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "realpages", help="work and result folder")
    p.add_argument("--coverage", action="store_true", help="only measure what the reader keeps (no model)")
    p.add_argument("--table", action="store_true", help="print the table of the cases already run in --out, and exit")
    p.add_argument("--cases", default="base,real,teacher", help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--student", choices=("smollm2", "gemma3"), default="smollm2", help="the student's base model")
    p.add_argument("--train-hosts", type=int, default=200)
    p.add_argument("--test-hosts", type=int, default=100)
    p.add_argument("--test-limit", type=int, default=0, help="score only the first N test pages (0 = all)")
    p.add_argument("--teacher-limit", type=int, default=30, help="test pages the (slow) teacher answers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--grad-accum", type=int, default=1, help="rows per update (batch 1)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--max-seq-length", type=int, default=3072)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=2, help="llama-server slots for 07")
    p.add_argument("--synthetic-student", type=Path, default=None, help="a trained synthetic-only student folder")
    p.add_argument("--synthetic-dataset", type=Path, default=None, help="04's folder of synthetic rows (mixed)")
    p.add_argument("--variants", type=non_negative_int, default=0,
                   help="mixed: the first N train records also get one synthetic post by the bundled teacher")
    p.add_argument("--variant-styles", default=VARIANT_STYLES, help="02 --styles of those posts")
    p.add_argument("--adversarial", action="store_true",
                   help="also run the task's adversarial cases (07 --adversarial): the 'adversarial' column")
    p.add_argument("--constrain", choices=("schema", "none"), default="schema")
    p.add_argument("--resume-loops", type=int, default=2, help="07 --resume-loops (0: end an answer at its loop)")
    p.add_argument("--trained", type=Path, default=None, help="the trained folder of --cases trained")
    p.add_argument("--tag", default="", help="suffix of this run's row keys (e.g. noresume)")
    return p


# ---------------------------------------------------------------- split and coverage

def split_pages(pages_dir: Path, n_train: int, n_test: int, seed: int) -> tuple[list[Path], list[Path]]:
    from distill.pages import list_pages

    by_host: dict[str, list[Path]] = {}
    for p in list_pages(pages_dir):
        by_host.setdefault(p.parent.name, []).append(p)
    hosts = sorted(by_host)
    random.Random(seed).shuffle(hosts)
    if n_train + n_test > len(hosts):
        raise SystemExit(f"{len(hosts)} hosts in {pages_dir}: cannot split {n_train} train + {n_test} test")
    test, train = hosts[:n_test], hosts[n_test:n_test + n_train]
    return [p for h in sorted(train) for p in by_host[h]], [p for h in sorted(test) for p in by_host[h]]


def link_pages(paths: list[Path], dest: Path) -> Path:
    """A folder of symlinks <host>/<name>.html (+ .json): the form 07 --pages and 01 --from-pages read."""
    if dest.exists():
        shutil.rmtree(dest)
    for p in paths:
        d = dest / p.parent.name
        d.mkdir(parents=True, exist_ok=True)
        for src in (p, p.with_suffix(".json")):
            if src.exists():
                (d / src.name).symlink_to(src.resolve())
    return dest


def measure_coverage(paths: list[Path], max_chars: int) -> dict:
    from distill.pages import coverage, page_text, visible_text

    tot = {k: [0, 0] for k in ("ing_full", "ing_window", "steps_full", "steps_window")}
    lens_full, lens_win, cut = [], [], 0
    t0 = time.perf_counter()
    for p in paths:
        ref = json.loads(p.with_suffix(".json").read_text(encoding="utf-8"))
        html = p.read_bytes()
        full, _ = visible_text(html)
        win = page_text(html, max_chars)
        cut += win.focused
        lens_full.append(len(full))
        lens_win.append(len(win.text))
        for key, items in (("ing", ref.get("ingredients") or []), ("steps", ref.get("instructions_list") or [])):
            for where, text in (("full", full), ("window", win.text)):
                a, b = coverage(items, text)
                tot[f"{key}_{where}"][0] += a
                tot[f"{key}_{where}"][1] += b
    secs = time.perf_counter() - t0
    return {"pages": len(paths), "max_chars": max_chars, "windowed_pages": cut,
            **{k: round(a / b, 4) if b else None for k, (a, b) in tot.items()},
            "chars_full_median": statistics.median(lens_full), "chars_full_max": max(lens_full),
            "chars_window_median": statistics.median(lens_win), "reader_ms_per_page": round(1000 * secs / len(paths), 1)}


# ---------------------------------------------------------------- running the stages

def run(cmd: list[str], log: Path) -> float:
    t0 = time.monotonic()
    print("$", " ".join(str(c) for c in cmd), flush=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        fh.flush()
        rc = subprocess.call([str(c) for c in cmd], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(str(c) for c in cmd)}; see {log}")
    return time.monotonic() - t0


def py(script: str) -> list[str]:
    return [sys.executable, str(ROOT / script)]


def base_gguf(student: str) -> Path:
    from distill.llamacpp import gemma3_gguf, smollm2_gguf

    return smollm2_gguf() if student == "smollm2" else gemma3_gguf()


def evaluate(model: str, test_dir: Path, out: Path, log: Path, args, *, limit: int = 0, task: str | None = None,
             extra: list[str] | None = None) -> dict:
    cmd = py("07_evaluate.py") + ["--model", model, "--pages", test_dir, "--output-dir", out,
                                  "--max-new-tokens", str(args.max_new_tokens), "--concurrency", str(args.concurrency),
                                  "--constrain", args.constrain, "--resume-loops", str(args.resume_loops)]
    if task:
        cmd += ["--task", task]
    if limit:
        cmd += ["--limit", str(limit)]
    if args.adversarial:
        cmd += ["--adversarial"]
    secs = run(cmd + (extra or []), log)
    ev = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    ev["bench_seconds"] = round(secs, 1)
    return ev


def write_variants(src: Path, syn: Path, log: Path, n: int, styles: str) -> None:
    """02 --per-record 2 on the first ``n`` page records: one teacher-written post each besides the page
    (02 keeps the page inputs it wrote already), with the bundled teacher on a local llama-server."""
    from distill.llamacpp import LlamaServer, qwen_coder_gguf

    with LlamaServer(qwen_coder_gguf(), n_parallel=2, ctx=8192, alias="teacher") as server:
        run(py("02_generate_synthetic.py") + [
            "--input", src, "--output-dir", syn, "--per-record", "2", "--limit", str(n), "--styles", styles,
            "--max-tokens", "900", "--temperature", "0.7", "--base-url", server.base_url, "--model", "teacher",
            "--concurrency", "2", "--timeout", "900"], log)


def train_real(train_dir: Path, work: Path, log: Path, args, extra_dataset: Path | None = None,
               variants: int = 0) -> tuple[Path, float]:
    """01 --from-pages -> 02 (+ teacher variants) -> 03 --label-from-record -> 04 -> 05 --save-gguf;
    (student folder, training seconds)."""
    src, syn, lab, ds = work / "01_source", work / "02_synthetic", work / "03_labeled", work / "04_dataset"
    student = work / "student"
    run(py("01_download_dataset.py") + ["--from-pages", train_dir, "--output-dir", src], log)
    run(py("02_generate_synthetic.py") + ["--input", src, "--output-dir", syn, "--per-record", "1", "--limit", "0"], log)
    if variants:
        write_variants(src, syn, log, variants, args.variant_styles)
    run(py("03_label_with_reasoning.py") + ["--input-dir", syn, "--output-dir", lab,
                                            "--label-from-record", "all" if variants else "real"], log)
    run(py("04_build_dataset.py") + ["--synthetic-dir", syn, "--labeled-dir", lab, "--output-dir", ds,
                                     "--split", "0.95,0.05,0", "--reasoning", "strip"], log)
    dataset = ds
    if extra_dataset is not None:
        dataset = work / "04_mixed"
        merge_datasets([ds, extra_dataset], dataset)
    n_train = sum(1 for _ in open(dataset / "train.jsonl", encoding="utf-8"))
    secs = run(py("05_finetune.py") + [
        "--model-name", base_gguf(args.student), "--dataset-dir", dataset, "--save-dir", student,
        "--max-steps", "-1", "--num-epochs", str(args.epochs), "--max-seq-length", str(args.max_seq_length),
        "--batch-size", "1", "--gradient-accumulation-steps", str(args.grad_accum), "--lora-rank", str(args.lora_rank),
        "--learning-rate", str(args.learning_rate), "--warmup-steps", "5", "--optimizer", "adamw_torch",
        "--reasoning", "strip", "--eval-steps", "0", "--save-gguf", "--gguf-quantization", "Q8_0",
        "--skip-inference-test"], log)
    print(f"trained on {n_train} rows in {secs / 60:.1f} min")
    return student, secs


def merge_datasets(parts: list[Path], dest: Path) -> None:
    from distill.io import read_jsonl, read_manifest, write_jsonl, write_manifest

    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val", "test"):
        rows = [r for d in parts if (d / f"{split}.jsonl").exists() for r in read_jsonl(d / f"{split}.jsonl")]
        write_jsonl(dest / f"{split}.jsonl", rows)
        counts[split] = len(rows)
    m = read_manifest(parts[0])
    write_manifest(dest, "04_build_dataset", {"merged": [str(p) for p in parts]}, counts,
                   **{k: m.get(k) for k in ("task", "system_prompt", "user_template", "reasoning")})


def gguf_of(student: Path) -> Path:
    found = sorted((student / "gguf").glob("*.gguf"))
    if not found:
        raise SystemExit(f"{student}/gguf: no GGUF exported")
    return found[0]


# ---------------------------------------------------------------- the table

def row(name: str, ev: dict, train_s: float | None = None) -> dict:
    a = ev.get("aggregate", {})
    f = a.get("fields", {})

    def score(field: str):
        return f.get(field, {}).get("score")

    times = [score(k) for k in ("prepTime", "cookTime", "totalTime") if score(k) is not None]
    return {
        "case": name, "pages": a.get("n"), "overall": a.get("score"),
        "title": score("name"), "ingredients_f1": score("recipeIngredient"),
        "steps_f1": score("recipeInstructions"), "times": statistics.mean(times) if times else None,
        "yield": score("recipeYield"), "json_valid": a.get("json_valid"), "schema_valid": a.get("schema_valid"),
        "hallucination": a.get("hallucination_rate"), "stopped": a.get("stopped_rate"),
        "resumed": a.get("resumed_rate"),
        "adversarial": (f"{adv['passed']}/{adv['n']}" if (adv := ev.get("adversarial")) else None),
        "pages_per_min": (ev.get("throughput") or {}).get("per_min"),
        "train_min": round(train_s / 60, 1) if train_s else None,
    }


def table(out: Path) -> str:
    """The table again from the eval.json files of the cases run so far (``--table``)."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = []
    for key, r in (results.get("rows") or {}).items():
        ev_file = out / "eval" / key.replace(":", "_") / "eval.json"
        if ev_file.is_file():
            rows.append(row(key, json.loads(ev_file.read_text(encoding="utf-8")),
                            (r.get("train_min") or 0) * 60 or None))
    return markdown(rows)


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])

    def fmt(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return "–" if v != v else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    args = make_parser().parse_args()
    if args.table:
        print(table(args.out))
        return 0
    from distill.tasks import load_task

    task = load_task("recipe")
    train, test = split_pages(args.pages_dir, args.train_hosts, args.test_hosts, args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = {"date": str(date.today()), "cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "student": args.student, "seed": args.seed,
                          "train_pages": len(train), "test_pages": len(test)}
    results["coverage"] = measure_coverage(train + test, task.pages["max_chars"])
    print(json.dumps(results["coverage"], indent=1))
    if args.coverage:
        results_path.write_text(json.dumps(results, indent=1))
        return 0

    log = out / "bench.log"
    test_dir = link_pages(test[: args.test_limit] if args.test_limit else test, out / "test_pages")
    train_dir = link_pages(train, out / "train_pages")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"--cases: unknown {sorted(unknown)}; choose from {', '.join(CASES)}")
    rows = results.setdefault("rows", {})
    tag = args.student + (f":{args.tag}" if args.tag else "")
    for case in cases:
        key = f"{case}:{tag}" if case != "teacher" else "teacher" + (f":{args.tag}" if args.tag else "")
        ev_dir = out / "eval" / key.replace(":", "_")
        if case == "base":
            ev = evaluate(str(base_gguf(args.student)), test_dir, ev_dir, log, args, task="recipe")
            rows[key] = row(key, ev)
        elif case == "teacher":
            from distill.llamacpp import qwen_coder_gguf

            ev = evaluate(str(qwen_coder_gguf()), test_dir, ev_dir, log, args, task="recipe", limit=args.teacher_limit)
            rows[key] = row(key, ev)
        elif case == "trained":
            if args.trained is None:
                raise SystemExit("--cases trained needs --trained DIR")
            ev = evaluate(str(gguf_of(args.trained)), test_dir, ev_dir, log, args)
            rows[key] = row(key, ev)
        elif case == "synthetic":
            if args.synthetic_student is None:
                raise SystemExit("--cases synthetic needs --synthetic-student DIR")
            ev = evaluate(str(gguf_of(args.synthetic_student)), test_dir, ev_dir, log, args)
            rows[key] = row(key, ev)
        elif case in ("real", "mixed"):
            if case == "mixed" and args.synthetic_dataset is None and not args.variants:
                raise SystemExit("--cases mixed needs --synthetic-dataset DIR or --variants N")
            work = out / f"work_{case}_{tag.replace(':', '_')}"
            student, secs = train_real(train_dir, work, log, args,
                                       args.synthetic_dataset if case == "mixed" else None,
                                       args.variants if case == "mixed" else 0)
            ev = evaluate(str(gguf_of(student)), test_dir, ev_dir, log, args)
            rows[key] = row(key, ev, secs)
            best = results.get("best")
            if best is None or (rows[key]["overall"] or 0) > (rows.get(best, {}).get("overall") or 0):
                results["best"] = key
                dest = out / "best"
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(student, dest)
        results_path.write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(markdown(list(rows.values())) + "\n")
        print(markdown(list(rows.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
