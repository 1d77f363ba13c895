"""Reading a JSON request body: bounded, strict, and every failure a 400 (or 413)."""

from __future__ import annotations

import json
from typing import Any, NoReturn, TypeVar

import falcon
from pydantic import BaseModel, ValidationError

from nagatha.api.errors import bad_request, too_large

M = TypeVar("M", bound=BaseModel)

#: Deepest nesting of arrays/objects accepted in a body (the status store's serializer gives
#: up past ~250 levels; the bridge uses the same bound for Celery bodies).
MAX_DEPTH = 200


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one out of float range (``1e400``) is refused, not ``inf``."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    """True if ``value`` nests arrays/objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """Return the raw body; 413 past ``max_bytes`` (declared or, for chunked, as read)."""
    length = req.content_length
    if length is not None:
        if length > max_bytes:
            raise too_large(max_bytes)
        return req.bounded_stream.read(length)
    if "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        data = req.stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large(max_bytes)
        return bytes(data)
    return b""


def read_json_object(req: falcon.Request, max_bytes: int) -> dict[str, Any]:
    """Parse the body as a JSON object; 400 if it is empty, not JSON or not an object.

    ``NaN`` and ``Infinity`` are refused (they are not JSON and could not be answered back),
    and so are numbers beyond float range (``1e400``, which would become ``Infinity``) and
    nesting deeper than :data:`MAX_DEPTH`.
    """
    data = read_body(req, max_bytes)
    if not data.strip():
        raise bad_request("Empty body", "The request body must be a JSON object.")
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "too deep"
        raise bad_request(
            "Malformed JSON", f"The request body is not valid JSON: {reason[:200]}."
        ) from None
    if not isinstance(value, dict):
        raise bad_request(
            "Invalid body", f"The request body must be a JSON object, not {_json_type(value)}."
        )
    if _too_deep(value, MAX_DEPTH):
        raise bad_request(
            "Malformed JSON", f"The request body nests deeper than {MAX_DEPTH} levels."
        )
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            "Malformed JSON",
            "The request body holds a string that is not valid Unicode (a lone surrogate).",
        ) from None
    return value


def parse_model(model: type[M], value: dict[str, Any]) -> M:
    """Validate ``value`` as ``model``; 400 listing each field at fault."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "(body)",
                "message": error["msg"],
            }
            for error in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise bad_request(
            "Invalid body", f"The request body is invalid: {summary}.", errors=errors
        ) from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
