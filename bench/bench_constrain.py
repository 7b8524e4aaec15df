#!/usr/bin/env python3
"""Which structured-generation library constrains the transformers backend: llguidance vs xgrammar.

Both are hooked into ``model.generate`` the same way (one matcher per answer, a token bitmask
applied to the logits each step, JSON in the training format: ``", "`` / ``": "``, one line)
and run on the recipe schema:

* correctness: the tiny random Llama of the tests (free decoding writes newlines forever);
  does the constrained answer parse and fit the schema within --max-new-tokens?
* speed: SmolLM2-135M-Instruct (real weights, base model with the student prompt), generated
  tokens per second free vs constrained, median over --repeats runs of each text.

xgrammar is not a project requirement: ``pip install xgrammar==0.2.8`` to run this.

Usage: python bench/bench_constrain.py [--max-new-tokens 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEXTS = ["Grandma's pancakes: mix 2 cups flour, 2 eggs, 1.5 cups milk and a pinch of salt. Fry in butter on "
         "medium heat, 2 minutes a side. Serves 4.",
         "Quick guacamole. 3 avocados, 1 lime, half an onion, salt. Mash everything with a fork. Takes 10 minutes."]


def processors(tok, vocab: int, schema: dict):
    """name -> factory of a fresh LogitsProcessor (one per generate call)."""
    import llguidance
    import llguidance.hf
    import llguidance.torch as lgt
    import xgrammar as xgr
    from transformers import LogitsProcessor

    t0 = time.perf_counter()
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)).compile_json_schema(
        json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
    setup = {"xgrammar": time.perf_counter() - t0}
    t0 = time.perf_counter()
    ll_tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema), defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
    setup["llguidance"] = time.perf_counter() - t0

    class XGR(LogitsProcessor):
        def __init__(self):
            self.m, self.bm, self.n = xgr.GrammarMatcher(compiled), xgr.allocate_token_bitmask(1, vocab), 0

        def __call__(self, ids, scores):
            if self.n:
                self.m.accept_token(int(ids[0, -1]))
            self.n += 1
            self.m.fill_next_token_bitmask(self.bm, 0)
            xgr.apply_token_bitmask_inplace(scores, self.bm)
            return scores

    class LLG(LogitsProcessor):
        def __init__(self):
            self.m, self.bm, self.n = llguidance.LLMatcher(ll_tok, grammar), lgt.allocate_token_bitmask(1, vocab), 0

        def __call__(self, ids, scores):
            if self.n:
                self.m.consume_token(int(ids[0, -1]))
            self.n += 1
            lgt.fill_next_token_bitmask(self.m, self.bm, 0)
            lgt.apply_token_bitmask_inplace(scores, self.bm)
            return scores

    return {"free": lambda: None, "xgrammar": XGR, "llguidance": LLG}, setup


def run(model_dir: str, schema: dict, max_new: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.labels import validate
    from distill.tasks import load_task
    from distill.train.data import render_prompt

    task = load_task("recipe")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    makers, setup = processors(tok, model.get_output_embeddings().weight.shape[0], schema)
    out: dict = {"setup_s": setup}
    for name, make in makers.items():
        speeds, valid, lengths = [], [], []
        for _ in range(repeats):
            for text in TEXTS:
                ids = tok(render_prompt(tok, task.student_messages(text), tok.chat_template),
                          add_special_tokens=False, return_tensors="pt")["input_ids"]
                proc = make()
                t0 = time.perf_counter()
                with torch.no_grad():
                    gen = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.eos_token_id, logits_processor=[proc] if proc else [])
                dt = time.perf_counter() - t0
                row = [t for t in gen[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
                speeds.append(len(row) / dt)
                lengths.append(len(row))
                try:
                    valid.append(not validate(json.loads(tok.decode(row, skip_special_tokens=True)), schema))
                except json.JSONDecodeError:
                    valid.append(False)
        out[name] = {"tok_s_median": round(statistics.median(speeds), 1), "schema_valid": f"{sum(valid)}/{len(valid)}",
                     "tokens_median": statistics.median(lengths)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    from distill.tasks import load_task

    helpers = runpy.run_path(str(ROOT / "tests" / "train_helpers.py"))  # tests/ is not a package
    smollm2_folder, tiny_model_folder = helpers["smollm2_folder"], helpers["tiny_model_folder"]

    torch.set_num_threads(1)  # the same CPU budget for every row
    schema = load_task("recipe").schema
    with tempfile.TemporaryDirectory() as d:
        tiny = run(str(tiny_model_folder(Path(d))), schema, args.max_new_tokens, 1)
    smol = run(smollm2_folder(), schema, args.max_new_tokens, args.repeats)
    print(json.dumps({"tiny_random_llama": tiny, "smollm2_135m": smol}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
