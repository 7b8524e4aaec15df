"""finetune.ipynb: matches its generator, and runs top to bottom on CPU (nbclient) with a tiny model."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from train_helpers import make_toy_dataset, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebook", ROOT / "scripts" / "make_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_notebook_matches_generator():
    gen = _generator()
    assert (ROOT / "finetune.ipynb").read_text() == gen.render(gen.build()), \
        "finetune.ipynb is out of date: run python scripts/make_notebook.py"


def test_notebook_settings_cover_every_training_flag():
    from distill.train.config import field_names

    nb = json.loads((ROOT / "finetune.ipynb").read_text())
    settings = next(c for c in nb["cells"] if "settings" in c["metadata"].get("tags", []))
    src = "".join(settings["source"])
    for name in field_names():
        assert f"    {name}=" in src


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    gen = _generator()
    make_toy_dataset(tmp_path / "data" / "04_dataset", n_train=8, n_val=2, n_test=1)
    model = tiny_model_folder(tmp_path)
    overrides = {"model_name": str(model), "backend": "hf", "max_steps": 2, "batch_size": 2,
                 "gradient_accumulation_steps": 1, "lora_rank": 4, "max_seq_length": 256,
                 "optimizer": "adamw_torch", "save_gguf": False, "inference_examples": 1, "save_dir": "student"}
    nb = json.loads(gen.render(gen.build()))
    # The committed notebook with only its settings cell swapped for the tiny CPU run.
    committed = json.loads((ROOT / "finetune.ipynb").read_text())
    tiny = json.loads(gen.render(gen.build(overrides)))
    for i, c in enumerate(committed["cells"]):
        if "settings" in c["metadata"].get("tags", []):
            committed["cells"][i] = tiny["cells"][i]
    assert len(committed["cells"]) == len(nb["cells"])
    nbnode = nbformat.from_dict(committed)
    client = NotebookClient(nbnode, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    # The notebook wrote its own copy of the package and trained with it.
    assert (tmp_path / "distill" / "train" / "core.py").exists()
    assert (tmp_path / "student" / "adapter_model.safetensors").exists()
    assert (tmp_path / "student.zip").exists()
    out = "".join(o.get("text", "") for c in nbnode.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "JSON parses:" in out and "not Colab" in out
