"""distill.spec: what a --model value means, decided in one place."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distill.io import StageError
from distill.spec import CHAIN_FILE, DISTILL_CONFIG, KINDS, OPENERS, parse_model


def test_each_kind_of_value(tmp_path):
    trained = tmp_path / "student"
    trained.mkdir()
    (trained / DISTILL_CONFIG).write_text(json.dumps({"task": "recipe"}))
    gguf_dir = trained / "gguf"
    gguf_dir.mkdir()
    gguf = gguf_dir / "student-Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    chain = tmp_path / "chain"
    chain.mkdir()
    (chain / CHAIN_FILE).write_text("{}")
    base = tmp_path / "hf-model"
    base.mkdir()

    s = parse_model("openai:http://127.0.0.1:1234/v1", "my-student")
    assert (s.kind, s.url, s.path, s.default_name, s.default_concurrency) == (
        "openai", "http://127.0.0.1:1234/v1", None, "my-student", 4)
    assert s.config_path is None and s.config() is None
    s = parse_model(trained)
    assert (s.kind, s.default_name, s.default_concurrency) == ("trained", "student", 1)
    assert s.config() == {"task": "recipe"}
    s = parse_model(gguf)   # a GGUF inside <save-dir>/gguf/ finds the training config two folders up
    assert (s.kind, s.default_name, s.default_concurrency, s.config_path) == (
        "gguf", "student-Q8_0", 2, trained / DISTILL_CONFIG)
    assert parse_model(chain).kind == "chain" and parse_model(chain).config_path is None
    assert parse_model(base).kind == "base" and parse_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "base"
    assert set(KINDS) == set(OPENERS)


def test_values_that_cannot_be_a_model(tmp_path):
    with pytest.raises(StageError, match="expected openai:http://host:port/v1"):
        parse_model("openai:localhost:1234")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StageError, match="expected a folder, a .gguf file or openai:URL"):
        parse_model(tmp_path / "notes.txt")
    with pytest.raises(StageError, match="--model is empty"):
        parse_model(" ")


def test_the_fingerprint_follows_the_weights(tmp_path):
    d = tmp_path / "student"
    d.mkdir()
    (d / DISTILL_CONFIG).write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"1")
    before = parse_model(d).fingerprint()
    (d / "notes.md").write_text("not weights")
    assert parse_model(d).fingerprint() == before
    (d / "adapter_model.safetensors").write_bytes(b"12")   # re-trained into the same folder
    assert parse_model(d).fingerprint() != before
    assert (parse_model("openai:http://h:1/v1", "a").fingerprint()
            != parse_model("openai:http://h:1/v1", "b").fingerprint())


def test_openers_are_found_and_infer_does_not_import_chain():
    assert parse_model("openai:http://h:1/v1").opener().__name__ == "load_openai"
    code = ("import sys, distill.infer, distill.spec\n"
            "assert 'distill.chain' not in sys.modules, 'infer imports chain'\n"
            "assert 'torch' not in sys.modules, 'the spec or infer imports torch'\n"
            "from distill.spec import OPENERS\n"
            "import importlib\n"
            "for kind, target in OPENERS.items():\n"
            "    mod, _, fn = target.partition(':')\n"
            "    assert callable(getattr(importlib.import_module(mod), fn)), kind\n")
    subprocess.run([sys.executable, "-c", code], check=True)
