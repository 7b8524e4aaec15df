"""Every bad input class of docs/bad-inputs.md, tried through the real scripts as a user would.

Server faults come from the fault-injecting fake server; each test checks the exit code, the
one line on stderr, and that nothing was lost or written where it must not be.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer, error, hang, raw
from fake_teacher import OracleTeacher

ROOT = Path(__file__).resolve().parent.parent
RECIPE = {"@context": "https://schema.org", "@type": "Recipe", "name": "Pancakes",
          "recipeIngredient": ["2 eggs"], "recipeInstructions": [{"@type": "HowToStep", "text": "Fry."}]}


def script(name):
    spec = importlib.util.spec_from_file_location("s" + name[:2], ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S01, S02, S03, S04, S05, S07, S08 = (script(n) for n in (
    "01_download_dataset.py", "02_generate_synthetic.py", "03_label_with_reasoning.py", "04_build_dataset.py",
    "05_finetune.py", "07_evaluate.py", "08_extract.py"))


def teacher_args(url, *extra):
    return ["--base-url", url, "--model", "teacher", "--retries", "0", "--timeout", "10", *extra]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Finished 01, 02, 03 and 04 folders of 6 sample records, written by the oracle teacher."""
    d = tmp_path_factory.mktemp("stages")
    with FakeOpenAIServer(OracleTeacher()) as srv:
        assert S01.main(["--sample", "--output-dir", str(d / "01")]) == 0
        assert S02.main(["--input", str(d / "01"), "--output-dir", str(d / "02"), "--limit", "6",
                         *teacher_args(srv.url)]) == 0
        assert S03.main(["--input-dir", str(d / "02"), "--output-dir", str(d / "03"), *teacher_args(srv.url)]) == 0
    assert S04.main(["--synthetic-dir", str(d / "02"), "--labeled-dir", str(d / "03"), "--output-dir", str(d / "04"),
                     "--split", "0.5,0.5"]) == 0
    return d


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ output folders

@pytest.mark.parametrize("stage", ["01", "02", "03", "04", "07", "08"])
def test_output_dir_that_is_a_file(stages, tmp_path, capsys, stage):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    with FakeOpenAIServer(OracleTeacher()) as srv:
        argv = {
            "01": (S01, ["--sample"]),
            "02": (S02, ["--input", str(stages / "01"), *teacher_args(srv.url)]),
            "03": (S03, ["--input-dir", str(stages / "02"), *teacher_args(srv.url)]),
            "04": (S04, ["--synthetic-dir", str(stages / "02"), "--labeled-dir", str(stages / "03")]),
            "07": (S07, ["--model", f"openai:{srv.url}", "--task", "recipe", "--dataset-dir", str(stages / "04")]),
            "08": (S08, ["--model", f"openai:{srv.url}", "--task", "recipe", str(ROOT / "README.md")]),
        }[stage]
        mod, args = argv
        assert mod.main([*args, "--output-dir", str(f)]) == 1
        assert srv.history == []
    assert "is a file, not a folder" in one_error_line(capsys)
    assert f.read_text() == "mine\n"


def test_03_output_dir_equal_to_its_input_dir_is_refused_and_02_files_stay(stages, tmp_path, capsys):
    before = snapshot(stages / "02")
    with FakeOpenAIServer(OracleTeacher()) as srv:
        rc = S03.main(["--input-dir", str(stages / "02"), "--output-dir", str(stages / "02"), *teacher_args(srv.url)])
        assert rc == 1 and srv.history == []
    assert "is this stage's input" in one_error_line(capsys)
    assert snapshot(stages / "02") == before


@pytest.mark.parametrize("case", ["02 into 01", "03 into 01", "04 into 03", "04 into 02"])
def test_a_stage_never_writes_into_another_stages_folder(stages, capsys, case):
    target = stages / case[-2:]
    before = snapshot(target)
    with FakeOpenAIServer(OracleTeacher()) as srv:
        mod, args = {
            "02": (S02, ["--input", str(stages / "01" / "records.jsonl"), *teacher_args(srv.url)]),
            "03": (S03, ["--input-dir", str(stages / "02"), *teacher_args(srv.url)]),
            "04": (S04, ["--synthetic-dir", str(stages / "02"), "--labeled-dir", str(stages / "03")]),
        }[case[:2]]
        assert mod.main([*args, "--output-dir", str(target)]) == 1
        assert srv.history == []
    line = one_error_line(capsys)
    assert any(w in line for w in ("holds the output of", "is this stage's input", "contains this stage's input"))
    assert snapshot(target) == before


def test_07_output_dir_equal_to_the_dataset_is_refused(stages, capsys):
    before = snapshot(stages / "04")
    with FakeOpenAIServer(lambda body: json.dumps(RECIPE)) as srv:
        assert S07.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--dataset-dir", str(stages / "04"),
                         "--output-dir", str(stages / "04"), "--no-adversarial"]) == 1
        assert srv.history == []
    assert "is this stage's input" in one_error_line(capsys)
    assert snapshot(stages / "04") == before


@pytest.mark.parametrize("where", ["the dataset", "a folder of the user's files"])
def test_05_save_dir_that_training_would_replace_is_refused(stages, tmp_path, capsys, where):
    target = stages / "04" if where == "the dataset" else tmp_path / "docs"
    if where != "the dataset":
        target.mkdir()
        (target / "thesis.tex").write_text("years of work\n")
    before = snapshot(target)
    assert S05.main(["--dataset-dir", str(stages / "04"), "--save-dir", str(target),
                     "--model-name", "no/such-model"]) == 1
    line = one_error_line(capsys)
    assert "--save-dir" in line and ("is this stage's input" in line or "did not write" in line)
    assert snapshot(target) == before


def test_08_output_dir_inside_its_input_dir_is_refused(tmp_path, capsys):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "a.txt").write_text("Pancakes: 2 eggs. Fry.\n")
    with FakeOpenAIServer(lambda body: json.dumps(RECIPE)) as srv:
        assert S08.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--input-dir", str(tmp_path / "pages"),
                         "--output-dir", str(tmp_path / "pages" / "out")]) == 1
        assert srv.history == []
    assert "inside this stage's input folder" in one_error_line(capsys)
    assert not (tmp_path / "pages" / "out").exists()


# ------------------------------------------------------------------ flags

@pytest.mark.parametrize("stage, flag, value, message", [
    ("01", "--limit", "-1", "must be 0 or more"),
    ("02", "--limit", "-1", "must be 0 or more"),
    ("02", "--skip", "-3", "must be 0 or more"),
    ("03", "--limit", "-1", "must be 0 or more"),
    ("03", "--skip", "-2", "must be 0 or more"),
    ("04", "--limit", "-1", "must be 0 or more"),
    ("07", "--limit", "-1", "must be 0 or more"),
    ("02", "--timeout", "-5", "must be a number of seconds above 0"),
    ("03", "--timeout", "0", "must be a number of seconds above 0"),
    ("02", "--concurrency", "0", "must be at least 1"),
    ("02", "--base-url", "localhost:1234/v1", "did you mean http://localhost:1234/v1"),
    ("03", "--base-url", "ftp://host/v1", "expected an http:// or https:// URL"),
])
def test_bad_flag_values_are_one_argparse_error(capsys, stage, flag, value, message):
    mod = {"01": S01, "02": S02, "03": S03, "04": S04, "07": S07}[stage]
    with pytest.raises(SystemExit) as ei:
        mod.main([flag, value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: " in err and message in err and "Traceback" not in err


def test_negative_skip_no_longer_takes_a_tail(stages, tmp_path):
    # Before: --skip -2 labelled the last 2 inputs and exited 0.
    with pytest.raises(SystemExit):
        S03.main(["--input-dir", str(stages / "02"), "--output-dir", str(tmp_path / "03"), "--skip", "-2"])
    assert not (tmp_path / "03").exists()


# ------------------------------------------------------------------ server faults

@pytest.mark.parametrize("body, why", [
    ({"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}, "finish_reason": "stop"}]},
     "message content is a int"),
    ({"choices": []}, "no choices"),
    ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "choices[0] has no message"),
])
def test_malformed_replies_are_failed_labels_and_an_all_failed_stage_exits_1(stages, tmp_path, capsys, body, why):
    with FakeOpenAIServer(lambda b: raw(body)) as srv:
        assert S03.main(["--input-dir", str(stages / "02"), "--output-dir", str(tmp_path / "03"),
                         *teacher_args(srv.url)]) == 1
    labels = [json.loads(p.read_text()) for p in (tmp_path / "03").glob("recipe-*.json")]
    assert len(labels) == 6 and all(l["verdict"] == "failed" and l["reason"] == "bad_response" for l in labels)
    assert all(why in l["detail"] for l in labels)
    assert one_error_line(capsys) == ("error: all 6 requests failed (bad_response 6); nothing new was written "
                                      f"(the failed labels in {tmp_path / '03'} say why; a re-run retries them)")


def test_some_malformed_replies_fail_only_their_items(stages, tmp_path):
    teacher = OracleTeacher()
    n = {"i": 0}

    def handler(body):
        n["i"] += 1
        return raw({"choices": []}) if n["i"] % 2 else teacher(body)

    with FakeOpenAIServer(handler) as srv:
        assert S03.main(["--input-dir", str(stages / "02"), "--output-dir", str(tmp_path / "03"),
                         *teacher_args(srv.url, "--concurrency", "1")]) == 0
    verdicts = sorted(json.loads(p.read_text())["verdict"] for p in (tmp_path / "03").glob("recipe-*.json"))
    assert verdicts == ["accepted"] * 3 + ["failed"] * 3


def test_02_all_requests_failing_exits_1_with_a_summary(stages, tmp_path, capsys):
    with FakeOpenAIServer(lambda b: error(503, "model is loading")) as srv:
        assert S02.main(["--input", str(stages / "01"), "--output-dir", str(tmp_path / "02"), "--limit", "3",
                         *teacher_args(srv.url)]) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: all 3 requests failed (http_503 3)") and "failures.jsonl" in line


def test_models_with_data_null_is_one_line(stages, tmp_path, capsys):
    with FakeOpenAIServer(models_body={"object": "list", "data": None}) as srv:
        assert S02.main(["--input", str(stages / "01"), "--output-dir", str(tmp_path / "02"),
                         "--base-url", srv.url, "--retries", "0"]) == 1
        assert srv.history == []
    assert "did not return an OpenAI model list" in one_error_line(capsys)


@pytest.mark.parametrize("open_models", [False, True])
def test_a_wrong_api_key_stops_the_stage_with_one_line(stages, tmp_path, capsys, open_models):
    with FakeOpenAIServer(OracleTeacher(), api_key="right", open_models=open_models) as srv:
        rc = S03.main(["--input-dir", str(stages / "02"), "--output-dir", str(tmp_path / "03"),
                       *teacher_args(srv.url, "--api-key", "wrong", "--concurrency", "1")])
        assert rc == 1 and len(srv.history) <= 2
    line = one_error_line(capsys)
    assert "http 401" in line and line.endswith("check --api-key (or OPENAI_API_KEY)")
    assert list((tmp_path / "03").glob("recipe-*.json")) == []  # no 'failed' label per item


# ------------------------------------------------------------------ stray files in stage folders

@pytest.mark.parametrize("content, why", [
    (bytes(range(256)) * 2, "not a UTF-8 text file"),
    (b"[1, 2, 3]", "expected a JSON object, got list"),
    (b'{"text": "half', "not valid JSON"),
])
def test_a_stray_file_in_a_stage_folder_is_named_not_a_traceback(stages, tmp_path, capsys, content, why):
    folder = tmp_path / "02"
    folder.mkdir()
    for p in (stages / "02").iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz-stray.json").write_bytes(content)
    with FakeOpenAIServer(OracleTeacher()) as srv:
        assert S03.main(["--input-dir", str(folder), "--output-dir", str(tmp_path / "03"),
                         *teacher_args(srv.url)]) == 1
        assert srv.history == []
    line = one_error_line(capsys)
    assert str(folder / "zz-stray.json") in line and why in line


def test_a_label_without_id_is_named(stages, tmp_path, capsys):
    labels = tmp_path / "03"
    labels.mkdir()
    for p in (stages / "03").iterdir():
        if p.is_file():
            (labels / p.name).write_bytes(p.read_bytes())
    victim = sorted(labels.glob("recipe-*.json"))[0]
    rec = json.loads(victim.read_text())
    del rec["id"]
    victim.write_text(json.dumps(rec))
    assert S04.main(["--synthetic-dir", str(stages / "02"), "--labeled-dir", str(labels),
                     "--output-dir", str(tmp_path / "04")]) == 1
    line = one_error_line(capsys)
    assert str(victim) in line and 'a label without an "id"' in line


# ------------------------------------------------------------------ 08 inputs

def test_08_binary_input_is_reported_and_never_sent(tmp_path, capsys):
    pdf = tmp_path / "scan.txt"
    pdf.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    noisy = tmp_path / "noise.md"
    noisy.write_bytes(bytes(range(1, 256)) * 16)  # no NUL bytes, but not text either
    good = tmp_path / "post.txt"
    good.write_text("Pancakes: 2 eggs. Fry.\n")
    out = tmp_path / "out"
    with FakeOpenAIServer(lambda body: json.dumps(RECIPE)) as srv:
        rc = S08.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--output-dir", str(out),
                       str(pdf), str(noisy), str(good)])
        assert rc == 2
        assert len(srv.history) == 1 and "Pancakes" in json.dumps(srv.history[0])  # only the text file
    err = capsys.readouterr().err
    assert f"{pdf}: not extracted: a binary file (it contains NUL bytes)" in err
    assert f"{noisy}: not extracted: a binary file" in err
    assert json.loads((out / "scan.error.json").read_text())["error"] == "binary_input"
    assert json.loads((out / "post.json").read_text())["name"] == "Pancakes"
    assert not (out / "scan.json").exists()


def test_08_utf16_text_is_named_as_such():
    from distill.documents import document_from_bytes

    doc = document_from_bytes("Pancakes: 2 eggs.".encode("utf-16"), name="p", source="p.txt", suffix=".txt")
    assert doc.text == "" and doc.error.startswith("UTF-16 text") and "save it as UTF-8" in doc.error
    text = document_from_bytes("Crêpes: 2 œufs, 1 tasse de lait.\n".encode("utf-8"), name="c", source="c.txt")
    assert text.error is None and text.text.startswith("Crêpes")
    greek = "Μουσακάς: 2 μελιτζάνες, κιμάς. Ψήνουμε 45 λεπτά.\n".encode("iso-8859-7")  # all bytes above 0x7F
    assert document_from_bytes(greek, name="g", source="g.txt").error is None  # a legacy encoding is text


def test_08_binary_stdin_prints_no_json(monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")))
    with FakeOpenAIServer(lambda body: json.dumps(RECIPE)) as srv:
        assert S08.main(["--model", f"openai:{srv.url}", "--task", "recipe", "-"]) == 2
        assert srv.history == []
    captured = capsys.readouterr()
    assert captured.out == "" and "-: not extracted: a binary file" in captured.err


def test_08_same_stem_absolute_paths_stay_inside_the_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        (tmp_path / "in" / sub / "post.txt").write_text(f"Pancakes {sub}: 2 eggs. Fry.\n")
    out = tmp_path / "out"
    root_before = set(os.listdir("/"))
    with FakeOpenAIServer(lambda body: json.dumps(RECIPE)) as srv:
        assert S08.main(["--model", f"openai:{srv.url}", "--task", "recipe", "--output-dir", str(out),
                         str(tmp_path / "in" / "a" / "post.txt"), str(tmp_path / "in" / "b" / "post.txt")]) == 0
    assert set(os.listdir("/")) == root_before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a__post_txt.json", "b__post_txt.json", "manifest.json"]
    assert not [p for p in tmp_path.rglob("*post_txt.json") if p.parent != out]


# ------------------------------------------------------------------ Ctrl-C

def _wait_for(cond, timeout=30.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def _sigint_default() -> None:
    """A child that handles Ctrl-C as in a terminal even when the tests run as a background job
    (which inherits SIGINT ignored, and a stage rightly keeps an ignored SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_02_at_once_against_a_hanging_server_and_the_next_run_retries(stages, tmp_path):
    out = tmp_path / "02"
    teacher = OracleTeacher()
    with FakeOpenAIServer(lambda body: hang(60)) as srv:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "02_generate_synthetic.py"), "--input", str(stages / "01"),
             "--output-dir", str(out), "--limit", "4", "--concurrency", "2",
             *teacher_args(srv.url, "--timeout", "60")],
            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
        _wait_for(lambda: len(srv.history) >= 2)  # both requests in flight, the server sits on them
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        stopped = time.monotonic() - t0
        assert proc.returncode == 130, err
        assert stopped < 3, f"Ctrl-C took {stopped:.1f}s"
        assert "interrupted: everything finished so far is saved" in err and "Traceback" not in err
        assert not (out / "manifest.json").exists()
        srv.handler = teacher
        before = len(srv.history)
        assert S02.main(["--input", str(stages / "01"), "--output-dir", str(out), "--limit", "4",
                         *teacher_args(srv.url)]) == 0
        assert len(srv.history) - before == 4  # the abandoned items are retried
    assert len(list(out.glob("recipe-*.json"))) == 4


def test_a_second_ctrl_c_exits_at_once_without_a_traceback(tmp_path):
    # A stage whose cleanup after the first Ctrl-C is slow (stopping a server, say).
    code = (
        "import sys, time\n"
        "from distill.cli import run\n"
        "def main():\n"
        "    try:\n"
        "        print('running', flush=True); time.sleep(60)\n"
        "    finally:\n"
        "        print('cleaning up', flush=True); time.sleep(60)\n"
        "sys.exit(run(main))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=_sigint_default)  # `python -c` puts the working directory first on the import path
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "cleaning up"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 2
    assert proc.returncode == 130 and "interrupted again: exiting now" in err and "Traceback" not in err, err
