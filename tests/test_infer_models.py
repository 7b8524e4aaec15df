"""The inference paths on real models: a LoRA adapter trained by 05, its merged folder, its GGUF
served by a real llama-server, the Ollama Modelfile, truncation with a real tokenizer, and a
base GGUF (SmolLM2-135M-Instruct) run with a task's student prompt.

The tiny model is train_helpers' 2-layer Llama with SmolLM2's tokenizer, re-drawn with larger
weights: a default-initialised random model puts near-equal logits everywhere and greedy
decoding emits one token over and over, which would make "same output" a weak check.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distill.infer import load_predictor
from distill.tasks import load_task
from train_helpers import make_toy_dataset, tiny_model_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Ana is 31 years old.", "Met Ben today, age 40.", "Kai (77)"]


def _run(script: str, args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """05_finetune.py on the toy data: adapter + merged/ + gguf/ (F16, no quantization drift)."""
    import torch
    from transformers import AutoModelForCausalLM

    d = tmp_path_factory.mktemp("infer")
    base = tiny_model_folder(d)
    sharp = d / "sharp-llama"
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.5 if "embed" in name else 0.15)
    model.save_pretrained(sharp)
    for f in base.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja" or f.name == "special_tokens_map.json":
            (sharp / f.name).write_bytes(f.read_bytes())
    make_toy_dataset(d / "ds")
    r = _run("05_finetune.py", ["--dataset-dir", "ds", "--model-name", str(sharp), "--backend", "hf",
                                "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1",
                                "--lora-rank", "4", "--max-seq-length", "256", "--learning-rate", "1e-2",
                                "--optimizer", "adamw_torch", "--skip-inference-test", "--save-merged",
                                "--output-dir", "ckpt", "--save-dir", "student"], d)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The GGUF where 05 --save-gguf puts it, converted by llama.cpp's converter at F16 (no
    # quantization drift). Not through --save-gguf: its load-back check sends a text prompt,
    # which llama-server cannot tokenize for GGUFs converted from GGUF-derived SmolLM2
    # folders (their tokenizer.json decoder makes the converter write an SPM vocabulary).
    from distill.llamacpp import convert_hf_to_gguf

    convert_hf_to_gguf(d / "student" / "merged", d / "student" / "gguf" / "model-F16.gguf", "f16")
    return d / "student"


def _gguf(student: Path) -> Path:
    (gguf,) = sorted((student / "gguf").glob("*.gguf"))
    return gguf


def test_adapter_merged_and_gguf_give_the_same_greedy_tokens(student):
    outs = {}
    for spec in (student, student / "merged", _gguf(student)):
        # Free decoding: the paths must agree on prompt and weights; the constraint engines differ per
        # backend (llguidance vs llama.cpp's grammar, see distill.constrain) and may pick other tokens.
        with load_predictor(str(spec), max_new_tokens=12, constrain="none") as pred:
            preds = pred.predict(TEXTS, progress=False)
            outs[pred.info["kind"]] = preds
            if pred.info["kind"] == "gguf":
                assert pred.info["prompt"] == "training template, token ids"
    adapter, merged, gguf = outs["adapter"], outs["merged"], outs["gguf"]
    for a, m, g in zip(adapter, merged, gguf):
        assert len(a.output_tokens) == 12 and len(set(a.output_tokens)) > 1  # a real, varied generation
        assert a.output_tokens == m.output_tokens == g.output_tokens
        assert a.raw == m.raw == g.raw
        assert a.prompt_messages == m.prompt_messages == g.prompt_messages
        assert a.prompt_tokens == g.prompt_tokens
    # The prompt is the training prompt: the saved system prompt and user template of the run.
    dcfg = json.loads((student / "distill_config.json").read_text())
    assert adapter[0].prompt_messages == [{"role": "system", "content": dcfg["system_prompt"]},
                                          {"role": "user", "content": TEXTS[0]}]


def test_batched_transformers_generation_matches_one_at_a_time(student):
    with load_predictor(str(student / "merged"), max_new_tokens=8, concurrency=1) as one:
        a = one.predict(TEXTS, progress=False)
    with load_predictor(str(student / "merged"), max_new_tokens=8, concurrency=3) as batched:
        b = batched.predict(TEXTS, progress=False)
    assert [p.output_tokens for p in a] == [p.output_tokens for p in b]


def test_long_input_is_cut_to_its_head_so_prompt_and_answer_fit(student):
    text = "START " + " ".join(f"word{i}" for i in range(2000)) + " END"
    with load_predictor(str(student), max_new_tokens=16, context=200) as pred:
        p, short = pred.predict([text, "Ana is 31."], progress=False)
    assert p.truncated_input and not short.truncated_input
    assert p.prompt_messages[1]["content"].startswith("START word0") and "END" not in p.prompt_messages[1]["content"]
    assert p.prompt_tokens + 16 <= 200 and p.prompt_tokens > 150  # filled, not over-cut


def test_cli_gives_the_same_files_for_adapter_and_gguf(student, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for i, t in enumerate(TEXTS):
        (pages / f"p{i}.txt").write_text(t)
    results = {}
    for name, spec in (("adapter", student), ("gguf", _gguf(student))):
        out = tmp_path / name
        r = _run("08_extract.py", ["--model", str(spec), "--input-dir", str(pages), "--output-dir", str(out),
                                   "--max-new-tokens", "10", "--constrain", "none"], tmp_path)
        # The random student writes no JSON: every input is reported invalid, with its raw output.
        assert r.returncode == 2, r.stderr[-2000:]
        assert "extracted 0/3 valid" in r.stderr
        results[name] = {p.name: json.loads(p.read_text())["raw"] for p in sorted(out.glob("*.error.json"))}
        assert not list(out.glob("p?.json"))
    assert results["adapter"] == results["gguf"] and len(results["adapter"]) == 3


def test_modelfile_template_renders_the_training_prompt(student, tmp_path):
    from transformers import AutoTokenizer

    from distill.ollama import GO_ACTIONS, render_go_template
    from distill.train.data import render_prompt

    gguf = _gguf(student)
    r = _run("08_extract.py", ["--model", str(gguf), "--export-ollama", str(gguf.parent)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (gguf.parent / "Modelfile").read_text()
    assert f"FROM ./{gguf.name}\n" in text
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M).group(1)
    assert set(GO_ACTIONS.findall(template)) == {"{{ .System }}", "{{ .Prompt }}"}
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text

    dcfg = json.loads((student / "distill_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(student)
    sample = "Dora (52) said: {{ not a template }} and <b>bold</b>\nsecond line"
    messages = [{"role": "system", "content": dcfg["system_prompt"]},
                {"role": "user", "content": dcfg["user_template"].replace("{text}", sample)}]
    expected = render_prompt(tok, messages, dcfg["chat_template"])
    assert system == dcfg["system_prompt"]
    assert render_go_template(template, system, sample) == expected


def test_base_gguf_with_a_task_uses_its_own_chat_template():
    """A GGUF without a training config (SmolLM2-135M-Instruct as shipped) runs with the task's student
    prompt through llama-server's chat endpoint; llama-server renders it as transformers does."""
    import httpx
    from transformers import AutoTokenizer

    from distill.llamacpp import smollm2_gguf
    from distill.train.models import resolve_model

    task = load_task("recipe")
    with load_predictor(str(smollm2_gguf()), task=task, max_new_tokens=24) as pred:
        assert pred.info["prompt"] == "the GGUF's chat template"
        (p,) = pred.predict(["Pancakes: 2 eggs, 1 cup milk. Fry."], progress=False)
        server = pred.backend.server
        rendered = httpx.post(server.root + "/apply-template", json={"messages": p.prompt_messages},
                              timeout=60, trust_env=False).json()["prompt"]
    assert p.raw and p.completion_tokens == 24 and p.stopped == "length"
    tok = AutoTokenizer.from_pretrained(resolve_model(str(smollm2_gguf())))
    assert rendered == tok.apply_chat_template(p.prompt_messages, tokenize=False, add_generation_prompt=True)
