"""02/03 --batch-out / --batch-in: requests written in the OpenAI Batch input format, run by an
engine (here: each line sent to the fake server, as vllm run-batch would send it to its model),
and the Batch output filed exactly as live replies are."""
from __future__ import annotations

import json

import httpx
import pytest

from distill.io import StageError
from fake_openai_server import FakeOpenAIServer
from fake_teacher import OracleTeacher
from test_stages_02_04 import S02, S03, SAMPLE, outputs

COMMON = ["--model", "teacher", "--retries", "0", "--timeout", "10", "--seed", "7"]


def run_batch(srv, requests, replies, fail_ids=()):
    """What a batch engine does with an input file: one output line per request, custom_id kept."""
    out = []
    for n, line in enumerate(map(json.loads, requests.read_text().splitlines())):
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        if line["custom_id"] in fail_ids:
            out.append({"id": f"r{n}", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": "server_error", "message": "the engine lost this one"}})
            continue
        resp = httpx.post(srv.url + "/chat/completions", json=line["body"], timeout=10)
        out.append({"id": f"r{n}", "custom_id": line["custom_id"],
                    "response": {"status_code": resp.status_code, "request_id": f"q{n}", "body": resp.json()},
                    "error": None})
    replies.write_text("".join(json.dumps(o) + "\n" for o in out))


def texts(folder):
    return {p.name: json.loads(p.read_text())["text"] for p in outputs(folder)}


def test_batch_files_round_trip_02_and_03_as_live_replies(tmp_path, capsys):
    with FakeOpenAIServer(OracleTeacher()) as srv:
        live02, live03 = tmp_path / "live02", tmp_path / "live03"
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(live02), "--limit", "4",
                         "--base-url", srv.url, *COMMON]) == 0
        assert S03.main(["--input-dir", str(live02), "--output-dir", str(live03), "--base-url", srv.url, *COMMON]) == 0

        # 02 --batch-out: no server is called, nothing but the request file is written
        syn, req, rep = tmp_path / "02", tmp_path / "req02.jsonl", tmp_path / "rep02.jsonl"
        before = len(srv.history)
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(syn), "--limit", "4",
                         "--batch-out", str(req), *COMMON]) == 0
        assert len(srv.history) == before and not (syn / "manifest.json").exists() and not outputs(syn)
        lines = [json.loads(x) for x in req.read_text().splitlines()]
        assert sorted(x["custom_id"] for x in lines) == sorted(p.stem for p in outputs(live02))
        assert all(x["body"]["model"] == "teacher" and x["body"]["seed"] is not None for x in lines)
        assert "vllm run-batch -i" in capsys.readouterr().out

        fail = lines[0]["custom_id"]
        run_batch(srv, req, rep, fail_ids={fail})
        before = len(srv.history)
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(syn), "--limit", "4",
                         "--batch-in", str(rep), *COMMON]) == 0
        assert len(srv.history) == before, "--batch-in makes no request"
        # the same posts as the live run, the failed line a failure with its reason
        live = texts(live02)
        assert texts(syn) == {k: v for k, v in live.items() if k != f"{fail}.json"}
        failures = [json.loads(x) for x in (syn / "failures.jsonl").read_text().splitlines()]
        assert [(f["id"], f["reason"]) for f in failures] == [(fail, "batch_error")]
        # a live re-run retries exactly the failed item
        assert S02.main(["--input", str(SAMPLE), "--output-dir", str(syn), "--limit", "4",
                         "--base-url", srv.url, *COMMON]) == 0
        assert len(srv.history) == before + 1 and texts(syn) == live

        # 03 through a batch: the labels are verified like live ones, verdict for verdict
        lab, req3, rep3 = tmp_path / "03", tmp_path / "req03.jsonl", tmp_path / "rep03.jsonl"
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--batch-out", str(req3), *COMMON]) == 0
        assert not (lab / "manifest.json").exists() and not outputs(lab)
        body = json.loads(req3.read_text().splitlines()[0])["body"]
        assert body["response_format"]["type"] == "json_schema"   # a batch engine is told the format up front
        run_batch(srv, req3, rep3)
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--batch-in", str(rep3), *COMMON]) == 0
        got = {p.name: json.loads(p.read_text()) for p in outputs(lab)}
        want = {p.name: json.loads(p.read_text()) for p in outputs(live03)}
        assert {k: v["verdict"] for k, v in got.items()} == {k: v["verdict"] for k, v in want.items()}
        assert {k: v["output"] for k, v in got.items()} == {k: v["output"] for k, v in want.items()}
        assert all(v["verdict"] == "accepted" for v in got.values())
        assert (lab / "manifest.json").exists()


def test_batch_flag_mistakes_are_one_line(tmp_path, capsys):
    base = ["--input", str(SAMPLE), "--output-dir", str(tmp_path / "02"), "--limit", "2"]
    assert S02.main(base + ["--batch-out", str(tmp_path / "r.jsonl")]) == 1
    assert "need --model" in capsys.readouterr().err
    assert S02.main(base + ["--batch-out", str(tmp_path / "a"), "--batch-in", str(tmp_path / "b"), *COMMON]) == 1
    assert "give one of them" in capsys.readouterr().err
    assert S02.main(base + ["--batch-in", str(tmp_path / "missing.jsonl"), *COMMON]) == 1
    assert "no such file" in capsys.readouterr().err
    not_output = tmp_path / "input.jsonl"
    not_output.write_text(json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                                      "body": {}}) + "\n")
    assert S02.main(base + ["--batch-in", str(not_output), *COMMON]) == 1
    assert "a Batch input file, not its output?" in capsys.readouterr().err
    syn = tmp_path / "02"
    assert S03.main(["--input-dir", str(syn), "--output-dir", str(tmp_path / "03"), "--feedback-rounds", "1",
                     "--batch-out", str(tmp_path / "r3.jsonl"), *COMMON]) == 1
    assert "so they run live" in capsys.readouterr().err


def test_a_reply_missing_from_the_batch_is_a_failure_with_a_reason(tmp_path):
    from distill.batch import BatchReader, current_id
    from distill.llm import LLMConfig, LLMError, run_sync

    f = tmp_path / "out.jsonl"
    f.write_text(json.dumps({"custom_id": "a", "response": {"status_code": 429, "body": {"error": "slow down"}},
                             "error": None}) + "\n")
    reader = BatchReader(LLMConfig(model="m"), f)

    async def ask(item):
        current_id.set(item)
        return await reader.acomplete([{"role": "user", "content": "x"}])

    with pytest.raises(LLMError) as e:
        run_sync(ask("a"))
    assert e.value.reason == "http_429"
    with pytest.raises(LLMError) as e:
        run_sync(ask("b"))
    assert e.value.reason == "not_in_batch"
    assert reader.unused() == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(StageError, match="line 1: not JSON"):
        BatchReader(LLMConfig(model="m"), bad)
