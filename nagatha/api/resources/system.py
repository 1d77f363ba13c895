"""``GET /ping`` (liveness, touches nothing), ``GET /metrics``, ``GET /stats`` and
``GET /openapi.json``."""

from __future__ import annotations

import json
from typing import Any

import falcon

from nagatha import __version__
from nagatha.api.metrics import MetricsCollector
from nagatha.api.resources import send
from nagatha.api.schemas import Ping


class PingResource:
    """Liveness: the process answers; RabbitMQ and Redis are not consulted."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"status": "ok", "version": ...}``."""
        send(resp, Ping(version=__version__))

    on_head = on_get  # probes that only look at the status (Falcon sends no body for HEAD)


class MetricsResource:
    """Prometheus metrics of the whole hub (:mod:`nagatha.api.metrics`)."""

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer the exposition in the format the ``Accept`` header asks for."""
        resp.data, resp.content_type = self.collector.render(req.get_header("Accept"))
        resp.cache_control = ["no-store"]


class StatsResource:
    """The hub's state as JSON (:class:`~nagatha.types.StatsReport`), from the read
    ``/metrics`` uses."""

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer 200 with what could be read (a service that did not answer is null, and
        its check says why)."""
        send(resp, self.collector.state().report())
        resp.cache_control = ["no-store"]


class OpenApiResource:
    """Serve the OpenAPI document built once at startup."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = json.dumps(document, ensure_ascii=False).encode("utf-8")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer the document."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
