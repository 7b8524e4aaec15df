"""07_evaluate.py end to end: against the fault-injecting OpenAI server (faults, resume, compare)
and on a tiny trained model (a real LoRA adapter from 05, real transformers generation)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.io import write_jsonl, write_manifest
from distill.tasks import load_task
from fake_openai_server import FakeOpenAIServer, error, reply
from fake_teacher import recipe_label, recipe_post

ROOT = Path(__file__).resolve().parent.parent
RECIPE = load_task("recipe")
STYLES = ["minimal_organized", "chaotic_unstructured"]

_spec = importlib.util.spec_from_file_location("evaluate07", ROOT / "07_evaluate.py")
evaluate07 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate07)


def make_dataset(d: Path, n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        rec = {"name": f"Cake number {i}", "ingredients": [f"{i + 1} cups flour", "2 eggs", f"{i + 2} tbsp butter"],
               "prep_minutes": 10 + i, "cook_minutes": 30, "total_minutes": 40 + i, "servings": 4}
        style = STYLES[i % 2]
        text = recipe_post(rec, style)
        rows.append({"messages": RECIPE.student_messages(text) + [
                         {"role": "assistant", "content": json.dumps(recipe_label(text))}],
                     "id": f"ex{i}", "source_id": f"src{i}", "style": style, "task": "recipe",
                     "reference": recipe_label(text), "text": text, "source": rec})
    write_jsonl(d / "test.jsonl", rows)
    write_jsonl(d / "train.jsonl", rows[:1])
    write_manifest(d, "04_build_dataset", {}, {"test": n}, task="recipe",
                   system_prompt=RECIPE.student_system_prompt, user_template=RECIPE.student_user_template)
    return rows


class Student:
    """An oracle student with a few failure modes chosen by the input text."""

    def __init__(self, rows, broken=(), refuse=()):
        self.by_text = {r["text"]: r for r in rows}
        self.cases = {json.loads(line)["text"]: json.loads(line) for line in
                      RECIPE.adversarial_path.read_text().splitlines() if line.strip()}
        self.broken, self.refuse = set(broken), set(refuse)

    def __call__(self, body):
        text = body["messages"][-1]["content"].split("\n\n", 1)[1]
        if text in self.cases:
            case = self.cases[text]
            if case["kind"] == "no_recipe" and case["id"] != "no-recipe-request":
                return "null"
            return json.dumps(case["reference"])
        row = self.by_text[text]
        if row["id"] in self.refuse:
            return error(400, "context length exceeded")   # a failed request, not a model answer
        if row["id"] in self.broken:
            return "Sorry, I cannot find a recipe in this text."
        return reply(f"<think>\nthe title is first\n</think>\n{json.dumps(row['reference'])}")


def run07(*args):
    return evaluate07.main([str(a) for a in args])


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "ds"
    return d, make_dataset(d)


def chat_requests(srv):
    return sum(p.startswith("POST") for p in srv.paths)


def test_fake_server_end_to_end(tmp_path, dataset, capsys):
    ds, rows = dataset
    out = tmp_path / "reports" / "student"
    student = Student(rows, broken={"ex1"}, refuse={"ex2"})
    with FakeOpenAIServer(student, slots=2) as srv:
        srv.push(error(503))   # a transient fault: retried, invisible in the scores
        common = ["--model", f"openai:{srv.url}", "--model-id", "fake-model", "--dataset-dir", ds,
                  "--output-dir", out, "--name", "student", "--concurrency", 3, "--no-progress"]
        assert run07(*common, "--task", "recipe") == 0
        captured = capsys.readouterr()
        assert "1 inputs have no prediction" in captured.err and "http_400" in captured.err
        ev = json.loads((out / "eval.json").read_text())
        # 6 test rows + 8 adversarial cases sent; ex2 refused (400, not retried); 503 retried once
        assert chat_requests(srv) == 6 + 8 + 1
        assert srv.max_active <= 2
        assert ev["missing_predictions"] == 1 and ev["request_failures"] == {"http_400": 1}
        a = ev["aggregate"]
        assert a["n"] == 5 and a["json_valid"] == pytest.approx(4 / 5) and a["schema_valid"] == pytest.approx(4 / 5)
        assert a["score"] == pytest.approx(4 / 5) and a["parse_errors"] == {"no_json": 1}
        assert a["fields"]["recipeIngredient"]["f1"] == pytest.approx(4 / 5)
        assert a["hallucination_rate"] == 0.0 and set(a["by_style"]) == set(STYLES)
        assert ev["adversarial"]["n"] == 8 and ev["adversarial"]["passed"] == 8
        assert ev["adversarial"]["by_kind"]["no_recipe"] == {"n": 3, "passed": 3, "pass_rate": 1.0}
        # the rate is the split's: its 5 answers (the 8 cases are not inputs of the split)
        assert ev["throughput"]["generated"] == 5 and ev["throughput"]["per_min"] > 0
        # every request had the exact student prompt, greedy
        sent = srv.history[-1]
        assert sent["temperature"] == 0.0
        assert sent["messages"][0] == {"role": "system", "content": RECIPE.student_system_prompt}
        assert all(b["messages"][1]["content"].startswith("Extract the recipe from this text:\n\n")
                   for b in srv.history)
        assert "student" in captured.out and "recipeIngredient F1" in captured.out
        for f in ("eval.json", "report.md", "fields.png", "styles.png", "predictions.jsonl", "manifest.json"):
            assert (out / f).exists(), f
        assert "### Worst examples: student" in (out / "report.md").read_text()

        # Re-run after the server is fixed: only the failed request is sent again.
        student.refuse.clear()
        before = chat_requests(srv)
        assert run07(*common, "--task", "recipe") == 0
        assert chat_requests(srv) == before + 1
        ev = json.loads((out / "eval.json").read_text())
        assert ev["aggregate"]["n"] == 6 and ev["missing_predictions"] == 0

        # Nothing left: no request at all (the model is not even loaded).
        n_paths = len(srv.paths)
        assert run07(*common, "--task", "recipe") == 0
        assert len(srv.paths) == n_paths

        # A crash mid-write leaves a torn last line: it is redone, nothing else.
        pred_file = out / "predictions.jsonl"
        data = pred_file.read_bytes()
        pred_file.write_bytes(data[: len(data) - 40])
        before = chat_requests(srv)
        assert run07(*common, "--task", "recipe") == 0
        assert chat_requests(srv) == before + 1
        assert json.loads((out / "eval.json").read_text())["aggregate"]["n"] == 6

        # Another model (max_new_tokens is part of the key): everything runs again, into its own folder.
        base_out = tmp_path / "reports" / "base"
        srv.handler = lambda body: "I like cake."
        assert run07("--model", f"openai:{srv.url}", "--dataset-dir", ds, "--task", "recipe", "--name", "base",
                     "--output-dir", base_out, "--no-adversarial", "--limit", 2, "--no-progress") == 0
        base = json.loads((base_out / "eval.json").read_text())
        assert base["aggregate"]["n"] == 2 and base["aggregate"]["json_valid"] == 0.0
        assert set(base["aggregate"]["by_style"]) == set(STYLES)   # --limit spreads over styles
        assert base["adversarial"] is None
    capsys.readouterr()

    # --compare alone: one table from the saved runs, no server needed.
    cmp_out = tmp_path / "reports" / "comparison"
    assert run07("--compare", out, base_out, "--output-dir", cmp_out) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0].split()
    assert header == ["metric", "student", "base"]
    assert next(line for line in table.splitlines() if line.startswith("JSON valid")).split()[-2:] == ["83.3%", "0.0%"]
    md = (cmp_out / "report.md").read_text()
    assert "| metric | student | base |" in md and "## Adversarial cases" in md


def test_a_model_answering_nothing_scores_zero(tmp_path, dataset, capsys):
    """A model that answers {} to everything: valid JSON, overall 0 on a split with references,
    no parse errors, abstentions counted only where the reference is empty, and it passes
    exactly the adversarial cases that expect nothing."""
    ds, rows = dataset
    for r in rows[:2]:   # two references without times or yield: 4 empty fields each
        r["reference"] = dict(r["reference"], prepTime=None, cookTime=None, totalTime=None, recipeYield=None)
    write_jsonl(ds / "test.jsonl", rows)
    out = tmp_path / "nothing"
    with FakeOpenAIServer(lambda body: "{}") as srv:
        assert run07("--model", f"openai:{srv.url}", "--task", "recipe", "--dataset-dir", ds, "--output-dir", out,
                     "--no-progress") == 0
    ev = json.loads((out / "eval.json").read_text())
    a = ev["aggregate"]
    assert a["n"] == a["n_scored"] == 6 and a["score"] == 0.0
    assert a["json_valid"] == 1.0 and a["parse_errors"] == {}
    # 6 x 7 fields: 42 - 8 with a value, all omitted; the 8 empty ones all abstained
    assert a["outcomes"] == {"scored": 0, "omitted": 34, "hallucinated": 0, "abstained": 8, "invalid": 0}
    assert a["missing_rate"] == 1.0 and a["abstention_rate"] == 1.0 and a["spurious_rate"] == 0.0
    for name, f in a["fields"].items():
        assert f["score"] == 0.0 and f["exact"] == 0.0, name
    y = a["fields"]["recipeYield"]
    assert (y["n"], y["n_fields"], y["abstention_rate"]) == (4, 6, 1.0)
    assert a["fields"]["name"]["abstention_rate"] is None   # every reference has a name: nothing to abstain on
    assert all(e["score"] == 0.0 for e in ev["examples"])
    adv = ev["adversarial"]
    assert (adv["n"], adv["passed"]) == (8, 3) and adv["by_kind"]["no_recipe"]["pass_rate"] == 1.0
    assert adv["by_kind"]["missing_fields"]["passed"] == 0 and adv["by_kind"]["two_recipes"]["passed"] == 0
    table = capsys.readouterr().out
    assert next(line for line in table.splitlines() if line.startswith("overall score")).split()[-1] == "0.000"
    assert "6 examples scored" in table


def test_a_model_that_only_loops_scores_zero_and_passes_no_adversarial_case(tmp_path, dataset):
    """Every answer loops inside its title: the guard stops it and it closes to the answer that
    says nothing (schema-valid, stopped). It scores 0, and the no-recipe cases a {} model passes
    are failed: empty by accident is not an abstention."""
    ds, _ = dataset
    loop = '{"@context": "https://schema.org", "@type": "Recipe", "name": "' + "yum " * 100
    out = tmp_path / "loops"
    with FakeOpenAIServer(lambda body: loop) as srv:
        assert run07("--model", f"openai:{srv.url}", "--task", "recipe", "--dataset-dir", ds, "--output-dir", out,
                     "--no-progress") == 0
    ev = json.loads((out / "eval.json").read_text())
    a = ev["aggregate"]
    assert a["score"] == 0.0 and a["schema_valid"] == 1.0 and a["stopped_rate"] == 1.0
    assert (ev["adversarial"]["n"], ev["adversarial"]["passed"]) == (8, 0)
    report = (out / "report.md").read_text()
    assert "no-recipe-review (no_recipe): stopped (repetition) before it finished" in report


def test_nothing_to_score_is_an_error(tmp_path, dataset, capsys):
    """n=0 is an error: one clear line, exit 1, no eval.json (the saved predictions stay)."""
    ds, rows = dataset
    write_jsonl(ds / "test.jsonl", [r | {"reference": {k: None for k in r["reference"]}} for r in rows])
    out = tmp_path / "o"
    with FakeOpenAIServer(lambda body: "{}") as srv:
        assert run07("--model", f"openai:{srv.url}", "--task", "recipe", "--dataset-dir", ds, "--output-dir", out,
                     "--no-adversarial", "--no-progress") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: 07 ") and "test.jsonl: none of its 6 examples has a reference" in err[-1]
        assert not (out / "eval.json").exists() and not (out / "manifest.json").exists()
        assert len((out / "predictions.jsonl").read_text().splitlines()) == 6

        # every request failed: nothing scored either
        srv.handler = lambda body: error(400, "context length exceeded")
        rows = make_dataset(ds)
        assert run07("--model", f"openai:{srv.url}", "--task", "recipe", "--dataset-dir", ds, "--output-dir",
                     tmp_path / "o2", "--no-adversarial", "--no-progress") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert "no prediction for any of its 6 examples" in err[-1] and "http_400" in err[-1]
        assert not (tmp_path / "o2" / "eval.json").exists()

    # an empty split file
    write_jsonl(ds / "test.jsonl", [])
    assert run07("--model", "openai:http://127.0.0.1:9/v1", "--task", "recipe", "--dataset-dir", ds,
                 "--output-dir", tmp_path / "o3") == 1
    assert "test.jsonl is empty" in capsys.readouterr().err


def test_user_errors(tmp_path, dataset, capsys):
    ds, _ = dataset
    assert run07() == 1
    assert "give --model" in capsys.readouterr().err
    assert run07("--model", "openai:http://127.0.0.1:9/v1", "--task", "recipe", "--dataset-dir", tmp_path / "none") == 1
    assert "run 04_build_dataset.py first" in capsys.readouterr().err
    # a dataset of another task
    assert run07("--model", "openai:http://127.0.0.1:9/v1", "--dataset-dir", ds, "--task", "coffee_order",
                 "--output-dir", tmp_path / "o") == 1
    assert "task 'recipe'" in capsys.readouterr().err
    assert run07("--model", "openai:http://127.0.0.1:9/v1", "--dataset-dir", ds, "--split", "val",
                 "--output-dir", tmp_path / "o") == 1
    assert "val.jsonl not found" in capsys.readouterr().err
    assert run07("--compare", tmp_path / "missing") == 1
    assert "eval.json not found" in capsys.readouterr().err


def test_server_down_is_one_clear_error(tmp_path, dataset, capsys):
    from fake_openai_server import free_port

    ds, _ = dataset
    rc = run07("--model", f"openai:http://127.0.0.1:{free_port()}/v1", "--dataset-dir", ds, "--task", "recipe",
               "--output-dir", tmp_path / "o", "--no-progress")
    assert rc == 1 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "o" / "manifest.json").exists()


# ------------------------------------------------------------------ a tiny trained model

@pytest.mark.slow
def test_tiny_trained_model_end_to_end(tmp_path):
    """05 trains a real LoRA adapter on a tiny random Llama (real SmolLM2 tokenizer); 07 evaluates it."""
    from train_helpers import tiny_model_folder

    ds = tmp_path / "ds"
    make_dataset(ds, n=3)
    write_jsonl(ds / "train.jsonl", [json.loads(line) for line in (ds / "test.jsonl").read_text().splitlines()] * 2)
    tiny_model_folder(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    train = subprocess.run(
        [sys.executable, str(ROOT / "05_finetune.py"), "--dataset-dir", "ds", "--model-name", "tiny-llama",
         "--backend", "hf", "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps", "1",
         "--lora-rank", "4", "--max-seq-length", "512", "--optimizer", "adamw_torch", "--skip-inference-test",
         "--save-dir", "student", "--output-dir", "ckpt"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]

    args = [sys.executable, str(ROOT / "07_evaluate.py"), "--model", "student", "--dataset-dir", "ds",
            "--max-new-tokens", "8", "--concurrency", "2", "--no-progress"]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "reports" / "student"       # default: reports/<folder name>
    ev = json.loads((out / "eval.json").read_text())
    assert ev["task"] == "recipe" and ev["predictor"]["backend"] == "transformers"
    assert ev["predictor"]["kind"] == "adapter"
    # 8 tokens from a random model: no answer parses, every example and case scores 0
    assert ev["aggregate"]["n"] == 3 and ev["aggregate"]["json_valid"] == 0.0 and ev["aggregate"]["score"] == 0.0
    assert ev["adversarial"]["n"] == 8
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 11 and all(p["completion_tokens"] <= 8 for p in preds)
    assert {p["parse_error"] for p in preds} <= {"length", "no_json", "empty", "bad_json", "not_object"}
    assert "student" in r.stdout and "JSON valid" in r.stdout

    # resumed: nothing to generate, so the model is not loaded again
    r2 = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "running" not in r2.stdout
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 11


# ------------------------------------------------------------------ a real GGUF through llama.cpp

@pytest.mark.slow
def test_real_gguf_through_llama_cpp(tmp_path, capsys):
    """07 --model file.gguf: a llama-server is started for the run with the real SmolLM2-135M-Instruct GGUF
    (a base model here: its own chat template, the task's student prompt); real replies, every field
    scored; a re-run generates nothing and starts no server."""
    from distill.llamacpp import smollm2_gguf

    ds = tmp_path / "ds"
    make_dataset(ds, n=2)
    args = ["--model", smollm2_gguf(), "--task", "recipe", "--dataset-dir", ds, "--output-dir", tmp_path / "rep",
            "--max-new-tokens", 128, "--no-adversarial", "--no-progress"]
    assert run07(*args) == 0
    ev = json.loads((tmp_path / "rep" / "eval.json").read_text())
    assert ev["name"] == "SmolLM2-135M-Instruct.Q4_1" and ev["predictor"]["backend"] == "llama.cpp"
    assert ev["missing_predictions"] == 0 and ev["aggregate"]["n"] == 2 and ev["adversarial"] is None
    preds = [json.loads(line) for line in (tmp_path / "rep" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and all(0 < p["completion_tokens"] <= 128 for p in preds)
    for e in ev["examples"]:   # whatever the small model wrote, every field got a score
        assert set(e["fields"]) == {n for n, r in RECIPE.fields.items() if r.score}
        assert 0.0 <= e["score"] <= 1.0
    assert "SmolLM2-135M-Instruct.Q4_1" in capsys.readouterr().out
    mtime = (tmp_path / "rep" / "predictions.jsonl").stat().st_mtime_ns
    assert run07(*args) == 0
    assert "running" not in capsys.readouterr().out
    assert (tmp_path / "rep" / "predictions.jsonl").stat().st_mtime_ns == mtime
