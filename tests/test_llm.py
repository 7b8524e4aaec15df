"""distill.llm against a real HTTP server that injects faults (tests/fake_openai_server.py)."""
from __future__ import annotations

import _thread
import json
import signal
import time

import pytest

from distill.io import StageError
from distill.llm import (
    Completion,
    LLMAuthError,
    LLMBadModelList,
    LLMClient,
    LLMConfig,
    LLMError,
    LLMUnavailable,
    RunStats,
    run_concurrently,
    split_reasoning,
)
from fake_openai_server import (  # noqa: F401  (fake_server is a fixture)
    FakeOpenAIServer,
    drop,
    error,
    fake_server,
    fenced,
    free_port,
    hang,
    json_reply,
    raw,
    reply,
)

SCHEMA = {
    "title": "Recipe extraction",
    "type": "object",
    "properties": {"name": {"type": "string"}, "servings": {"type": "integer"}},
    "required": ["name"],
}
MSGS = [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Pancakes for 4"}]


_clients: list[LLMClient] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


def make_client(url: str, **kw) -> LLMClient:
    """A client with tiny backoff so retry tests take milliseconds; closed after each test."""
    kw.setdefault("backoff", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 3)
    client = LLMClient(LLMConfig(base_url=url, model=kw.pop("model", "teacher"), **kw))
    _clients.append(client)
    return client


# --------------------------------------------------------------------------- split_reasoning


@pytest.mark.parametrize(
    "message, expected",
    [
        ({"content": '{"a": 1}'}, (None, '{"a": 1}')),
        ({"content": "<think>count eggs</think>\n{\"a\": 1}"}, ("count eggs", '{"a": 1}')),
        # Qwen3-style template: <think> was in the prompt, only the closing tag is generated
        ({"content": "count eggs\nthen flour</think>\n\n{\"a\": 1}"}, ("count eggs\nthen flour", '{"a": 1}')),
        # unterminated: cut off while thinking, no answer yet
        ({"content": "<think>count eggs, then"}, ("count eggs, then", "")),
        ({"content": '{"a": 1}', "reasoning_content": "from the field"}, ("from the field", '{"a": 1}')),
        ({"content": '{"a": 1}', "reasoning": "ollama style"}, ("ollama style", '{"a": 1}')),
        ({"content": None, "reasoning_content": "only thoughts"}, ("only thoughts", "")),
        ({"content": "<think>\n\n</think>\n\nok"}, (None, "ok")),  # empty think block (thinking off)
        ({"content": "  ok  ", "reasoning_content": "   "}, (None, "ok")),
        ({"content": "<think>a</think>x<think>b</think>y"}, ("a\n\nb", "xy")),
        ({"content": "ok", "reasoning_content": "same", "reasoning": "same"}, ("same", "ok")),
        ({"content": [{"type": "text", "text": "<think>r</think>"}, {"type": "text", "text": "ok"}]}, ("r", "ok")),
    ],
)
def test_split_reasoning(message, expected):
    assert split_reasoning(message) == expected


def test_split_reasoning_joins_field_and_inline_tags():
    reasoning, content = split_reasoning({"content": "<think>inline</think>ok", "reasoning_content": "field"})
    assert reasoning == "field\n\ninline" and content == "ok"


# --------------------------------------------------------------------------- basic requests


def test_plain_completion_fields_and_request_body(fake_server):
    fake_server.push(reply("hello", usage={"prompt_tokens": 7, "completion_tokens": 2}))
    client = make_client(fake_server.url, temperature=0.2, max_tokens=123, seed=42)
    c = client.complete(MSGS)
    assert isinstance(c, Completion)
    assert (c.content, c.reasoning, c.finish_reason) == ("hello", None, "stop")
    assert c.usage == {"prompt_tokens": 7, "completion_tokens": 2}
    assert c.model == "teacher" and c.raw["choices"][0]["message"]["content"] == "hello"
    assert c.response_format_used == "prompt" and c.attempts == 1
    (body,) = fake_server.history
    assert body["model"] == "teacher" and body["messages"] == MSGS
    assert (body["temperature"], body["max_tokens"], body["seed"], body["stream"]) == (0.2, 123, 42, False)
    assert "response_format" not in body


def test_api_key_sent_as_bearer_token(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    # the server answers 401 unless the header is exactly "Authorization: Bearer sk-local-test"
    with FakeOpenAIServer(api_key="sk-local-test") as srv:
        assert make_client(srv.url).complete(MSGS).content
        with pytest.raises(LLMAuthError):
            make_client(srv.url, api_key="sk-other").complete(MSGS)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert LLMConfig().api_key == "lm-studio"


@pytest.mark.parametrize(
    "behaviour",
    [
        reply('{"name": "Pancakes"}', reasoning_content="The dish is pancakes."),
        reply('{"name": "Pancakes"}', reasoning="The dish is pancakes."),
        reply('<think>The dish is pancakes.</think>\n{"name": "Pancakes"}'),
        reply('The dish is pancakes.\n</think>\n\n{"name": "Pancakes"}'),
        json_reply({"name": "Pancakes"}, reasoning="The dish is pancakes.", think_tags=True),
    ],
    ids=["reasoning_content", "reasoning", "think_tags", "closing_tag_only", "json_reply_tags"],
)
def test_reasoning_from_every_channel(fake_server, behaviour):
    fake_server.push(behaviour)
    c = make_client(fake_server.url).complete(MSGS)
    assert c.reasoning == "The dish is pancakes."
    assert json.loads(c.content) == {"name": "Pancakes"}


def test_fenced_json_is_returned_verbatim_for_the_caller_to_parse(fake_server):
    fake_server.push(fenced({"name": "Pancakes"}))
    c = make_client(fake_server.url).complete(MSGS, response_schema=SCHEMA)
    assert "```json" in c.content and '{"name": "Pancakes"}' in c.content
    assert c.response_format_used == "json_schema"


# --------------------------------------------------------------------------- retries and failures


def test_5xx_is_retried_until_success(fake_server):
    fake_server.push(error(503), error(502), reply("ok"))
    c = make_client(fake_server.url, retries=3).complete(MSGS)
    assert c.content == "ok" and c.attempts == 3
    assert len(fake_server.history) == 3


def test_429_is_retried_and_retry_after_is_honoured(fake_server):
    fake_server.push(error(429, "slow down", headers={"Retry-After": "0.3"}), reply("ok"))
    t0 = time.monotonic()
    c = make_client(fake_server.url, backoff_max=1.0).complete(MSGS)
    assert c.content == "ok" and len(fake_server.history) == 2
    assert time.monotonic() - t0 >= 0.3


def test_5xx_gives_up_after_retries_with_countable_reason(fake_server):
    fake_server.push(*[error(503, "model is loading")] * 10)
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url, retries=2).complete(MSGS)
    assert ei.value.reason == "http_503" and "model is loading" in str(ei.value)
    assert str(ei.value).startswith("http_503: ")
    assert len(fake_server.history) == 3  # first attempt + 2 retries


def test_backoff_grows_exponentially(fake_server):
    fake_server.push(*[error(500)] * 4)
    t0 = time.monotonic()
    with pytest.raises(LLMError):
        make_client(fake_server.url, retries=3, backoff=0.1, backoff_max=10).complete(MSGS)
    # waits of at least 0.05 + 0.1 + 0.2 (each step is jittered within its upper half)
    assert time.monotonic() - t0 >= 0.35


@pytest.mark.parametrize("status", [400, 404, 422])
def test_other_4xx_fail_at_once_without_retry(fake_server, status):
    fake_server.push(error(status, "bad request: messages must not be empty"), reply("never"))
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url).complete(MSGS)
    assert ei.value.reason == f"http_{status}"
    assert "messages must not be empty" in ei.value.detail
    assert len(fake_server.history) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_401_or_403_stops_the_run_and_names_the_api_key(fake_server, status):
    fake_server.push(error(status, "invalid api key"))
    with pytest.raises(LLMAuthError, match=r"check --api-key \(or OPENAI_API_KEY\)") as ei:
        make_client(fake_server.url).complete(MSGS)
    assert isinstance(ei.value, StageError) and f"http {status}" in str(ei.value)
    assert len(fake_server.history) == 1  # not retried


def test_a_wrong_api_key_is_one_error_not_a_failure_per_item():
    # /models open, every chat request refused: the first refusal ends the run.
    with FakeOpenAIServer(api_key="right", open_models=True) as srv:
        client = make_client(srv.url, api_key="wrong", model="")
        client.ping()
        with pytest.raises(LLMAuthError, match="answered POST /chat/completions with http 401"):
            for _ in run_concurrently(range(100), lambda i: client.complete(MSGS), concurrency=2, desc="t"):
                pass
        time.sleep(0.2)
        assert len(srv.history) <= 4  # the window in flight, not 100
        assert make_client(srv.url, api_key="right").complete(MSGS).content  # the right key works


@pytest.mark.parametrize("body, why", [
    ({"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}, "finish_reason": "stop"}]},
     "message content is a int"),
    ({"choices": []}, "no choices"),
    ({"choices": None}, "no choices"),
    ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "choices[0] has no message"),
    ({"choices": [{"index": 0, "message": "hi"}]}, "choices[0] has no message"),
    ([{"content": "a list"}], "not a chat completion object"),
])
def test_malformed_replies_are_a_bad_response_naming_the_fault(fake_server, body, why):
    fake_server.push(raw(body))
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url).complete(MSGS)
    assert ei.value.reason == "bad_response" and why in ei.value.detail


def test_odd_usage_and_reasoning_fields_do_not_lose_an_answer(fake_server):
    fake_server.push(raw({"choices": [{"message": {"content": "ok", "reasoning": 7}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": "many", "completion_tokens": None}}))
    c = make_client(fake_server.url).complete(MSGS)
    assert (c.content, c.reasoning, c.usage) == ("ok", None, {"prompt_tokens": 0, "completion_tokens": 0})


def test_malformed_replies_are_per_item_failures_in_a_run(fake_server):
    fake_server.handler = lambda body: raw({"choices": []}) if "bad" in str(body["messages"]) else "fine"
    client = make_client(fake_server.url)
    msgs = lambda i: [{"role": "user", "content": f"{'bad' if i % 2 else 'good'} {i}"}]  # noqa: E731
    out = dict(run_concurrently(range(6), lambda i: client.complete(msgs(i)), concurrency=2, desc="t"))
    assert sorted(i for i, r in out.items() if isinstance(r, LLMError) and r.reason == "bad_response") == [1, 3, 5]
    assert sorted(i for i, r in out.items() if isinstance(r, Completion)) == [0, 2, 4]


def test_base_url_without_scheme_and_timeout_below_zero_are_refused():
    with pytest.raises(StageError, match="needs http:// or https://"):
        LLMConfig(base_url="localhost:1234/v1")
    with pytest.raises(StageError, match="timeout must be above 0"):
        LLMConfig(timeout=-5)


def test_timeout_is_retried_then_reported(fake_server):
    fake_server.push(hang(5), hang(5), reply("never reached"))
    t0 = time.monotonic()
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url, timeout=0.3, retries=1).complete(MSGS)
    assert ei.value.reason == "timeout"
    assert len(fake_server.history) == 2
    assert time.monotonic() - t0 < 3


def test_timeout_then_success(fake_server):
    fake_server.push(hang(5), reply("ok"))
    assert make_client(fake_server.url, timeout=0.3, retries=2).complete(MSGS).content == "ok"
    assert len(fake_server.history) == 2


def test_dropped_connection_is_retried(fake_server):
    fake_server.push(drop(), reply("ok"))
    c = make_client(fake_server.url).complete(MSGS)
    assert c.content == "ok" and c.attempts == 2


def test_a_connection_dropped_on_every_attempt_is_disconnected_not_unreachable(fake_server):
    # The server is there and drops the connection: a countable "disconnected", not a stop of the
    # stage for a server that cannot be reached (httpx-aiohttp alone reports a connect timeout).
    fake_server.push(drop(), drop())
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url, retries=1).complete(MSGS)
    assert not isinstance(ei.value, LLMUnavailable) and ei.value.reason == "disconnected"
    assert len(fake_server.history) == 2


def test_finish_reason_length_is_a_failure_with_the_partial_answer(fake_server):
    fake_server.push(reply('{"name": "Panc', reasoning_content="long thoughts", finish_reason="length"))
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url, max_tokens=50).complete(MSGS)
    assert ei.value.reason == "length" and "max_tokens=50" in str(ei.value)
    assert ei.value.completion.content == '{"name": "Panc'
    assert ei.value.completion.reasoning == "long thoughts"
    assert len(fake_server.history) == 1  # not retried: the same request would be cut again


def test_unterminated_think_is_length_not_empty(fake_server):
    fake_server.push(reply("<think>still thinking about", finish_reason="length"))
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url).complete(MSGS)
    assert ei.value.reason == "length"
    assert ei.value.completion.reasoning == "still thinking about"


@pytest.mark.parametrize("behaviour", [reply(""), reply(None), reply("  \n"), reply("", reasoning_content="hmm")])
def test_empty_content_is_a_failure(fake_server, behaviour):
    fake_server.push(behaviour)
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url).complete(MSGS)
    assert ei.value.reason == "empty"
    assert ei.value.completion is not None


def test_non_chat_response_is_bad_response(fake_server):
    fake_server.handler = lambda body: error(200, "")  # 200 with an error body and no choices
    with pytest.raises(LLMError) as ei:
        make_client(fake_server.url).complete(MSGS)
    assert ei.value.reason == "bad_response"


# --------------------------------------------------------------------------- server down / ping


def test_server_down_raises_llm_unavailable_quickly():
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = make_client(url, retries=2)
    t0 = time.monotonic()
    with pytest.raises(LLMUnavailable) as ei:
        client.complete(MSGS)
    assert time.monotonic() - t0 < 2
    msg = str(ei.value)
    assert msg.startswith(f"cannot reach {url}") and "running?" in msg and "connection refused" in msg
    assert isinstance(ei.value, StageError)  # scripts print it as one 'error: ...' line
    with pytest.raises(LLMUnavailable, match="cannot reach"):
        client.ping()


def test_ping_lists_models_and_resolves_an_empty_model():
    with FakeOpenAIServer(models=("qwen3-8b", "other")) as srv:
        client = make_client(srv.url, model="")
        assert client.ping() == ["qwen3-8b", "other"]
        assert client.model == "qwen3-8b"
        client.complete(MSGS)
        assert srv.history[0]["model"] == "qwen3-8b"
        assert srv.paths[0] == "GET /v1/models"

        lazy = make_client(srv.url, model="")
        lazy.complete(MSGS)  # no ping first: the model is resolved on the first request
        assert srv.history[-1]["model"] == "qwen3-8b"

        configured = make_client(srv.url, model="my-model")
        configured.ping()
        assert configured.model == "my-model"  # kept: servers may load it on demand


def test_models_with_data_null_is_one_clear_error_unless_a_model_is_given():
    with FakeOpenAIServer(models_body={"object": "list", "data": None}) as srv:
        with pytest.raises(LLMBadModelList, match=r"did not return an OpenAI model list.*pass --model") as ei:
            make_client(srv.url, model="").ping()
        assert isinstance(ei.value, StageError)
        configured = make_client(srv.url, model="teacher")
        assert configured.ping() == [] and configured.complete(MSGS).content  # the list is not needed


def test_ping_on_a_wrong_base_url_says_so(fake_server):
    base = fake_server.url[: -len("/v1")]  # forgot the /v1
    with pytest.raises(LLMUnavailable, match=r"http_404.*ending in /v1"):
        make_client(base).ping()


# --------------------------------------------------------------------------- response_format fallback


def test_json_schema_is_tried_first_and_shaped_for_openai(fake_server):
    fake_server.push(json_reply({"name": "Pancakes"}), json_reply({"name": "Waffles"}))
    client = make_client(fake_server.url)
    c = client.complete(MSGS, response_schema=SCHEMA)
    client.complete(MSGS, response_schema=SCHEMA)
    assert c.response_format_used == "json_schema" and client.response_format_mode == "json_schema"
    rf = fake_server.history[0]["response_format"]
    assert rf == {"type": "json_schema", "json_schema": {"name": "Recipe_extraction", "schema": SCHEMA, "strict": True}}
    assert fake_server.formats() == ["json_schema", "json_schema"]


@pytest.mark.parametrize("status", [400, 422])
def test_fallback_to_json_object_is_remembered(status):
    with FakeOpenAIServer(refuse_formats={"json_schema": status}) as srv:
        client = make_client(srv.url)
        c1 = client.complete(MSGS, response_schema=SCHEMA)
        c2 = client.complete(MSGS, response_schema=SCHEMA)
        assert c1.response_format_used == c2.response_format_used == "json_object"
        assert srv.formats() == ["json_schema", "json_object", "json_object"]
        assert srv.history[1]["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_one_bare_500_on_the_first_request_keeps_json_schema(fake_server):
    fake_server.push(error(500, "Internal Server Error"))
    client = make_client(fake_server.url)
    c1 = client.complete(MSGS, response_schema=SCHEMA)
    c2 = client.complete(MSGS, response_schema=SCHEMA)
    assert c1.response_format_used == c2.response_format_used == client.response_format_mode == "json_schema"
    assert c1.attempts == 2 and fake_server.formats() == ["json_schema"] * 3


def test_a_bare_500_without_retries_fails_the_request_and_pins_nothing(fake_server):
    fake_server.push(error(500, "Internal Server Error"))
    client = make_client(fake_server.url, retries=0)
    with pytest.raises(LLMError, match="http_500"):
        client.complete(MSGS, response_schema=SCHEMA)
    assert client.response_format_mode is None
    assert client.complete(MSGS, response_schema=SCHEMA).response_format_used == "json_schema"


def test_a_500_that_names_the_format_falls_back_at_once(fake_server):
    fake_server.push(error(500, "Unsupported response_format type: json_schema"))
    client = make_client(fake_server.url)
    assert client.complete(MSGS, response_schema=SCHEMA).response_format_used == "json_object"
    assert fake_server.formats() == ["json_schema", "json_object"]


def test_full_chain_down_to_prompting_with_llama_cpp_python_500():
    # llama-cpp-python: a bare 500 for json_schema on every attempt; and json_object refused by name
    with FakeOpenAIServer(refuse_formats={"json_schema": 500, "json_object": 400}) as srv:
        client = make_client(srv.url, retries=3)
        c1 = client.complete(MSGS, response_schema=SCHEMA)
        c2 = client.complete(MSGS, response_schema=SCHEMA)
        assert c1.response_format_used == c2.response_format_used == "prompt"
        assert client.response_format_mode == "prompt"
        # the bare 500 is retried (it could be a hiccup), the named refusal is not, and the
        # probe is not paid again
        assert srv.formats() == ["json_schema"] * 4 + ["json_object", None, None]


def test_lm_studio_refusing_json_object_keeps_json_schema():
    with FakeOpenAIServer(refuse_formats={"json_object": 400}) as srv:
        client = make_client(srv.url)
        client.complete(MSGS, response_schema=SCHEMA)
        assert client.response_format_mode == "json_schema" and srv.formats() == ["json_schema"]


def test_once_the_mode_is_known_a_500_is_retried_not_a_fallback(fake_server):
    client = make_client(fake_server.url)
    client.complete(MSGS, response_schema=SCHEMA)
    fake_server.push(error(500, "CUDA out of memory"), reply('{"name": "x"}'))
    c = client.complete(MSGS, response_schema=SCHEMA)
    assert c.response_format_used == "json_schema" and c.attempts == 2
    assert fake_server.formats() == ["json_schema"] * 3


def test_a_transient_failure_during_the_probe_does_not_pin_a_mode(fake_server):
    fake_server.push(error(503), error(503))
    client = make_client(fake_server.url, retries=1)
    with pytest.raises(LLMError, match="http_503"):
        client.complete(MSGS, response_schema=SCHEMA)
    assert client.response_format_mode is None
    client.complete(MSGS, response_schema=SCHEMA)
    assert client.response_format_mode == "json_schema"


def test_truncated_answer_still_pins_the_accepted_mode():
    with FakeOpenAIServer(refuse_formats={"json_schema": 400}) as srv:
        srv.push(reply('{"na', finish_reason="length"))
        client = make_client(srv.url)
        with pytest.raises(LLMError, match="length"):
            client.complete(MSGS, response_schema=SCHEMA)
        assert client.response_format_mode == "json_object"


def test_concurrent_first_requests_probe_only_once():
    with FakeOpenAIServer(refuse_formats={"json_schema": 400}, delay=0.05) as srv:
        client = make_client(srv.url, concurrency=8)
        results = list(run_concurrently(range(8), lambda i: client.complete(MSGS, SCHEMA), concurrency=8, desc="t"))
        assert all(isinstance(r, Completion) for _, r in results)
        assert srv.formats().count("json_schema") == 1
        assert srv.formats().count("json_object") == 8


def test_forced_mode_skips_the_probe(fake_server):
    client = make_client(fake_server.url, response_format="prompt")
    c = client.complete(MSGS, response_schema=SCHEMA)
    assert c.response_format_used == "prompt" and fake_server.formats() == [None]
    with pytest.raises(StageError, match="response_format"):
        LLMConfig(response_format="grammar")


def test_forced_json_schema_refused_is_an_ordinary_error():
    with FakeOpenAIServer(refuse_formats={"json_schema": 400}) as srv:
        client = make_client(srv.url, response_format="json_schema")
        with pytest.raises(LLMError) as ei:
            client.complete(MSGS, response_schema=SCHEMA)
        assert ei.value.reason == "http_400" and "response_format" in ei.value.detail


# --------------------------------------------------------------------------- run_concurrently / RunStats


def test_run_concurrently_yields_every_item_with_results_and_errors():
    def handler(body):
        text = body["messages"][-1]["content"]
        return error(400, "bad item") if text == "3" else f"echo {text}"

    with FakeOpenAIServer(handler, slots=3, delay=0.05) as srv:
        client = make_client(srv.url)
        out = dict(
            run_concurrently(
                [str(i) for i in range(10)],
                lambda t: client.complete([{"role": "user", "content": t}]),
                concurrency=3,
                desc="test",
            )
        )
        assert set(out) == {str(i) for i in range(10)}
        assert isinstance(out["3"], LLMError) and out["3"].reason == "http_400"
        assert out["7"].content == "echo 7"
        assert srv.max_active == 3  # bounded by the pool, and the pool filled the slots


def test_run_concurrently_accepts_a_lazy_iterable():
    gen = (i for i in range(20))
    got = sorted(r for _, r in run_concurrently(gen, lambda i: i * i, concurrency=2, desc="t"))
    assert got == [i * i for i in range(20)]


def test_run_concurrently_stops_on_unavailable_server():
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = make_client(url, retries=0)
    calls = []

    def fn(i):
        calls.append(i)
        return client.complete(MSGS)

    with pytest.raises(LLMUnavailable):
        for _ in run_concurrently(range(100), fn, concurrency=2, desc="t"):
            pass
    time.sleep(0.2)
    assert len(calls) <= 4  # the window ahead, not all 100


def test_leaving_the_loop_cancels_pending_work():
    with FakeOpenAIServer(slots=2, delay=0.1) as srv:
        client = make_client(srv.url)
        for n, _ in enumerate(run_concurrently(range(50), lambda i: client.complete(MSGS), concurrency=2, desc="t")):
            if n == 1:
                break
        time.sleep(0.5)  # let in-flight requests finish
        assert len(srv.history) <= 6  # 2 done + at most the submitted window, never 50


def test_ctrl_c_cancels_pending_work_and_keeps_what_was_yielded():
    # Python's own Ctrl-C handler: libraries imported by earlier tests (W&B, Unsloth) may have
    # installed theirs, which would swallow the simulated Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_run()
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_run():
    with FakeOpenAIServer(slots=2, delay=0.1) as srv:
        client = make_client(srv.url)
        received = []
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            for item, _result in run_concurrently(range(100), lambda i: client.complete(MSGS), concurrency=2, desc="t"):
                received.append(item)
                if len(received) == 3:
                    # A real KeyboardInterrupt, delivered to the main thread as Ctrl-C is; tied to
                    # progress rather than a timer so a loaded machine cannot change the outcome.
                    _thread.interrupt_main()
        assert time.monotonic() - t0 < 10  # returns promptly, not after 100 requests (~5 s)
        time.sleep(0.3)
        assert 3 <= len(received) < 20
        assert len(srv.history) <= len(received) + 4


def test_ctrl_c_against_a_hanging_server_returns_at_once_and_abandons_the_requests():
    # The server sits on every request for 60 s (the client would wait up to its 60 s timeout).
    # Ctrl-C (a real SIGINT to the main thread, blocked waiting for results) must return within a
    # second or two, and the workers still waiting are daemon threads, so exiting the process
    # does not wait for them either (the subprocess test in test_bad_inputs.py measures that).
    import threading

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with FakeOpenAIServer(lambda body: hang(60)) as srv:
            client = make_client(srv.url, timeout=60, retries=0)
            sent = []

            def ctrl_c_when_both_requests_hang():
                while len(srv.history) < 2:
                    time.sleep(0.01)
                sent.append(time.monotonic())
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

            threading.Thread(target=ctrl_c_when_both_requests_hang, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                for _ in run_concurrently(range(10), lambda i: client.complete(MSGS), concurrency=2, desc="t"):
                    pass
            assert time.monotonic() - sent[0] < 3
            workers = [t for t in threading.enumerate() if t.name.startswith("llm_")]
            assert workers and all(t.daemon for t in workers)
            assert len(srv.history) == 2  # nothing queued was started after Ctrl-C
    finally:
        signal.signal(signal.SIGINT, previous)


def test_run_stats_counts_and_summary():
    stats = RunStats()
    c = Completion("x", None, "stop", {"prompt_tokens": 10, "completion_tokens": 5}, "m", {}, "json_schema")
    stats.ok(c)
    stats.ok(c)
    stats.skip(3)
    stats.fail(LLMError("timeout"))
    stats.fail(LLMError("length", "cut", completion=c))
    stats.fail("schema_invalid", c)
    stats.fail(ValueError("boom"))
    assert (stats.done, stats.skipped, stats.requests) == (2, 3, 6)
    assert stats.failed == {"timeout": 1, "length": 1, "schema_invalid": 1, "ValueError": 1}
    assert (stats.prompt_tokens, stats.completion_tokens) == (40, 20)
    assert stats.all_failed() is None  # some succeeded
    s = stats.summary()
    assert "done 2, skipped 3, failed 4" in s and "timeout 1" in s and "6 requests" in s and "40 prompt" in s
    d = stats.as_dict()
    assert d["failed"]["length"] == 1 and d["requests"] == 6 and d["elapsed_s"] >= 0
    json.dumps(d)  # goes into manifests

    nothing = RunStats()
    assert nothing.all_failed() is None  # nothing asked: not a failure
    nothing.fail(LLMError("timeout"))
    nothing.fail(LLMError("timeout"))
    assert nothing.all_failed() == "error: all 2 requests failed (timeout 2); nothing new was written"
    # A re-run that skips finished items and fails the earlier failures again: the stage is as the
    # earlier run left it (done with some failures), not a run where nothing worked.
    rerun = RunStats()
    rerun.skip()
    rerun.fail(LLMError("length", "cut"))
    assert rerun.all_failed() is None


# --------------------------------------------------------------------------- coroutines on the event loop


def test_async_fn_keeps_exactly_concurrency_requests_in_flight_on_one_thread():
    import threading

    with FakeOpenAIServer(slots=64, delay=0.3) as srv:
        client = make_client(srv.url, concurrency=32)

        async def ask(i):
            return await client.acomplete([{"role": "user", "content": str(i)}])

        t0 = time.monotonic()
        out = dict(run_concurrently(range(64), ask, concurrency=32, desc="t"))
        elapsed = time.monotonic() - t0
        assert sorted(out) == list(range(64)) and all(out[i].content == str(i) for i in out)
        assert srv.max_active == 32  # the window filled the server, and never more than it
        assert elapsed < 0.3 * 64 / 4  # two waves of 0.3 s, far from one at a time
        # one event loop thread, no pool of workers
        assert [t.name for t in threading.enumerate() if t.name.startswith("llm_")] == ["llm_loop"]


def test_async_fn_errors_are_yielded_and_fatal_ones_raised():
    def handler(body):
        return error(400, "bad item") if body["messages"][-1]["content"] == "3" else "fine"

    with FakeOpenAIServer(handler) as srv:
        client = make_client(srv.url)

        async def ask(i):
            return await client.acomplete([{"role": "user", "content": str(i)}])

        out = dict(run_concurrently(range(6), ask, concurrency=3, desc="t"))
        assert isinstance(out[3], LLMError) and out[3].reason == "http_400"
        assert all(isinstance(out[i], Completion) for i in (0, 1, 2, 4, 5))
    down = make_client(f"http://127.0.0.1:{free_port()}/v1", retries=0)

    async def ask_down(i):
        return await down.acomplete(MSGS)

    with pytest.raises(LLMUnavailable, match="cannot reach"):
        for _ in run_concurrently(range(50), ask_down, concurrency=2, desc="t"):
            pass


def test_a_plain_function_returning_a_coroutine_is_refused():
    client = make_client(f"http://127.0.0.1:{free_port()}/v1")
    out = list(run_concurrently([1], lambda i: client.acomplete(MSGS), concurrency=1, desc="t"))
    assert isinstance(out[0][1], TypeError) and "async def" in str(out[0][1])


def test_ctrl_c_abandons_hundreds_of_coroutines_in_flight_within_a_second():
    import threading

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with FakeOpenAIServer(lambda body: hang(60)) as srv:
            client = make_client(srv.url, timeout=60, retries=0, concurrency=200)
            sent = []

            async def ask(i):
                return await client.acomplete(MSGS)

            def ctrl_c_when_all_hang():
                deadline = time.monotonic() + 30
                while len(srv.history) < 200 and time.monotonic() < deadline:
                    time.sleep(0.01)
                sent.append(time.monotonic())
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

            threading.Thread(target=ctrl_c_when_all_hang, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                for _ in run_concurrently(range(1000), ask, concurrency=200, desc="t"):
                    pass
            assert time.monotonic() - sent[0] < 1.0
            assert len(srv.history) == 200  # nothing queued was started after Ctrl-C
    finally:
        signal.signal(signal.SIGINT, previous)


def test_blocking_complete_works_from_many_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    with FakeOpenAIServer(slots=8, delay=0.05) as srv:
        client = make_client(srv.url)
        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda i: client.complete([{"role": "user", "content": str(i)}]).content, range(16)))
        assert got == [str(i) for i in range(16)]
