"""Stages 01 -> 04 against a real llama.cpp server serving the real SmolLM2-135M-Instruct GGUF."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from test_stages_02_04 import S02, S03, S04, outputs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _script(name):
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_teacher_stages_against_real_llama_server(tmp_path, capsys):
    from distill.llamacpp import LlamaServer, smollm2_gguf

    src, syn, lab, ds = (tmp_path / d for d in ("01", "02", "03", "04"))
    assert _script("01_download_dataset.py").main(["--sample", "--limit", "6", "--output-dir", str(src)]) == 0
    with LlamaServer(smollm2_gguf(), n_parallel=2, ctx=8192) as server:
        # As in the demo: a repetition penalty keeps the 135M teacher from looping to the token limit.
        llm = ["--base-url", server.base_url, "--concurrency", "2", "--timeout", "600", "--retries", "1",
               "--extra-body", '{"repeat_penalty": 1.15}']
        assert S02.main(["--input", str(src), "--output-dir", str(syn), "--limit", "0",
                         "--max-tokens", "512", "--temperature", "0.3", *llm]) == 0
        posts = [json.loads(p.read_text()) for p in outputs(syn)]
        m02 = json.loads((syn / "manifest.json").read_text())["counts"]
        # A small teacher may ramble past the token limit: such a post is a failure with a reason.
        assert len(posts) + m02["failed"] == 6 and len(posts) >= 1
        assert set(m02["failed_by_reason"]) <= {"length"}
        assert all(p["text"].strip() for p in posts)
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--max-tokens", "768", *llm]) == 0
        counts = json.loads((lab / "manifest.json").read_text())["counts"]
        assert counts["requests"]["requests"] == len(posts)
        # A re-run makes no requests for finished labels; only failed ones (no usable reply) are retried.
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--max-tokens", "768", *llm]) == 0
        rerun = json.loads((lab / "manifest.json").read_text())["counts"]
        assert rerun["requests"]["requests"] == counts.get("failed", 0)
        assert rerun["skipped"] == len(posts) - counts.get("failed", 0)
        # A feedback round through the real server: the rejected labels continue from their
        # answer (a 4-turn conversation with the schema enforced), nothing else is asked again.
        before = {p.name: json.loads(p.read_text()) for p in outputs(lab)}
        rejected = {k for k, v in before.items() if v["verdict"] == "rejected"}
        assert S03.main(["--input-dir", str(syn), "--output-dir", str(lab), "--max-tokens", "768",
                         "--feedback-rounds", "1", *llm]) == 0
        after = {p.name: json.loads(p.read_text()) for p in outputs(lab)}
        for k in rejected:
            rec = after[k]
            if "feedback_error" in rec:
                assert rec["verdict"] == "rejected" and rec["raw_content"] == before[k]["raw_content"], rec
                continue
            assert rec["feedback_rounds"] == 1 and rec["verdict"] in ("accepted", "rejected"), rec
            assert rec["attempts"][0]["raw_content"] == before[k]["raw_content"]
            assert rec["attempts"][0]["feedback"].startswith("Some fields of your answer failed the checks")
            assert rec["response_format"] == "json_schema" and isinstance(rec["output"], dict)
        for k, v in before.items():
            if v["verdict"] == "accepted":
                assert after[k] == v
    labels = [json.loads(p.read_text()) for p in outputs(lab)]
    assert len(labels) == len(posts)
    for lab_ in labels:
        assert lab_["verdict"] in ("accepted", "rejected", "failed")
        assert lab_["reason"], lab_
        if lab_["verdict"] != "failed":
            # llama-server enforces the schema: the answer parses and carries per-field checks.
            assert lab_["response_format"] == "json_schema"
            assert isinstance(lab_["output"], dict)
            assert lab_["reason"] == "ok" or lab_["verdict"] == "rejected"
        else:
            assert lab_["reason"] in ("length", "empty", "timeout"), lab_
    # 04 runs on whatever the small teacher produced: with accepted labels it writes every one of
    # them into a split; with none it must refuse with its one-line error, not write empty splits.
    accepted = [l for l in labels if l["verdict"] == "accepted"]
    capsys.readouterr()
    rc = S04.main(["--synthetic-dir", str(syn), "--labeled-dir", str(lab), "--output-dir", str(ds),
                   "--dedupe-threshold", "100"])
    if accepted:
        assert rc == 0
        stats = json.loads((ds / "stats.json").read_text())
        rows = [json.loads(l) for s in ("train", "val", "test") for l in (ds / f"{s}.jsonl").read_text().splitlines()]
        assert len(rows) == len(accepted) - stats["near_duplicates_dropped"] and rows
        assert {r["id"] for r in rows} <= {l["id"] for l in accepted}
    else:
        assert rc == 1 and not (ds / "manifest.json").exists()
        assert "error: no accepted labels in" in capsys.readouterr().err
