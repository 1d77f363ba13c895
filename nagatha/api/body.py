"""Reading a JSON request body: bounded, strict, and every failure a 400 (or 413)."""

from __future__ import annotations

from typing import Any, TypeVar

import falcon
from gunicorn.http.errors import ParseException
from pydantic import BaseModel, ValidationError

from nagatha import jsontext
from nagatha.api.errors import ApiError, bad_request, too_large
from nagatha.errors import MAX_NAMES, short_name

M = TypeVar("M", bound=BaseModel)


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """Return the raw body; 413 past ``max_bytes`` (declared or, for chunked, as read); 400
    (closing the connection) for a body that breaks off or is malformed chunked encoding."""
    try:
        return _read(req, max_bytes)
    except (ParseException, OSError) as exc:
        # Raised by the server while it decodes the body: the connection cannot be reused.
        reason = str(exc) or type(exc).__name__
        raise ApiError(
            400,
            "Malformed body",
            f"The request body could not be read: {reason[:200]}.",
            headers={"Connection": "close"},
        ) from None


def _read(req: falcon.Request, max_bytes: int) -> bytes:
    length = req.content_length
    if length is not None:
        if length > max_bytes:
            raise too_large(max_bytes)
        return req.bounded_stream.read(length)
    if "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        if not req.env.get("wsgi.input_terminated"):
            # The embedded server (wsgiref) hands the raw chunked stream over and never ends
            # it: reading would wait for the client to give up. gunicorn decodes it.
            raise ApiError(
                411,
                "Length required",
                "This server does not read chunked bodies: send a Content-Length.",
            )
        data = req.stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large(max_bytes)
        return bytes(data)
    return b""


def read_json_object(req: falcon.Request, max_bytes: int) -> dict[str, Any]:
    """Parse the body as a JSON object; 400 if it is empty, not JSON or not an object.

    What :func:`nagatha.jsontext.loads` refuses is refused (``NaN``, ``1e400``, deep nesting,
    lone surrogates).
    """
    data = read_body(req, max_bytes)
    if not data.strip():
        raise bad_request("Empty body", "The request body must be a JSON object.")
    try:
        value = jsontext.loads(data)
    except jsontext.JsonTextError as exc:
        raise bad_request("Malformed JSON", f"The request body {exc}.") from None
    if not isinstance(value, dict):
        raise bad_request(
            "Invalid body", f"The request body must be a JSON object, not {_json_type(value)}."
        )
    return value


def parse_model(model: type[M], value: dict[str, Any]) -> M:
    """Validate ``value`` as ``model``; 400 listing each field at fault."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        found = exc.errors(include_url=False, include_input=False)
        errors = [
            {
                "field": short_name(".".join(str(part) for part in error["loc"]) or "(body)"),
                "message": error["msg"],
            }
            for error in found[:MAX_NAMES]
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise bad_request(
            "Invalid body", f"The request body is invalid: {summary}{more}.", errors=errors
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
