"""GGUF export through llama.cpp's own converter, offline, and a load-back check.

The converter (convert_hf_to_gguf.py with its matching gguf-py) and the compiled
llama-quantize / llama-server come from llama.cpp as shipped in a PyPI package; where they
are is :mod:`distill.llamacpp`'s business. Nothing is cloned or built at run time.

F16, BF16 and Q8_0 are written by the converter directly; k-quants (Q4_K_M) are made
from an F16 file by llama-quantize. Every export is loaded back into llama-server and
must answer a prompt rendered with the training chat template.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from distill.io import StageError

DIRECT = {"F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
QUANTIZED = {"Q4_K_M"}


def _llamacpp():
    try:
        from distill import llamacpp
    except ImportError as exc:
        raise StageError("GGUF export needs llama.cpp's tools (distill.llamacpp): run scripts/setup.sh") from exc
    return llamacpp


def export_gguf(model_dir: str | Path, out_dir: str | Path, quant: str = "Q8_0", name: str | None = None) -> Path:
    """Convert a merged HF folder (safetensors + tokenizer) to ``out_dir/<name>-<quant>.gguf``."""
    quant = quant.upper()
    if quant not in DIRECT and quant not in QUANTIZED:
        raise StageError(f"--gguf-quantization {quant}: supported are {', '.join([*DIRECT, *QUANTIZED])}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or "model"
    dest = out_dir / f"{name}-{quant}.gguf"
    L = _llamacpp()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".gguf-") as tmp:
        first = Path(tmp) / f"{name}-{'F16' if quant in QUANTIZED else quant}.gguf"
        L.convert_hf_to_gguf(model_dir, first, outtype=DIRECT.get(quant, "f16"))
        if quant in QUANTIZED:
            second = Path(tmp) / dest.name
            L.quantize(first, second, quant)
            first = second
        os.replace(first, dest)
    print(f"GGUF {quant}: {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


def llama_server_available() -> bool:
    try:
        _llamacpp().find_server()
        return True
    except StageError:
        return False


def check_gguf(gguf: str | Path, messages: list[dict], template_tok=None, max_tokens: int = 64) -> str:
    """Load the GGUF into llama-server and ask it one prompt; a GGUF that cannot answer is an error.

    With ``template_tok`` (the training tokenizer) the prompt is rendered by the training chat
    template and sent as raw text to /completion, so it is the exact training prompt.
    """
    import httpx

    L = _llamacpp()
    if template_tok is not None:
        from distill.train.data import render_prompt

        prompt = render_prompt(template_tok, messages, template_tok.chat_template)
    else:
        prompt = "\n".join(m["content"] for m in messages if m["role"] != "assistant")
    with L.LlamaServer(Path(gguf)) as server:
        r = httpx.post(f"{server.url}/completion", json={"prompt": prompt, "n_predict": max_tokens,
                                                          "temperature": 0, "cache_prompt": False}, timeout=300)
        if r.status_code != 200:
            raise StageError(f"{gguf}: llama-server refused the test prompt ({r.status_code}: {r.text[:300]})")
        body = r.json()
    text = body.get("content", "")
    n = body.get("tokens_predicted", len(text))
    if not n:
        raise StageError(f"{gguf}: llama-server loaded the GGUF but generated nothing")
    print(f"GGUF check: llama-server answered {n} tokens: {text[:120]!r}")
    return text


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in os.environ for the block, then restore what was there (an exporter reads it)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def export_gguf_preferring(native: Callable[[Path], None] | None, merged_dir: str | Path, out_dir: str | Path,
                           quant: str, *, why_not: str | None = None, env: dict[str, str] | None = None,
                           who: str = "Unsloth") -> Path:
    """A training library's own GGUF exporter (``native(out_dir)``), else llama.cpp's converter.

    The converter on the merged folder is used when ``native`` is None (``why_not`` says why),
    raises, or writes no ``.gguf``; each fallback prints one ``note:`` line with the reason,
    so a run never switches exporters silently. ``env`` is set only while ``native`` runs.
    """
    out_dir = Path(out_dir)
    if native is not None:
        try:
            with environment(env or {}):
                native(out_dir)
            found = sorted(out_dir.rglob("*.gguf"), key=lambda p: p.stat().st_mtime)
            if found:
                # Unsloth leaves its merged copy next to the GGUF; the merged model lives in merged/.
                for extra in out_dir.iterdir():
                    if extra.is_dir():
                        shutil.rmtree(extra, ignore_errors=True)
                return found[-1]
            why_not = "wrote no .gguf"
        except Exception as exc:  # noqa: BLE001 - fall back to the converter we control
            why_not = f"failed ({type(exc).__name__}: {str(exc)[:200]})"
    print(f"note: {who}'s GGUF exporter not used: {why_not or 'not available'}; exporting with llama.cpp's "
          f"converter from {merged_dir}", file=sys.stderr)
    return export_gguf(merged_dir, out_dir, quant)


def unsloth_env() -> dict[str, str] | None:
    """Environment for Unsloth's offline exporter (our llama.cpp folder), or None when it is missing."""
    try:
        return _llamacpp().unsloth_env()
    except StageError:
        return None


def _main(argv: list[str] | None = None) -> int:
    """python -m distill.export MODEL_DIR OUT_DIR [QUANT]: convert a merged folder by hand."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(_main.__doc__)
        return 2
    try:
        export_gguf(argv[0], argv[1], argv[2] if len(argv) > 2 else "Q8_0")
    except (StageError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
