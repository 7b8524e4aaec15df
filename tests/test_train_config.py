"""TrainConfig: the one source of 05/06 flags, sweep.yaml names and the notebook settings."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import yaml

from distill.io import StageError
from distill.train.config import TrainConfig, config_from_args, config_from_mapping

ROOT = Path(__file__).resolve().parent.parent
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _script(name):
    spec = importlib.util.spec_from_file_location(name.replace(".py", "").lstrip("0123456789_"), ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SEED_DEFAULTS = {
    "dataset_dir": "data/04_dataset", "model_name": "unsloth/gemma-3-270m-it", "max_seq_length": 8192,
    "lora_rank": 128, "lora_alpha": 128, "lora_dropout": 0.0, "batch_size": 4, "gradient_accumulation_steps": 4,
    "max_steps": 50, "num_epochs": 1.0, "learning_rate": 2e-5, "weight_decay": 0.001, "warmup_steps": 5,
    "lr_scheduler_type": "linear", "optimizer": "adamw_8bit", "use_rslora": False, "output_dir": "outputs",
    "save_dir": "gemma-3", "save_gguf": False, "gguf_quantization": "Q8_0", "load_4bit": False, "load_8bit": False,
    "skip_inference_test": False, "backend": "auto", "reasoning": "keep", "save_merged": False,
}


@pytest.mark.parametrize("script", ["05_finetune.py", "06_finetune_wandb.py"])
def test_seed_flags_and_defaults(script):
    parser = _script(script).make_parser()
    cfg = config_from_args(parser.parse_args([]))
    for k, v in SEED_DEFAULTS.items():
        assert getattr(cfg, k) == v, k
    help_text = parser.format_help()
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in help_text


def test_snake_case_flags_and_bool_values_as_wandb_agent_passes_them():
    parser = _script("05_finetune.py").make_parser()
    cfg = config_from_args(parser.parse_args(
        ["--lora_rank=64", "--use_rslora=True", "--learning_rate=1e-4", "--lr_scheduler_type=cosine",
         "--save-gguf", "--skip_inference_test=false"]))
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.use_rslora, cfg.learning_rate) == (64, 64, True, 1e-4)
    assert cfg.lr_scheduler_type == "cosine" and cfg.save_gguf and not cfg.skip_inference_test


@pytest.mark.parametrize("kw, words", [
    ({"load_4bit": True, "load_8bit": True}, "--load-4bit"),
    ({"max_steps": 0}, "--max-steps"),
    ({"max_steps": -1, "num_epochs": 0}, "--num-epochs"),
    ({"lora_dropout": 1.5}, "--lora-dropout"),
    ({"optimizer": "lion"}, "--optimizer"),
    ({"batch_size": 0}, "--batch-size"),
    ({"save_steps": -5}, "--save-steps"),
])
def test_impossible_combinations_say_which_flag(kw, words):
    with pytest.raises(StageError, match=words):
        TrainConfig(**kw)


def test_every_sweep_parameter_is_a_training_flag_and_overrides():
    sweep = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    assert sweep["method"] == "bayes"
    assert sweep["metric"] == {"name": "eval/loss", "goal": "minimize"}
    params = sweep["parameters"]
    assert set(params) <= set(FIELDS)
    assert set(params) == {"learning_rate", "lora_rank", "lora_alpha", "lora_dropout", "batch_size",
                           "gradient_accumulation_steps", "weight_decay", "warmup_steps", "lr_scheduler_type",
                           "use_rslora"}
    # One sample from every parameter, as the agent would pass it, overrides the flags.
    sample = {k: (p["values"][-1] if "values" in p else p["max"]) for k, p in params.items()}
    base = TrainConfig(max_steps=3)
    cfg = config_from_mapping(sample, base)
    for k, v in sample.items():
        assert getattr(cfg, k) == v, k
    assert cfg.max_steps == 3
    parser = _script("06_finetune_wandb.py").make_parser()
    argv = [f"--{k}={v}" for k, v in sample.items()]
    assert config_from_args(parser.parse_args(argv)).to_dict() == config_from_mapping(sample).to_dict()


def test_unknown_sweep_parameter_is_an_error():
    with pytest.raises(StageError, match="lora_rnak"):
        config_from_mapping({"lora_rnak": 8})


def test_alpha_follows_rank_unless_set():
    assert config_from_mapping({"lora_rank": 32}, TrainConfig()).lora_alpha == 32
    assert config_from_mapping({"lora_rank": 32, "lora_alpha": 64}, TrainConfig()).lora_alpha == 64
