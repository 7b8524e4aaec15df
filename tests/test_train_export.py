"""GGUF export of a tiny merged model (k-quant through llama-quantize): loads back in llama-server and generates.

The F16/Q8_0 exports through both training backends are covered in test_train_run.py.
"""
import json
import re

import pytest

from train_helpers import make_toy_dataset, tiny_model_folder


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["Q4_K_M", "F16"])
def test_export_tiny_model_loads_back_and_generates(tmp_path, capsys, quant):
    from distill.export import check_gguf, export_gguf
    from distill.train.data import training_chat_template
    from distill.train.models import load_tokenizer

    model_dir = tiny_model_folder(tmp_path)
    gguf = export_gguf(model_dir, tmp_path / "gguf", quant, name="tiny")
    assert gguf.name == f"tiny-{quant}.gguf" and gguf.stat().st_size > 100_000
    assert not list((tmp_path / "gguf").glob(".*"))  # no temp leftovers
    tok = load_tokenizer(str(model_dir))
    tok.chat_template = training_chat_template(tok)
    row = json.loads((make_toy_dataset(tmp_path / "ds", 1, 1, 1) / "test.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    text = check_gguf(gguf, row["messages"], template_tok=tok, max_tokens=8)
    answered = re.search(r"GGUF check: llama-server answered (\d+) tokens", capsys.readouterr().out)
    assert isinstance(text, str) and answered and 1 <= int(answered.group(1)) <= 8


@pytest.mark.slow
@pytest.mark.parametrize("native", ["unavailable", "raises", "writes no gguf"])
def test_unsloth_exporter_fallback_is_reported_and_still_exports(tmp_path, capsys, native):
    from distill.export import export_gguf_preferring

    def fails(out):
        raise RuntimeError("git clone https://github.com/ggml-org/llama.cpp failed: no network")

    def writes_nothing(out):
        (out / "unsloth_merged").mkdir(parents=True)

    fn = {"unavailable": None, "raises": fails, "writes no gguf": writes_nothing}[native]
    model_dir = tiny_model_folder(tmp_path)
    gguf = export_gguf_preferring(fn, model_dir, tmp_path / "gguf", "F16", why_not="no offline llama.cpp folder",
                                  env={"DISTILL_TEST_EXPORT_ENV": "1"})
    assert gguf == tmp_path / "gguf" / "model-F16.gguf" and gguf.stat().st_size > 100_000
    note = [l for l in capsys.readouterr().err.splitlines() if l.startswith("note: Unsloth's GGUF exporter not used")]
    why = {"unavailable": "no offline llama.cpp folder", "raises": "failed (RuntimeError: git clone",
           "writes no gguf": "wrote no .gguf"}[native]
    assert len(note) == 1 and why in note[0] and "llama.cpp's converter" in note[0]
    import os

    assert "DISTILL_TEST_EXPORT_ENV" not in os.environ  # the exporter's environment is restored


def test_unsloth_exporter_result_is_used_without_a_note(tmp_path, capsys):
    from distill.export import export_gguf_preferring

    def writes_gguf(out):
        (out / "unsloth_merged").mkdir(parents=True)  # Unsloth's merged copy, removed afterwards
        (out / "model.Q8_0.gguf").write_bytes(b"GGUF")

    got = export_gguf_preferring(writes_gguf, tmp_path / "merged-never-read", tmp_path / "gguf", "Q8_0")
    assert got == tmp_path / "gguf" / "model.Q8_0.gguf"
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == ["model.Q8_0.gguf"]
    assert "note:" not in capsys.readouterr().err


def test_unknown_quantization_is_a_clear_error(tmp_path):
    from distill.export import export_gguf
    from distill.io import StageError

    with pytest.raises(StageError, match="supported are"):
        export_gguf(tmp_path, tmp_path / "out", "Q3_K_S")
