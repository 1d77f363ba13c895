"""The shipped ``ai`` module against a real OpenAI-compatible HTTP server on loopback.

The server is ``http.server`` in a thread: it records every request and answers with what
each test scripts, so the module's own httpx client is exercised end to end (no patching).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

AI_FOLDER = Path(__file__).resolve().parents[2] / "modules" / "ai"
API_KEY = "sk-test-SECRET-0123456789"
ENV_VARS = ("NAGATHA_AI_BASE_URL", "NAGATHA_AI_API_KEY", "NAGATHA_AI_MODEL")


# -- the fake OpenAI-compatible server ---------------------------------------------------


@dataclass
class Reply:
    """What the server answers on one path."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    """State shared by the server thread and the test."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    replies: dict[str, Reply] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    hold: set[str] = field(default_factory=set)

    def reset(self) -> None:
        """Forget recorded requests and scripted replies; stop holding any path."""
        self.requests.clear()
        self.replies.clear()
        self.hold.clear()
        self.release = threading.Event()

    def reply(
        self,
        path: str,
        status: int = 200,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Script the answer to ``path`` (a JSON ``body`` or ``raw`` bytes)."""
        data = raw if raw is not None else json.dumps(body).encode()
        self.replies[path] = Reply(status, data, content_type)


def completion(content: str = "Hello!", model: str = "served-model") -> dict[str, Any]:
    """A minimal chat completion document."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def make_handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``state``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            reply = state.replies.get(self.path, Reply(404, b'{"error": "not found"}'))
            if self.path in state.hold:
                # Answer only once the test lets go (it does after its client timed out).
                state.release.wait(timeout=30)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:
                self.close_connection = True  # the client gave up (the timeout test)

        do_GET = _handle
        do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    """One server thread for this file's tests (``server`` resets it for each test)."""
    state = FakeOpenAI(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, name="fake-openai", daemon=True)
    thread.start()
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def server(fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake server with no recorded requests, a default completion and model list."""
    fake_openai.reset()
    fake_openai.reply("/v1/chat/completions", body=completion())
    fake_openai.reply("/v1/models", body={"object": "list", "data": [{"id": "served-model"}]})
    yield fake_openai
    fake_openai.release.set()


@pytest.fixture
def refused_url() -> str:
    """A loopback URL on which nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the module under test ---------------------------------------------------------------


class FakeRegistry:
    """Records ``register_task`` calls; ``module_config`` returns the given settings."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or {}
        self.tasks: list[tuple[str, str, Any, dict[str, Any]]] = []

    def register_task(self, module: str, name: str, func: Any, **options: Any) -> None:
        self.tasks.append((module, name, func, options))

    def module_config(self, module: str) -> dict[str, Any]:
        return dict(self.config) if module == "ai" else {}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``NAGATHA_AI_*`` variable from the developer's shell leaks into a test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ai() -> Iterator[types.ModuleType]:
    """A fresh copy of ``modules/ai`` imported by path, as the hub's loader does."""
    name = f"nagatha_test_ai_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(
        name, AI_FOLDER / "__init__.py", submodule_search_locations=[str(AI_FOLDER)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def configure(
    ai: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    base_url: str,
    *,
    key: str | None = API_KEY,
    model: str | None = "env-model",
) -> None:
    """Register the module with an empty config and point it at ``base_url`` by env."""
    ai.register_tasks(FakeRegistry())
    monkeypatch.setenv("NAGATHA_AI_BASE_URL", base_url)
    if key is not None:
        monkeypatch.setenv("NAGATHA_AI_API_KEY", key)
    if model is not None:
        monkeypatch.setenv("NAGATHA_AI_MODEL", model)


# -- chat --------------------------------------------------------------------------------


def test_a_prompt_returns_content_model_and_usage(ai, server, monkeypatch):
    # Given a configured module
    configure(ai, monkeypatch, server.url)
    # When a prompt is sent
    result = ai.chat(prompt="Say hello")
    # Then the answer is reduced to content, model and usage, and is JSON-serializable
    assert result == {
        "content": "Hello!",
        "model": "served-model",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    json.dumps(result)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.body == {
        "model": "env-model",
        "messages": [{"role": "user", "content": "Say hello"}],
    }


def test_messages_system_temperature_and_max_tokens_are_sent_as_given(ai, server, monkeypatch):
    configure(ai, monkeypatch, server.url)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Again"}], "name": "bob"},
    ]
    ai.chat(
        messages=messages, system="Be brief.", model="other-model", temperature=0.25, max_tokens=64
    )
    (request,) = server.requests
    assert request.body == {
        "model": "other-model",
        "messages": [{"role": "system", "content": "Be brief."}, *messages],
        "temperature": 0.25,
        "max_tokens": 64,
    }


def test_the_api_key_is_sent_as_a_bearer_token(ai, server, monkeypatch):
    configure(ai, monkeypatch, server.url)
    ai.chat(prompt="x")
    assert server.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_no_authorization_header_is_sent_without_a_key(ai, server, monkeypatch):
    configure(ai, monkeypatch, server.url, key=None)
    ai.chat(prompt="x")
    assert "Authorization" not in server.requests[0].headers


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_the_base_url_may_end_with_or_without_v1(ai, server, monkeypatch, suffix):
    configure(ai, monkeypatch, server.url + suffix)
    ai.chat(prompt="x")
    ai.heartbeat()
    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/v1/models"]


def test_the_environment_wins_over_the_module_config(ai, server, monkeypatch, refused_url):
    # Given a module config pointing elsewhere, with another key and model
    ai.register_tasks(
        FakeRegistry({"base_url": refused_url, "api_key": "sk-config", "model": "config-model"})
    )
    monkeypatch.setenv("NAGATHA_AI_BASE_URL", server.url)
    monkeypatch.setenv("NAGATHA_AI_API_KEY", API_KEY)
    monkeypatch.setenv("NAGATHA_AI_MODEL", "env-model")
    # When chatting
    ai.chat(prompt="x")
    # Then the environment's server, key and model were used
    (request,) = server.requests
    assert request.body["model"] == "env-model"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_the_module_config_is_used_without_environment(ai, server):
    ai.register_tasks(
        FakeRegistry(
            {
                "base_url": server.url + "/v1",
                "api_key": "sk-config",
                "model": "config-model",
                "timeout": 5,
            }
        )
    )
    ai.chat(prompt="x")
    (request,) = server.requests
    assert request.body["model"] == "config-model"
    assert request.headers["Authorization"] == "Bearer sk-config"


def test_an_unconfigured_module_raises_an_error_naming_the_variable(ai):
    ai.register_tasks(FakeRegistry())
    with pytest.raises(ai.AIError, match="NAGATHA_AI_BASE_URL") as info:
        ai.chat(prompt="x")
    assert isinstance(info.value, ai.AINotConfigured)
    assert "\n" not in str(info.value)


def test_a_missing_model_raises_an_error_naming_the_variable(ai, server, monkeypatch):
    configure(ai, monkeypatch, server.url, model=None)
    with pytest.raises(ai.AINotConfigured, match="NAGATHA_AI_MODEL"):
        ai.chat(prompt="x")
    assert server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of prompt or messages"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one"),
        ({"prompt": 3}, "prompt must be a string"),
        ({"messages": []}, "non-empty list"),
        ({"messages": "hello"}, "non-empty list"),
        ({"messages": ["hello"]}, r"messages\[0\] must be an object"),
        ({"messages": [{"content": "x"}]}, r"messages\[0\]\.role"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, r"messages\[0\]\.role"),
        ({"messages": [{"role": "user"}]}, "has no content"),
        ({"messages": [{"role": "user", "content": None}]}, "content must be"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "parts must be objects"),
        ({"prompt": "x", "system": 1}, "system must be a string"),
        ({"prompt": "x", "temperature": "hot"}, "temperature must be a number"),
        ({"prompt": "x", "temperature": 3}, "between 0 and 2"),
        ({"prompt": "x", "max_tokens": 0}, "positive integer"),
        ({"prompt": "x", "max_tokens": True}, "positive integer"),
        ({"prompt": "x", "model": 5}, "model must be a non-empty string"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(ai, server, monkeypatch, kwargs, match):
    configure(ai, monkeypatch, server.url)
    with pytest.raises(ai.InvalidChatRequest, match=match):
        ai.chat(**kwargs)
    assert server.requests == []


def test_an_http_error_names_the_status_and_never_the_key(ai, server, monkeypatch):
    # Given a server that echoes the key in its error body, as some providers do
    server.reply(
        "/v1/chat/completions",
        status=500,
        body={"error": {"message": f"Incorrect API key provided: {API_KEY}" + "x" * 500}},
    )
    configure(ai, monkeypatch, server.url)
    with pytest.raises(ai.AIHTTPError) as info:
        ai.chat(prompt="x")
    message = str(info.value)
    assert info.value.status_code == 500
    assert "HTTP 500" in message and "Incorrect API key provided" in message
    assert API_KEY not in message and "SECRET" not in message
    assert len(message) < 400


def test_a_body_that_is_not_json_raises_an_invalid_response_error(ai, server, monkeypatch):
    server.reply(
        "/v1/chat/completions", raw=b"<html>gateway says hi</html>", content_type="text/html"
    )
    configure(ai, monkeypatch, server.url)
    with pytest.raises(ai.InvalidAIResponse, match="not JSON.*gateway says hi"):
        ai.chat(prompt="x")


def test_json_that_is_not_a_completion_raises_an_invalid_response_error(ai, server, monkeypatch):
    server.reply("/v1/chat/completions", body={"choices": []})
    configure(ai, monkeypatch, server.url)
    with pytest.raises(ai.InvalidAIResponse, match="no choices"):
        ai.chat(prompt="x")


def test_a_refused_connection_raises_an_unreachable_error(ai, monkeypatch, refused_url):
    configure(ai, monkeypatch, refused_url)
    with pytest.raises(ai.AIUnreachable, match="cannot connect") as info:
        ai.chat(prompt="x")
    assert API_KEY not in str(info.value)


def test_a_server_slower_than_the_timeout_raises_an_unreachable_error(ai, server, monkeypatch):
    server.hold.add("/v1/chat/completions")
    ai.register_tasks(FakeRegistry({"timeout": 0.2}))
    monkeypatch.setenv("NAGATHA_AI_BASE_URL", server.url)
    monkeypatch.setenv("NAGATHA_AI_MODEL", "m")
    with pytest.raises(ai.AIUnreachable, match="no answer within 0.2 s"):
        ai.chat(prompt="x")


def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(ai, server, monkeypatch):
    configure(ai, monkeypatch, server.url, key="sk-bad\u00e9key")
    with pytest.raises(ai.AINotConfigured, match="API key") as info:
        ai.chat(prompt="x")
    assert "sk-bad" not in str(info.value)


def test_the_key_never_appears_in_logs(ai, server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    configure(ai, monkeypatch, server.url)
    ai.chat(prompt="x")
    server.reply("/v1/chat/completions", status=401, body={"error": f"bad key {API_KEY}"})
    with pytest.raises(ai.AIHTTPError):
        ai.chat(prompt="x")
    ai.heartbeat()
    assert caplog.records
    assert API_KEY not in caplog.text


# -- heartbeat ---------------------------------------------------------------------------


def test_heartbeat_without_base_url_is_unconfigured(ai):
    ai.register_tasks(FakeRegistry())
    assert ai.heartbeat()["status"] == "unconfigured"


def test_heartbeat_is_ok_when_the_server_lists_models(ai, server, monkeypatch):
    configure(ai, monkeypatch, server.url + "/v1")
    beat = ai.heartbeat()
    assert beat["status"] == "ok"
    assert beat["models"] == 1 and beat["model"] == "env-model"
    assert server.requests[0].method == "GET" and server.requests[0].path == "/v1/models"
    assert server.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in json.dumps(beat)


def test_heartbeat_reports_an_http_error_without_the_key(ai, server, monkeypatch):
    server.reply("/v1/models", status=401, body={"error": f"invalid key {API_KEY}"})
    configure(ai, monkeypatch, server.url)
    beat = ai.heartbeat()
    assert beat["status"] == "error" and "HTTP 401" in beat["error"]
    assert API_KEY not in json.dumps(beat)


def test_heartbeat_reports_an_unreachable_server(ai, monkeypatch, refused_url):
    configure(ai, monkeypatch, refused_url)
    beat = ai.heartbeat()
    assert beat["status"] == "error" and "cannot connect" in beat["error"]


def test_heartbeat_reports_a_malformed_base_url(ai, monkeypatch):
    configure(ai, monkeypatch, "ftp://example.invalid")
    beat = ai.heartbeat()
    assert beat["status"] == "error" and "NAGATHA_AI_BASE_URL" in beat["error"]


# -- registration ------------------------------------------------------------------------


def test_register_tasks_registers_chat_with_no_retries_and_a_time_limit(ai):
    registry = FakeRegistry({"timeout": 10})
    ai.register_tasks(registry)
    ((module, name, func, options),) = registry.tasks
    assert (module, name, func) == ("ai", "chat", ai.chat)
    assert options["max_retries"] == 0
    assert options["time_limit"] > 10_000
    assert callable(ai.heartbeat)
    assert ai.__doc__.strip().splitlines()[0] and ai.__version__


def test_register_tasks_refuses_a_malformed_config_value(ai):
    with pytest.raises(ai.AINotConfigured, match="'timeout' must be a positive number"):
        ai.register_tasks(FakeRegistry({"timeout": "soon"}))


def test_the_shipped_config_file_holds_valid_defaults(ai):
    config = yaml.safe_load((AI_FOLDER / "config.yaml").read_text(encoding="utf-8"))
    registry = FakeRegistry(config)
    ai.register_tasks(registry)
    assert ai.heartbeat()["status"] == "unconfigured"


def test_settings_repr_never_shows_the_key(ai):
    settings = sys.modules[ai.__name__ + ".client"].resolve_settings(
        {}, {"NAGATHA_AI_API_KEY": API_KEY}
    )
    assert API_KEY not in repr(settings)
