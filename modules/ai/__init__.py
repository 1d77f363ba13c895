"""Chat completions against any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp).

Configure with ``NAGATHA_AI_BASE_URL`` (with or without the trailing ``/v1``),
``NAGATHA_AI_API_KEY`` (optional, sent as a bearer token) and ``NAGATHA_AI_MODEL``, or the
keys ``base_url``, ``api_key``, ``model``, ``timeout`` and ``heartbeat_timeout`` of the module
config (``config.yaml`` beside this file, overridden by ``modules.settings.ai`` in the hub
config). The environment wins. The API key never appears in errors, logs or heartbeats.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .client import (
    ENV_BASE_URL,
    ENV_MODEL,
    AIError,
    AIHTTPError,
    AINotConfigured,
    AIUnreachable,
    InvalidAIResponse,
    InvalidChatRequest,
    request_json,
    resolve_settings,
)

__version__ = "1.0.0"

__all__ = [
    "AIError",
    "AIHTTPError",
    "AINotConfigured",
    "AIUnreachable",
    "InvalidAIResponse",
    "InvalidChatRequest",
    "chat",
    "heartbeat",
    "register_tasks",
]

MODULE = "ai"
#: No retries: a failed answer is reported at once, and a retried completion costs twice.
MAX_RETRIES = 0
#: Time left to a task beyond its HTTP timeout before Dramatiq's time limit stops it.
TIME_LIMIT_MARGIN_S = 30.0
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

logger = logging.getLogger("nagatha.modules.ai")

#: The module config handed over by ``register_tasks`` (empty until then).
_config: dict[str, Any] = {}


def chat(
    prompt: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Ask the configured model for a chat completion; return its content, model and usage.

    Returns ``{"content": str, "model": str, "usage": dict}``. Give exactly one of
    ``prompt`` (sent as one user message) or ``messages`` (OpenAI chat messages: dicts with
    a ``role`` and a ``content``). ``system`` is sent as a system message before them.
    ``model`` defaults to ``NAGATHA_AI_MODEL`` / the config's ``model``.
    Raises an :class:`AIError` subclass when unconfigured, on bad arguments, on transport or
    HTTP errors and on an answer that is not a chat completion.
    """
    settings = resolve_settings(_config)
    shown_url = settings.display_url("chat/completions")  # raises AINotConfigured first
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidChatRequest(f"model must be a non-empty string, got {model!r:.40}")
    chosen_model = model if model is not None else settings.model
    if not isinstance(chosen_model, str) or not chosen_model.strip():
        raise AINotConfigured(
            f"no model to ask: pass model= or set {ENV_MODEL} (or model in the ai module config)"
        )
    payload: dict[str, Any] = {
        "model": chosen_model,
        "messages": build_messages(prompt, messages, system),
    }
    if temperature is not None:
        payload["temperature"] = _temperature(temperature)
    if max_tokens is not None:
        payload["max_tokens"] = _max_tokens(max_tokens)
    logger.debug(
        "chat: %d message(s) to model %s at %s",
        len(payload["messages"]),
        chosen_model,
        shown_url,
    )
    answer = request_json(
        settings, "POST", "chat/completions", payload=payload, timeout_s=settings.timeout_s
    )
    return parse_completion(answer, chosen_model)


def build_messages(
    prompt: str | None, messages: list[dict[str, Any]] | None, system: str | None
) -> list[dict[str, Any]]:
    """Return the request's ``messages`` list; raise :class:`InvalidChatRequest` on bad input."""
    if (prompt is None) == (messages is None):
        raise InvalidChatRequest("give exactly one of prompt or messages")
    if system is not None and not isinstance(system, str):
        raise InvalidChatRequest(f"system must be a string, not {type(system).__name__}")
    head = [{"role": "system", "content": system}] if system is not None else []
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidChatRequest(f"prompt must be a string, not {type(prompt).__name__}")
        return [*head, {"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not messages:
        raise InvalidChatRequest("messages must be a non-empty list of {role, content} objects")
    for index, message in enumerate(messages):
        _check_message(index, message)
    return [*head, *(dict(message) for message in messages)]


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidChatRequest(f"{where} must be an object, not {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise InvalidChatRequest(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r:.40}"
        )
    if "content" not in message:
        raise InvalidChatRequest(f"{where} has no content")
    content = message["content"]
    # Content parts (lists) carry images etc.; null content is how assistants call tools.
    if isinstance(content, str) or (isinstance(content, list) and content):
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise InvalidChatRequest(f"{where}.content parts must be objects")
        return
    if content is None and role == "assistant":
        return
    raise InvalidChatRequest(
        f"{where}.content must be a string or a non-empty list of parts, "
        f"not {type(content).__name__}"
    )


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidChatRequest(f"temperature must be a number, got {value!r:.40}")
    if not 0 <= value <= 2:
        raise InvalidChatRequest(f"temperature must be between 0 and 2, got {value!r}")
    return value


def _max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidChatRequest(f"max_tokens must be a positive integer, got {value!r:.40}")
    return value


def parse_completion(answer: Any, requested_model: str) -> dict[str, Any]:
    """Reduce a chat completion document to ``{"content", "model", "usage"}``.

    Raises :class:`InvalidAIResponse` when there is no first choice with a message. A
    ``null`` content (a refusal or a tool call) becomes ``""``.
    """
    try:
        message = answer["choices"][0]["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InvalidAIResponse(
            "the answer is not a chat completion (no choices[0].message)"
        ) from None
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise InvalidAIResponse(
            f"choices[0].message.content must be a string, not {type(content).__name__}"
        )
    model = answer.get("model")
    usage = answer.get("usage")
    return {
        "content": content,
        "model": model if isinstance(model, str) and model else requested_model,
        "usage": usage if isinstance(usage, dict) else {},
    }


def heartbeat() -> dict[str, Any]:
    """Say whether the module is configured and its server answers ``GET /v1/models``.

    Returns ``{"status": "unconfigured", ...}`` without a base URL, ``{"status": "ok",
    "url", "model", "models"}`` when the server answers 2xx within ``heartbeat_timeout``
    seconds, else ``{"status": "error", "error": <reason>}``. Never raises, never shows the key.
    """
    try:
        settings = resolve_settings(_config)
    except AIError as exc:
        return {"status": "error", "error": str(exc)}
    if settings.base_url is None:
        return {"status": "unconfigured", "detail": f"set {ENV_BASE_URL} to enable chat"}
    beat: dict[str, Any] = {"url": settings.display_url("models"), "model": settings.model}
    try:
        answer = request_json(settings, "GET", "models", timeout_s=settings.heartbeat_timeout_s)
    except AIError as exc:
        return {"status": "error", **beat, "error": str(exc)}
    data = answer.get("data") if isinstance(answer, dict) else None
    if isinstance(data, list):
        beat["models"] = len(data)
    if settings.model is None:
        beat["warning"] = f"no default model: chat needs model= or {ENV_MODEL}"
    return {"status": "ok", **beat}


def register_tasks(registry: Any) -> None:
    """Register ``ai.chat`` and keep the module config for ``chat`` and ``heartbeat``.

    The task's time limit is the HTTP ``timeout`` plus a margin: Dramatiq cannot interrupt a
    blocked socket read, so the HTTP timeout is what really bounds a call. Raises
    :class:`AINotConfigured` when the module config holds a malformed value (the hub then
    lists the module as failed with that message); a missing base URL is not an error.
    """
    global _config
    config = dict(registry.module_config(MODULE) or {})
    # NOTE: the environment is left out here on purpose: it is read again on every call, so
    # a bad NAGATHA_AI_* value shows in heartbeat() and chat() errors and is fixed without a
    # reload, while a bad config file value stops the module at load time.
    settings = resolve_settings(config, environ={})
    _config = config
    registry.register_task(
        MODULE,
        "chat",
        chat,
        max_retries=MAX_RETRIES,
        time_limit=int((settings.timeout_s + TIME_LIMIT_MARGIN_S) * 1000),
    )
