"""What a ``--model`` value means: parsed once, here, for 07, 08, distill.chain and the benches.

:func:`parse_model` turns the value into a :class:`ModelSpec` of one kind:

  chain    a folder with ``chain.json`` (distill.chain): several trained steps run one after another
  openai   ``openai:http://host:port/v1`` (+ ``--model-id``): any OpenAI-compatible server
  gguf     a ``.gguf`` file: a llama.cpp server started for the run; a training config next to it
           (the GGUF's folder or the two above it, where 05 writes ``gguf/``) makes it a student
  trained  a folder with ``distill_config.json`` (05's ``--save-dir`` or its ``merged/``): transformers
  base     anything else (a hub id, a Hugging Face folder): a base model through transformers

The spec knows the training config (``config_path`` / :meth:`ModelSpec.config`), a default run name
and concurrency, and a fingerprint of the weights for resumable runs. Which code opens each kind is
:data:`OPENERS` ("module:function", imported only when that kind is opened), so this module imports
nothing heavy and :mod:`distill.infer` never imports :mod:`distill.chain` (which runs its steps
through infer). Standard library and distill.io only: the training install imports it too.
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .io import StageError, stable_hash

DISTILL_CONFIG = "distill_config.json"   # the prompt, chat template and settings of a training run (05)
CHAIN_FILE = "chain.json"                # a finished chain folder (distill.chain)
KINDS = ("chain", "openai", "gguf", "trained", "base")

# kind -> "module:function" with load_predictor's keyword signature; imported when that kind is opened.
OPENERS = {
    "chain": "distill.chain:load_chain_predictor",
    "openai": "distill.infer:load_openai",
    "gguf": "distill.infer:load_gguf",
    "trained": "distill.infer:load_hf",
    "base": "distill.infer:load_hf",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_WEIGHT_NAMES = (DISTILL_CONFIG, "adapter_config.json", "config.json", CHAIN_FILE)


def find_training_config(path: str | Path) -> Path | None:
    """distill_config.json for a trained folder, a merged/ folder, or a GGUF inside <save-dir>/gguf/."""
    p = Path(path)
    start = p if p.is_dir() else p.parent
    for d in (start, start.parent, start.parent.parent):
        if (d / DISTILL_CONFIG).is_file():
            return d / DISTILL_CONFIG
    return None


def load_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: unreadable training config ({exc})") from exc


def is_chain_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CHAIN_FILE).is_file()


@dataclass(frozen=True)
class ModelSpec:
    value: str                      # the --model value as given
    kind: str                       # one of KINDS
    model_id: str | None = None     # --model-id (openai: models)

    @property
    def path(self) -> Path | None:
        return None if self.kind == "openai" else Path(self.value)

    @property
    def url(self) -> str | None:
        return self.value[len("openai:"):] if self.kind == "openai" else None

    @property
    def config_path(self) -> Path | None:
        """The training config this model was trained with (None: a base model, a server, a chain)."""
        if self.kind == "trained":
            return Path(self.value) / DISTILL_CONFIG
        if self.kind == "gguf":
            return find_training_config(self.value)
        return None

    def config(self) -> dict | None:
        return load_config(self.config_path) if self.config_path is not None else None

    @property
    def default_name(self) -> str:
        """A short run label: folder name, GGUF stem, or the served model id."""
        if self.kind == "openai":
            return re.sub(r"[^\w.-]+", "-", self.model_id or "openai").strip("-") or "openai"
        p = Path(self.value.rstrip("/"))
        name = p.stem if self.kind == "gguf" else p.name
        return re.sub(r"[^\w.-]+", "-", name).strip("-") or "model"

    @property
    def default_concurrency(self) -> int:
        """Requests in flight (openai:), llama-server slots (gguf) or batch size (transformers)."""
        return {"openai": 4, "gguf": 2}.get(self.kind, 1)

    def fingerprint(self) -> str:
        """Changes when the weights behind the value change (re-training into the same folder re-evaluates)."""
        if self.kind == "openai":
            return stable_hash(self.value, self.model_id)
        p = Path(self.value)
        files = [p] if p.is_file() else sorted(
            f for f in p.glob("*") if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in _WEIGHT_NAMES)
        ) if p.is_dir() else []
        return stable_hash(self.value, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])

    def opener(self) -> Callable:
        """The function that opens this kind as a Predictor (see :data:`OPENERS`)."""
        module, _, fn = OPENERS[self.kind].partition(":")
        return getattr(importlib.import_module(module), fn)


def parse_model(value: str | Path, model_id: str | None = None) -> ModelSpec:
    """A ``--model`` value as a :class:`ModelSpec`; a value that cannot be a model is a one-line error."""
    value = str(value)
    if not value.strip():
        raise StageError("--model is empty: give a trained folder, a .gguf file or openai:URL")
    if value.startswith("openai:"):
        if not value[len("openai:"):].startswith(("http://", "https://")):
            raise StageError(f"--model {value}: expected openai:http://host:port/v1")
        return ModelSpec(value, "openai", model_id)
    if is_chain_dir(value):
        return ModelSpec(value, "chain")
    if value.endswith(".gguf"):
        return ModelSpec(value, "gguf")
    p = Path(value)
    if p.exists() and not p.is_dir():
        raise StageError(f"--model {value}: expected a folder, a .gguf file or openai:URL")
    return ModelSpec(value, "trained" if (p / DISTILL_CONFIG).is_file() else "base")
