"""Falcon middleware: request ids, the body-size limit and the access log.

Order in :func:`nagatha.api.app.create_app`: ``RequestId`` first (so every answer, even a
401 or 413, carries ``X-Request-ID``), then ``AccessLog``, then authentication, then
``BodyLimit``. The access log is written here rather than by gunicorn so that the embedded
server logs the same lines, through nagatha's logging (text or JSON, secrets redacted).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import falcon

from nagatha.api.errors import log_safe, request_id_of, too_large

access_logger = logging.getLogger("nagatha.api.access")

#: An incoming X-Request-ID is kept only if it looks like an id (no log injection).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"


class RequestId:
    """Give each request an id: the client's ``X-Request-ID`` if sane, else a new one."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Set ``req.context.request_id``."""
        incoming = req.get_header(REQUEST_ID_HEADER)
        if incoming and _REQUEST_ID.fullmatch(incoming):
            req.context.request_id = incoming
        else:
            req.context.request_id = uuid.uuid4().hex

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        """Echo the id in the ``X-Request-ID`` response header."""
        request_id = request_id_of(req)
        if request_id:
            resp.set_header(REQUEST_ID_HEADER, request_id)


class BodyLimit:
    """Refuse a declared body over ``max_bytes`` with 413 before anything reads it.

    Chunked bodies declare no length: :func:`nagatha.api.body.read_json_object` stops reading
    them at the same limit.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Raise 413 if ``Content-Length`` exceeds the limit."""
        length = req.content_length
        if length is not None and length > self.max_bytes:
            raise too_large(self.max_bytes)


#: Probe paths: their successful answers are logged at DEBUG, not INFO (a load balancer and
#: Kubernetes ask every few seconds, per pod; their lines would drown the requests).
PROBE_PATHS = frozenset({"/ping", "/health"})
#: Header of the dashboard's periodic reads (``/ui``): their successful answers are DEBUG too
#: (each open tab reads four paths every 5 s).
POLL_HEADER = "X-Nagatha-Poll"


class AccessLog:
    """One ``nagatha.api.access`` line per request, as ``key=value`` pairs: INFO, except
    successful probes (:data:`PROBE_PATHS`) and dashboard reads of a ``GET`` (with
    :data:`POLL_HEADER`), which are DEBUG."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Note the start time."""
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        """Log method, path, status, duration, request id and client address."""
        polled = req.path in PROBE_PATHS or (
            req.method == "GET" and req.get_header(POLL_HEADER) is not None
        )
        probe = polled and resp.status_code < 400
        level = logging.DEBUG if probe else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        started = getattr(req.context, "started", None)
        duration_ms = (time.perf_counter() - started) * 1000 if started is not None else -1.0
        query = f"?{req.query_string}" if req.query_string else ""
        access_logger.log(
            level,
            'request_id=%s method=%s path="%s%s" status=%d duration_ms=%.1f remote=%s',
            request_id_of(req),
            req.method,
            log_safe(req.path),
            log_safe(query),
            resp.status_code,
            duration_ms,
            req.remote_addr,
        )
