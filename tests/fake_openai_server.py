"""A fault-injecting OpenAI-compatible HTTP server for tests and benchmarks.

A real HTTP server (``ThreadingHTTPServer`` on 127.0.0.1, free port, in a background thread)
so clients are exercised over real sockets, timeouts and connection errors.

Each ``POST /v1/chat/completions`` is answered by the next scripted behaviour if any are
queued (``server.push(...)``), otherwise by ``handler(body)``, a callable that builds the reply
from the request (default: echo the last user message). A handler may return a string (the
content), or any behaviour below.

    with FakeOpenAIServer() as srv:
        srv.push(error(503), error(503), reply('{"name": "x"}'))
        client = LLMClient(LLMConfig(base_url=srv.url, backoff=0.01))
        client.complete(msgs)
        assert len(srv.history) == 3          # bodies of every chat request received

Behaviours: ``reply(content, reasoning_content=, reasoning=, finish_reason=)``, ``json_reply(obj)``,
``error(status)``, ``hang(seconds)``, ``drop()`` (close the connection without answering), ``fenced(obj)``,
``raw(obj)`` (any JSON body with status 200: ``content`` a number, ``choices: []``, no ``message``).
A ``fake_server`` pytest fixture is defined at the bottom (import it into a test module to use it).
Server options: ``refuse_formats={"json_schema": 400}`` rejects response_format types (500 mimics
llama-cpp-python), ``slots=N`` serves at most N requests at once, ``delay`` seconds per request,
``models_body=`` replaces the ``GET /models`` reply (``{"data": None}``), ``api_key="k"`` answers 401 to
requests without ``Authorization: Bearer k`` (``GET /models`` too unless ``open_models=True``).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest


def free_port() -> int:
    """A port nothing listens on right now (also handy for 'server is down' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Behaviour:
    kind: str  # reply | error | hang | drop
    content: str | None = ""
    reasoning_content: str | None = None
    reasoning: str | None = None
    finish_reason: str = "stop"
    status: int = 200
    message: str = ""
    seconds: float = 0.0
    headers: dict = field(default_factory=dict)
    usage: dict | None = None
    body: Any = None


def reply(content: str | None = "", *, reasoning_content: str | None = None, reasoning: str | None = None,
          finish_reason: str = "stop", usage: dict | None = None) -> Behaviour:
    return Behaviour("reply", content=content, reasoning_content=reasoning_content, reasoning=reasoning,
                     finish_reason=finish_reason, usage=usage)


def error(status: int, message: str = "", headers: dict | None = None) -> Behaviour:
    return Behaviour("error", status=status, message=message or f"simulated error {status}", headers=headers or {})


def hang(seconds: float, then: str = "too late") -> Behaviour:
    """Sleep (bounded; woken early when the server stops) before answering ``then``."""
    return Behaviour("hang", seconds=seconds, content=then)


def drop() -> Behaviour:
    """Close the connection without any response (a crashed or restarting server)."""
    return Behaviour("drop")


def raw(body: Any, status: int = 200) -> Behaviour:
    """Answer with ``body`` as the whole JSON response, whatever its shape."""
    return Behaviour("raw", status=status, body=body)


def fenced(obj: Any, lang: str = "json") -> Behaviour:
    """A reply with JSON inside a Markdown code fence, as chatty models write it."""
    return reply(f"Here you go:\n```{lang}\n{json.dumps(obj)}\n```")


def json_reply(obj: Any, *, reasoning: str | None = None, think_tags: bool = False) -> Behaviour:
    """A reply whose content is ``obj`` as JSON (a right or a wrong label), with optional reasoning
    either in ``reasoning_content`` or inline as ``<think>...</think>``."""
    text = json.dumps(obj)
    if reasoning is not None and think_tags:
        return reply(f"<think>{reasoning}</think>\n{text}")
    return reply(text, reasoning_content=reasoning)


def echo_handler(body: dict) -> str:
    users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
    return str(users[-1]) if users else ""


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a client opening hundreds of connections at once would
    # see refused connections a real server (uvicorn: 2048) never gives.
    request_queue_size = 1024


class FakeOpenAIServer:
    """Context manager running the fake server; ``url`` is the OpenAI base URL (ends in /v1)."""

    def __init__(
        self,
        handler: Callable[[dict], str | Behaviour] | None = None,
        *,
        slots: int | None = None,
        delay: float = 0.0,
        refuse_formats: dict[str, int] | None = None,
        models: tuple[str, ...] = ("fake-model",),
        models_body: Any = None,
        api_key: str | None = None,
        open_models: bool = False,
        keep_history: bool = True,
    ):
        self.handler = handler or echo_handler
        self.delay = delay
        self.refuse_formats = dict(refuse_formats or {})
        self.models = list(models)
        self.models_body = models_body
        self.api_key = api_key
        self.open_models = open_models
        self.script: deque[Behaviour] = deque()
        self.history: list[dict] = []  # JSON bodies of chat requests, in arrival order
        self.keep_history = keep_history  # off for long benchmark runs (100k bodies would pile up)
        self.paths: list[str] = []  # "GET /v1/models", "POST /v1/chat/completions", ...
        self.max_active = 0  # most requests being served at the same time
        self._active = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(slots) if slots else None
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting

    def push(self, *behaviours: Behaviour) -> "FakeOpenAIServer":
        with self._lock:
            self.script.extend(behaviours)
        return self

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def formats(self) -> list[str | None]:
        """response_format type of each chat request received (None = none sent)."""
        return [(b.get("response_format") or {}).get("type") for b in self.history]

    # -- lifecycle

    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers
            # headers and body go out as two writes: without TCP_NODELAY, Nagle + delayed ACK
            # add ~40 ms to every response and the benchmark would measure that instead.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _refuse_key(self, checked: bool = True) -> bool:
                if checked and server.api_key is not None \
                        and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._json(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
                    return True
                return False

            def do_GET(self) -> None:
                server.paths.append(f"GET {self.path}")
                if self._refuse_key(not server.open_models):
                    return
                if self.path.rstrip("/") == "/v1/models":
                    if server.models_body is not None:
                        self._json(200, server.models_body)
                        return
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if server.keep_history:
                    server.paths.append(f"POST {self.path}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._json(400, {"error": {"message": "body is not JSON"}})
                    return
                if server.keep_history:
                    with server._lock:
                        server.history.append(body)
                if self._refuse_key():
                    return
                if server._slots is not None:
                    server._slots.acquire()
                try:
                    with server._lock:
                        server._active += 1
                        server.max_active = max(server.max_active, server._active)
                    if server.delay:
                        server._stopping.wait(server.delay)
                    server._answer(self, body)
                finally:
                    with server._lock:
                        server._active -= 1
                    if server._slots is not None:
                        server._slots.release()

            def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to do

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True  # a hanging handler never blocks teardown
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hang() and delay sleeps
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- answering

    def _answer(self, h: Any, body: dict) -> None:
        rf_type = (body.get("response_format") or {}).get("type")
        if rf_type in self.refuse_formats:
            status = self.refuse_formats[rf_type]
            if status == 500:
                # llama-cpp-python: an unsupported response_format surfaces as a bare 500.
                h._json(500, {"error": {"message": "Internal Server Error", "type": "internal_server_error"}})
            else:
                h._json(status, {"error": f"'response_format.type' must be 'json_schema' or 'text', got {rf_type!r}"})
            return
        with self._lock:
            behaviour = self.script.popleft() if self.script else None
        if behaviour is None:
            out = self.handler(body)
            behaviour = out if isinstance(out, Behaviour) else reply(out)

        if behaviour.kind == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if behaviour.kind == "hang":
            self._stopping.wait(behaviour.seconds)
            behaviour = reply(behaviour.content)
        if behaviour.kind == "raw":
            h._json(behaviour.status, behaviour.body)
            return
        if behaviour.kind == "error":
            h._json(behaviour.status, {"error": {"message": behaviour.message, "code": behaviour.status}},
                    behaviour.headers)
            return
        message: dict[str, Any] = {"role": "assistant", "content": behaviour.content}
        if behaviour.reasoning_content is not None:
            message["reasoning_content"] = behaviour.reasoning_content
        if behaviour.reasoning is not None:
            message["reasoning"] = behaviour.reasoning
        text = (behaviour.content or "") + (behaviour.reasoning_content or "") + (behaviour.reasoning or "")
        prompt_text = json.dumps(body.get("messages", []))
        usage = behaviour.usage or {
            "prompt_tokens": max(1, len(prompt_text) // 4),
            "completion_tokens": max(1, len(text) // 4),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        h._json(200, {
            "id": f"chatcmpl-{len(self.history)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.models[0],
            "choices": [{"index": 0, "message": message, "finish_reason": behaviour.finish_reason}],
            "usage": usage,
        })


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    """A started FakeOpenAIServer in echo mode; set ``.handler`` or ``push()`` behaviours in the test."""
    with FakeOpenAIServer() as srv:
        yield srv


def main(argv: list[str] | None = None) -> int:
    """Serve in a process of its own (bench/bench_concurrency.py: the client's CPU is then its own):
    prints the base URL on one line, serves until stdin closes."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="the fake OpenAI-compatible server, echoing")
    p.add_argument("--slots", type=int, default=None, help="requests served at once (default: unbounded)")
    p.add_argument("--delay", type=float, default=0.0, help="seconds each request takes")
    p.add_argument("--oracle", action="store_true",
                   help="answer as the recipe oracle teacher (tests/fake_teacher.py: writes posts, labels them right) "
                        "instead of echoing; keeps no request history (bench/bench_stage_scale.py)")
    args = p.parse_args(argv)
    handler = None
    if args.oracle:
        from fake_teacher import OracleTeacher  # deferred: fake_teacher imports this module
        handler = OracleTeacher()
    with FakeOpenAIServer(handler, slots=args.slots, delay=args.delay, keep_history=not args.oracle) as srv:
        print(srv.url, flush=True)
        sys.stdin.read()  # the parent closes our stdin (or exits) to stop us
    return 0


if __name__ == "__main__":
    # Run main() in the module under its import name: fake_teacher imports fake_openai_server, and its
    # replies must be instances of that module's Behaviour, not of a second copy loaded as __main__.
    import fake_openai_server

    raise SystemExit(fake_openai_server.main())
