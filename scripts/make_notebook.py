#!/usr/bin/env python3
"""Generate finetune.ipynb (Colab) from the same code as 05_finetune.py, and build the wheel it installs.

The notebook installs the ``distill`` package itself (the wheel this script builds, uploaded
with the dataset, or ``pip install`` from a repository URL set in its first cell), installs the
training stack the way Unsloth's own Colab notebooks do (``--no-deps`` for everything whose
dependencies would replace Colab's torch, xformers matched to the installed torch), and has a
settings cell generated from TrainConfig's fields. So it trains exactly like 05, and a test
checks that the committed notebook is up to date.

Usage:
    python scripts/make_notebook.py              # rewrite finetune.ipynb
    python scripts/make_notebook.py --check      # exit 1 if finetune.ipynb is out of date
    python scripts/make_notebook.py --wheel dist # also build dist/distill-<version>-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOK = ROOT / "finetune.ipynb"
PIN_FILES = [ROOT / "requirements-finetune.txt", ROOT / "requirements-finetune-cpu.txt", ROOT / "requirements.txt"]
# Colab defaults that differ from 05's: a GGUF is the point of the notebook; Unsloth is forced so a
# missing GPU can never turn into a silent CPU run; checkpoints go to Drive so a disconnect resumes.
NOTEBOOK_DEFAULTS = {"save_gguf": True, "backend": "unsloth", "save_steps": 10, "resume": True}
# Settings that are notebook variables (Drive or local folder) rather than literals.
NOTEBOOK_EXPRESSIONS = {"dataset_dir": "DATASET_DIR", "save_dir": "os.path.join(WORK_DIR, 'gemma-3')",
                        "output_dir": "os.path.join(WORK_DIR, 'checkpoints')"}

# Installed with --no-deps: each of them declares torch (or xformers/triton/torchao, which pin a
# torch) as a dependency, and pip would swap Colab's CUDA torch for another build.
NO_DEPS = ["unsloth", "unsloth-zoo", "peft", "trl", "accelerate", "bitsandbytes", "cut-cross-entropy"]
# Installed normally: none of them depends on torch. transformers/datasets/safetensors/sentencepiece
# are the training stack, gguf reads the exported file for the Modelfile, the rest are the light
# dependencies of Unsloth's import (requirements-finetune-cpu.txt lists them for the same reason).
WITH_DEPS = ["transformers", "datasets", "safetensors", "sentencepiece", "gguf", "tyro", "msgspec",
             "hf_transfer", "json5", "structlog", "docstring-parser", "typeguard", "einops", "httpx"]
# Never installed: Colab's own builds stay (torch and what is built against it), and what the
# notebook does not use (wandb) or Colab already has (matplotlib; protobuf, whose 7.x would
# break Colab's TensorFlow).
NEVER = {"torch", "torchvision", "torchaudio", "triton", "torchao", "xformers", "wandb", "matplotlib", "protobuf"}
# xformers built for each torch, as Unsloth 2026.10.9 pins them in its cuXXX-torchXYZ extras.
# A torch not listed (2.13, 2.14) runs without xformers: Unsloth then uses torch's own attention.
XFORMERS_FOR_TORCH = {"2.8": "0.0.32.post2", "2.9.0": "0.0.33.post1", "2.9.1": "0.0.33.post2",
                      "2.10": "0.0.34", "2.11": "0.0.35", "2.12": "0.0.35"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """name -> 'name==version' from the requirements files (the first file that pins a name wins)."""
    out: dict[str, str] = {}
    for path in PIN_FILES:
        for ln in path.read_text().splitlines():
            ln = ln.split("#", 1)[0].strip()
            if "==" in ln:
                out.setdefault(_norm(ln.split("==", 1)[0]), ln)
    return out


def colab_packages() -> tuple[list[str], list[str]]:
    p = pins()
    missing = [n for n in NO_DEPS + WITH_DEPS if _norm(n) not in p]
    if missing:
        raise SystemExit(f"make_notebook: no pin for {', '.join(missing)} in the requirements files")
    return [p[_norm(n)] for n in NO_DEPS], [p[_norm(n)] for n in WITH_DEPS]


def settings_source(overrides: dict | None = None) -> str:
    from distill.train.config import TrainConfig

    overrides = overrides or {}
    values = {**NOTEBOOK_DEFAULTS, **overrides}
    lines = ["# Training settings: the same fields as the flags of 05_finetune.py (python 05_finetune.py --help).",
             "from distill.train.config import TrainConfig", "", "cfg = TrainConfig("]
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOTEBOOK_EXPRESSIONS and f.name not in overrides:
            value = NOTEBOOK_EXPRESSIONS[f.name]
        else:
            value = repr(values.get(f.name, f.default))
        lines.append(f"    {f.name}={value},  # {f.metadata['help']}")
    lines.append(")")
    lines.append("print(cfg)")
    return "\n".join(lines)


def install_source() -> str:
    no_deps, with_deps = colab_packages()
    return f"""%%capture
# Colab only (elsewhere: bash scripts/setup.sh). Like Unsloth's own Colab notebooks: Colab's CUDA torch
# stays; what would replace it goes in with --no-deps; xformers is the build made for this torch.
import re, subprocess
NO_DEPS = {no_deps!r}
WITH_DEPS = {with_deps!r}
XFORMERS_FOR_TORCH = {XFORMERS_FOR_TORCH!r}


def install_commands(torch_version, distill_source):
    major, minor, patch = re.match(r'(\\d+)\\.(\\d+)(?:\\.(\\d+))?', torch_version).groups(default='0')
    xformers = XFORMERS_FOR_TORCH.get(f'{{major}}.{{minor}}.{{patch}}') or XFORMERS_FOR_TORCH.get(f'{{major}}.{{minor}}')
    no_deps = NO_DEPS + ([f'xformers=={{xformers}}'] if xformers else [])
    return [['--no-deps', *no_deps], WITH_DEPS, ['--no-deps', distill_source]]


if IN_COLAB:
    import torch
    source = DISTILL_SOURCE or (sorted(glob.glob(os.path.join(WHEEL_DIR, 'distill-*.whl'))) or [''])[-1]
    assert source, 'no distill wheel uploaded and no DISTILL_SOURCE set (first cell)'
    for args in install_commands(torch.__version__, source):
        subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', *args], check=True)"""


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, tag: str | None = None) -> dict:
    meta = {"tags": [tag]} if tag else {}
    return {"cell_type": "code", "execution_count": None, "metadata": meta, "outputs": [], "source": text}


def build(overrides: dict | None = None) -> dict:
    cells = [
        _md("# Fine-tune the student (LoRA, Unsloth) on your distilled dataset\n\n"
            "Generated by `scripts/make_notebook.py` from the same code as `05_finetune.py`; do not edit by hand.\n\n"
            "1. Runtime → Change runtime type → **T4 GPU**.\n"
            "2. On your machine: `python scripts/make_notebook.py --wheel dist` builds `dist/distill-*.whl` "
            "(or set `DISTILL_SOURCE` below to your repository's pip URL).\n"
            "3. Run all cells. When asked, upload the wheel and `data/04_dataset/`'s `train.jsonl`, `val.jsonl`, "
            "`test.jsonl` and `manifest.json`. Everything is kept in Google Drive (`DRIVE_DIR`): the adapter, "
            "the GGUF with an Ollama `Modelfile`, and checkpoints, so after a disconnect *Run all* resumes "
            "from the last checkpoint without a new upload.\n"
            "4. Optional: set `HF_REPO` to push the adapter and the GGUF to the Hugging Face Hub.\n\n"
            "The GGUF export goes through Unsloth's `save_pretrained_gguf`, which downloads and builds "
            "llama.cpp the first time: count **5–10 minutes** for that on a T4 runtime. A failed export is "
            "reported and never touches the saved adapter.\n\n"
            "Off Colab (e.g. the CPU test) the install, upload and Drive steps are skipped."),
        _code("# Where the distill package comes from: '' = the wheel you upload below, or a pip URL of your copy\n"
              "# of the repository, e.g. 'git+https://github.com/YOU/distill.git'.\n"
              "DISTILL_SOURCE = ''\n"
              "SAVE_TO_DRIVE = True  # adapter, GGUF and checkpoints in Google Drive (survive a disconnect)\n"
              "DRIVE_DIR = '/content/drive/MyDrive/distill'\n"
              "HF_REPO = ''  # e.g. 'you/recipe-student': also push the adapter (and '<repo>-GGUF') to the Hub\n\n"
              "import glob, os, sys\n"
              "IN_COLAB = 'google.colab' in sys.modules\n"
              "WORK_DIR = DRIVE_DIR if IN_COLAB and SAVE_TO_DRIVE else ('/content' if IN_COLAB else '.')\n"
              "DATASET_DIR = os.path.join(WORK_DIR, '04_dataset') if IN_COLAB else 'data/04_dataset'\n"
              "WHEEL_DIR = os.path.join(WORK_DIR, 'wheels')\n"
              "print('Colab' if IN_COLAB else 'not Colab: using the installed packages', '| work dir:', WORK_DIR)",
              "config"),
        _md("## Upload\n\nGoogle Drive is mounted first (Colab asks for permission). Uploaded files are stored in "
            "`DRIVE_DIR`, so a restarted runtime finds them there."),
        _code("if IN_COLAB:\n"
              "    if SAVE_TO_DRIVE:\n"
              "        from google.colab import drive\n"
              "        drive.mount('/content/drive')\n"
              "    have_wheel = bool(DISTILL_SOURCE or glob.glob(os.path.join(WHEEL_DIR, 'distill-*.whl')))\n"
              "    if not have_wheel or not os.path.exists(os.path.join(DATASET_DIR, 'train.jsonl')):\n"
              "        from google.colab import files\n"
              "        print('Upload distill-*.whl (unless DISTILL_SOURCE is set) and train.jsonl, val.jsonl, test.jsonl, '\n"
              "              'manifest.json from data/04_dataset/')\n"
              "        for name, data in files.upload().items():\n"
              "            name = os.path.basename(name)\n"
              "            folder = WHEEL_DIR if name.endswith('.whl') else DATASET_DIR\n"
              "            os.makedirs(folder, exist_ok=True)\n"
              "            with open(os.path.join(folder, name), 'wb') as fh:\n"
              "                fh.write(data)\n"
              "assert os.path.exists(os.path.join(DATASET_DIR, 'train.jsonl')), f'no train.jsonl in {DATASET_DIR}'\n"
              "print(sorted(os.listdir(DATASET_DIR)))", "upload"),
        _md("## Install\n\nOutput is hidden (`%%capture`); the GPU check next prints the versions in use."),
        _code(install_source(), "install"),
        _md("## GPU check\n\nOn Colab training needs the GPU: without one this cell stops the notebook "
            "instead of training for hours on the CPU."),
        _code("import torch\n"
              "if IN_COLAB and not torch.cuda.is_available():\n"
              "    raise RuntimeError('No CUDA GPU in this runtime. Runtime -> Change runtime type -> T4 GPU (or any GPU), '\n"
              "                     'then Runtime -> Run all. (Free GPU time is limited per day; if none is offered, '\n"
              "                     'try later.)')\n"
              "import importlib.util\n"
              "if importlib.util.find_spec('unsloth') is not None:\n"
              "    import unsloth  # before transformers, as Unsloth requires\n"
              "import distill, transformers\n"
              "print('torch', torch.__version__, '| transformers', transformers.__version__, '| distill', distill.__version__,\n"
              "      'from', os.path.dirname(distill.__file__))\n"
              "if torch.cuda.is_available():\n"
              "    gpu = torch.cuda.get_device_properties(0)\n"
              "    print(f'GPU: {gpu.name}, {gpu.total_memory / 2**30:.1f} GB')\n"
              "else:\n"
              "    print('no CUDA GPU: training on the CPU (a test run, not Colab)')", "gpu"),
        _md("## Settings"),
        _code(settings_source(overrides), "settings"),
        _md("## What is trained on\n\nOne training example as the model sees it, and the part the loss is on: "
            "the assistant's answer only (every other token is masked with -100)."),
        _code("from pathlib import Path\n"
              "from distill.train.data import load_split, tokenize_example, training_chat_template\n"
              "from distill.train.models import load_tokenizer, resolve_model\n"
              "_tok = load_tokenizer(resolve_model(cfg.model_name))\n"
              "_row = load_split(Path(DATASET_DIR) / 'train.jsonl', cfg.reasoning)[0]\n"
              "_ex = tokenize_example(_tok, training_chat_template(_tok), _row['messages'], cfg.max_seq_length)\n"
              "print('--- whole example:\\n' + _tok.decode(_ex['input_ids']))\n"
              "print('--- trained on (labels != -100):\\n' + _tok.decode([t for t in _ex['labels'] if t != -100]))",
              "masked"),
        _md("## Train\n\nLoss on the assistant turn only; validation loss on `val.jsonl`; a checkpoint every "
            "`save_steps` updates in `output_dir` (Drive), resumed from by a re-run. The adapter, `history.json` "
            "and `loss.png` are saved before the export starts."),
        _code("if torch.cuda.is_available():\n"
              "    torch.cuda.reset_peak_memory_stats()\n"
              "    start_gb = torch.cuda.max_memory_reserved() / 2**30\n"
              "    print(f'GPU memory reserved before training: {start_gb:.2f} GB')\n"
              "from distill.train.core import ExportError, run\n"
              "try:\n"
              "    result = run(cfg)\n"
              "except ExportError as exc:  # training is saved; only the export failed\n"
              "    result = exc.result\n"
              "    print(f'EXPORT FAILED: {exc}', file=sys.stderr)\n"
              "if torch.cuda.is_available():\n"
              "    peak_gb = torch.cuda.max_memory_reserved() / 2**30\n"
              "    print(f'GPU memory reserved at peak: {peak_gb:.2f} GB ({peak_gb - start_gb:.2f} GB for training)')\n"
              "result['metrics']", "train"),
        _md("## Try it\n\nThe model that was just trained, still in memory (on the GPU on Colab), with the saved "
            "training prompt. The answer streams as it is generated; then a JSON check on a few test rows."),
        _code("from transformers import TextStreamer\n"
              "from distill.io import read_jsonl\n"
              "from distill.train.core import inference_test\n"
              "from distill.train.data import render_prompt\n"
              "model, tok = result['model'], result['tokenizer']\n"
              "if result['backend'] == 'unsloth':\n"
              "    from unsloth import FastLanguageModel\n"
              "    FastLanguageModel.for_inference(model)\n"
              "split = next(s for s in ('test', 'val', 'train') if os.path.exists(os.path.join(DATASET_DIR, s + '.jsonl')))\n"
              "rows = read_jsonl(os.path.join(DATASET_DIR, split + '.jsonl'))\n"
              "enc = tok(render_prompt(tok, rows[0]['messages'], tok.chat_template), return_tensors='pt',\n"
              "          add_special_tokens=False).to(model.device)\n"
              "_ = model.generate(**enc, streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),\n"
              "                   max_new_tokens=512, do_sample=False, eos_token_id=tok.eos_token_id,\n"
              "                   pad_token_id=tok.pad_token_id)\n"
              "checks = inference_test(model, tok, rows, 3, tok.chat_template)\n"
              "print(f\"JSON parses: {sum(c['json_ok'] for c in checks)}/{len(checks)} {split} rows\")", "try"),
        _md("## Save\n\nEverything is already in `cfg.save_dir` (Drive on Colab): adapter, `distill_config.json`, "
            "`history.json`, `loss.png`, and `gguf/` with the GGUF and an Ollama `Modelfile` "
            "(`ollama create student -f Modelfile`). With `HF_REPO` set, the adapter folder goes to the Hub and "
            "the GGUF to `<HF_REPO>-GGUF` (`push_to_hub_gguf`). The token is read from Colab's secrets "
            "(key icon, name `HF_TOKEN`, write access) or asked for."),
        _code("HF_TOKEN = None\n"
              "if IN_COLAB and HF_REPO:\n"
              "    try:\n"
              "        from google.colab import userdata\n"
              "        HF_TOKEN = userdata.get('HF_TOKEN')\n"
              "    except Exception:  # no secret set or access not granted\n"
              "        from getpass import getpass\n"
              "        HF_TOKEN = getpass('Hugging Face token (write access): ')", "token"),
        _code("print('saved in', result['save_dir'])\n"
              "print(sorted(os.listdir(result['save_dir'])))\n"
              "print('GGUF:', result['gguf'], '| export error:', result['metrics'].get('export_error'))\n"
              "if HF_REPO and HF_TOKEN:\n"
              "    from huggingface_hub import HfApi\n"
              "    api = HfApi(token=HF_TOKEN)\n"
              "    api.create_repo(HF_REPO, exist_ok=True, private=True)\n"
              "    api.upload_folder(repo_id=HF_REPO, folder_path=result['save_dir'], ignore_patterns=['gguf/*', 'merged/*'])\n"
              "    if result['gguf'] and result['backend'] == 'unsloth':\n"
              "        model.push_to_hub_gguf(HF_REPO + '-GGUF', tok, quantization_method=cfg.gguf_quantization.lower(),\n"
              "                               token=HF_TOKEN, private=True)\n"
              "    print('pushed to https://huggingface.co/' + HF_REPO)", "save"),
    ]
    return {
        "cells": cells,
        "metadata": {
            "accelerator": "GPU",
            "colab": {"provenance": [], "gpuType": "T4"},
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(nb: dict) -> str:
    # Cell ids make nbformat happy and stay stable between generations.
    for i, c in enumerate(nb["cells"]):
        c["id"] = f"cell-{i:02d}"
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def build_wheel(out_dir: Path) -> Path:
    """Build distill-<version>-py3-none-any.whl into out_dir from a clean copy of the package (no network
    when setuptools is installed; the source tree gets no build/ or egg-info)."""
    import importlib.util

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distill-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for path in [ROOT / "pyproject.toml", ROOT / "README.md", *sorted(ROOT.glob("requirements*.txt"))]:
            shutil.copy2(path, src / path.name)  # pyproject.toml reads the dependencies and extras from these
        shutil.copytree(ROOT / "distill", src / "distill", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
        built = Path(tmp) / "wheel"
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(built),
                               str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"make_notebook: building the wheel failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        wheel = next(built.glob("distill-*.whl"))
        dest = out_dir / wheel.name
        shutil.copy2(wheel, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if finetune.ipynb differs from the generator")
    p.add_argument("--output", type=Path, default=NOTEBOOK, help="where to write the notebook")
    p.add_argument("--wheel", type=Path, default=None, metavar="DIR",
                   help="also build the distill wheel the notebook installs into DIR (upload it with the dataset)")
    args = p.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/make_notebook.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    from distill.io import atomic_write_text

    atomic_write_text(args.output, text)
    print(f"wrote {args.output} ({len(build()['cells'])} cells)")
    if args.wheel is not None:
        print(f"wrote {build_wheel(args.wheel)} (upload it to the notebook with the dataset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
