"""Stages 02 -> 03 -> 04 in-process against the fault-injecting server with an oracle teacher."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer, error, hang, reply
from fake_teacher import OracleTeacher

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tasks" / "recipe" / "sample.csv"


def script(name):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S02, S03, S04 = (script(n) for n in ("02_generate_synthetic.py", "03_label_with_reasoning.py", "04_build_dataset.py"))


# The recipe task's complete-recipe styles at their task.yaml weights: the draws of the task
# before it had styles with nothing (or less) to extract, for tests about complete posts.
NORMAL_STYLES = "instagram_short=1,minimal_organized=2,fluffy_organized=5,chaotic_unstructured=2,super_fluffy_chaotic=1"


def chat_requests(srv):
    return len(srv.history)


def run_02(srv, out, *extra):
    return S02.main(["--input", str(SAMPLE), "--output-dir", str(out), "--base-url", srv.url, "--model", "teacher",
                     "--retries", "1", "--timeout", "5", *extra])


def run_03(srv, inp, out, *extra):
    return S03.main(["--input-dir", str(inp), "--output-dir", str(out), "--base-url", srv.url, "--model", "teacher",
                     "--retries", "1", "--timeout", "5", *extra])


def outputs(d: Path):
    return sorted(p for p in d.glob("*.json") if p.name not in ("manifest.json", "stats.json"))


@pytest.mark.parametrize("channel", ["reasoning_content", "reasoning", "think", "closing_only"])
def test_pipeline_end_to_end_and_resume(tmp_path, channel):
    teacher = OracleTeacher(reasoning_channel=channel)
    with FakeOpenAIServer(teacher) as srv:
        syn, lab, ds = tmp_path / "02", tmp_path / "03", tmp_path / "04"
        assert run_02(srv, syn, "--limit", "12", "--per-record", "2", "--concurrency", "3") == 0
        files = outputs(syn)
        assert len(files) == 24 and teacher.calls["write"] == 24
        row = json.loads(files[0].read_text())
        for key in ("id", "source_id", "style", "text", "model", "prompt_hash", "usage"):
            assert key in row
        # The style never leaks into what the student sees; ids are not recipe names.
        for p in files:
            r = json.loads(p.read_text())
            assert r["style"] not in r["text"] and r["source"]["name"] not in p.name
        assert json.loads((syn / "manifest.json").read_text())["counts"]["written"] == 24

        before = chat_requests(srv)
        assert run_02(srv, syn, "--limit", "12", "--per-record", "2") == 0
        assert chat_requests(srv) == before, "a re-run must make zero requests for finished items"

        assert run_03(srv, syn, lab, "--concurrency", "2") == 0
        labels = [json.loads(p.read_text()) for p in outputs(lab)]
        assert len(labels) == 24
        assert all(l["verdict"] == "accepted" for l in labels), [l["reason"] for l in labels]
        assert all(l["reasoning"] and "starred lines" in l["reasoning"] for l in labels)
        assert all(l["checks"]["recipeIngredient"]["status"] == "ok" for l in labels)
        before = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0
        assert chat_requests(srv) == before

        assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                         "--split", "0.5,0.25,0.25"]) == 0
        splits = {s: [json.loads(l) for l in (ds / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
        # Two inputs of one record in the same style are the same text: dropped as near-duplicates.
        unique = len({json.loads(p.read_text())["text"] for p in files})
        stats = json.loads((ds / "stats.json").read_text())
        assert sum(len(v) for v in splits.values()) == unique == 24 - stats["near_duplicates_dropped"]
        assert unique > 12
        sources = {s: {r["source_id"] for r in v} for s, v in splits.items()}
        assert not (sources["train"] & sources["test"]) and not (sources["train"] & sources["val"])
        assert not (sources["val"] & sources["test"])
        ex = splits["train"][0]
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
        assert ex["messages"][2]["content"].startswith("<think>\n")
        answer = ex["messages"][2]["content"].split("</think>", 1)[1]
        assert json.loads(answer) == ex["reference"]
        manifest = json.loads((ds / "manifest.json").read_text())
        assert manifest["task"] == "recipe" and manifest["system_prompt"] == ex["messages"][0]["content"]
        assert stats["counts"] == {s: len(v) for s, v in splits.items()}


def test_wrong_labels_are_rejected_with_reasons(tmp_path):
    def corrupt(lab):
        return lab | {"recipeIngredient": ["3 cups unicorn tears", "1 dragon egg"], "cookTime": "PT999M"}

    with FakeOpenAIServer(OracleTeacher(corrupt=corrupt)) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "3") == 0
        assert run_03(srv, syn, lab) == 0
        labels = [json.loads(p.read_text()) for p in outputs(lab)]
        assert {l["verdict"] for l in labels} == {"rejected"}
        for l in labels:
            assert "recipeIngredient_mismatch" in l["reason"]
            assert l["checks"]["recipeIngredient"]["grounded"] is False
        assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab),
                         "--output-dir", str(tmp_path / "04")]) == 1  # nothing accepted: a clear error


def test_a_rejected_label_is_fixed_by_a_feedback_round_that_names_the_failed_checks(tmp_path, capsys):
    def corrupt(lab):
        return lab | {"recipeIngredient": lab["recipeIngredient"] + ["1 dragon egg"], "cookTime": "PT999M"}

    teacher = OracleTeacher(corrupt=corrupt, fix_on_feedback=True)
    with FakeOpenAIServer(teacher) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "3") == 0
        assert run_03(srv, syn, lab, "--feedback-rounds", "1") == 0
        labels = [json.loads(p.read_text()) for p in outputs(lab)]
        assert teacher.calls["label"] == 6, "one first answer and one feedback round per input"
        assert all(l["verdict"] == "accepted" and l["feedback_rounds"] == 1 for l in labels)
        for l in labels:
            first = l["attempts"][0]
            assert first["output"]["cookTime"] == "PT999M" and "recipeIngredient_not_in_text" in first["reason"]
        # The feedback names the failing fields and items, never the source record's value.
        from distill.fields import minutes_to_iso

        assert len(teacher.feedback) == 3
        cook = [json.loads(p.read_text())["source"].get("cook_minutes") for p in outputs(syn)]
        true_cook = {minutes_to_iso(c) for c in cook if c}
        # cookTime is named in every feedback: a mismatch where the record has a cook time, and
        # invented where it has none (999 minutes is nowhere in the text).
        assert sum('cookTime = "PT999M" is not what the text says' in fb for fb in teacher.feedback) == sum(1 for c in cook if c)
        assert sum('cookTime = "PT999M", but this text has nothing' in fb for fb in teacher.feedback) == sum(1 for c in cook if not c)
        for fb in teacher.feedback:
            assert '"1 dragon egg"' in fb
            assert not any(iso in fb for iso in true_cook), fb
        assert "3 accepted (100%), 3 of them after feedback" in capsys.readouterr().out
        n = chat_requests(srv)
        assert run_03(srv, syn, lab, "--feedback-rounds", "1") == 0 and chat_requests(srv) == n, "accepted labels are done"


def test_feedback_rounds_resume_rejected_labels_from_their_last_answer(tmp_path):
    def corrupt(lab):
        return lab | {"recipeIngredient": lab["recipeIngredient"] + ["1 dragon egg"]}

    teacher = OracleTeacher(corrupt=corrupt, fix_on_feedback=True)
    with FakeOpenAIServer(teacher) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "2") == 0
        assert run_03(srv, syn, lab, "--feedback-rounds", "0") == 0
        assert {json.loads(p.read_text())["verdict"] for p in outputs(lab)} == {"rejected"}
        assert teacher.calls["label"] == 2 and not teacher.feedback
        # More rounds later: only the feedback turns are sent, continuing the stored answers.
        assert run_03(srv, syn, lab, "--feedback-rounds", "1") == 0
        assert teacher.calls["label"] == 4 and len(teacher.feedback) == 2
        assert {json.loads(p.read_text())["verdict"] for p in outputs(lab)} == {"accepted"}


def test_a_failed_feedback_round_keeps_the_rejected_label_and_is_retried(tmp_path):
    def corrupt(lab):
        return lab | {"recipeIngredient": lab["recipeIngredient"] + ["1 dragon egg"]}

    with FakeOpenAIServer(OracleTeacher(corrupt=corrupt, fix_on_feedback=True)) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "1") == 0
        assert run_03(srv, syn, lab, "--feedback-rounds", "0") == 0
        srv.push(error(400, "context full"))   # the feedback request fails: the run's only request
        assert run_03(srv, syn, lab, "--feedback-rounds", "1") == 1
        rec = json.loads(outputs(lab)[0].read_text())
        assert rec["verdict"] == "rejected" and rec["feedback_rounds"] == 0
        assert rec["feedback_error"].startswith("http_400")
        assert run_03(srv, syn, lab, "--feedback-rounds", "1") == 0
        rec = json.loads(outputs(lab)[0].read_text())
        assert rec["verdict"] == "accepted" and rec["feedback_rounds"] == 1 and "feedback_error" not in rec


def test_failures_are_counted_and_retried(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "3", "--concurrency", "1") == 0
        # First label request: truncated; second: 400; third: fine.
        srv.push(reply('{"name": "Cut', finish_reason="length"), error(400, "bad request"))
        assert run_03(srv, syn, lab, "--concurrency", "1") == 0
        labels = {json.loads(p.read_text())["verdict"] for p in outputs(lab)}
        assert labels == {"failed", "accepted"}
        out = capsys.readouterr().out
        assert "length" in out and "http_400" in out
        n = chat_requests(srv)
        assert run_03(srv, syn, lab, "--concurrency", "1") == 0
        assert chat_requests(srv) == n + 2, "only the two failed labels are retried"
        assert all(json.loads(p.read_text())["verdict"] == "accepted" for p in outputs(lab))


def test_timeout_is_a_failure_not_a_crash(tmp_path):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        srv.push(hang(3), hang(3))
        syn = tmp_path / "02"
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(syn), "--base-url", srv.url, "--model", "t",
                         "--limit", "2", "--timeout", "0.5", "--retries", "0", "--concurrency", "1"]) == 1
        failures = [json.loads(l) for l in (syn / "failures.jsonl").read_text().splitlines()]
        assert [f["reason"] for f in failures] == ["timeout", "timeout"]


def test_server_down_is_one_clear_line(tmp_path, capsys):
    from fake_openai_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    rc = S02.main(["--input", str(SAMPLE), "--output-dir", str(tmp_path / "02"), "--base-url", url,
                   "--retries", "0", "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "Traceback" not in err


def test_changed_prompt_redoes_work(tmp_path, monkeypatch):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn = tmp_path / "02"
        assert run_02(srv, syn, "--limit", "2") == 0
        n = chat_requests(srv)
        assert run_02(srv, syn, "--limit", "2", "--temperature", "0.1") == 0
        assert chat_requests(srv) == n + 2


def test_03_refuses_unfinished_02(tmp_path, capsys):
    (tmp_path / "02").mkdir()
    assert S03.main(["--input-dir", str(tmp_path / "02"), "--output-dir", str(tmp_path / "03")]) == 1
    assert "02_generate_synthetic.py" in capsys.readouterr().err


def test_calibrate_prints_pass_rates_and_stops(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "10") == 0
        capsys.readouterr()
        assert run_03(srv, syn, lab, "--calibrate", "4") == 0
        out = capsys.readouterr().out
        assert "pass rate per field" in out and "accepted per style" in out
        assert len(outputs(lab)) == 4 and not (lab / "manifest.json").exists()


def test_each_input_has_its_own_reproducible_seed(tmp_path):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        assert run_02(srv, tmp_path / "a", "--limit", "3", "--per-record", "2") == 0
        seeds = [b["seed"] for b in srv.history]
        assert len(set(seeds)) == 6
        srv.history.clear()
        assert run_02(srv, tmp_path / "b", "--limit", "3", "--per-record", "2") == 0
        assert sorted(b["seed"] for b in srv.history) == sorted(seeds)


def test_styles_flag_limits_and_reweights_the_styles(tmp_path):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        assert run_02(srv, tmp_path / "02", "--limit", "12", "--styles", "instagram_short=3,minimal_organized=1") == 0
    styles = [json.loads(p.read_text())["style"] for p in outputs(tmp_path / "02")]
    assert len(styles) == 12 and set(styles) <= {"instagram_short", "minimal_organized"}
    assert styles.count("instagram_short") > styles.count("minimal_organized")
    manifest = json.loads((tmp_path / "02" / "manifest.json").read_text())
    assert set(manifest["counts"]["planned_by_style"]) == set(styles)


@pytest.mark.parametrize("spec,message", [
    ("tiktok=1", "unknown style 'tiktok'; this task has instagram_short"),
    ("instagram_short=lots", "weight of 'instagram_short' must be a number"),
    ("instagram_short=-1", "must be >= 0"),
    ("instagram_short=0", "at least one style")])
def test_bad_styles_flag_is_one_clear_error_before_any_request(tmp_path, capsys, spec, message):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        assert run_02(srv, tmp_path / "02", "--limit", "2", "--styles", spec) == 1
        assert chat_requests(srv) == 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "02").exists() or not outputs(tmp_path / "02")


def test_reweight_styles_keeps_the_task_weights_by_default():
    from distill.synth import reweight_styles
    from distill.tasks import load_task

    styles = load_task("recipe").styles
    assert reweight_styles(styles, None) == styles
    only = reweight_styles(styles, "chaotic_unstructured")
    assert [(s.name, s.weight) for s in only] == [("chaotic_unstructured", 1.0)]


def test_negative_feedback_rounds_is_one_clear_error_before_any_request(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn = tmp_path / "02"
        assert run_02(srv, syn, "--limit", "1") == 0
        n = chat_requests(srv)
        assert run_03(srv, syn, tmp_path / "03", "--feedback-rounds", "-1") != 0
        assert chat_requests(srv) == n
    assert "--feedback-rounds must be 0 or more" in capsys.readouterr().err


def run_04(syn, lab, ds, *extra):
    return S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", "0.5,0.5", *extra])


def test_02_rerun_with_other_settings_makes_04_refuse_stale_pairs_until_03_relabels(tmp_path, capsys):
    from distill.synth import text_sha256

    teacher = OracleTeacher()
    with FakeOpenAIServer(teacher) as srv:
        syn, lab, ds = tmp_path / "02", tmp_path / "03", tmp_path / "04"
        assert run_02(srv, syn, "--limit", "4", "--styles", "instagram_short") == 0
        for p in outputs(syn):
            row = json.loads(p.read_text())
            assert row["text_sha256"] == text_sha256(row["text"])
        assert run_03(srv, syn, lab) == 0
        for p in outputs(lab):
            label = json.loads(p.read_text())
            assert label["text_sha256"] == json.loads((syn / p.name).read_text())["text_sha256"]
        assert run_04(syn, lab, ds) == 0
        old_texts = {p.name: json.loads(p.read_text())["text"] for p in outputs(syn)}

        # 02 again with other settings for the first two records: new texts under the same ids.
        assert run_02(srv, syn, "--limit", "2", "--styles", "minimal_organized") == 0
        changed = sorted(json.loads(p.read_text())["id"] for p in outputs(syn)
                         if json.loads(p.read_text())["text"] != old_texts[p.name])
        assert len(changed) == 2
        capsys.readouterr()
        assert run_04(syn, lab, tmp_path / "04-stale") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: 2 label(s) in ")
        assert all(i in err[0] for i in changed) and "Re-run 03_label_with_reasoning.py" in err[0]
        assert "--skip-stale" in err[0]
        assert not (tmp_path / "04-stale" / "manifest.json").exists()

        # --skip-stale builds from the two labels that still match, and says how many it left out.
        assert run_04(syn, lab, tmp_path / "04-skip", "--skip-stale") == 0
        assert "left out 2 stale label(s)" in capsys.readouterr().out
        stats = json.loads((tmp_path / "04-skip" / "stats.json").read_text())
        assert stats["stale_labels_skipped"] == 2 and sum(stats["counts"].values()) == 2
        built = [json.loads(l) for s in ("train", "test") for l in (tmp_path / "04-skip" / f"{s}.jsonl").read_text().splitlines()]
        assert not {r["id"] for r in built} & set(changed)
        manifest = json.loads((tmp_path / "04-skip" / "manifest.json").read_text())
        assert manifest["stats"]["stale_labels_skipped"] == 2 and manifest["args"]["skip_stale"] is True

        # 03 re-labels exactly the two changed inputs; after that 04 builds all four.
        n = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0
        assert chat_requests(srv) == n + 2
        assert sorted(b["messages"][-1]["content"].split("\n\n", 1)[-1] for b in srv.history[n:]) == \
            sorted(json.loads((syn / f"{i}.json").read_text())["text"] for i in changed)
        n = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0 and chat_requests(srv) == n, "unchanged inputs: zero requests"
        assert run_04(syn, lab, ds) == 0
        rows = [json.loads(l) for s in ("train", "test") for l in (ds / f"{s}.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        for r in rows:  # every example pairs its text with the label made from that text
            assert r["reference"]["recipeIngredient"] and r["text"] == json.loads((syn / f"{r['id']}.json").read_text())["text"]
            assert r["messages"][1]["content"].endswith(r["text"])
        assert json.loads((ds / "stats.json").read_text())["stale_labels_skipped"] == 0


def test_labels_from_before_text_hashes_are_stale_and_03_adds_the_hash_without_a_request(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "2") == 0
        assert run_03(srv, syn, lab) == 0
        for p in outputs(lab):  # as an older 03 wrote them
            rec = json.loads(p.read_text())
            del rec["text_sha256"]
            p.write_text(json.dumps(rec))
        capsys.readouterr()
        assert run_04(syn, lab, tmp_path / "04") == 1
        err = capsys.readouterr().err
        assert "2 label(s) carry no text hash (written by an older 03)" in err and "Re-run 03" in err
        n = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0 and chat_requests(srv) == n
        assert all("text_sha256" in json.loads(p.read_text()) for p in outputs(lab))
        assert run_04(syn, lab, tmp_path / "04") == 0


def test_labels_that_say_nothing_are_rejected_and_04_trains_on_the_rest(tmp_path, capsys):
    """A teacher that answers some complete posts with a schema-valid empty recipe: none of those is accepted."""
    calls = {"n": 0}

    def corrupt(lab):
        calls["n"] += 1
        if calls["n"] % 2:
            return lab
        return lab | {"name": None, "recipeIngredient": [], "recipeInstructions": [],
                      "prepTime": None, "cookTime": None, "totalTime": None, "recipeYield": None}

    with FakeOpenAIServer(OracleTeacher(corrupt=corrupt)) as srv:
        syn, lab, ds = tmp_path / "02", tmp_path / "03", tmp_path / "04"
        assert run_02(srv, syn, "--limit", "8", "--styles", NORMAL_STYLES) == 0
        assert run_03(srv, syn, lab, "--concurrency", "1") == 0
    labels = [json.loads(p.read_text()) for p in outputs(lab)]
    empty = [l for l in labels if l["output"]["name"] is None]
    assert len(empty) == 4 and len(labels) == 8
    for l in empty:
        assert l["verdict"] == "rejected"
        assert l["reason"].startswith("name_missing,recipeIngredient_missing,recipeInstructions_missing,prepTime_omitted")
    assert all(l["verdict"] == "accepted" for l in labels if l not in empty)
    out = capsys.readouterr().out
    assert "4 accepted (50%), 4 rejected, 0 unverified" in out and "rejected, by reason: name_missing 4" in out
    manifest = json.loads((lab / "manifest.json").read_text())
    assert {k: manifest["counts"][k] for k in ("accepted", "rejected", "unverified", "failed")} == \
        {"accepted": 4, "rejected": 4, "unverified": 0, "failed": 0}
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", "0.5,0.5", "--dedupe-threshold", "100"]) == 0
    stats = json.loads((ds / "stats.json").read_text())
    assert stats["labels"] == {"accepted": 4, "rejected": 4, "unverified": 0, "failed": 0}
    assert stats["trained_on"] == {"accepted": 4}


def test_inputs_without_a_source_record_are_unverified_and_left_out_unless_asked(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "6") == 0
        # Three inputs lose their source record, as posts collected by hand would have none.
        for p in outputs(syn)[:3]:
            row = json.loads(p.read_text())
            p.write_text(json.dumps(row | {"source": None}))
        assert run_03(srv, syn, lab) == 0
        n = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0
        assert chat_requests(srv) == n, "unverified labels are finished: asking again cannot verify them"
    labels = {json.loads(p.read_text())["id"]: json.loads(p.read_text()) for p in outputs(lab)}
    no_source = {json.loads(p.read_text())["id"] for p in outputs(syn)[:3]}
    assert {i for i, l in labels.items() if l["verdict"] == "unverified"} == no_source
    assert all(labels[i]["reason"] == "no_source_record" for i in no_source)
    assert "3 accepted (50%), 0 rejected, 3 unverified" in capsys.readouterr().out

    ds = tmp_path / "04"
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                     "--split", "0.5,0.5", "--dedupe-threshold", "100"]) == 0
    stats = json.loads((ds / "stats.json").read_text())
    assert stats["labels"] == {"accepted": 3, "rejected": 0, "unverified": 3, "failed": 0}
    assert stats["trained_on"] == {"accepted": 3}
    rows = [json.loads(ln) for s in ("train", "test") for ln in (ds / f"{s}.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not {r["id"] for r in rows} & no_source

    ds2 = tmp_path / "04b"
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds2),
                     "--split", "0.5,0.5", "--dedupe-threshold", "100", "--include-unverified"]) == 0
    manifest = json.loads((ds2 / "manifest.json").read_text())
    assert manifest["args"]["include_unverified"] is True
    assert manifest["stats"]["trained_on"] == {"accepted": 3, "unverified": 3}
    rows = [json.loads(ln) for s in ("train", "test") for ln in (ds2 / f"{s}.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["id"] for r in rows if r["verdict"] == "unverified"} == no_source


def test_04_with_only_unverified_labels_says_how_to_use_them(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "2") == 0
        for p in outputs(syn):
            p.write_text(json.dumps(json.loads(p.read_text()) | {"source": None}))
        assert run_03(srv, syn, lab) == 0
    capsys.readouterr()
    assert S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(tmp_path / "04")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'unverified': 2" in err and "--include-unverified" in err


def test_an_unverified_label_is_verified_once_its_input_has_a_source_record(tmp_path):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        syn, lab = tmp_path / "02", tmp_path / "03"
        assert run_02(srv, syn, "--limit", "2") == 0
        p = outputs(syn)[0]
        row = json.loads(p.read_text())
        p.write_text(json.dumps(row | {"source": None}))
        assert run_03(srv, syn, lab) == 0
        assert json.loads((lab / p.name).read_text())["verdict"] == "unverified"
        p.write_text(json.dumps(row))   # the record is back
        n = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0
        assert chat_requests(srv) == n, "verified from the stored answer, without asking again"
    rec = json.loads((lab / p.name).read_text())
    assert rec["verdict"] == "accepted" and rec["checks"]["name"]["status"] == "ok"


@pytest.mark.parametrize("failing", ["refusing", "http_500"])
def test_02_and_03_with_a_second_endpoint_that_fails(tmp_path, capsys, failing):
    from fake_openai_server import free_port

    with FakeOpenAIServer(OracleTeacher()) as srv, FakeOpenAIServer(lambda body: error(500)) as broken:
        # Refusing connections, it is found by the stage's first GET /models and never sent a label
        # request; answering 500 only to chat requests, it fails its first ones, which move on.
        dead = f"http://127.0.0.1:{free_port()}/v1" if failing == "refusing" else broken.url
        both = ["--base-url", dead, "--base-url", srv.url, "--model", "teacher", "--retries", "1", "--timeout", "5",
                "--concurrency", "3"]
        syn, lab, alone = tmp_path / "02", tmp_path / "03", tmp_path / "02_alone"
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(syn), "--limit", "6", *both]) == 0
        assert len(outputs(syn)) == 6 and chat_requests(srv) == 6
        out = capsys.readouterr().out
        assert f"at {dead}, {srv.url}" in out and f"endpoints: {dead} " in out
        counts = json.loads((syn / "manifest.json").read_text())["counts"]
        assert counts["written"] == 6 and counts["failed"] == 0
        bad, good = counts["endpoints"]
        assert bad["url"] == dead and bad["cooldowns"] == 1 and good["requests"] == 6 and good["errors"] == 0
        assert bad["errors"] == bad["moved_on"] == bad["requests"] == len(broken.history) // 2
        assert (bad["requests"] == 0) == (failing == "refusing")
        # The same items as with the one endpoint that works, and a finished item is finished for either.
        assert run_02(srv, alone, "--limit", "6") == 0
        def items(d):
            return [{k: v for k, v in json.loads(p.read_text()).items() if k != "created_at"} for p in outputs(d)]

        assert items(syn) == items(alone)
        before = chat_requests(srv)
        assert run_02(srv, syn, "--limit", "6") == 0 and chat_requests(srv) == before

        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), *both]) == 0
        labels = [json.loads(p.read_text()) for p in outputs(lab)]
        assert len(labels) == 6 and all(rec["verdict"] == "accepted" for rec in labels)
        bad = json.loads((lab / "manifest.json").read_text())["counts"]["endpoints"][0]
        assert bad["url"] == dead and bad["cooldowns"] == 1
        before = chat_requests(srv)
        assert run_03(srv, syn, lab) == 0 and chat_requests(srv) == before
