"""GGUF export of a tiny merged model (k-quant through llama-quantize): loads back in llama-server and generates.

The F16/Q8_0 exports through both training backends are covered in test_train_run.py.
"""
import json

import pytest
from train_helpers import make_toy_dataset, tiny_model_folder


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["Q4_K_M", "F16"])
def test_export_tiny_model_loads_back_and_generates(tmp_path, quant):
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
    assert check_gguf(gguf, row["messages"], template_tok=tok, max_tokens=8) is not None


def test_unknown_quantization_is_a_clear_error(tmp_path):
    from distill.export import export_gguf
    from distill.io import StageError

    with pytest.raises(StageError, match="supported are"):
        export_gguf(tmp_path, tmp_path / "out", "Q3_K_S")
