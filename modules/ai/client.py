"""Settings, errors and HTTP calls for OpenAI-compatible servers (the ``ai`` module's I/O).

Errors raised on purpose, all with a one-line message that never contains the API key::

    AIError                     base class of the ai module's errors
    ├── AINotConfigured         no base URL or model, or a setting with a bad value
    ├── InvalidChatRequest      chat() arguments that cannot form a request
    ├── AIUnreachable           connection refused, DNS failure, timeout, protocol error
    ├── AIHTTPError             the server answered with a non-2xx status
    └── InvalidAIResponse       a 2xx answer that is not the expected JSON

Settings come from the environment first (``NAGATHA_AI_BASE_URL``, ``NAGATHA_AI_API_KEY``,
``NAGATHA_AI_MODEL``), then from the module config (``base_url``, ``api_key``, ``model``,
``timeout``, ``heartbeat_timeout``). They are resolved on every call, so a changed
environment needs no restart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

ENV_BASE_URL = "NAGATHA_AI_BASE_URL"
ENV_API_KEY = "NAGATHA_AI_API_KEY"
ENV_MODEL = "NAGATHA_AI_MODEL"

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 1.5
#: Connecting never waits longer than this, whatever the request timeout.
CONNECT_TIMEOUT_S = 10.0
EXCERPT_CHARS = 200
REDACTED = "[redacted]"


class AIError(Exception):
    """Base class of the ai module's errors; ``str(error)`` is one line for a person."""


class AINotConfigured(AIError):
    """A setting is missing (no base URL, no model) or has a value that cannot work."""


class InvalidChatRequest(AIError):
    """The arguments of ``chat()`` cannot form a chat completion request."""


class AIUnreachable(AIError):
    """The server could not be reached, broke the connection or did not answer in time."""


class AIHTTPError(AIError):
    """The server answered with a non-2xx status (kept in ``status_code``)."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class InvalidAIResponse(AIError):
    """The server answered 2xx with a body that is not the expected JSON document."""


@dataclass(frozen=True)
class AISettings:
    """Effective settings of the ai module; ``repr()`` never shows the API key."""

    base_url: str | None
    """Server root without a trailing ``/`` or ``/v1``; ``None`` when unconfigured."""
    api_key: str | None = field(repr=False)
    model: str | None
    timeout_s: float = DEFAULT_TIMEOUT_S
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S

    def url(self, path: str) -> str:
        """Return the URL of ``/v1/<path>``; raise :class:`AINotConfigured` without a base URL."""
        if self.base_url is None:
            raise AINotConfigured(
                f"the ai module is not configured: set {ENV_BASE_URL} "
                "(or base_url in the ai module config)"
            )
        return f"{self.base_url}/v1/{path}"

    def display_url(self, path: str) -> str:
        """Like :meth:`url`, without any user:password part (for messages and heartbeats)."""
        return str(httpx.URL(self.url(path)).copy_with(userinfo=b""))

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the API key replaced (servers echo keys)."""
        return text.replace(self.api_key, REDACTED) if self.api_key else text


def resolve_settings(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> AISettings:
    """Build the settings: environment first, then ``config``; raise :class:`AINotConfigured`.

    A missing base URL is not an error here (it means "unconfigured"); a malformed value is.
    Empty environment variables count as unset.
    """
    env = os.environ if environ is None else environ
    base_url = _pick(env, ENV_BASE_URL, config, "base_url")
    api_key = _pick(env, ENV_API_KEY, config, "api_key")
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        # NOTE: checked here because HTTP libraries quote an invalid header value in full.
        raise AINotConfigured(
            f"the API key ({ENV_API_KEY} or api_key) holds characters not allowed in an HTTP header"
        )
    return AISettings(
        base_url=None if base_url is None else _normalize_base_url(base_url),
        api_key=api_key,
        model=_pick(env, ENV_MODEL, config, "model"),
        timeout_s=_seconds(config, "timeout", DEFAULT_TIMEOUT_S),
        heartbeat_timeout_s=_seconds(config, "heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_S),
    )


def _pick(env: Mapping[str, str], env_name: str, config: Mapping[str, Any], key: str) -> str | None:
    value = (env.get(env_name) or "").strip()
    if value:
        return value
    configured = config.get(key)
    if configured is None:
        return None
    if not isinstance(configured, str):
        raise AINotConfigured(
            f"ai module config {key!r} must be a string, not {type(configured).__name__}"
        )
    return configured.strip() or None


def _normalize_base_url(raw: str) -> str:
    url = raw.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise AINotConfigured(
            f"{ENV_BASE_URL} (or base_url) must be an http(s) URL such as "
            "http://localhost:11434 or https://api.openai.com"
        )
    if parsed.query or parsed.fragment:
        raise AINotConfigured(f"{ENV_BASE_URL} (or base_url) must not have a query or fragment")
    return url


def _seconds(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key)
    if value is None:
        return default
    try:
        seconds = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise AINotConfigured(
            f"ai module config {key!r} must be a positive number of seconds, got {value!r}"
        )
    return seconds


def request_json(
    settings: AISettings,
    method: str,
    path: str,
    *,
    payload: Mapping[str, Any] | None = None,
    timeout_s: float,
) -> Any:
    """Send ``method /v1/<path>`` (JSON body ``payload``) and return the decoded JSON answer.

    Sends ``Authorization: Bearer <key>`` when a key is set. Raises :class:`AIUnreachable`,
    :class:`AIHTTPError` or :class:`InvalidAIResponse`; their messages are redacted.
    """
    shown = f"{method} {settings.display_url(path)}"
    headers = {"Accept": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
    try:
        with httpx.Client(timeout=timeout, headers=headers, follow_redirects=False) as client:
            response = client.request(method, settings.url(path), json=payload)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise AIUnreachable(
            f"{shown} failed: cannot connect ({_describe(settings, exc)})"
        ) from None
    except httpx.TimeoutException:
        raise AIUnreachable(f"{shown} failed: no answer within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise AIUnreachable(f"{shown} failed: {_describe(settings, exc)}") from None
    if not response.is_success:
        raise AIHTTPError(
            f"{shown} returned HTTP {response.status_code}: {_excerpt(settings, response)}",
            status_code=response.status_code,
        )
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        raise InvalidAIResponse(
            f"{shown} returned a body that is not JSON ({kind}): {_excerpt(settings, response)}"
        ) from None


def _describe(settings: AISettings, exc: Exception) -> str:
    detail = " ".join(str(exc).split()) or "no detail"
    return settings.redact(f"{type(exc).__name__}: {detail}")[:EXCERPT_CHARS]


def _excerpt(settings: AISettings, response: httpx.Response) -> str:
    try:
        text = response.text
    except (LookupError, ValueError):
        text = response.content.decode("utf-8", "replace")
    text = settings.redact(" ".join(text.split()))
    if not text:
        return "(empty body)"
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
