"""Unsloth backend (CUDA GPUs, and Unsloth's CPU mode). The only module that imports unsloth.

Importing this module imports ``unsloth`` first, as Unsloth requires (it patches
transformers, PEFT and TRL on import). It follows Unsloth's documented API:
``FastLanguageModel.from_pretrained`` / ``get_peft_model``, TRL's SFTTrainer as patched
by Unsloth, ``save_pretrained_merged`` and ``save_pretrained_gguf``.
"""
from __future__ import annotations

import os
from pathlib import Path


def _offline_llama_cpp_env() -> None:
    # Unsloth reads UNSLOTH_LLAMA_CPP_PATH when it is imported: point it at our llama.cpp
    # folder (converter + llama-quantize from PyPI) first, so GGUF export never clones or
    # builds llama.cpp. Without that folder (e.g. on Colab) Unsloth fetches its own.
    try:
        from distill.export import unsloth_env

        for k, v in (unsloth_env() or {}).items():
            os.environ.setdefault(k, v)
    except Exception:  # noqa: BLE001 - export is optional; training must still work
        pass


_offline_llama_cpp_env()

import unsloth  # noqa: E402,F401  (must come before transformers/peft/trl)
from unsloth import FastLanguageModel  # noqa: E402

NAME = "unsloth"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _dtype(precision):
    """None lets Unsloth pick (bf16 where the GPU has it); float32 for --precision fp32 and on CPU.

    On CPU Unsloth would load bf16 weights wherever the CPU lists AVX512-BF16, even where
    bf16 matmuls run slower than float32 (no AMX); distill.train.precision decides instead, and
    bf16 there means float32 weights with bf16 autocast (trainer bf16=True), as in the hf backend.
    """
    import torch

    if precision is None or (precision.device == "cuda" and precision.compute != "fp32"):
        return None
    return torch.float32


def load(cfg, model_path: str, precision=None):
    from .models import _fix_special_tokens, model_not_found

    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=model_path,
            max_seq_length=cfg.max_seq_length,
            dtype=_dtype(precision),
            load_in_4bit=cfg.load_4bit,
            load_in_8bit=cfg.load_8bit,
            full_finetuning=False,
        )
    except OSError as exc:
        raise model_not_found(cfg.model_name, exc) from exc
    tok = getattr(tok, "tokenizer", tok)  # multimodal processors wrap the text tokenizer
    _fix_special_tokens(tok)
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=TARGET_MODULES,
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
        use_rslora=cfg.use_rslora,
    )
    return model, tok


def trainer_class():
    from trl import SFTTrainer  # patched by Unsloth at import

    return SFTTrainer


def save_merged(model, tok, out_dir) -> None:
    from .models import keep_sentencepiece_model

    model.save_pretrained_merged(str(out_dir), tok, save_method="merged_16bit")
    keep_sentencepiece_model(tok, out_dir)


def export_gguf(model, tok, merged_dir, out_dir, quant: str):
    """Unsloth's own exporter: offline on our llama.cpp folder where it exists, else the one it fetches.

    With our llama.cpp tools (scripts/setup.sh) a failure falls back, with a note saying why, to
    llama.cpp's converter on the merged folder. Without them (Colab) Unsloth's exporter is the only
    way: it clones and builds llama.cpp itself the first time, and its failure is the export's failure.
    """
    from distill.export import export_gguf_preferring, unsloth_env

    from .models import sentencepiece_model

    out_dir = Path(out_dir)
    env = unsloth_env()
    if env is None:
        print("GGUF: no local llama.cpp tools here, so Unsloth's exporter fetches and builds llama.cpp "
              "(the first time this takes minutes; later exports reuse it)", flush=True)
        found = _unsloth_export(model, tok, out_dir, quant, {})
        if found is None:
            raise RuntimeError(f"Unsloth's GGUF exporter wrote no .gguf into {out_dir}")
        return found
    why_not = None
    if sentencepiece_model(tok) is not None:
        # Unsloth's exporter saves the tokenizer again without tokenizer.model, and the
        # converter would then rebuild a SentencePiece vocabulary (Gemma's) wrongly.
        why_not = "it drops tokenizer.model, which this model's SentencePiece vocabulary needs"

    def native(out: Path) -> None:
        _unsloth_export(model, tok, out, quant, env)

    return export_gguf_preferring(None if why_not else native, merged_dir, out_dir, quant, why_not=why_not)


def _unsloth_export(model, tok, out_dir: Path, quant: str, env: dict[str, str]) -> Path | None:
    """``save_pretrained_gguf`` under ``env``; the newest .gguf it wrote, or None."""
    import shutil

    from distill.export import environment

    with environment(env):
        model.save_pretrained_gguf(str(out_dir), tok, quantization_method=quant.lower())
    found = sorted(out_dir.rglob("*.gguf"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    # Unsloth names the file after the folder; the same name as llama.cpp's converter path gives.
    dest = out_dir / f"model-{quant.upper()}.gguf"
    os.replace(found[-1], dest)
    # Unsloth leaves its merged copy next to the GGUF; the merged model lives in merged/.
    for extra in out_dir.iterdir():
        if extra.is_dir():
            shutil.rmtree(extra, ignore_errors=True)
    return dest
