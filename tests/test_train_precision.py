"""--precision: bfloat16 matmuls over float32 weights where the CPU is fast in bf16, float32 elsewhere."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.io import StageError
from distill.train import precision
from distill.train.config import TrainConfig
from train_helpers import make_toy_dataset, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(precision, "_device", lambda: "cpu")


def test_auto_takes_bf16_only_where_the_detector_says_fast(on_cpu, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "the CPU has amx_bf16"))
    p = precision.resolve("auto")
    assert p.compute == "bf16" and p.autocast_bf16 and "amx_bf16" in p.reason
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (False, "the CPU has neither amx_bf16 nor avx512_bf16"))
    p = precision.resolve("auto")
    assert p.compute == "fp32" and not p.autocast_bf16 and "neither amx_bf16" in p.reason  # says why


def test_fp32_is_float32_whatever_the_cpu(on_cpu, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "fast"))
    assert precision.resolve("fp32").compute == "fp32"


def test_bf16_on_a_cpu_without_bf16_instructions_is_one_clear_error(on_cpu, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: (False, "the CPU has neither amx_bf16 nor avx512_bf16"))
    with pytest.raises(StageError, match="--precision bf16: the CPU has neither .* use --precision fp32"):
        precision.resolve("bf16")


def test_bf16_asked_for_is_honoured_where_the_probe_prefers_fp32(on_cpu, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: (True, "the CPU has avx512_bf16"))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (False, "slower"))
    assert precision.resolve("bf16").compute == "bf16"


def test_detector_reads_this_machines_flags(on_cpu):
    flags = precision.cpu_flags()
    native, why = precision.cpu_bf16_instructions()
    if flags and os.uname().machine == "x86_64":
        assert native == bool({"avx512_bf16", "amx_bf16"} & flags), why
    fast, why = precision.cpu_bf16()
    assert not fast or native  # the timing probe never promotes a CPU without the instructions
    assert why


def test_matmul_probe_measures_both_dtypes():
    import torch

    assert precision.matmul_gflops(torch.float32, 128, 128, 128, repeats=2) > 0.1
    assert precision.matmul_gflops(torch.bfloat16, 128, 128, 128, repeats=2) > 0.01
    assert precision.bf16_speedup() > 0


def test_precision_flag_is_validated():
    from distill.train.config import config_from_mapping

    assert TrainConfig().precision == "auto"
    assert config_from_mapping({"precision": "fp32"}, TrainConfig()).precision == "fp32"  # sweep / wandb names
    with pytest.raises(StageError, match="--precision must be one of auto, bf16, fp32"):
        TrainConfig(precision="half")


# ---------------------------------------------------------------- real training, both backends

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    make_toy_dataset(d / "ds", n_train=8, n_val=0, n_test=1)
    tiny_model_folder(d)
    return d


def _train(workdir, backend, force):
    cfg = {"dataset_dir": str(workdir / "ds"), "model_name": str(workdir / "tiny-llama"), "backend": backend,
           "max_steps": 4, "batch_size": 2, "gradient_accumulation_steps": 1, "lora_rank": 8,
           "max_seq_length": 256, "learning_rate": 5e-3, "optimizer": "adamw_torch", "eval_steps": -1,
           "skip_inference_test": True, "seed": 7, "save_dir": str(workdir / f"out-{backend}-{force}"),
           "output_dir": str(workdir / f"ckpt-{backend}-{force}")}
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
               # Unsloth's CPU mode has its own flag check; make it agree with the forced detector
               UNSLOTH_CPU_BF16="1" if force == "bf16" else "0")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "precision_driver.py"),
                        json.dumps({"config": cfg, "force": force})], cwd=workdir, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("PRECISION_RESULT "))
    return json.loads(line.removeprefix("PRECISION_RESULT ")), r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_bf16_path_trains_with_float32_weights_and_optimizer_state(workdir, backend):
    res, log = _train(workdir, backend, "bf16")
    assert "precision: bf16 (test: bfloat16 said to be fast" in log
    assert res["precision"]["compute"] == "bf16" and res["trainer_bf16"]
    assert ", bf16, 4 updates" in res["summary"]
    assert len(res["losses"]) == 4 and all(math.isfinite(x) for x in res["losses"])
    assert res["lora_B_changed"]
    # the frozen matmuls ran in bfloat16 (autocast) ...
    assert res["matmul_out_dtypes"]["frozen"] == ["torch.bfloat16"]
    # ... while every weight and every optimizer moment stayed float32
    assert res["lora_dtypes"] == ["torch.float32"] and res["base_dtypes"] == ["torch.float32"]
    assert res["optimizer_state_tensors"] > 0 and res["optimizer_state_dtypes"] == ["torch.float32"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_without_bf16_the_run_falls_back_to_float32_and_says_why(workdir, backend):
    res, log = _train(workdir, backend, "none")
    assert "precision: fp32 (float32 because test: no bfloat16 here)" in log
    assert res["precision"]["compute"] == "fp32" and not res["trainer_bf16"]
    assert ", fp32, 4 updates" in res["summary"]
    assert all(math.isfinite(x) for x in res["losses"]) and res["lora_B_changed"]
    assert res["matmul_out_dtypes"]["frozen"] == ["torch.float32"] and res["matmul_out_dtypes"]["lora"] == ["torch.float32"]
    assert res["lora_dtypes"] == ["torch.float32"] and res["base_dtypes"] == ["torch.float32"]
    assert res["optimizer_state_dtypes"] == ["torch.float32"]


def test_05_refuses_bf16_on_a_cpu_without_it_with_one_line_and_writes_nothing(workdir, monkeypatch, capsys):
    import importlib.util

    monkeypatch.setattr(precision, "_device", lambda: "cpu")
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: (False, "the CPU has neither amx_bf16 nor avx512_bf16"))
    spec = importlib.util.spec_from_file_location("finetune05_precision", ROOT / "05_finetune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(workdir)
    assert mod.main(["--dataset-dir", "ds", "--model-name", "tiny-llama", "--backend", "hf", "--max-steps", "1",
                     "--precision", "bf16", "--save-dir", "out-bad-precision", "--output-dir", "ckpt-bad-precision"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --precision bf16: the CPU has neither") and "use --precision fp32" in err[-1]
    assert not (workdir / "out-bad-precision").exists() and not list(workdir.glob(".out-bad-precision.tmp-*"))
