"""Every error the API answers, and its status code, decided here and nowhere else.

One JSON shape for all of them (:class:`nagatha.api.schemas.ErrorBody`)::

    {"title": "Unknown task", "description": "unknown task 'x.y': ...", "request_id": "..."}

plus, where they help, ``unknown``/``missing`` (422) or ``errors`` (400). Hub errors
(:mod:`nagatha.errors`) are mapped by :data:`STATUS_OF`; Falcon's own errors (404 route, 405,
bad headers) get the same shape from :func:`serialize_error`; anything else is a bug: it is
logged with the request id and answered 500 with no internals.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import falcon

from nagatha.errors import (
    BrokerUnavailable,
    InvalidArguments,
    NagathaError,
    ServiceUnavailable,
    StoreUnavailable,
    TaskNotCancellable,
    TaskNotFound,
    TaskNotRerunnable,
    UnknownTask,
)

logger = logging.getLogger("nagatha.api")

#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S = 5

#: Hub error class -> (HTTP status, title). First match wins (most specific first).
STATUS_OF: tuple[tuple[type[NagathaError], int, str], ...] = (
    (UnknownTask, 404, "Unknown task"),
    (TaskNotFound, 404, "Task not found"),
    (TaskNotCancellable, 409, "Task not cancellable"),
    (TaskNotRerunnable, 409, "Task not rerunnable"),
    (InvalidArguments, 422, "Invalid arguments"),
    (BrokerUnavailable, 503, "Broker unavailable"),
    (StoreUnavailable, 503, "Store unavailable"),
    (ServiceUnavailable, 503, "Service unavailable"),
)


class ApiError(falcon.HTTPError):
    """An :class:`falcon.HTTPError` whose body may carry extra fields (``unknown``, ...)."""

    def __init__(
        self,
        code: int,
        title: str,
        description: str,
        /,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(code, title=title, description=description, headers=headers)
        self.extra = {key: value for key, value in extra.items() if value is not None}

    def to_dict(self, obj_type: Any = dict) -> Any:
        """The error's fields, then the extras."""
        body = super().to_dict(obj_type)
        body.update(self.extra)
        return body


def bad_request(title: str, description: str, **extra: Any) -> ApiError:
    """A 400 for input that cannot be understood."""
    return ApiError(400, title, description, **extra)


def unauthorized(description: str) -> ApiError:
    """A 401 with the ``WWW-Authenticate: Bearer`` challenge."""
    return ApiError(
        401, "Unauthorized", description, headers={"WWW-Authenticate": 'Bearer realm="nagatha"'}
    )


def too_large(limit: int) -> ApiError:
    """A 413 naming the limit."""
    return ApiError(
        413,
        "Body too large",
        f"The request body is larger than the limit of {limit} bytes (api.max_body_bytes).",
    )


def to_http(error: NagathaError) -> ApiError:
    """The HTTP error for a hub error (500, without the message, if it is not listed)."""
    for cls, status, title in STATUS_OF:
        if isinstance(error, cls):
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
            extra: dict[str, Any] = {}
            if isinstance(error, InvalidArguments):
                extra = {"unknown": error.unknown, "missing": error.missing}
            elif isinstance(error, TaskNotCancellable | TaskNotRerunnable):
                extra = {"status": error.status}
            return ApiError(status, title, str(error), headers=headers, **extra)
    return internal_error()


def internal_error(request_id: str | None = None) -> ApiError:
    """A 500 that reveals nothing but the request id to quote."""
    hint = f" (request id {request_id})" if request_id else ""
    return ApiError(
        500, "Internal Server Error", f"An unexpected error occurred; it was logged{hint}."
    )


_UNSAFE = re.compile(r'[\x00-\x20"\x7f]')


def log_safe(text: str) -> str:
    """``text`` with spaces, quotes and control characters percent-encoded: a path or query
    from the client cannot break a log line or forge one."""
    return _UNSAFE.sub(lambda match: f"%{ord(match.group()):02X}", text)


def request_id_of(req: falcon.Request) -> str | None:
    """The request id set by :class:`nagatha.api.middleware.RequestId`, if it ran."""
    return getattr(req.context, "request_id", None)


def handle_hub_error(
    req: falcon.Request, resp: falcon.Response, error: NagathaError, params: dict[str, Any]
) -> None:
    """Falcon error handler: a hub error becomes its HTTP error (see :data:`STATUS_OF`)."""
    http_error = to_http(error)
    if http_error.status_code == 500:
        logger.error(
            "request %s: %s %s failed: %s: %s",
            request_id_of(req),
            req.method,
            log_safe(req.path),
            type(error).__name__,
            error,
        )
        http_error = internal_error(request_id_of(req))
    elif http_error.status_code == 503:
        logger.warning(
            "request %s: %s %s: %s", request_id_of(req), req.method, log_safe(req.path), error
        )
    raise http_error


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict[str, Any]
) -> None:
    """Falcon error handler for everything else: log with the traceback, answer 500."""
    request_id = request_id_of(req)
    logger.error(
        "request %s: %s %s failed unexpectedly",
        request_id,
        req.method,
        log_safe(req.path),
        exc_info=error,
    )
    raise internal_error(request_id)


_NO_ROUTE = "no such path; GET /openapi.json lists the API's paths"


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Write every error as JSON (whatever the client accepts) with the request id."""
    body: dict[str, Any]
    if isinstance(error, falcon.HTTPRouteNotFound):
        body = {"title": "Not found", "description": _NO_ROUTE}
    elif isinstance(error, falcon.HTTPMethodNotAllowed):
        allowed = dict(error.headers or {}).get("Allow", "")
        body = {
            "title": "Method not allowed",
            "description": f"this path answers {allowed}; GET /openapi.json describes the API",
        }
    else:
        body = dict(error.to_dict())
    body.setdefault("description", body["title"])
    body.pop("link", None)
    body["request_id"] = request_id_of(req)
    # NOTE: ASCII escapes keep an echoed lone surrogate from breaking the encoding.
    resp.data = json.dumps(body, separators=(",", ":")).encode("ascii")
    resp.content_type = falcon.MEDIA_JSON


def install(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    """Register the handlers and the serializer on ``app``."""
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(NagathaError, handle_hub_error)
    app.set_error_serializer(serialize_error)
