"""Plain transformers + PEFT backend (Apple MPS, CPU without Unsloth, any CUDA box)."""
from __future__ import annotations

NAME = "hf"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_base(cfg, model_path: str, precision=None):
    import torch
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer, model_not_found

    kw = {}
    if cfg.load_4bit or cfg.load_8bit:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=cfg.load_4bit, load_in_8bit=cfg.load_8bit)
    dev = device()
    # Only a GPU holds bf16 weights; a CPU in bf16 mode keeps float32 weights and autocasts the matmuls.
    bf16 = precision.compute == "bf16" if precision is not None else torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if dev == "cuda" and bf16 else torch.float32
    try:
        tok = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **kw)
    except OSError as exc:
        raise model_not_found(cfg.model_name, exc) from exc
    if dev != "cpu" and not kw:
        model.to(dev)
    return model, tok


def add_lora(cfg, model):
    from peft import LoraConfig, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in TARGET_MODULES if t in present] or "all-linear"
    lcfg = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
        target_modules=targets, use_rslora=cfg.use_rslora, task_type="CAUSAL_LM",
    )
    if cfg.load_4bit or cfg.load_8bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return get_peft_model(model, lcfg)


def load(cfg, model_path: str, precision=None):
    model, tok = load_base(cfg, model_path, precision)
    return add_lora(cfg, model), tok


def trainer_class():
    """TRL's SFTTrainer; where its Triton loss kernel is missing (CPU/MPS wheels), the model's own loss.

    TRL >= 1.15 computes the SFT loss through a Triton kernel (fused LM head). PyTorch's CPU
    wheels ship no Triton, so the kernel is absent there; the model's own cross-entropy on the
    same -100-masked labels gives the same loss, only without the fused memory savings.
    """
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import Trainer
    from trl import SFTTrainer

    # Triton installed without a GPU (another package pulled it in) has no driver to run the kernel on.
    if getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None and torch.cuda.is_available():
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def save_merged(model, tok, out_dir) -> None:
    """Merge LoRA into the base weights and save 16-bit safetensors (the PEFT wrapper is spent after this)."""
    from .models import keep_sentencepiece_model

    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    keep_sentencepiece_model(tok, out_dir)


def export_gguf(model, tok, merged_dir, out_dir, quant: str):
    """llama.cpp's converter (shipped in a PyPI package) on the merged folder."""
    from distill.export import export_gguf as _export

    return _export(merged_dir, out_dir, quant)

