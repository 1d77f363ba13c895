"""``GET /health``: readiness (200 when broker and store answer, else 503)."""

from __future__ import annotations

import falcon

from nagatha.api.health import HealthChecker
from nagatha.api.resources import send


class HealthResource:
    """Answer the :class:`~nagatha.api.health.HealthChecker` report."""

    def __init__(self, checker: HealthChecker) -> None:
        self.checker = checker

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """200 with the report when ready, 503 with the same report shape when not."""
        report = self.checker.check()
        send(resp, report, 200 if report.status == "ok" else 503)
        resp.cache_control = ["no-store"]

    on_head = on_get  # load balancers that probe with HEAD (Falcon sends no body for HEAD)
