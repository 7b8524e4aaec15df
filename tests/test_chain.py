"""The chained coffee task trained for real on a tiny model: step 1, its generated outputs, step 2 on
those outputs, then the whole chain evaluated end to end (07) with the price validation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.chain import ChainPredictor, chain_task_for, step_rows, step_target
from distill.io import StageError, read_jsonl
from distill.scoring import aggregate, score_example
from distill.tasks import load_task
from fake_openai_server import FakeOpenAIServer
from fake_teacher import OracleTeacher
from task_oracles import coffee_label, coffee_post
from test_tasks_shipped import run_02_04
from train_helpers import tiny_model_folder

ROOT = Path(__file__).resolve().parent.parent


def run_script(script, args, cwd, timeout=900):
    # Offline explicitly: the module-scoped fixture runs before conftest's per-test environment.
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline")
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


TINY = ["--backend", "hf", "--max-steps", "2", "--batch-size", "2",
        "--gradient-accumulation-steps", "1", "--lora-rank", "4", "--max-seq-length", "640",
        "--learning-rate", "5e-3", "--optimizer", "adamw_torch", "--skip-inference-test", "--seed", "7",
        "--chain-max-new-tokens", "24"]


@pytest.fixture(scope="module")
def coffee_chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    with FakeOpenAIServer(OracleTeacher(write=coffee_post, label=coffee_label), slots=3) as srv:
        _, _, ds = run_02_04(srv, "coffee_order", d, limit=16, split="0.5,0.25,0.25")
    # An absolute model path: the saved steps are loaded again from other working directories.
    model = str(tiny_model_folder(d).resolve())
    r = run_script("05_finetune.py", ["--dataset-dir", str(ds), "--save-dir", "chain", "--output-dir", "ckpt",
                                      "--model-name", model, *TINY], d)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d, ds, d / "chain", r.stdout + r.stderr


@pytest.mark.slow
def test_chain_trains_step_two_on_step_one_outputs(coffee_chain):
    d, ds, chain_dir, log = coffee_chain
    task = load_task("coffee_order")
    chain = json.loads((chain_dir / "chain.json").read_text())
    assert [s["name"] for s in chain["steps"]] == ["simplify", "structure"]
    assert "chain: step 1/2 simplify: training" in log and "chain: step 2/2 structure: training" in log
    for i, st in enumerate(chain["steps"]):
        dcfg = json.loads((chain_dir / st["dir"] / "distill_config.json").read_text())
        assert dcfg["system_prompt"] == task.steps[i].system_prompt  # inference uses the step's own prompt
        assert dcfg["user_template"] == task.steps[i].user_template
        assert (chain_dir / st["dir"] / "adapter_model.safetensors").exists()

    train = {r["id"]: r for r in read_jsonl(ds / "train.jsonl")}
    s1 = read_jsonl(chain_dir / "data" / "step1-simplify" / "train.jsonl")
    assert len(s1) == len(train)
    for r in s1:  # step 1 learns the rendered clean list of the verified label
        assert r["messages"][2]["content"] == task.steps[0].render_target(train[r["id"]]["reference"])
        assert r["messages"][1]["content"].endswith(train[r["id"]]["text"])

    generated = {g["id"]: g for g in read_jsonl(chain_dir / "data" / "step1-simplify.generated.jsonl")}
    assert {k for k, g in generated.items() if g["split"] == "train"} == set(train)
    s2 = read_jsonl(chain_dir / "data" / "step2-structure" / "train.jsonl")
    assert len(s2) == len(train)
    for r in s2:  # step 2's input is what step 1 generated, its target the label JSON
        g = generated[r["id"]]
        assert r["messages"][1]["content"] == task.steps[1].user_template.replace("{text}", g["generated"])
        assert json.loads(r["messages"][2]["content"]) == train[r["id"]]["reference"]
    # A two-update random model does not reproduce the targets: step 2 really sees step 1's errors.
    assert any(g["generated"] != g["target"] for g in generated.values())

    # The generated inputs are what the saved step 1 produces now (greedy, same prompt).
    from distill.infer import load_predictor

    some = [g for g in generated.values() if g["split"] == "train"][:2]
    with load_predictor(str(chain_dir / "step1-simplify"), max_new_tokens=24) as pred:
        again = pred.predict([g["input"] for g in some], progress=False)
    assert [p.answer.strip() for p in again] == [g["generated"] for g in some]


@pytest.mark.slow
def test_chain_predictor_runs_end_to_end(coffee_chain):
    d, ds, chain_dir, _ = coffee_chain
    test = read_jsonl(ds / "test.jsonl")
    with ChainPredictor(chain_dir, max_new_tokens=32) as pred:
        preds = pred.predict([r["text"] for r in test], progress=False)
        assert len(pred.last_steps) == len(test) and all(len(s) == 1 for s in pred.last_steps)
    assert [p.text for p in preds] == [r["text"] for r in test]
    task = load_task("coffee_order")
    rep = aggregate([score_example(p.output, r["reference"], task, r["text"]) for p, r in zip(preds, test)],
                    task)["price_check"]
    assert rep["n"] == len(test) and set(rep) >= {"priced_rate", "consistent_rate", "correct_rate"}


@pytest.mark.slow
def test_rerun_reuses_trained_steps(coffee_chain):
    d, ds, chain_dir, _ = coffee_chain
    r = run_script("05_finetune.py", ["--dataset-dir", str(ds), "--save-dir", "chain", "--output-dir", "ckpt",
                                      "--model-name", str((d / "tiny-llama").resolve()), *TINY], d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("already trained on the same data, reused") == 2
    assert "outputs on the same inputs reused" in r.stdout
    assert (chain_dir / "chain.json").exists()


def test_chain_task_for_modes(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text(json.dumps({"stage": "04_build_dataset", "task": "coffee_order"}))
    assert chain_task_for(ds, "auto").name == "coffee_order"
    assert chain_task_for(ds, "off") is None
    (ds / "manifest.json").write_text(json.dumps({"stage": "04_build_dataset", "task": "recipe"}))
    assert chain_task_for(ds, "auto") is None
    with pytest.raises(StageError, match="not of a task with steps"):
        chain_task_for(ds, "on")


def test_step_rows_render_each_steps_target():
    task = load_task("coffee_order")
    ref = {"items": [{"name": "Mocha", "size": "large", "quantity": 2, "modifiers": ["whipped cream"]}],
           "total_price": 11.5, "not_on_menu": []}
    rows = [{"id": "a", "source_id": "s", "style": "x", "text": "two big mochas w/ cream", "reference": ref}]
    r1 = step_rows(task, 0, rows, {"a": "two big mochas w/ cream"})[0]
    assert r1["messages"][2]["content"] == "- 2 x Large Mocha - Whipped Cream"
    r2 = step_rows(task, 1, rows, {"a": "- 2 x Large Mocha - Whipped Cream"})[0]
    assert r2["messages"][1]["content"] == "Clean order list:\n\n- 2 x Large Mocha - Whipped Cream"
    assert json.loads(r2["messages"][2]["content"]) == ref == json.loads(step_target(task, 1, ref))
    assert step_rows(task, 1, rows, {}) == []  # an input step 1 produced nothing for is not invented


@pytest.mark.slow
def test_07_evaluates_the_chain_end_to_end(coffee_chain, tmp_path):
    """order -> simplified -> JSON against the reference, with the price validation and adversarial cases."""
    d, ds, chain_dir, _ = coffee_chain
    r = run_script("07_evaluate.py", ["--model", str(chain_dir), "--dataset-dir", str(ds), "--output-dir",
                                      str(tmp_path / "07"), "--max-new-tokens", "32", "--no-progress"], d)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ev = json.loads((tmp_path / "07" / "eval.json").read_text())
    assert ev["task"] == "coffee_order" and ev["predictor"]["backend"] == "chain"
    assert ev["aggregate"]["n"] == len(read_jsonl(ds / "test.jsonl")) and ev["missing_predictions"] == 0
    assert set(ev["aggregate"]["price_check"]) >= {"priced_rate", "consistent_rate", "correct_rate"}
    assert ev["adversarial"]["n"] == 4
    assert "total = reference" in (tmp_path / "07" / "report.md").read_text()
    # Re-running evaluates nothing again (predictions are keyed by the chain's fingerprint).
    r2 = run_script("07_evaluate.py", ["--model", str(chain_dir), "--dataset-dir", str(ds), "--output-dir",
                                       str(tmp_path / "07"), "--max-new-tokens", "32", "--no-progress"], d)
    assert r2.returncode == 0 and "running" not in r2.stdout
