"""distill.llm with several endpoints (several --base-url): least busy first, a failing one skipped."""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.cli import add_llm_args, llm_config_from_args
from distill.io import StageError
from distill.llm import Completion, LLMClient, LLMConfig, LLMError, LLMUnavailable, run_concurrently
from fake_openai_server import FakeOpenAIServer, error, free_port
from test_llm import _clients, _close_clients  # noqa: F401 - the autouse fixture closing made clients

SCHEMA = {"title": "Recipe", "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def make_client(*urls: str, **kw) -> LLMClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 2)
    client = LLMClient(LLMConfig(base_urls=urls, model=kw.pop("model", "teacher"), **kw))
    _clients.append(client)
    return client


def ask_all(client: LLMClient, n: int, concurrency: int, schema: dict | None = None) -> dict[int, Completion | Exception]:
    async def ask(i: int):
        return await client.acomplete([{"role": "user", "content": f"item {i}"}], response_schema=schema)

    return dict(run_concurrently(range(n), ask, concurrency=concurrency, progress=False))


def by_url(client: LLMClient) -> dict[str, dict]:
    return {s["url"]: s for s in client.endpoint_stats()}


def test_requests_go_to_the_least_busy_endpoint_and_are_counted_per_endpoint():
    with FakeOpenAIServer(delay=0.05) as a, FakeOpenAIServer(delay=0.05) as b:
        client = make_client(a.url, b.url, concurrency=8)
        results = ask_all(client, 32, concurrency=8)
        assert [results[i].content for i in range(32)] == [f"item {i}" for i in range(32)]
        stats = by_url(client)
        assert stats[a.url]["requests"] == len(a.history) and stats[b.url]["requests"] == len(b.history)
        assert len(a.history) + len(b.history) == 32
        # Equally fast servers: each holds half of what is in flight, so each serves about half.
        assert 12 <= len(a.history) <= 20 and a.max_active <= 5 and b.max_active <= 5
        assert all(s["errors"] == s["moved_on"] == s["cooldowns"] == 0 for s in stats.values())


def test_a_faster_endpoint_takes_more_of_the_requests():
    with FakeOpenAIServer(delay=0.01) as fast, FakeOpenAIServer(delay=0.2) as slow:
        client = make_client(fast.url, slow.url, concurrency=2)
        assert all(isinstance(r, Completion) for r in ask_all(client, 20, concurrency=2).values())
        assert len(fast.history) > 3 * len(slow.history) and len(slow.history) >= 1


@pytest.mark.parametrize("failing", ["refusing", "http_500"])
def test_a_failing_endpoint_is_skipped_and_every_item_succeeds_with_the_same_results(failing):
    with FakeOpenAIServer() as good, FakeOpenAIServer(lambda body: error(500)) as broken:
        bad_url = f"http://127.0.0.1:{free_port()}/v1" if failing == "refusing" else broken.url
        client = make_client(bad_url, good.url, concurrency=4, retries=1)
        results = ask_all(client, 24, concurrency=4)
        alone = ask_all(make_client(good.url, concurrency=4), 24, concurrency=4)
        assert [results[i].content for i in range(24)] == [alone[i].content for i in range(24)]  # nothing lost
        assert len(good.history) == 48  # 24 of ours (every one answered there) + the 24 alone
        bad, ok = by_url(client)[bad_url], by_url(client)[good.url]
        # Only the first requests reached the failing endpoint: then it was skipped for the cooldown.
        assert 1 <= bad["requests"] <= 4 and bad["errors"] == bad["moved_on"] == bad["requests"]
        assert bad["cooldowns"] == 1
        assert ok["requests"] == 24 and ok["errors"] == 0
        if failing == "http_500":
            assert len(broken.history) == 2 * bad["requests"]  # each one tried, then retried once
        # A request's body is the same whichever endpoint took it.
        assert {r["messages"][0]["content"] for r in broken.history} <= {f"item {i}" for i in range(24)}


def test_after_the_cooldown_a_still_failing_endpoint_gets_one_trial_request_at_a_time():
    def slow_500(body):
        time.sleep(0.3)
        return error(500)

    with FakeOpenAIServer() as good, FakeOpenAIServer(slow_500) as bad:
        client = make_client(bad.url, good.url, concurrency=8, retries=0, endpoint_cooldown=0.2)
        assert all(isinstance(r, Completion) for r in ask_all(client, 2, concurrency=2).values())
        assert len(bad.history) == 1 and by_url(client)[bad.url]["cooldowns"] == 1
        time.sleep(0.25)  # the cooldown is over
        assert all(isinstance(r, Completion) for r in ask_all(client, 16, concurrency=8).values())
        # The wave of 8 found it suspect: one trial request, the rest to the good endpoint.
        assert len(bad.history) == 2 and by_url(client)[bad.url]["cooldowns"] == 2


def test_an_endpoint_that_recovers_is_used_again_after_the_cooldown():
    state = {"down": True}

    def flaky(body):
        return error(503) if state["down"] else "back"

    with FakeOpenAIServer() as good, FakeOpenAIServer(flaky) as back:
        client = make_client(back.url, good.url, concurrency=4, retries=0, endpoint_cooldown=0.1)
        assert all(isinstance(r, Completion) for r in ask_all(client, 8, concurrency=4).values())
        state["down"] = False
        time.sleep(0.15)
        before = len(back.history)
        results = ask_all(client, 40, concurrency=4)
        assert all(isinstance(r, Completion) for r in results.values())
        assert sum(r.content == "back" for r in results.values()) == len(back.history) - before >= 5


def test_the_structured_output_mode_is_remembered_per_endpoint():
    with FakeOpenAIServer(refuse_formats={"json_schema": 400}) as llama, FakeOpenAIServer() as vllm:
        client = make_client(llama.url, vllm.url, concurrency=4)
        results = ask_all(client, 16, concurrency=4, schema=SCHEMA)
        assert all(isinstance(r, Completion) for r in results.values())
        assert llama.formats().count("json_schema") == 1  # probed once, refused, never again
        assert set(llama.formats()) == {"json_schema", "json_object"} and set(vllm.formats()) == {"json_schema"}
        modes = {s["url"]: s["response_format"] for s in client.endpoint_stats()}
        assert modes == {llama.url: "json_object", vllm.url: "json_schema"}
        # A refused format is not an endpoint failure.
        assert by_url(client)[llama.url]["cooldowns"] == 0


def test_a_request_every_endpoint_fails_is_an_error_and_all_down_stops_the_run():
    with FakeOpenAIServer(lambda body: error(502)) as a, FakeOpenAIServer(lambda body: error(503)) as b:
        client = make_client(a.url, b.url, retries=0)
        with pytest.raises(LLMError) as ei:
            client.complete([{"role": "user", "content": "x"}])
        assert ei.value.reason in ("http_502", "http_503") and len(a.history) == len(b.history) == 1
    down = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    client = make_client(*down, retries=0)
    with pytest.raises(LLMUnavailable) as ei:
        list(ask_all(client, 4, concurrency=2))
    msg = str(ei.value)
    assert "none of the 2 endpoints answers" in msg and down[0] in msg and down[1] in msg and "\n" not in msg


def test_a_cooldown_of_0_never_skips_but_still_moves_the_failed_request_on():
    with FakeOpenAIServer(lambda body: error(503)) as bad, FakeOpenAIServer() as good:
        client = make_client(bad.url, good.url, concurrency=1, retries=0, endpoint_cooldown=0)
        assert all(isinstance(r, Completion) for r in ask_all(client, 5, concurrency=1).values())
        assert len(bad.history) == 5 and len(good.history) == 5  # every request tried there first
        assert by_url(client)[bad.url]["cooldowns"] == 0 and by_url(client)[bad.url]["moved_on"] == 5


def test_a_4xx_is_not_an_endpoint_failure():
    with FakeOpenAIServer(lambda body: error(400, "bad request")) as a, FakeOpenAIServer() as b:
        client = make_client(a.url, b.url, concurrency=1)
        with pytest.raises(LLMError, match="http_400"):
            client.complete([{"role": "user", "content": "x"}])  # a tie goes to the first endpoint
        assert len(b.history) == 0 and by_url(client)[a.url]["cooldowns"] == 0


def test_ping_skips_an_unreachable_endpoint_but_stops_on_a_wrong_url(caplog):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAIServer(models=("qwen3-8b",)) as srv:
        client = make_client(dead, srv.url, model="")
        with caplog.at_level(logging.WARNING, logger="distill.llm"):
            assert client.ping() == ["qwen3-8b"]
        assert client.model == "qwen3-8b" and f"endpoint {dead} failed" in caplog.text
        assert by_url(client)[dead]["cooldowns"] == 1
        assert client.complete([{"role": "user", "content": "x"}]).content == "x"
        assert by_url(client)[dead]["requests"] == 0  # skipped from the start

        wrong = srv.url[: -len("/v1")]  # forgot the /v1: 404, a setting to fix, not a server to skip
        with pytest.raises(LLMUnavailable, match=r"http_404.*ending in /v1"):
            make_client(srv.url, wrong).ping()

        with pytest.raises(LLMUnavailable, match="none of the 2 endpoints answers"):
            make_client(dead, f"http://127.0.0.1:{free_port()}/v1", retries=0).ping()


def test_ping_warns_when_an_endpoint_does_not_list_the_model(caplog):
    with FakeOpenAIServer(models=("qwen3-8b",)) as a, FakeOpenAIServer(models=("Qwen/Qwen3-8B",)) as b:
        with caplog.at_level(logging.WARNING, logger="distill.llm"):
            make_client(a.url, b.url, model="qwen3-8b").ping()
        assert f"endpoint {b.url} does not list model qwen3-8b" in caplog.text and a.url not in caplog.text


def test_several_base_urls_on_the_command_line():
    p = argparse.ArgumentParser()
    add_llm_args(p)
    one = p.parse_args([])
    assert len(one.base_url) == 1 and one.endpoint_cooldown == 30
    args = p.parse_args(["--base-url", "http://a:1/v1", "--base-url", "http://b:2/v1/", "--endpoint-cooldown", "5"])
    cfg = llm_config_from_args(args)
    assert cfg.base_urls == ("http://a:1/v1", "http://b:2/v1") and cfg.base_url == "http://a:1/v1"
    assert cfg.endpoint_cooldown == 5
    with pytest.raises(SystemExit):
        p.parse_args(["--base-url", "http://a:1/v1", "--base-url", "http://a:1/v1"])
    with pytest.raises(SystemExit):
        p.parse_args(["--endpoint-cooldown", "-1"])
    with pytest.raises(StageError, match="more than once"):
        LLMConfig(base_urls=("http://a:1/v1", "http://a:1/v1/"))
    with pytest.raises(StageError, match="needs http"):
        LLMConfig(base_urls=("http://a:1/v1", "b:2/v1"))


def test_a_process_that_never_closes_its_client_exits_without_unclosed_session_noise():
    # Stages keep one client for the whole process and never close it: at exit its HTTP sessions
    # are closed for it, instead of aiohttp printing "Unclosed client session" for each.
    with FakeOpenAIServer() as srv:
        code = ("import sys\nfrom distill.llm import LLMClient, LLMConfig\n"
                "c = LLMClient(LLMConfig(base_url=sys.argv[1], model='m', concurrency=4))\n"
                "print(c.complete([{'role': 'user', 'content': 'hi'}]).content)\n")
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run([sys.executable, "-c", code, srv.url], capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0 and r.stdout.strip() == "hi", r.stderr
    assert "Unclosed" not in r.stderr, r.stderr
    # nor when the client is dropped before the exit (a stage's main returned; 02 and 03 printed
    # it in every demo run while the sessions were only weakly held)
    with FakeOpenAIServer() as srv:
        code = ("import gc, sys\nfrom distill.llm import LLMClient, LLMConfig\n"
                "def stage():\n"
                "    c = LLMClient(LLMConfig(base_url=sys.argv[1], model='m', concurrency=4))\n"
                "    print(c.complete([{'role': 'user', 'content': 'hi'}]).content)\n"
                "stage()\ngc.collect()\n")
        r = subprocess.run([sys.executable, "-c", code, srv.url], capture_output=True, text=True, timeout=60, cwd=root)
    assert r.returncode == 0 and r.stdout.strip() == "hi", r.stderr
    assert "Unclosed" not in r.stderr, r.stderr
