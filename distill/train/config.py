"""The one training configuration: flags of 05/06, sweep.yaml names and the notebook's settings.

Litgpt-style: every field documents itself (``metadata["help"]``), ``__post_init__``
rejects impossible combinations with a message that says which flag to change, and
:func:`add_config_args` builds the argparse flags from the fields, so a new setting is one
new field. Flags are kebab-case (``--lora-rank``) and also accept the snake_case form
(``--lora_rank=64``) that ``wandb agent`` passes to the program.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from distill.io import DATASET_DIR, StageError

from .precision import PRECISIONS

BACKENDS = ("auto", "unsloth", "hf")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_8bit", "adamw_torch", "sgd", "adafactor")
GGUF_QUANTS = ("Q8_0", "BF16", "F16", "Q4_K_M")
REASONING = ("keep", "strip")


def _f(default: Any, help: str, group: str, choices: tuple | None = None, **kw: Any) -> Any:
    meta = {"help": help, "group": group}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    # -- data
    dataset_dir: str = _f(str(DATASET_DIR), "folder with train.jsonl (+ val.jsonl, test.jsonl, manifest.json) from 04_build_dataset.py", "data")
    reasoning: str = _f("keep", "keep or strip the <think>...</think> prefix of assistant turns", "data", REASONING)
    max_seq_length: int = _f(8192, "tokens per example; longer examples are dropped whole (a cut answer teaches a model not to stop)", "data")
    max_train_samples: int = _f(-1, "use only the first N training rows (-1 = all)", "data")
    # -- model
    model_name: str = _f("unsloth/gemma-3-270m-it", "hub id, local HF folder, or local .gguf file (converted once, cached)", "model")
    backend: str = _f("auto", "auto = Unsloth where it imports (CUDA, or its CPU mode), else transformers+PEFT+TRL", "model", BACKENDS)
    load_4bit: bool = _f(False, "load the base model in 4 bit (QLoRA; needs CUDA + bitsandbytes)", "model")
    load_8bit: bool = _f(False, "load the base model in 8 bit (needs CUDA + bitsandbytes)", "model")
    # -- LoRA
    lora_rank: int = _f(128, "LoRA rank r", "lora")
    lora_alpha: int | None = _f(None, "LoRA alpha (default = --lora-rank)", "lora")
    lora_dropout: float = _f(0.0, "LoRA dropout", "lora")
    use_rslora: bool = _f(False, "rank-stabilised LoRA (scales by alpha/sqrt(r))", "lora")
    # -- optimisation
    batch_size: int = _f(4, "examples per device step", "train")
    gradient_accumulation_steps: int = _f(4, "steps accumulated per optimiser update", "train")
    max_steps: int = _f(50, "optimiser updates (-1 = train --num-epochs full epochs)", "train")
    num_epochs: float = _f(1.0, "epochs, used when --max-steps is -1", "train")
    learning_rate: float = _f(2e-5, "peak learning rate", "train")
    weight_decay: float = _f(0.001, "AdamW weight decay", "train")
    warmup_steps: int = _f(5, "linear warm-up updates", "train")
    lr_scheduler_type: str = _f("linear", "learning-rate schedule", "train", SCHEDULERS)
    optimizer: str = _f("adamw_8bit", "optimiser; adamw_8bit needs CUDA + bitsandbytes (mapped to adamw_torch elsewhere, "
                        "with a notice)", "train", OPTIMIZERS)
    precision: str = _f("auto", "number format of the matmuls: auto = bfloat16 on a CPU with native bfloat16 "
                        "(AVX512-BF16, AMX, Arm BF16; weights and optimizer state stay float32), float32 on "
                        "other CPUs; on a GPU what Unsloth/TRL pick (bf16, else fp16); fp32 = float32 everywhere",
                        "train", PRECISIONS)
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory (slower; ~15%% slower on CPU)", "train")
    packing: bool = _f(False, "padding-free batching: concatenate examples instead of padding (fewer wasted tokens)", "train")
    eval_steps: int = _f(0, "evaluate on val.jsonl every N updates (0 = about 5 times per run; -1 = never)", "train")
    logging_steps: int = _f(1, "log training loss every N updates", "train")
    seed: int = _f(3407, "random seed (data order, LoRA init)", "train")
    # -- outputs
    output_dir: str = _f("outputs", "trainer checkpoints and logs", "output")
    save_steps: int = _f(0, "write a checkpoint to --output-dir every N updates (0 = none; the last 2 are kept)", "output")
    resume: bool = _f(False, "continue from the newest checkpoint in --output-dir (e.g. after a Colab disconnect); "
                      "none there = a fresh start", "output")
    save_dir: str = _f("gemma-3", "final LoRA adapter, tokenizer, distill_config.json, history.json, loss.png", "output")
    save_merged: bool = _f(False, "also save the merged 16-bit model in <save-dir>/merged", "output")
    save_gguf: bool = _f(False, "also export a GGUF to <save-dir>/gguf (+ an Ollama Modelfile; llama.cpp's converter, "
                         "or Unsloth's exporter where no local llama.cpp is installed)", "output")
    gguf_quantization: str = _f("Q8_0", "GGUF type written by --save-gguf", "output", GGUF_QUANTS)
    skip_inference_test: bool = _f(False, "skip the post-training test on a few test.jsonl examples", "output")
    inference_examples: int = _f(3, "how many test.jsonl examples the inference test runs", "output")

    def __post_init__(self) -> None:
        if self.lora_alpha is None:
            self.lora_alpha = self.lora_rank
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise StageError(f"--{_flag(f.name)} must be one of {', '.join(choices)} (got {getattr(self, f.name)!r})")
        if self.load_4bit and self.load_8bit:
            raise StageError("--load-4bit and --load-8bit exclude each other: pick one")
        if self.max_steps == 0 or self.max_steps < -1:
            raise StageError("--max-steps must be a positive number of updates, or -1 for full epochs")
        if self.max_steps == -1 and self.num_epochs <= 0:
            raise StageError("--max-steps -1 trains --num-epochs epochs: give --num-epochs > 0")
        for name in ("lora_rank", "batch_size", "gradient_accumulation_steps", "max_seq_length", "inference_examples"):
            if getattr(self, name) < 1:
                raise StageError(f"--{_flag(name)} must be at least 1")
        if self.lora_alpha < 1:
            raise StageError("--lora-alpha must be at least 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise StageError("--lora-dropout must be in [0, 1)")
        if self.learning_rate <= 0:
            raise StageError("--learning-rate must be > 0")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise StageError("--warmup-steps and --weight-decay cannot be negative")
        if self.save_steps < 0:
            raise StageError("--save-steps must be 0 (no checkpoints) or a positive number of updates")
        if self.packing and self.max_seq_length < 16:
            raise StageError("--packing needs --max-seq-length of at least 16")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _type_of(f: dataclasses.Field):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if t.startswith("bool"):
        return str2bool
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


GROUP_TITLES = {
    "data": "data", "model": "model and backend", "lora": "LoRA", "train": "optimisation",
    "output": "outputs",
}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field (kebab-case plus a snake_case alias)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        g = f.metadata["group"]
        if g not in groups:
            groups[g] = parser.add_argument_group(GROUP_TITLES.get(g, g))
        names = [f"--{_flag(f.name)}"] + ([f"--{f.name}"] if "_" in f.name else [])
        typ = _type_of(f)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        default = f.default
        help_ = f.metadata["help"]
        if typ is str2bool:
            # `--use-rslora` alone means true; `--use_rslora=False` (wandb agent) also works.
            kw.update(nargs="?", const=True, type=str2bool, metavar="BOOL")
        else:
            kw.update(type=typ)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        if default is not None and default is not False:
            help_ += f" [default: {default}]"
        groups[g].add_argument(*names, help=help_, **kw)


def config_from_args(ns: argparse.Namespace | Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from parsed flags (only fields present) plus overrides."""
    values = dict(vars(ns) if isinstance(ns, argparse.Namespace) else ns)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in values.items() if k in names}
    kw.update({k: v for k, v in overrides.items() if k in names})
    return TrainConfig(**kw)


def config_from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Merge a sweep/wandb config (snake_case or kebab-case keys) over ``base``.

    Unknown keys are an error, so a sweep.yaml parameter that is not a training flag
    fails loudly instead of being silently ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    kw = base.to_dict() if base else {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name.startswith("_") or name.startswith("wandb"):
            continue
        if name not in fields:
            raise StageError(f"unknown training parameter {key!r} (valid: {', '.join(sorted(fields))})")
        typ = _type_of(fields[name])
        if value is not None and not isinstance(value, bool) or typ is str2bool:
            value = typ(value) if value is not None else None
        kw[name] = value
    if base is not None and "lora_rank" in values and "lora_alpha" not in values and base.lora_alpha == base.lora_rank:
        kw["lora_alpha"] = None  # alpha follows rank unless it was set on its own
    return TrainConfig(**kw)
