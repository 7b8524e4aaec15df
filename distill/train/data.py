"""Chat JSONL loading (``--reasoning strip`` through distill.answers.drop_reasoning_block), training chat
templates and the label mask.

Loss goes on the assistant turn only. We render each conversation with the model
family's own chat template in a *training variant* that wraps the assistant turn in
``{% generation %}`` markers (TRL ships these for Gemma, Qwen, Llama, ...; SmolLM2's
ChatML template gets one here). The training variant must render exactly like the
original (checked), so the prompt at inference, rendered by :func:`render_prompt` with
the same saved template, is byte-identical to the prompt the model was trained on.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.answers import drop_reasoning_block
from distill.io import StageError, read_jsonl, read_manifest

# ChatML (SmolLM2, and Qwen-style templates without tools) with generation markers.
# The default system line is SmolLM2's; it only appears when a conversation has no system turn.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_PROBES = [
    [{"role": "system", "content": "Sys prompt."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "{\"a\": 1}"}],
    [{"role": "user", "content": "No system here"}, {"role": "assistant", "content": "ok"}],
]


def load_split(path: Path, reasoning: str = "keep") -> list[dict]:
    """Read one split; validate the chat shape; apply --reasoning. Errors name file and line."""
    rows = read_jsonl(path)
    out = []
    for i, row in enumerate(rows, 1):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise StageError(f"{path}: row {i} has no 'messages' list (expected chat rows from 04_build_dataset.py)")
        for m in msgs:
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise StageError(f"{path}: row {i}: each message needs role system/user/assistant and string content")
        if msgs[-1]["role"] != "assistant":
            raise StageError(f"{path}: row {i}: the last message must be the assistant's answer")
        if reasoning == "strip":
            msgs = [dict(m, content=drop_reasoning_block(m["content"])) if m["role"] == "assistant" else m for m in msgs]
        out.append(dict(row, messages=msgs))
    return out


@dataclass
class Dataset:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    manifest: dict = field(default_factory=dict)
    dir: Path = Path(".")


def check_dataset_dir(dataset_dir: str | Path) -> dict:
    """04's manifest of a dataset folder; a folder without one is refused.

    The manifest is written last, so without it the splits may be half-written, and it
    carries the task's prompts that training saves for 07 and 08. Cheap: 05 calls it
    before the slow backend import.
    """
    d = Path(dataset_dir)
    train_p = d / "train.jsonl"
    if not train_p.exists():
        raise StageError(f"{train_p} not found: run 04_build_dataset.py first, or pass --dataset-dir")
    m = read_manifest(d)
    if m is None or m.get("stage", "04_build_dataset") != "04_build_dataset":
        raise StageError(f"{d} has no manifest.json from 04_build_dataset.py: 04 did not finish there or did not "
                         f"write it; build the dataset with 04_build_dataset.py (or pass its --output-dir)")
    return m


def load_dataset_dir(dataset_dir: str | Path, reasoning: str = "keep", max_train: int = -1) -> Dataset:
    d = Path(dataset_dir)
    manifest = check_dataset_dir(d)
    train_p = d / "train.jsonl"
    train = load_split(train_p, reasoning)
    if not train:
        raise StageError(f"{train_p} is empty: nothing to train on")
    if max_train > 0:
        train = train[:max_train]
    val = load_split(d / "val.jsonl", reasoning) if (d / "val.jsonl").exists() else []
    test = load_split(d / "test.jsonl", reasoning) if (d / "test.jsonl").exists() else []
    return Dataset(train, val, test, manifest, d)


# ---------------------------------------------------------------- templates

def _render(tok, template: str, msgs: list[dict], **kw: Any) -> str:
    return tok.apply_chat_template(msgs, chat_template=template, tokenize=False, **kw)


def training_chat_template(tok) -> str:
    """A chat template with {% generation %} markers that renders exactly like ``tok``'s own."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    original = tok.chat_template
    if not original:
        raise StageError("the tokenizer has no chat template: use an instruct model (or a GGUF with one)")
    if has_generation_markers(original):
        return original
    candidate = None
    try:
        candidate = get_training_chat_template(tok)
    except ValueError:
        candidate = None
    if candidate is None and "<start_of_turn>" in original:
        # TRL picks its Gemma training template only for a byte-identical copy of the template;
        # a hub copy that differs in bytes (e.g. unsloth/gemma-3-270m-it's) gets it when it
        # renders the same, which the probes below check.
        import trl

        candidate = (Path(trl.__file__).parent / "chat_templates" / "gemma3_training.jinja").read_text()
    if candidate is None and "<|im_start|>" in original:
        default_system = SMOLLM_DEFAULT_SYSTEM
        m = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", original, re.DOTALL)
        if m:
            default_system = m.group(1)
        candidate = CHATML_TRAINING_TEMPLATE.replace("default_system", json.dumps(default_system))
    if candidate is None:
        raise StageError(
            "the model's chat template has no {% generation %} markers and no known training variant; "
            "assistant-only loss needs one (supported: Gemma, Qwen, Llama, ChatML/SmolLM)"
        )
    compared = 0
    for msgs in _PROBES:
        for kw in ({}, {"add_generation_prompt": True}):
            probe = msgs if not kw else msgs[:-1]
            try:
                a, b = _render(tok, original, probe, **kw), _render(tok, candidate, probe, **kw)
            except Exception:  # noqa: BLE001 - e.g. templates that require a system turn
                continue
            if a != b:
                raise StageError("the model's chat template renders differently from the training variant made "
                                 "for its family, so the prompt at inference would not be the trained one; "
                                 f"first difference on a probe conversation:\n{a[:300]!r}\nvs\n{b[:300]!r}")
            compared += 1
    if not compared:
        raise StageError("the model's chat template could not be rendered on a plain system/user/assistant "
                         "conversation: cannot check its training variant")
    return candidate


def render_prompt(tokenizer, messages: list[dict], chat_template: str | None = None) -> str:
    """The exact prompt the model saw in training, for messages without the assistant turn."""
    msgs = [m for m in messages if m["role"] != "assistant"]
    return tokenizer.apply_chat_template(
        msgs, chat_template=chat_template or tokenizer.chat_template, tokenize=False, add_generation_prompt=True
    )


def tokenize_example(tok, template: str, messages: list[dict], max_len: int) -> dict:
    """input_ids + labels (-100 everywhere but assistant tokens), truncated to max_len."""
    enc = tok.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, add_special_tokens=False,
    )
    ids = list(enc["input_ids"])
    mask = list(enc["assistant_masks"])
    ids, mask = ids[:max_len], mask[:max_len]
    labels = [t if m else -100 for t, m in zip(ids, mask)]
    return {"input_ids": ids, "labels": labels}


@dataclass
class Tokenized:
    rows: list[dict]
    n_total: int
    n_kept: int
    n_truncated: int      # longer than max_len: dropped (kept whole or not at all)
    supervised_tokens: int
    total_tokens: int


def tokenize_rows(tok, template: str, rows: list[dict], max_len: int, split: str = "train") -> Tokenized:
    """Rows tokenized for training; a row longer than ``max_len`` is dropped, never cut.

    Cutting a row cuts its answer (the answer is last): the model would learn answers that stop
    mid-list without their end-of-turn token, which is how a student learns never to stop. So a
    row is trained whole or not at all, and the count of dropped rows is reported."""
    out, truncated, sup, tot = [], 0, 0, 0
    for r in rows:
        ex = tokenize_example(tok, template, r["messages"], max_len + 1)
        if len(ex["input_ids"]) > max_len:
            truncated += 1
            continue
        n_sup = sum(1 for x in ex["labels"] if x != -100)
        if n_sup == 0:
            continue
        sup += n_sup
        tot += len(ex["input_ids"])
        out.append(ex)
    if rows and not out:
        raise StageError(
            f"no {split} example fits --max-seq-length {max_len} with its whole answer "
            f"({truncated} of {len(rows)} are longer): raise --max-seq-length"
        )
    return Tokenized(out, len(rows), len(out), truncated, sup, tot)
