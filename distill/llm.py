"""OpenAI-compatible chat client for local servers, on the ``openai`` SDK, plus concurrency helpers.

Works against any server that speaks ``POST /v1/chat/completions``:

  LM Studio          http://localhost:1234/v1   (default)
  Ollama             http://localhost:11434/v1
  vLLM               http://localhost:8000/v1
  llama.cpp server   http://localhost:8080/v1

Typical use in a stage::

    client = LLMClient(LLMConfig(base_url=args.base_url, model=args.model))   # or base_urls=(a, b, ...)
    client.ping()                                   # clear error if the server is down
    stats = RunStats()

    async def ask(item):                            # runs on the one event loop
        return await client.acomplete(msgs(item), response_schema=schema)

    for item, result in run_concurrently(items, ask, concurrency=client.config.concurrency, desc="labeling"):
        if isinstance(result, LLMError):
            stats.fail(result)                      # counted by result.reason: timeout, length, http_400, ...
            continue
        write_json(out / f"{item['id']}.json", {...})   # one atomic write per result, as it arrives
        stats.ok(result)
    print(stats.summary())

Design notes:

* ``openai.AsyncOpenAI`` builds the requests and does the timeouts and the retries; the bytes go
  over aiohttp (:class:`_AiohttpTransport`). All requests of the process
  run on one event loop in a daemon thread (:func:`event_loop`), so ``--concurrency 512`` is 512
  coroutines, not 512 threads, and Ctrl-C abandons them at once. ``complete()`` is the blocking
  form of ``acomplete()`` for code that is not async.
* Retries are the SDK's, configured from ``--retries``; which failures are retried and how long
  to wait are ours (:class:`_OpenAI`): connection errors, timeouts, 429 and 5xx, with capped
  exponential backoff and jitter; a server's Retry-After wins if longer. Other 4xx fail at once.
* Replies are read from the raw HTTP response, not the SDK's models, so a malformed reply is a
  countable ``bad_response`` naming what was wrong, and odd fields never lose an answer.
* Structured output: ``json_schema`` first, then ``json_object`` (+ schema, llama.cpp style), then
  plain prompting. The first mode the server accepts is remembered for the client's lifetime;
  only a reply that names the format switches it (a bare 500 only when every attempt was one).
* Several endpoints (``base_urls``, several ``--base-url``): each request goes to the endpoint
  with the fewest requests in flight. One that fails (cannot be reached, drops the connection, or
  answers 5xx after its retries) is skipped for ``endpoint_cooldown`` seconds, then gets a single
  trial request before it is used fully again; the failed request moves to another endpoint. The
  request sent is the same whichever endpoint takes it, and every endpoint has its own
  structured-output mode (servers differ in what they accept).
* Reasoning ("thinking") is separated from the answer whichever channel the server uses; see
  :func:`split_reasoning`.
"""
from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import inspect
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Iterable, Iterator, TypeVar

import httpx

from distill import answers
from distill.io import StageError

if TYPE_CHECKING:  # the SDK and aiohttp load with the first client (a second of imports --help need not pay)
    import openai

log = logging.getLogger("distill.llm")

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_BASE_URL = "http://localhost:1234/v1"
RESPONSE_FORMATS = ("json_schema", "json_object", "prompt")

# Words in an error body that show the server objected to response_format rather than to the
# request as a whole (LM Studio: "'response_format.type' must be 'json_schema'", llama.cpp forks:
# "response_format type must be one of ...", llama-cpp-python's validation errors).
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar")


def _default_api_key() -> str:
    return os.environ.get("OPENAI_API_KEY") or "lm-studio"


@dataclass
class LLMConfig:
    """Connection and sampling settings for one OpenAI-compatible server (or several: ``base_urls``)."""

    base_url: str = DEFAULT_BASE_URL  # the first (or only) endpoint
    # Every endpoint when there are several (then base_url is set to the first); () = just base_url.
    base_urls: tuple[str, ...] = ()
    model: str = ""  # "" = the first model the server lists (resolved by ping())
    api_key: str = field(default_factory=_default_api_key)
    temperature: float = 0.7
    max_tokens: int = 4096
    timeout: float = 300.0  # seconds per request (local reasoning models are slow)
    retries: int = 4  # extra attempts after the first, for transient failures only
    concurrency: int = 4  # requests in flight; match the server's slots / parallel setting
    seed: int | None = None
    # "auto" probes json_schema -> json_object -> prompt; or force one of RESPONSE_FORMATS.
    response_format: str = "auto"
    # Extra request fields for server-specific sampling options, e.g. llama.cpp's
    # {"repeat_penalty": 1.15} or vLLM's {"repetition_penalty": 1.1}; sent as they are.
    extra_body: dict = field(default_factory=dict)
    backoff: float = 1.0  # first retry wait (s); doubles each attempt, plus jitter
    backoff_max: float = 30.0  # cap on one wait (s)
    # Seconds an endpoint that failed is skipped while others remain (0 = never skipped).
    endpoint_cooldown: float = 30.0

    def __post_init__(self) -> None:
        urls = tuple(u.rstrip("/") for u in (self.base_urls or (self.base_url,)))
        for url in urls:
            if not re.match(r"https?://[^/]", url):
                raise StageError(f"base URL {url!r} needs http:// or https://, e.g. http://localhost:1234/v1")
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise StageError(f"base URL {twice[0]} is given more than once")
        self.base_urls, self.base_url = urls, urls[0]
        if not self.endpoint_cooldown >= 0:
            raise StageError(f"endpoint cooldown must be 0 or more seconds, got {self.endpoint_cooldown}")
        if not self.timeout > 0:
            raise StageError(f"timeout must be above 0 seconds, got {self.timeout}")
        if self.response_format != "auto" and self.response_format not in RESPONSE_FORMATS:
            raise StageError(
                f"response_format must be auto or one of {', '.join(RESPONSE_FORMATS)}, got {self.response_format!r}"
            )


@dataclass
class Completion:
    """One successful chat completion."""

    content: str  # the answer, with any reasoning removed
    reasoning: str | None
    finish_reason: str | None
    usage: dict  # {"prompt_tokens": int, "completion_tokens": int}
    model: str | None
    raw: dict  # the response JSON as received
    response_format_used: str  # "json_schema" | "json_object" | "prompt"
    attempts: int = 1
    elapsed: float = 0.0


class LLMError(Exception):
    """A request that failed. ``reason`` is short and countable: ``timeout``, ``length``,
    ``empty``, ``http_400``, ``http_503``, ``disconnected``, ``bad_response``.

    For ``length`` and ``empty`` the server did answer: ``completion`` holds that answer
    (e.g. the truncated reasoning) so a stage can record it.
    """

    def __init__(self, reason: str, detail: str = "", completion: Completion | None = None):
        self.reason = reason
        self.detail = detail
        self.completion = completion
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LLMUnavailable(StageError):
    """The server cannot be reached at all (after retries). Stages should stop, not count it.

    It is a StageError, so a script that lets it propagate prints one ``error: ...`` line.
    """


class LLMAuthError(LLMUnavailable):
    """The server refused the API key (401/403). Every request would fail the same way, so the
    stage stops with one line instead of counting each item as a failure."""


class LLMBadModelList(LLMUnavailable):
    """GET /models answered, but not with an OpenAI model list (``{"data": null}``, HTML, ...)."""


class _FormatRefused(Exception):
    """Internal: the server rejected the response_format we sent."""


class _WrongEndpoint(LLMUnavailable):
    """GET /models answered with an error that is not the server being unwell (a 404: a wrong URL)."""


class _Skipped(Exception):
    """Internal: a request waited for an endpoint that failed meanwhile; ``fault`` is why."""

    def __init__(self, fault: Exception):
        super().__init__(str(fault))
        self.fault = fault


# --------------------------------------------------------------------------- the event loop

_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's one event loop for server requests, running on a daemon thread (``llm_loop``).

    A daemon thread, so that after Ctrl-C the process exits at once instead of waiting for the
    requests in flight: their replies were never written, so the next run retries exactly those.
    """
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or not _loop_thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _loop_thread = threading.Thread(target=serve, name="llm_loop", daemon=True)
            _loop_thread.start()
            ready.wait()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, R]) -> R:
    """Run ``coro`` on :func:`event_loop` and wait for its result (from any thread but the loop's).

    Ctrl-C while waiting cancels the request instead of leaving it running."""
    if threading.current_thread() is _loop_thread:
        coro.close()
        raise RuntimeError("run_sync() called on the event loop thread: await the coroutine instead")
    fut = asyncio.run_coroutine_threadsafe(coro, event_loop())
    try:
        return fut.result()
    except BaseException:
        fut.cancel()
        raise


# --------------------------------------------------------------------------- reasoning

def split_reasoning(message: dict) -> tuple[str | None, str]:
    """Split an assistant ``message`` dict into ``(reasoning, content)``.

    Reasoning can arrive in several places depending on server and chat template:

    * ``message.reasoning_content`` (llama.cpp ``--reasoning-format``, vLLM, DeepSeek API)
    * ``message.reasoning`` (Ollama, LM Studio's separate reasoning setting, newer vLLM)
    * think tags inside ``content``: read by :func:`distill.answers.split_reasoning` (blocks, a
      lone ``</think>`` of a Qwen3-style template, an unterminated ``<think>``)

    Returns ``reasoning`` as None when there is none, ``content`` stripped ("" if absent).
    """
    given = None
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            given = value.strip()
            break  # some servers fill both with the same text

    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return answers.split_reasoning(content, given)


# --------------------------------------------------------------------------- replies


def _schema_name(schema: dict) -> str:
    # OpenAI requires ^[a-zA-Z0-9_-]{1,64}$; servers that check copy that rule.
    name = re.sub(r"[^a-zA-Z0-9_-]+", "_", str(schema.get("title") or "output")).strip("_")
    return (name or "output")[:64]


def _response_format(mode: str, schema: dict | None) -> dict | None:
    if schema is None or mode == "prompt":
        return None
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": _schema_name(schema), "schema": schema, "strict": True}}
    # llama.cpp's server reads a "schema" next to json_object; others ignore it and give plain JSON mode.
    return {"type": "json_object", "schema": schema}


def _error_detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text
    else:
        err = body.get("error", body) if isinstance(body, dict) else body
        text = err.get("message", err) if isinstance(err, dict) else err
        text = text if isinstance(text, str) else str(text)
    text = " ".join(text.split())
    return text[:300] or resp.reason_phrase


def _parse_chat_response(resp: httpx.Response) -> tuple[dict, dict, dict]:
    """(data, choices[0], message) of a chat completion; anything else is a ``bad_response`` LLMError
    naming what was wrong (never a TypeError deep in the parsing)."""
    try:
        data = resp.json()
    except ValueError:
        raise LLMError("bad_response", f"not JSON: {resp.text[:200]!r}") from None
    return parse_chat_data(data)


def parse_chat_data(data: Any) -> tuple[dict, dict, dict]:
    """:func:`_parse_chat_response` for a reply already read as JSON (a Batch output line's body)."""
    def bad(why: str) -> LLMError:
        return LLMError("bad_response", f"{why}: {json.dumps(data, default=str)[:200]!r}")

    if not isinstance(data, dict):
        raise bad("not a chat completion object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise bad("no choices in the reply")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise bad("choices[0] has no message")
    message = choice["message"]
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise bad(f"message content is a {type(content).__name__}, not text")
    for key in ("reasoning_content", "reasoning"):
        if message.get(key) is not None and not isinstance(message[key], str):
            message = {k: v for k, v in message.items() if k != key}  # a non-text reasoning field is ignored
    if not isinstance(data.get("usage") or {}, dict):
        data = data | {"usage": {}}
    return data, choice, message


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0  # a server's odd usage field must not fail an answer that arrived



def chat_body(cfg: LLMConfig, model: str, messages: list[dict], schema: dict | None, mode: str,
              seed: int | None = None) -> dict:
    """The /chat/completions request body: what the client sends, and what a Batch input line holds."""
    body: dict[str, Any] = {"model": model or "default", "messages": messages,
                            "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "stream": False}
    seed = seed if seed is not None else cfg.seed
    if seed is not None:
        body["seed"] = seed
    rf = _response_format(mode, schema)
    if rf is not None:
        body["response_format"] = rf
    body.update(cfg.extra_body)  # as the SDK's extra_body: the user's fields win
    return body


def completion_from_reply(parsed: tuple[dict, dict, dict], response_format_used: str, max_tokens: int,
                          attempts: int = 1, elapsed: float = 0.0) -> Completion:
    """A Completion from a parsed reply (:func:`parse_chat_data`); a reply cut at the token limit or
    with no answer is an LLMError (``length``, ``empty``) carrying it."""
    data, choice, message = parsed
    reasoning, content = split_reasoning(message)
    usage = data.get("usage") or {}
    completion = Completion(
        content=content,
        reasoning=reasoning,
        finish_reason=choice.get("finish_reason"),
        usage={"prompt_tokens": _count(usage.get("prompt_tokens")),
               "completion_tokens": _count(usage.get("completion_tokens"))},
        model=data.get("model"),
        raw=data,
        response_format_used=response_format_used,
        attempts=attempts,   # the SDK numbers its tries
        elapsed=elapsed,
    )
    if completion.finish_reason == "length":
        raise LLMError("length", f"truncated at max_tokens={max_tokens}", completion)
    if not content:
        raise LLMError("empty", "the answer was empty" + (" (only reasoning)" if reasoning else ""), completion)
    return completion


# --------------------------------------------------------------------------- client

# Set for the duration of one request made while probing the response_format: the SDK's retry
# hooks (run inside that request's task) read it to tell a refused format from a hiccup.
_probe: contextvars.ContextVar["_ProbeState | None"] = contextvars.ContextVar("distill_llm_probe", default=None)


@dataclass
class _ProbeState:
    bare_500s: int = 0  # attempts answered with a 500 that does not name the format


def _names_format(detail: str) -> bool:
    return any(w in detail.lower() for w in _FORMAT_WORDS)


@functools.cache
def _sdk_classes() -> tuple[type, type]:
    """``(_OpenAI, _AiohttpTransport)``, defined at the first client: importing the SDK and aiohttp
    costs about a second, which a stage's ``--help`` or a data-only stage should not pay."""
    import aiohttp
    import httpx_aiohttp
    import openai

    class _OpenAI(openai.AsyncOpenAI):
        """``AsyncOpenAI`` whose retries follow our flags: what is retried and how long to wait.

        The SDK retries connection errors and timeouts itself; of the answered requests only 429
        and 5xx are retried (the SDK would also retry 408 and 409 and obey ``x-should-retry``), and
        while probing, a 5xx that names the response_format is a refusal to fall back on, not a
        failure to retry. Waits: ``backoff`` doubling per retry up to ``backoff_max``, jittered within
        the upper half so parallel requests don't retry in lockstep; a longer Retry-After wins
        (capped at ``backoff_max``)."""

        def __init__(self, *, distill_config: LLMConfig, **kw: Any):
            super().__init__(**kw)
            self._distill_config = distill_config

        def _should_retry(self, response: httpx.Response) -> bool:
            status = response.status_code
            if status != 429 and status < 500:
                return False
            state = _probe.get()
            if state is not None:
                if _names_format(_error_detail(response)):
                    return False
                state.bare_500s += status == 500
            return True

        def _calculate_retry_timeout(self, remaining_retries: int, options: Any,
                                     response_headers: httpx.Headers | None = None) -> float:
            cfg = self._distill_config
            retry = cfg.retries - remaining_retries  # 0 for the first retry
            delay = min(cfg.backoff_max, cfg.backoff * 2 ** retry)
            delay = delay / 2 + random.uniform(0, delay / 2)
            after = self._parse_retry_after_header(response_headers)
            if after is not None and after > 0:
                delay = max(delay, min(after, cfg.backoff_max))
            log.warning("%s %s: retry %d/%d in %.2fs", options.method.upper(), options.url, retry + 1, cfg.retries, delay)
            return delay


    class _AiohttpTransport(httpx_aiohttp.AiohttpTransport):
        """The SDK's HTTP on aiohttp, through httpx-aiohttp (the transport of the SDK's own
        ``DefaultAioHttpClient``): the SDK keeps building requests, retrying and timing out, this only
        moves the bytes. httpx's own transport (httpcore) scans every connection of its pool for each
        request and reply, and at hundreds in flight that bookkeeping cost more client CPU than
        everything else together; with aiohttp's pool and C parser the client needs about half
        (``bench/bench_concurrency.py --slots 256 --concurrency 256 --delay 0.2 --requests 512``).

        Two things on top of httpx-aiohttp 0.2.0: the session trusts the environment (proxies) only when
        asked, which its own session never does; and its error map turns every aiohttp connection
        error that is not a timeout into ``httpx.ConnectTimeout`` -- a refused connection and a server
        that dropped it mid-request alike -- so those two are mapped again to what the SDK and
        :meth:`LLMClient._error` tell apart: ConnectError (cannot reach) and RemoteProtocolError
        (disconnected). The reply is read here so that errors while reading it are mapped too."""

        def __init__(self, connections: int, trust_env: bool):
            super().__init__(
                trust_env=trust_env,
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
                # made on the event loop at the first request
                client=lambda: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=connections, ssl=self.ssl_context), trust_env=trust_env))
            _transports.add(self)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                response = await super().handle_async_request(request)
                await response.aread()
                return response
            except httpx.ConnectTimeout as exc:
                cause = exc.__cause__
                if isinstance(cause, aiohttp.ServerTimeoutError) or not isinstance(cause, aiohttp.ClientConnectionError):
                    raise
                if isinstance(cause, aiohttp.ClientConnectorError):
                    raise httpx.ConnectError(str(cause), request=request) from cause
                # the server closed or reset the connection before a whole reply
                raise httpx.RemoteProtocolError(str(cause) or type(cause).__name__, request=request) from cause

        async def aclose(self) -> None:
            _transports.discard(self)
            await super().aclose()

    return _OpenAI, _AiohttpTransport


# The _AiohttpTransport instances not closed yet, held until exit: a stage's client may be dropped
# before the process ends, and a session collected unclosed prints "Unclosed client session".
_transports: set[Any] = set()


@atexit.register
def _close_transports() -> None:
    """At exit, close the sessions of clients nobody closed (a stage's client lives as long as the
    process), so aiohttp does not print "Unclosed client session" for each. Runs on the event
    loop, which is still alive then (daemon threads stop after atexit); waits at most a second,
    so Ctrl-C with requests in flight still exits at once."""
    if _loop is None or _loop_thread is None or not _loop_thread.is_alive() or not _transports:
        return

    async def close_all() -> None:
        for transport in list(_transports):
            await transport.aclose()

    try:
        asyncio.run_coroutine_threadsafe(close_all(), _loop).result(timeout=1)
    except (TimeoutError, RuntimeError):
        pass  # the process is exiting either way: nothing is lost, only the warning is not avoided


@dataclass(eq=False)
class _Endpoint:
    """One server of the client: its SDK client, its structured-output mode and its health.

    Only touched on the event loop thread (the counters are read elsewhere once a run is over)."""

    url: str
    sdk: Any   # _sdk_classes()[0]: AsyncOpenAI with our retries
    mode: str | None  # the response_format mode that works here; None until the first probe
    mode_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    active: int = 0  # chat requests in flight
    requests: int = 0  # chat requests sent (a fallback step is one more; the SDK's retries are not)
    errors: int = 0  # of those, how many ended in an error
    moved: int = 0  # requests that failed here and were sent to another endpoint
    cooldowns: int = 0  # times it was skipped for failing
    cool_until: float = 0.0  # skipped until this time.monotonic() ...
    suspect: bool = False  # ... and then given one request at a time until one is answered
    last_fault: Exception | None = None

    def ready(self, now: float) -> bool:
        return now >= self.cool_until and not (self.suspect and self.active)

    def answered(self) -> None:
        self.suspect = False

    def stats(self) -> dict:
        return {"url": self.url, "requests": self.requests, "errors": self.errors, "moved_on": self.moved,
                "cooldowns": self.cooldowns}


def _endpoint_fault(exc: BaseException) -> bool:
    """Whether a failed request says its endpoint is unwell (another endpoint may well answer it):
    it could not be reached, dropped the connection, or answered 5xx after the retries. A 4xx,
    a timeout, a truncated or malformed answer, or a refused API key are about the request or
    the settings, and another endpoint would give the same."""
    if isinstance(exc, (LLMAuthError, LLMBadModelList, _WrongEndpoint)):
        return False
    if isinstance(exc, LLMUnavailable):
        return True
    return isinstance(exc, LLMError) and (exc.reason == "disconnected" or exc.reason.startswith("http_5"))


def _refused(exc: BaseException) -> bool:
    """Whether a connect error was a refused connection (nothing listens on the port). The async
    transport wraps the OSError ("All connection attempts failed"), so the chain is searched."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
            return True
        todo.extend(x for x in (e.__cause__, e.__context__, *getattr(e, "exceptions", ())) if x is not None)
    return False


def _is_local(url: str) -> bool:
    return httpx.URL(url).host in ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class LLMClient:
    """A client for one OpenAI-compatible server, or several serving the same model
    (``LLMConfig.base_urls``). Share one per stage run.

    ``acomplete``/``amodels``/``aping`` are coroutines for :func:`event_loop`; ``complete``/``models``/
    ``ping`` are their blocking forms, safe to call from any number of threads."""

    def __init__(self, config: LLMConfig | None = None):
        self.config = config or LLMConfig()
        self.model = self.config.model
        cfg = self.config
        # Every endpoint gets connections for all of --concurrency: when the others fail, one
        # carries the run (connections are only opened when used).
        n = max(int(cfg.concurrency), 1)
        mode = None if cfg.response_format == "auto" else cfg.response_format
        self._endpoints = [_Endpoint(url, self._sdk_client(url, n), mode) for url in cfg.base_urls]
        self._http_sync: httpx.Client | None = None
        self._model_lock = asyncio.Lock()  # bound to event_loop() on first use

    def _sdk_client(self, url: str, connections: int) -> Any:
        import openai

        _OpenAI, _AiohttpTransport = _sdk_classes()
        cfg = self.config
        return _OpenAI(
            distill_config=cfg,
            base_url=url,
            api_key=cfg.api_key,
            timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 10.0)),
            max_retries=cfg.retries,
            # A proxy from HTTP(S)_PROXY never makes sense for a server on this machine and is a
            # classic cause of baffling 502s, so the environment is only trusted for remote servers.
            # Every connection stays open for the next request: opening one costs more client CPU
            # than the request itself.
            http_client=openai.DefaultAsyncHttpxClient(
                transport=_AiohttpTransport(connections, trust_env=not _is_local(url))),
        )

    def _pick(self, tried: list[_Endpoint] = ()) -> _Endpoint | None:
        """The endpoint for the next request: of those not in ``tried``, the one with the fewest
        requests in flight among the ones not skipped; when all are skipped, the one back soonest.
        None when every endpoint was tried."""
        left = [e for e in self._endpoints if e not in tried]
        if not left:
            return None
        if len(left) == 1:
            return left[0]
        now = time.monotonic()
        ready = [e for e in left if e.ready(now)]
        if ready:
            return min(ready, key=lambda e: e.active)
        return min(left, key=lambda e: e.cool_until)

    def _failed(self, ep: _Endpoint, exc: Exception) -> None:
        """``ep`` failed a request with ``exc`` (an endpoint fault): skip it for a while."""
        if len(self._endpoints) == 1 or not self.config.endpoint_cooldown:
            return  # nothing to skip to, or skipping is off
        now = time.monotonic()
        if now < ep.cool_until:
            return  # already skipped: the other requests it had in flight fail alike
        ep.cool_until, ep.suspect, ep.last_fault = now + self.config.endpoint_cooldown, True, exc
        ep.cooldowns += 1
        log.warning("endpoint %s failed (%s): skipped for %gs, its requests go to the others",
                    ep.url, exc, self.config.endpoint_cooldown)

    # -- lifecycle

    def close(self) -> None:
        async def close_all() -> None:
            for ep in self._endpoints:
                await ep.sdk.close()

        run_sync(close_all())
        if self._http_sync is not None:
            self._http_sync.close()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def response_format_mode(self) -> str | None:
        """The remembered structured-output mode (None until a schema request succeeded); with
        several endpoints, the first endpoint's (see :meth:`endpoint_stats` for each)."""
        return self._endpoints[0].mode

    def endpoint_stats(self) -> list[dict]:
        """Per endpoint: ``url``, ``requests`` sent, ``errors``, ``moved_on`` (failed there and sent
        to another endpoint), ``cooldowns`` (times skipped) and ``response_format`` (its mode)."""
        return [ep.stats() | {"response_format": ep.mode} for ep in self._endpoints]

    def endpoint_summary(self) -> str | None:
        """One line of requests per endpoint for a stage's summary; None with a single endpoint."""
        if len(self._endpoints) < 2:
            return None
        parts = []
        for ep in self._endpoints:
            extra = [f"{n} {what}" for n, what in ((ep.errors, "errors"), (ep.moved, "moved on")) if n]
            if ep.cooldowns:
                extra.append(f"skipped {ep.cooldowns} time{'s' if ep.cooldowns > 1 else ''}")
            parts.append(f"{ep.url} {ep.requests} requests" + (f" ({', '.join(extra)})" if extra else ""))
        return "endpoints: " + "; ".join(parts)

    @property
    def http(self) -> httpx.Client:
        """A blocking ``httpx.Client`` with the (first) server's key and timeouts, for the endpoints the
        SDK does not cover (llama.cpp's native streamed ``/completion``, see distill.constrain)."""
        if self._http_sync is None:
            cfg = self.config
            self._http_sync = httpx.Client(
                base_url=cfg.base_url, trust_env=not _is_local(cfg.base_url),
                headers={"Authorization": f"Bearer {cfg.api_key}"},
                timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 10.0)),
                limits=httpx.Limits(max_connections=max(cfg.concurrency * 2, 10)))
        return self._http_sync

    # -- errors

    @staticmethod
    def _unreachable_message(url: str, why: str) -> str:
        return f"cannot reach {url} — is LM Studio / llama-server running? ({why})"

    def _error(self, exc: openai.OpenAIError, method: str, path: str, url: str) -> Exception:
        """The SDK's exception as ours: LLMUnavailable (stop the stage) or LLMError (count it)."""
        import openai

        cause = exc.__cause__
        if isinstance(exc, openai.APITimeoutError):
            if isinstance(cause, httpx.ConnectTimeout):
                return LLMUnavailable(self._unreachable_message(url, "connect timeout"))
            return LLMError("timeout", f"no answer within {self.config.timeout:g}s")
        if isinstance(exc, openai.APIConnectionError):
            if isinstance(cause, httpx.ConnectError):
                why = "connection refused" if _refused(cause) else f"connect error: {cause}"
                return LLMUnavailable(self._unreachable_message(url, why))
            return LLMError("disconnected", str(cause or exc) or type(cause or exc).__name__)
        if isinstance(exc, openai.APIStatusError):
            status, detail = exc.status_code, _error_detail(exc.response)
            if status in (401, 403):
                return LLMAuthError(f"{url} answered {method} {path} with http {status} "
                                    f"({detail}): check --api-key (or OPENAI_API_KEY)")
            return LLMError(f"http_{status}", detail)
        return LLMError("bad_response", f"{type(exc).__name__}: {exc}")

    # -- public API

    async def _models_on(self, ep: _Endpoint) -> list[str]:
        import openai

        try:
            resp = await ep.sdk.get("/models", cast_to=httpx.Response)
        except openai.OpenAIError as exc:
            raise self._error(exc, "GET", "/models", ep.url) from None
        try:
            data = resp.json().get("data", [])
        except (ValueError, AttributeError):
            data = None
        if not isinstance(data, list):
            # {"data": null} (some proxies with nothing loaded), a bare list, HTML from a web UI ...
            raise LLMBadModelList(
                f"{ep.url}/models did not return an OpenAI model list ({resp.text[:100]!r}) — is this "
                f"an OpenAI-compatible base URL (usually ending in /v1), and is a model loaded? Or pass --model"
            )
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def amodels(self) -> list[str]:
        """Model ids the server lists (GET /models; with several endpoints, one not being skipped).
        Raises LLMUnavailable if it is down."""
        return await self._models_on(self._pick())

    def models(self) -> list[str]:
        return run_sync(self.amodels())

    async def _ping_on(self, ep: _Endpoint) -> list[str]:
        try:
            return await self._models_on(ep)
        except LLMBadModelList as exc:
            if not self.model:
                raise
            # The server is up and --model names what to ask for: the list is not needed.
            log.warning("%s", exc)
            return []
        except LLMError as exc:
            if _endpoint_fault(exc):  # a 5xx, a dropped connection: the server is unwell
                raise LLMUnavailable(f"{ep.url} answered GET /models with {exc}") from None
            raise _WrongEndpoint(
                f"{ep.url} answered GET /models with {exc} — is the base URL right (usually ending in /v1)?"
            ) from None

    async def aping(self) -> list[str]:
        """Check the server at stage start; picks the first listed model when none was configured.

        ``complete()`` calls it by itself when no model is set. A configured model missing
        from the list is not an error: LM Studio loads models on demand
        and llama.cpp serves its one model under any name.

        With several endpoints, all are asked at once (those being skipped are left out). One that
        cannot be reached (or answers 5xx) is skipped for a while with a warning, as long as
        another answers; any other fault (a wrong URL, a refused key) stops the stage as it would
        with that endpoint alone. The model is the first one the first answering endpoint lists.
        """
        now = time.monotonic()
        eps = [e for e in self._endpoints if now >= e.cool_until] or self._endpoints
        answers = await asyncio.gather(*(self._ping_on(e) for e in eps), return_exceptions=True)
        listed: list[tuple[_Endpoint, list[str]]] = []
        down: list[tuple[_Endpoint, Exception]] = []
        for ep, answer in zip(eps, answers):
            if isinstance(answer, BaseException):
                if not _endpoint_fault(answer):
                    raise answer
                down.append((ep, answer))
            else:
                ep.answered()
                listed.append((ep, answer))
        if not listed:
            if len(down) == 1:
                raise down[0][1]
            raise LLMUnavailable(f"none of the {len(down)} endpoints answers: " + "; ".join(str(e) for _, e in down))
        for ep, exc in down:
            self._failed(ep, exc)
        if not self.model:
            ids = next((ids for _, ids in listed if ids), None)
            if ids is None:
                urls = ", ".join(ep.url for ep, _ in listed)
                raise StageError(f"{urls} list{'s' if len(listed) == 1 else ''} no models: load one or pass --model")
            self.model = ids[0]
        elif len(self._endpoints) > 1:
            for ep, ids in listed:
                if ids and self.model not in ids:
                    log.warning("endpoint %s does not list model %s (it lists %s): its requests may fail",
                                ep.url, self.model, ", ".join(ids[:5]))
        return listed[0][1]

    def ping(self) -> list[str]:
        return run_sync(self.aping())

    async def _chat(self, ep: _Endpoint, messages: list[dict], schema: dict | None, mode: str, probing: bool,
                    seed: int | None = None) -> Completion:
        import openai

        cfg = self.config
        body = chat_body(cfg, self.model, messages, schema, mode, seed)
        state = _ProbeState() if probing and schema is not None and mode != "prompt" else None
        token = _probe.set(state)
        started = time.monotonic()
        ep.active += 1
        ep.requests += 1
        try:
            # The body as it is, through the SDK's request (its timeouts and retries): chat.completions
            # .create would first walk every message through its TypedDict transform, a fifth of the
            # client's CPU per request, and reshape a json_object response_format with a "schema".
            resp = await ep.sdk.post("/chat/completions", body=body, cast_to=httpx.Response)
        except openai.APIStatusError as exc:
            if state is not None:
                detail = _error_detail(exc.response)
                if exc.status_code in (400, 422, 500) and _names_format(detail):
                    raise _FormatRefused(f"http_{exc.status_code}: {detail}") from None
                # A bare 500 (a hiccup, a busy slot) is retried like any 5xx, so one unlucky first
                # request does not switch json_schema off for the whole run; only a 500 on every
                # attempt does (llama-cpp-python answers an unsupported response_format with a
                # bare 500, every time).
                if exc.status_code == 500 and cfg.retries > 0 and state.bare_500s == cfg.retries:
                    raise _FormatRefused(f"http_500 on all {cfg.retries + 1} attempts: {detail}") from None
            ep.errors += 1
            raise self._error(exc, "POST", "/chat/completions", ep.url) from None
        except openai.OpenAIError as exc:
            ep.errors += 1
            raise self._error(exc, "POST", "/chat/completions", ep.url) from None
        finally:
            ep.active -= 1
            _probe.reset(token)
        parsed = _parse_chat_response(resp)
        if probing and schema is not None and ep.mode is None:
            ep.mode = mode  # the server accepted this response_format: remember it
        return completion_from_reply(parsed, mode if schema is not None else "prompt", cfg.max_tokens,
                                     attempts=int(resp.request.headers.get("x-stainless-retry-count") or 0) + 1,
                                     elapsed=time.monotonic() - started)

    async def acomplete(self, messages: list[dict], response_schema: dict | None = None,
                        seed: int | None = None) -> Completion:
        """Send one chat request; returns a Completion or raises LLMError / LLMUnavailable.

        With ``response_schema`` the server is asked for JSON matching it, using the best
        response_format the server accepts. The caller still parses and validates ``content``:
        in ``prompt`` mode (and on servers that ignore the schema) nothing is enforced.

        With several endpoints, a request its endpoint fails (see :func:`_endpoint_fault`) is sent
        to the next one; it fails only when every endpoint failed it.
        """
        if not self.model:
            async with self._model_lock:  # resolve the server's model once, before the first request
                if not self.model:
                    await self.aping()
        tried: list[_Endpoint] = []
        faults: list[Exception] = []
        while True:
            ep = self._pick(tried)
            try:
                completion = await self._complete_on(ep, messages, response_schema, seed)
            except LLMError as exc:
                if not _endpoint_fault(exc):
                    if exc.reason != "timeout":
                        ep.answered()  # it answered (a 400, a truncated reply ...): the endpoint is fine
                    raise
                error: Exception = exc
            except LLMUnavailable as exc:
                if not _endpoint_fault(exc):
                    raise
                error = exc
            except _Skipped as exc:
                error = exc.fault
            else:
                ep.answered()
                return completion
            self._failed(ep, error)
            tried.append(ep)
            faults.append(error)
            if len(tried) == len(self._endpoints):
                if len(faults) > 1 and all(isinstance(e, LLMUnavailable) for e in faults):
                    raise LLMUnavailable(f"none of the {len(faults)} endpoints answers: "
                                         + "; ".join(str(e) for e in faults))
                raise error
            ep.moved += 1

    async def _complete_on(self, ep: _Endpoint, messages: list[dict], schema: dict | None,
                           seed: int | None) -> Completion:
        if schema is None:
            return await self._chat(ep, messages, None, "prompt", probing=False, seed=seed)
        if ep.mode is None:
            # Probe once per endpoint, under a lock: concurrent first requests wait instead of all
            # paying the fallback chain. Once the mode is known the lock is never taken again.
            async with ep.mode_lock:
                if ep.mode is None:
                    if ep.last_fault is not None and not ep.ready(time.monotonic()) and len(self._endpoints) > 1:
                        raise _Skipped(ep.last_fault)  # it failed the probe this request waited for
                    return await self._probe(ep, messages, schema, seed)
        return await self._chat(ep, messages, schema, ep.mode, probing=False, seed=seed)

    def complete(self, messages: list[dict], response_schema: dict | None = None,
                 seed: int | None = None) -> Completion:
        """The blocking form of :meth:`acomplete`."""
        return run_sync(self.acomplete(messages, response_schema, seed))

    async def _probe(self, ep: _Endpoint, messages: list[dict], schema: dict, seed: int | None = None) -> Completion:
        for mode in RESPONSE_FORMATS:
            try:
                return await self._chat(ep, messages, schema, mode, probing=True, seed=seed)
            except _FormatRefused as exc:
                log.warning("%s refused response_format %s (%s); trying the next mode", ep.url, mode, exc)
        raise AssertionError("unreachable: prompt mode is never refused")


# --------------------------------------------------------------------------- concurrency


class DaemonPool:
    """A minimal thread pool (``submit`` -> ``Future``) whose workers are daemon threads.

    For blocking work (llama.cpp's streamed native endpoint, plain functions handed to
    :func:`run_concurrently`). ``ThreadPoolExecutor`` joins its workers when the interpreter
    exits, so after Ctrl-C a stage would sit there until every in-flight request answered or hit
    ``--timeout``. Daemon workers are abandoned instead.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "worker"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True)
                         for i in range(max(1, int(max_workers)))]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., R], *args: Any) -> "Future[R]":
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def shutdown(self) -> None:
        """Cancel work not yet started and let the workers end; never waits for running work."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)


def _blocking(fn: Callable[[T], R]) -> Callable[[T], R]:
    def call(item: T) -> R:
        result = fn(item)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("run_concurrently: fn returned a coroutine; pass an `async def` function instead")
        return result
    return call


def run_concurrently(
    items: Iterable[T],
    fn: Callable[[T], R] | Callable[[T], Awaitable[R]],
    concurrency: int = 4,
    desc: str = "requests",
    fatal: tuple[type[BaseException], ...] = (LLMUnavailable,),
    progress: bool = True,
    unit: str = "item",
) -> Iterator[tuple[T, R | Exception]]:
    """Run ``fn(item)`` with ``concurrency`` calls in flight; yield ``(item, result_or_exception)``
    as each finishes.

    An ``async def`` ``fn`` runs on :func:`event_loop`: ``concurrency`` coroutines, no threads, so
    hundreds of requests in flight cost little. A plain function runs on ``concurrency`` daemon
    threads (with ``concurrency`` more items queued ahead).
    Results arrive in completion order so the caller can write each one atomically straight away.
    Items are taken from ``items`` only as slots free up, so a huge or lazy ``items`` is fine.
    An exception of a ``fatal`` type (default: server unreachable) stops the run and is raised.
    On Ctrl-C, a fatal error or the caller leaving the loop, work not yet started is never
    started, and requests in flight are cancelled (coroutines) or abandoned on daemon threads,
    so the process can exit at once; everything yielded before is already in the caller's hands.
    """
    from tqdm.auto import tqdm  # imported here: only stages with long loops need it

    concurrency = max(1, int(concurrency))
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    source = iter(items)
    if inspect.iscoroutinefunction(fn):
        loop, pool, window = event_loop(), None, concurrency

        def submit(item: T) -> Future:
            return asyncio.run_coroutine_threadsafe(fn(item), loop)  # type: ignore[arg-type]
    else:
        pool, window = DaemonPool(concurrency, thread_name_prefix="llm"), 2 * concurrency
        call = _blocking(fn)  # type: ignore[arg-type]

        def submit(item: T) -> Future:
            return pool.submit(call, item)

    finished: queue.SimpleQueue = queue.SimpleQueue()  # futures, in the order they finish
    pending: dict[Future, T] = {}
    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not progress)

    def fill() -> None:
        while len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                return
            fut = submit(item)
            pending[fut] = item
            fut.add_done_callback(finished.put)

    try:
        fill()
        while pending:
            fut = finished.get()  # Ctrl-C interrupts this wait
            item = pending.pop(fut)
            exc = fut.exception()
            bar.update(1)
            if exc is not None and isinstance(exc, fatal):
                raise exc
            if exc is not None and not isinstance(exc, Exception):
                raise exc  # KeyboardInterrupt/SystemExit inside fn
            fill()
            yield item, (exc if exc is not None else fut.result())
    finally:
        for fut in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown()
        bar.close()


@dataclass
class RunStats:
    """Counters for a stage run. Update from the consuming (main) thread only."""

    done: int = 0
    skipped: int = 0
    failed: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def _add_usage(self, completion: Completion | None) -> None:
        if completion is not None:
            self.prompt_tokens += completion.usage.get("prompt_tokens", 0)
            self.completion_tokens += completion.usage.get("completion_tokens", 0)

    def ok(self, completion: Completion | None = None) -> None:
        self.done += 1
        self._add_usage(completion)

    def skip(self, n: int = 1) -> None:
        self.skipped += n

    def fail(self, reason: str | BaseException, completion: Completion | None = None) -> None:
        """Count a failure: an LLMError (its .reason and any partial completion) or a reason string."""
        if isinstance(reason, LLMError):
            completion = completion or reason.completion
            reason = reason.reason
        elif isinstance(reason, BaseException):
            reason = type(reason).__name__
        self.failed[reason] += 1
        self._add_usage(completion)

    @property
    def requests(self) -> int:
        """Items that got an answer or a failure (not HTTP attempts: retries are inside one item)."""
        return self.done + sum(self.failed.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict:
        """For manifests."""
        return {
            "done": self.done,
            "skipped": self.skipped,
            "failed": dict(self.failed),
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "elapsed_s": round(self.elapsed, 2),
            "requests_per_s": round(self.requests_per_s, 3),
        }

    def all_failed(self) -> str | None:
        """One line for stderr when this run asked for something, every item failed and the stage
        holds nothing finished, else None: such a stage exits non-zero (a pass where nothing worked
        is not a finished stage). A re-run that retries the failures of an earlier run and fails
        them again leaves the stage as the earlier run did (its finished items skipped, the rest
        failed with a reason), so it exits as that run did."""
        failed = sum(self.failed.values())
        if self.done or self.skipped or not failed:
            return None
        reasons = ", ".join(f"{r} {n}" for r, n in self.failed.most_common())
        return f"error: all {failed} requests failed ({reasons}); nothing new was written"

    def summary(self) -> str:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{r} {n}" for r, n in self.failed.most_common())
        elapsed = self.elapsed
        tok_s = self.completion_tokens / elapsed if elapsed > 0 else 0.0
        return (
            f"done {self.done}, skipped {self.skipped}, failed {failed}" + (f" ({reasons})" if reasons else "")
            + f" | {self.requests} requests in {elapsed:.1f}s ({self.requests_per_s:.2f}/s)"
            + f" | tokens {self.prompt_tokens} prompt + {self.completion_tokens} completion ({tok_s:.1f} completion tok/s)"
        )
