"""08_extract.py and the shared inference code (distill/infer.py) through an OpenAI-compatible server.

The served model is the fault-injecting fake server answering like a student would, so
these tests check inputs, prompts, answer handling and the CLI contract quickly. The real
models (adapter, merged, GGUF through llama.cpp) are in tests/test_infer_models.py.
"""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from distill.documents import html_to_text, list_input_dir, output_names, read_document, read_stdin
from distill.infer import load_predictor
from distill.io import StageError
from distill.tasks import load_task
from fake_openai_server import FakeOpenAIServer, reply

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tasks" / "recipe" / "examples"
RECIPE = {"@context": "https://schema.org", "@type": "Recipe", "name": "Banana Bread",
          "recipeIngredient": ["3 bananas"], "recipeInstructions": [{"@type": "HowToStep", "text": "Bake."}]}


def _load_extract():
    spec = importlib.util.spec_from_file_location("extract08", ROOT / "08_extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


extract = _load_extract()


def student_handler(body: dict) -> str:
    """A well-behaved student: reasoning, then the recipe JSON."""
    return "<think>The title is in the first line.</think>\n" + json.dumps(RECIPE)


# ------------------------------------------------------------------ documents

def test_html_page_keeps_the_recipe_and_drops_json_ld_scripts_and_navigation():
    doc = read_document(EXAMPLES / "banana-bread.html")
    assert doc.kind == "html" and doc.name == "banana-bread"
    assert "3 very ripe bananas, mashed" in doc.text
    assert "Pour into the pan and bake for 1 hour" in doc.text
    assert "⅓ cup melted butter" in doc.text  # entities decoded
    for leaked in ("JSON-LD Banana Bread", "LEAKED INGREDIENT", "schema.org", "dataLayer", "font-family",
                   "querySelectorAll", "Home > Recipes"):
        assert leaked not in doc.text, leaked


def test_tiny_page_falls_back_to_whole_text_still_without_scripts():
    html = ('<html><head><script type="application/ld+json">{"name": "LEAK"}</script></head>'
            '<body><p>2 eggs, fry.</p></body></html>')
    text = html_to_text(html)
    assert "2 eggs, fry." in text and "LEAK" not in text


def test_text_and_markdown_pass_through_and_stdin_is_sniffed(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffLine one\r\nLine two\r\n".encode())
    (tmp_path / "b.md").write_text("# Pancakes\n\n- 2 eggs\n- milk\n")
    a, b = read_document(tmp_path / "a.txt"), read_document(tmp_path / "b.md")
    assert (a.kind, a.text) == ("text", "Line one\nLine two")
    assert (b.kind, b.text) == ("markdown", "# Pancakes\n\n- 2 eggs\n- milk")
    html_in = read_stdin(io.BytesIO((EXAMPLES / "banana-bread.html").read_bytes()))
    assert html_in.kind == "html" and html_in.name == "stdin" and "LEAKED INGREDIENT" not in html_in.text
    assert read_stdin(io.BytesIO(b"just <b>text</b> here")).kind == "text"


def test_directory_listing_and_clashing_stems(tmp_path):
    for rel in ("a.txt", "a.html", "sub/c.md", "notes.pdf", ".hidden.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    inputs, ignored = list_input_dir(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in inputs] == ["a.html", "a.txt", "sub/c.md"]
    assert [p.name for p in ignored] == ["notes.pdf"]
    names = output_names(inputs, tmp_path)
    assert sorted(names.values()) == ["a_html", "a_txt", "c"]
    with pytest.raises(StageError, match="not a folder"):
        list_input_dir(tmp_path / "a.txt")


# ------------------------------------------------------------------ predictor over openai:

def test_openai_predictor_sends_the_student_prompt_greedy_and_strips_reasoning():
    task = load_task("recipe")
    with FakeOpenAIServer(handler=student_handler) as srv:
        with load_predictor(f"openai:{srv.url}", model_id="student", task=task, concurrency=2,
                            max_new_tokens=300) as pred:
            out = pred.predict(["post one", "post two", "post three"], progress=False)
        bodies = srv.history
    assert [p.text for p in out] == ["post one", "post two", "post three"]  # input order kept
    for p in out:
        assert p.valid and p.output == RECIPE and p.reasoning == "The title is in the first line."
        assert p.answer == json.dumps(RECIPE) and "<think>" in p.raw and p.latency_s >= 0
    assert {b["messages"][1]["content"] for b in bodies} == {task.render_user(t) for t in
                                                            ("post one", "post two", "post three")}
    assert all(b["messages"][0]["content"] == task.student_system_prompt for b in bodies)
    assert all(b["temperature"] == 0 and b["max_tokens"] == 300 for b in bodies)
    # --constrain schema (the default): the task's schema goes as response_format
    assert all(b["response_format"]["json_schema"]["schema"] == task.schema for b in bodies)


def test_invalid_answers_are_reported_not_accepted():
    task = load_task("recipe")
    bad_schema = dict(RECIPE, prepTime="10 minutes")
    with FakeOpenAIServer() as srv:
        srv.push(reply(json.dumps(bad_schema)), reply("I cannot find a recipe."),
                 reply('{"@context": "https://schema.org", "name": "cut', finish_reason="length"))
        with load_predictor(f"openai:{srv.url}", model_id="m", task=task) as pred:
            a, b, c = pred.predict(["a", "b", "c"], progress=False)
    assert not a.valid and a.output == bad_schema and any("prepTime" in e for e in a.schema_errors)
    assert not b.valid and b.parse_error == "no_json" and b.output is None
    # Cut by the token limit: closed at its last complete field, the required ones it never reached
    # left empty; a result that says it was stopped.
    assert c.valid and c.stopped == "length" and c.output == {
        "@context": "https://schema.org", "@type": "Recipe", "name": None, "recipeIngredient": [],
        "recipeInstructions": []}


def test_long_input_keeps_its_head_within_the_context():
    task = load_task("recipe")
    text = "HEAD " + "filler words here " * 2000 + " TAIL"
    with FakeOpenAIServer(handler=student_handler) as srv:
        with load_predictor(f"openai:{srv.url}", model_id="m", task=task, context=1024, max_new_tokens=256) as pred:
            p = pred.predict([text], progress=False)[0]
        sent = srv.history[0]["messages"][1]["content"]
    assert p.truncated_input and p.valid and p.kept_chars < len(text)
    assert sent.startswith(task.render_user("HEAD")) and "TAIL" not in sent
    # The documented estimate: 3 characters per token for everything but the answer's room.
    assert len(sent) + len(task.student_system_prompt) <= (1024 - 256) * 3
    with pytest.raises(StageError, match="no room"):
        load_predictor("openai:http://127.0.0.1:9/v1", model_id="m", task=task, context=300, max_new_tokens=280)


def test_openai_needs_a_task_and_a_reachable_server():
    with pytest.raises(StageError, match="--task"):
        load_predictor("openai:http://127.0.0.1:9/v1")
    from fake_openai_server import free_port

    with pytest.raises(StageError, match="cannot reach"):
        load_predictor(f"openai:http://127.0.0.1:{free_port()}/v1", task=load_task("recipe"))


# ------------------------------------------------------------------ the 08 command

def test_cli_single_html_file_to_stdout_without_leaking_json_ld(capsys):
    with FakeOpenAIServer(handler=student_handler) as srv:
        rc = extract.main(["--model", f"openai:{srv.url}", "--model-id", "student", "--task", "recipe",
                           str(EXAMPLES / "banana-bread.html")])
        prompt = srv.history[0]["messages"][1]["content"]
    out = capsys.readouterr()
    assert rc == 0 and json.loads(out.out) == RECIPE  # JSON only: reasoning stripped
    assert "3 very ripe bananas" in prompt and "LEAKED INGREDIENT" not in prompt and "ld+json" not in prompt
    assert "extracted 1/1 valid" in out.err


def test_cli_stdin_and_keep_reasoning(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Pancakes: 2 eggs, milk. Fry.")))
    with FakeOpenAIServer(handler=student_handler) as srv:
        rc = extract.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--keep-reasoning", "-"])
        assert srv.history[0]["messages"][1]["content"].endswith("Pancakes: 2 eggs, milk. Fry.")
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("<think>The title is in the first line.</think>\n")
    assert json.loads(out.split("\n", 1)[1]) == RECIPE


def test_cli_directory_writes_per_input_reports_invalid_and_resumes(tmp_path, capsys):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "good.txt").write_text("Banana bread: 3 bananas. Bake.")
    (pages / "bad.md").write_text("# Not a recipe\n\nBAD")
    (pages / "page.html").write_bytes((EXAMPLES / "banana-bread.html").read_bytes())
    (pages / "empty.html").write_text("<html><body><script>x=1</script></body></html>")
    out = tmp_path / "extracted"

    def handler(body):
        return "no idea" if "BAD" in body["messages"][1]["content"] else student_handler(body)

    with FakeOpenAIServer(handler=handler) as srv:
        args = ["--model", f"openai:{srv.url}", "--task", "recipe", "--input-dir", str(pages),
                "--output-dir", str(out), "--concurrency", "2", "--keep-reasoning"]
        assert extract.main(args) == 2  # some inputs have no valid answer
        assert len(srv.history) == 3  # the empty page never reaches the model
        assert json.loads((out / "good.json").read_text()) == RECIPE
        assert json.loads((out / "page.json").read_text()) == RECIPE
        assert (out / "good.reasoning.txt").read_text() == "The title is in the first line.\n"
        assert not (out / "bad.json").exists()
        err = json.loads((out / "bad.error.json").read_text())
        assert err["parse_error"] == "no_json" and err["raw"] == "no idea"
        assert json.loads((out / "empty.error.json").read_text())["error"] == "empty_input"
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"] == {"inputs": 4, "skipped": 0, "empty": 1, "unreadable": 0, "valid": 2,
                                      "invalid": 1, "truncated": 0, "repaired": 0, "stopped": 0}

        # Re-run: finished inputs are skipped, the invalid one is retried (and now succeeds).
        srv.handler = student_handler
        assert extract.main(args) == 2  # the empty page still has nothing to extract
        assert len(srv.history) == 4
        assert (out / "bad.json").exists() and not (out / "bad.error.json").exists()

        # Another model into the same folder would mix results: refused unless --overwrite.
        capsys.readouterr()
        assert extract.main(args[:2] + ["--model-id", "other"] + args[2:]) == 1
        assert "another run" in capsys.readouterr().err


def test_cli_a_stopped_answer_is_written_closed_and_reported_as_stopped(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "long.txt").write_text("Banana bread: 3 bananas, 2 eggs. Bake.")
    cut = '{"@context": "https://schema.org", "@type": "Recipe", "name": "Banana Bread", "recipeIngredient": ["3 bananas", "2 e'
    out = tmp_path / "out"
    with FakeOpenAIServer() as srv:
        srv.push(reply(cut, finish_reason="length"))
        assert extract.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--input-dir", str(tmp_path / "in"),
                             "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert json.loads((out / "long.json").read_text()) == {
        "@context": "https://schema.org", "@type": "Recipe", "name": "Banana Bread",
        "recipeIngredient": ["3 bananas"], "recipeInstructions": []}
    assert "long.txt: stopped (length)" in err and "1 of them stopped" in err
    assert json.loads((out / "manifest.json").read_text())["counts"]["stopped"] == 1


def test_cli_usage_errors(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    assert extract.main(["--model", "openai:http://127.0.0.1:9/v1", str(tmp_path / "a.txt"),
                         str(tmp_path / "b.txt")]) == 1
    assert "--output-dir" in capsys.readouterr().err
    assert extract.main(["--model", "x", "--input-dir", str(tmp_path)]) == 1
    assert "--input-dir needs --output-dir" in capsys.readouterr().err
    assert extract.main(["--model", "x", str(tmp_path / "missing.txt")]) == 1
    assert "no such file" in capsys.readouterr().err
