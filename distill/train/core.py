"""The training core shared by 05_finetune.py, 06_finetune_wandb.py and the notebook.

``run(cfg, tracker)`` picks a backend, loads and checks the data, trains with TRL's
SFTTrainer on pre-tokenised examples whose labels are -100 outside the assistant turn,
then writes everything into a temp folder next to ``--save-dir`` and renames it at the
end, so an interrupted or failed run never leaves a folder that looks finished.
"""
from __future__ import annotations

import importlib
import importlib.util  # `import importlib` alone does not load .util
import json
import math
import os
import shutil
import time
from pathlib import Path

from distill.answers import parse_answer
from distill.io import StageError, write_json, write_manifest
from distill.spec import DISTILL_CONFIG

from .config import TrainConfig
from .tracking import NullTracker, Tracker

# ------------------------------------------------------------------ backend choice

def _mps() -> bool:
    import torch

    return not torch.cuda.is_available() and getattr(torch.backends, "mps", None) is not None \
        and torch.backends.mps.is_available()


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process: under ``accelerate launch`` or ``torchrun`` (which set
    RANK and WORLD_SIZE) each process trains on its share of every batch and TRL's trainer syncs
    the gradients (DDP); alone, ``(0, 1)``."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def select_backend(cfg: TrainConfig):
    """Import and return the backend module. Unsloth is imported before transformers when used."""
    _, world = process_rank()
    if cfg.backend == "hf":
        return importlib.import_module("distill.train.hf_backend")
    if cfg.backend == "auto" and world > 1:
        print(f"backend: hf ({world} processes: the plain backend is the one this project tests under DDP)")
        return importlib.import_module("distill.train.hf_backend")
    if world > 1:
        print(f"note: --backend unsloth in {world} processes: Unsloth documents DDP through accelerate launch, "
              f"but this project tests DDP with --backend hf only")
    if cfg.backend == "auto" and importlib.util.find_spec("unsloth") is None:
        print("backend: hf (Unsloth is not installed)")
        return importlib.import_module("distill.train.hf_backend")
    if cfg.backend == "auto" and _mps():
        print("backend: hf (Apple MPS: Unsloth does not run there)")
        return importlib.import_module("distill.train.hf_backend")
    try:
        mod = importlib.import_module("distill.train.unsloth_backend")
    except Exception as exc:  # noqa: BLE001 - Unsloth raises many kinds on unsupported machines
        if cfg.backend == "unsloth":
            raise StageError(f"--backend unsloth: Unsloth does not import here ({type(exc).__name__}: {exc}); "
                             f"use --backend hf") from exc
        print(f"backend: hf (Unsloth does not import here: {type(exc).__name__})")
        return importlib.import_module("distill.train.hf_backend")
    return mod


def _has_bnb_cuda() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def resolve_optimizer(cfg: TrainConfig) -> str:
    if cfg.optimizer == "adamw_8bit" and not _has_bnb_cuda():
        print("note: --optimizer adamw_8bit needs a CUDA GPU with bitsandbytes; using adamw_torch "
              "(pass --optimizer adamw_torch to silence this)")
        return "adamw_torch"
    return cfg.optimizer


def check_quantized_load(cfg: TrainConfig) -> None:
    if (cfg.load_4bit or cfg.load_8bit) and not _has_bnb_cuda():
        flag = "--load-4bit" if cfg.load_4bit else "--load-8bit"
        raise StageError(f"{flag} needs a CUDA GPU with bitsandbytes: drop {flag} on this machine")


# ------------------------------------------------------------------ helpers

def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in msg or "can't allocate memory" in msg or isinstance(exc, MemoryError))


def oom_error(cfg: TrainConfig) -> StageError:
    return StageError(
        f"out of memory: lower --batch-size (now {cfg.batch_size}) and raise --gradient-accumulation-steps "
        f"to keep the effective batch, or lower --max-seq-length (now {cfg.max_seq_length}) / --lora-rank "
        f"(now {cfg.lora_rank}), or add --gradient-checkpointing"
    )


def total_updates(cfg: TrainConfig, n_train: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = max(1, math.ceil(n_train / cfg.batch_size / cfg.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * cfg.num_epochs))


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    ev = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr), label="train loss")
    if ev:
        ax.plot(*zip(*ev), "o-", label="val loss")
    ax.set_xlabel("update")
    ax.set_ylabel("loss (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def generate(model, tok, prompt: str, max_new_tokens: int = 512) -> str:
    import torch

    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def inference_test(model, tok, rows: list[dict], n: int, template: str) -> list[dict]:
    from .data import render_prompt

    results = []
    model.eval()
    for r in rows[:n]:
        prompt = render_prompt(tok, r["messages"], template)
        ref = r["messages"][-1]["content"]
        max_new = min(1024, len(tok(ref, add_special_tokens=False)["input_ids"]) * 2 + 32)
        out = generate(model, tok, prompt, max_new)
        # repair=False: this check asks whether the model writes JSON by itself; json-repair would
        # close a half-trained model's fragments into objects (07 reports repaired answers apart).
        got = parse_answer(out, repair=False)
        user = next(m["content"] for m in r["messages"] if m["role"] == "user")
        print(f"--- input: {user[:200]!r}\n    output: {out[:300]!r}\n    JSON parses: {got.ok}")
        results.append({"id": r.get("id"), "output": out, "json_ok": got.ok,
                        "exact_match": got.ok and got.value == parse_answer(ref, repair=False).value})
    return results


# ------------------------------------------------------------------ run

def summary_line(stage: str, out: dict) -> str:
    """The one-line end-of-run summary printed by 05 and 06."""
    m = out["metrics"]
    return (f"{stage}: backend {out['backend']}, {m.get('precision', 'fp32')}, {m['updates']} updates, "
            f"train loss {m['train_loss']:.4f}"
            + (f", val loss {m['eval_loss']:.4f}" if m.get("eval_loss") is not None else "")
            + f" -> {out['save_dir']}")


def run(cfg: TrainConfig, tracker: Tracker | None = None) -> dict:
    tracker = tracker or NullTracker()
    from .data import check_dataset_dir

    check_dataset_dir(cfg.dataset_dir)  # a folder 04 did not finish fails at once, not after the backend import
    backend = select_backend(cfg)  # first: Unsloth must be imported before transformers
    check_quantized_load(cfg)
    from .data import load_dataset_dir, tokenize_rows, training_chat_template
    from .models import resolve_model

    ds = load_dataset_dir(cfg.dataset_dir, cfg.reasoning, cfg.max_train_samples)
    model_path = resolve_model(cfg.model_name)
    optim = resolve_optimizer(cfg)
    from .precision import resolve as resolve_precision

    prec = resolve_precision(cfg.precision)
    print(f"precision: {prec.compute} ({prec.reason})")

    import transformers

    transformers.set_seed(cfg.seed)
    t0 = time.time()
    model, tok = backend.load(cfg, model_path, prec)
    template = training_chat_template(tok)
    tok.chat_template = template  # saved with the adapter: inference renders the training prompt
    print(f"backend: {backend.NAME}; model {cfg.model_name} loaded in {time.time() - t0:.1f}s")

    train_tok = tokenize_rows(tok, template, ds.train, cfg.max_seq_length, "train")
    val_tok = tokenize_rows(tok, template, ds.val, cfg.max_seq_length, "val") if ds.val else None
    print(f"train: {train_tok.n_kept}/{train_tok.n_total} examples fit {cfg.max_seq_length} tokens whole "
          f"({train_tok.n_truncated} longer ones dropped: a cut answer teaches a model not to stop); "
          f"{train_tok.supervised_tokens} supervised of {train_tok.total_tokens} tokens")
    if val_tok:
        print(f"val:   {val_tok.n_kept}/{val_tok.n_total} examples")

    from datasets import Dataset as HFDataset

    train_ds = HFDataset.from_list(train_tok.rows)
    eval_ds = HFDataset.from_list(val_tok.rows) if val_tok and val_tok.rows else None
    updates = total_updates(cfg, len(train_ds))
    eval_steps = cfg.eval_steps if cfg.eval_steps > 0 else max(1, updates // 5)
    do_eval = eval_ds is not None and cfg.eval_steps != -1

    trainer = build_trainer(cfg, backend, model, tok, train_ds, eval_ds if do_eval else None, optim, eval_steps,
                            tracker, prec)
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=last_checkpoint(cfg))
        final_eval = trainer.evaluate() if do_eval else {}
    except Exception as exc:
        if is_oom(exc):
            raise oom_error(cfg) from exc
        raise
    train_time = time.time() - t0
    history = list(trainer.state.log_history)
    losses = [h["loss"] for h in history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise StageError(f"training loss is not finite ({losses[-3:]}): lower --learning-rate")
    metrics = {"train_loss": result.training_loss, "train_runtime_s": round(train_time, 1),
               "updates": trainer.state.global_step, "s_per_update": round(train_time / max(1, trainer.state.global_step), 3),
               "supervised_tokens": train_tok.supervised_tokens, "train_tokens": train_tok.total_tokens,
               "train_examples": train_tok.n_kept, "precision": prec.compute}
    if final_eval:
        metrics["eval_loss"] = final_eval.get("eval_loss")
        tracker.log({"eval/loss": final_eval.get("eval_loss")}, step=trainer.state.global_step)
    print(f"trained {metrics['updates']} updates in {train_time:.0f}s ({metrics['s_per_update']} s/update); "
          f"train loss {result.training_loss:.4f}" + (f", val loss {metrics['eval_loss']:.4f}" if final_eval else ""))

    save_dir = Path(cfg.save_dir)
    rank, world = process_rank()
    metrics["processes"] = world
    if rank != 0:
        # DDP: every process holds the same weights after the last update; one writes them.
        print(f"rank {rank} of {world}: done; rank 0 writes {save_dir}")
        return {"save_dir": str(save_dir), "metrics": metrics, "history": history, "backend": backend.NAME,
                "gguf": None, "inference": [], "model": model, "tokenizer": tok, "rank": rank}
    tmp = save_dir.parent / f".{save_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)  # LoRA adapter only
        tok.save_pretrained(tmp)
        write_json(tmp / "history.json", history)
        plot_history(history, tmp / "loss.png")
        dcfg = {
            "train_config": cfg.to_dict(), "backend": backend.NAME,
            # a local path is stored absolute so the adapter loads from any working directory
            "base_model": str(Path(cfg.model_name).resolve()) if Path(cfg.model_name).exists() else cfg.model_name,
            "base_model_resolved": model_path, "task": ds.manifest.get("task"),
            "system_prompt": ds.manifest.get("system_prompt"), "user_template": ds.manifest.get("user_template"),
            "reasoning": cfg.reasoning, "chat_template": template, "eos_token": tok.eos_token,
            "metrics": metrics, "dataset_dir": str(ds.dir),
            # inference reloads the base weights in this dtype to reproduce the inference test
            "precision": dict(prec.to_dict(), weights_dtype=str(_base_dtype(model)).removeprefix("torch.")),
        }
        write_json(tmp / DISTILL_CONFIG, dcfg)

        tests = []
        if not cfg.skip_inference_test:
            rows = ds.test or ds.val
            if rows:
                tests = inference_test(model, tok, rows, cfg.inference_examples, template)
                write_json(tmp / "inference_test.json", tests)
                metrics["inference_json_ok"] = sum(t["json_ok"] for t in tests)
                metrics["inference_exact"] = sum(t["exact_match"] for t in tests)
                print(f"inference test: JSON parses {metrics['inference_json_ok']}/{len(tests)}, "
                      f"exact match {metrics['inference_exact']}/{len(tests)}")
            else:
                print("inference test: no test.jsonl or val.jsonl rows, skipped")
        dcfg["metrics"] = metrics
        write_json(tmp / DISTILL_CONFIG, dcfg)
        _write_run_manifest(tmp, cfg, backend, train_tok, val_tok, metrics)
        _replace_dir(tmp, save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"saved adapter, tokenizer, {DISTILL_CONFIG}, history.json, loss.png to {save_dir}")

    # The trained adapter is in place from here on: an export can only add to the folder, and a
    # failed one (e.g. no llama.cpp tools on this machine) is reported without touching it.
    gguf_path, export_error = None, None
    if cfg.save_merged or cfg.save_gguf:
        try:
            gguf_path = _export(cfg, backend, model, tok, save_dir, dcfg, ds, template, metrics)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported with its cause
            export_error = f"{type(exc).__name__}: {exc}"
            metrics["export_error"] = export_error[:2000]
        dcfg["metrics"] = metrics
        write_json(save_dir / DISTILL_CONFIG, dcfg)
        _write_run_manifest(save_dir, cfg, backend, train_tok, val_tok, metrics)
    out = {"save_dir": str(save_dir), "metrics": metrics, "history": history, "backend": backend.NAME,
           "gguf": str(gguf_path) if gguf_path else None, "inference": tests,
           # the trained model in memory, for a notebook's inference cell (never reloaded from disk)
           "model": model, "tokenizer": tok}
    tracker.summary(metrics)
    tracker.log_image("loss_curve", save_dir / "loss.png")
    tracker.log_artifact(save_dir, name="adapter", type="model")
    if gguf_path:
        print(f"GGUF {gguf_path}")
    if export_error:
        raise ExportError(f"export failed: {export_error}\nthe trained adapter, {DISTILL_CONFIG}, history.json and "
                          f"loss.png are kept in {save_dir}", out)
    return out


def _base_dtype(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.dtype


class ExportError(StageError):
    """Training finished and was saved; the merged/GGUF export after it failed. ``.result`` is run()'s result."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _write_run_manifest(folder: Path, cfg: TrainConfig, backend, train_tok, val_tok, metrics: dict) -> None:
    write_manifest(folder, "05_finetune", cfg.to_dict(), {"train_examples": train_tok.n_kept,
                   "val_examples": val_tok.n_kept if val_tok else 0, "updates": metrics["updates"]},
                   backend=backend.NAME, metrics=metrics)


def _export(cfg: TrainConfig, backend, model, tok, save_dir: Path, dcfg: dict, ds, template: str,
            metrics: dict) -> Path | None:
    """Merged weights and/or GGUF into ``save_dir``, each built in a temp folder and renamed into place."""
    pid = os.getpid()
    merged_tmp = save_dir / f".merged.tmp-{pid}"
    gguf_tmp = save_dir / f".gguf.tmp-{pid}"
    gguf_path = None
    try:
        shutil.rmtree(merged_tmp, ignore_errors=True)
        backend.save_merged(model, tok, merged_tmp)
        if cfg.save_gguf:
            shutil.rmtree(gguf_tmp, ignore_errors=True)
            found = backend.export_gguf(model, tok, merged_tmp, gguf_tmp, cfg.gguf_quantization)
            from distill.export import check_gguf, llama_server_available

            sample = (ds.test or ds.val or ds.train)[0]["messages"]
            if llama_server_available():
                metrics["gguf_check_answer"] = check_gguf(found, sample, template_tok=tok)[:200]
            else:
                # e.g. Colab, where Unsloth's exporter brought its own llama.cpp build
                print("WARNING: GGUF not checked: no llama-server here (scripts/install_llama_cpp.sh installs it)")
                metrics["gguf_check_answer"] = None
            _write_modelfile(found, gguf_tmp, tok, dcfg, cfg)
            _replace_dir(gguf_tmp, save_dir / "gguf")
            gguf_path = save_dir / "gguf" / Path(found).relative_to(gguf_tmp)
        if cfg.save_merged:
            write_json(merged_tmp / DISTILL_CONFIG, dcfg)
            _replace_dir(merged_tmp, save_dir / "merged")
    finally:
        shutil.rmtree(merged_tmp, ignore_errors=True)
        shutil.rmtree(gguf_tmp, ignore_errors=True)
    return gguf_path


def _write_modelfile(gguf: Path, folder: Path, tok, dcfg: dict, cfg: TrainConfig) -> None:
    """An Ollama Modelfile next to the GGUF, with the training prompt (when the dataset recorded it)."""
    from distill.io import atomic_write_text
    from distill.ollama import SavedPrompt, modelfile_text

    if dcfg.get("system_prompt") is None or dcfg.get("user_template") is None:
        print("note: no Modelfile: the dataset's manifest.json records no system prompt / user template")
        return
    prompt = SavedPrompt(dcfg["system_prompt"], dcfg["user_template"])
    text = modelfile_text(Path(gguf), folder, tok, dcfg, prompt, context=min(cfg.max_seq_length, 8192),
                          max_new_tokens=1024, writer="05_finetune.py --save-gguf")
    atomic_write_text(folder / "Modelfile", text)


def _replace_dir(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(cfg: TrainConfig) -> str | None:
    """The newest ``checkpoint-N`` in --output-dir when --resume is on, else None (a fresh start)."""
    if not cfg.resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
    print(f"resume: continuing from {found}" if found else f"resume: no checkpoint in {cfg.output_dir}, starting fresh")
    return found


def build_trainer(cfg, backend, model, tok, train_ds, eval_ds, optim, eval_steps, tracker, precision=None):
    from transformers import TrainerCallback
    from trl import SFTConfig

    class _Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                tracker.log({(k.replace("eval_", "eval/") if k.startswith("eval_") else f"train/{k}"): v
                             for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

    from .precision import resolve as resolve_precision

    precision = precision or resolve_precision(cfg.precision)
    args = SFTConfig(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        optim=optim,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=eval_steps,
        # The final adapter is saved by run(); checkpoints only where a run may be cut off (Colab).
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=2,
        report_to="none",  # metrics go through the tracker callback
        # DDP: every LoRA weight gets a gradient each step, so DDP need not search the graph for unused ones
        ddp_find_unused_parameters=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # Rows longer than max_seq_length are dropped when tokenized (tokenize_rows); TRL refuses
        # padding-free batches with a max_length it cannot enforce itself.
        max_length=None if cfg.packing else cfg.max_seq_length,
        padding_free=cfg.packing,
        # on CPU, bf16=True is accelerate's CPU autocast over float32 weights (transformers wants use_cpu for it)
        use_cpu=precision.device == "cpu",
        bf16=precision.autocast_bf16,
        fp16=precision.autocast_fp16,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,
    )
    trainer_cls = backend.trainer_class()
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tok, callbacks=[_Forward()])
    if bool(trainer.args.bf16) != precision.autocast_bf16:
        # Unsloth's CPU mode turns bf16 off where its own CPU check says no bf16
        raise StageError(f"the {backend.NAME} trainer changed bf16 to {trainer.args.bf16} against "
                         f"--precision's choice ({precision.compute}): pass --precision fp32")
    return trainer


# ------------------------------------------------------------------ inference

def load_for_inference(save_dir: str | Path):
    """(model, tokenizer, distill_config) for a folder written by run(): adapter or merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import resolve_model

    save_dir = Path(save_dir)
    cfg_path = save_dir / DISTILL_CONFIG
    if not cfg_path.exists():
        raise StageError(f"{save_dir} has no {DISTILL_CONFIG}: not a folder written by 05_finetune.py")
    dcfg = json.loads(cfg_path.read_text())
    tok = AutoTokenizer.from_pretrained(save_dir)
    tok.chat_template = dcfg["chat_template"]
    if (save_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve_model(dcfg["base_model"]))
        model = PeftModel.from_pretrained(base, save_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(save_dir)
    model.eval()
    return model, tok, dcfg
