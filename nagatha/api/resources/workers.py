"""``GET /workers``: which worker and bridge processes are alive, and what they run."""

from __future__ import annotations

import falcon

from nagatha.api.resources import send
from nagatha.api.schemas import WorkerList
from nagatha.registry import TaskRegistry


class WorkersResource:
    """The processes heard of lately (:mod:`nagatha.presence`), by kind, hostname and pid."""

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"workers": [...]}``; 503 when the status store is unreachable."""
        send(resp, WorkerList(workers=self.registry.workers()))
        resp.cache_control = ["no-store"]
