"""06_finetune_wandb.py offline: the run directory holds the logged metrics, config and adapter artifact."""
import glob
import importlib.util
import struct
from pathlib import Path

import pytest

from train_helpers import make_toy_dataset, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent


def _load_06():
    spec = importlib.util.spec_from_file_location("finetune06", ROOT / "06_finetune_wandb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _records(path):
    """Records of a .wandb run file (LevelDB-style log: 32 KiB blocks, 7-byte chunk headers)."""
    data = Path(path).read_bytes()
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - (pos % block)
        if left < 7:
            pos += left
            continue
        _crc, length, typ = struct.unpack("<IHB", data[pos:pos + 7])
        if typ == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if typ == 1:
            yield chunk
        elif typ == 2:
            buf = chunk
        elif typ == 3:
            buf += chunk
        elif typ == 4:
            yield buf + chunk
            buf = b""


def _read_run(run_file):
    from wandb.proto import wandb_internal_pb2 as pb

    history_keys, summary, config, artifacts = set(), {}, {}, []
    for raw in _records(run_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history_keys |= {it.key or "/".join(it.nested_key) for it in rec.history.item}
        elif kind == "summary":
            summary.update({it.key or "/".join(it.nested_key): it.value_json for it in rec.summary.update})
        elif kind == "config":
            config.update({it.key or "/".join(it.nested_key): it.value_json for it in rec.config.update})
        elif kind == "artifact":
            artifacts.append((rec.artifact.name, rec.artifact.type))
    return history_keys, summary, config, artifacts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wandb")
    make_toy_dataset(d / "ds", n_train=8, n_val=2, n_test=1)
    tiny_model_folder(d)
    return d


BASE = ["--dataset-dir", "ds", "--model-name", "tiny-llama", "--backend", "hf", "--max-steps", "3", "--batch-size", "2",
        "--gradient-accumulation-steps", "1", "--max-seq-length", "256", "--optimizer", "adamw_torch",
        "--skip-inference-test", "--eval-steps", "1"]


@pytest.mark.slow
def test_offline_run_logs_metrics_config_plot_and_adapter(workdir, monkeypatch, tmp_path):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # Flags in the form `wandb agent` passes a sweep's parameters.
    assert _load_06().main([*BASE, "--lora_rank=4", "--use_rslora=True", "--learning_rate=0.001",
                            "--save-dir", "wb-out"]) == 0
    import wandb

    wandb.teardown()  # the wandb-core service writes the run file; let it finish
    run_file = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))[0]
    keys, summary, config, artifacts = _read_run(run_file)
    assert {"train/loss", "train/learning_rate", "eval/loss", "train/global_step", "loss_curve/path"} <= keys
    assert float(summary["eval/loss"]) > 0 and "train_loss" in summary
    assert config["lora_rank"] == "4" and config["use_rslora"] == "true" and config["learning_rate"] == "0.001"
    assert any(t == "model" and n.startswith("adapter-") for n, t in artifacts)
    assert (workdir / "wb-out" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_wandb_disabled_trains_with_the_null_tracker(workdir, monkeypatch, tmp_path):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert _load_06().main([*BASE, "--wandb-mode", "disabled", "--lora-rank", "4", "--save-dir", "wb-off"]) == 0
    assert (workdir / "wb-off" / "distill_config.json").exists()
    assert not glob.glob(str(tmp_path / "wandb" / "*run-*"))


def test_sweep_needs_online_mode(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _load_06().main(["--sweep-id", "abc123"]) == 1
    assert "needs W&B online" in capsys.readouterr().err
