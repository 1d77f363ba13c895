"""Build the Falcon WSGI app: ``create_app(config, registry=None)``.

Building opens no connection (the registry connects on first use), so an app can be created,
and a server can start, while RabbitMQ or Redis are down: it answers 503 until they are back.
"""

from __future__ import annotations

from typing import Any

import falcon

from nagatha import __version__
from nagatha.api import errors
from nagatha.api.auth import TokenAuth
from nagatha.api.health import HealthChecker
from nagatha.api.metrics import MetricsCollector
from nagatha.api.middleware import AccessLog, BodyLimit, RequestId
from nagatha.api.openapi import build_openapi
from nagatha.api.resources.catalog import ModulesResource, TasksResource
from nagatha.api.resources.dashboard import DashboardResource
from nagatha.api.resources.health import HealthResource
from nagatha.api.resources.system import (
    MetricsResource,
    OpenApiResource,
    PingResource,
    StatsResource,
)
from nagatha.api.resources.tasks import (
    FailuresResource,
    RerunTaskResource,
    RunTaskResource,
    TaskStatusResource,
)
from nagatha.api.resources.workers import WorkersResource
from nagatha.api.routes import Route, build_routes
from nagatha.config import FrameworkConfig
from nagatha.registry import TaskRegistry


class HubApp(falcon.App[falcon.Request, falcon.Response]):
    """The Falcon app plus what it owns: the registry and the health checker."""

    def __init__(
        self,
        registry: TaskRegistry,
        health: HealthChecker,
        routes: tuple[Route, ...],
        middleware: list[Any],
    ) -> None:
        super().__init__(middleware=middleware)
        self.registry = registry
        self.health = health
        self.routes = routes

    def drain(self, within: float = 0.0) -> None:
        """Answer every long poll (``?wait=``) within ``within`` seconds, with the record as it
        is then if it is not final by that time: the server is stopping, and a client that
        gets no final record asks again, of a server that is not."""
        self.registry.store.stop_waits(within)

    def close(self) -> None:
        """Release the broker connections and the store's connections."""
        self.registry.broker.close()
        self.registry.store.close()


def create_app(
    config: FrameworkConfig,
    registry: TaskRegistry | None = None,
    *,
    health: HealthChecker | None = None,
) -> HubApp:
    """Return the API for ``config``, on ``registry`` (a new hub with its modules if None)."""
    if registry is None:
        from nagatha.hub import create_hub

        registry = create_hub(config)
    api = config.api
    health = health or HealthChecker(registry, config)
    auth = TokenAuth(api.tokens, health_public=api.health_public)
    routes = build_routes(api)
    document = build_openapi(
        routes, protects=auth.protects, version=__version__, max_body_bytes=api.max_body_bytes
    )
    collector = MetricsCollector(registry, config)
    resources: dict[str, object] = {
        "ping": PingResource(),
        "health": HealthResource(health),
        "modules": ModulesResource(registry),
        "tasks": TasksResource(registry),
        "run": RunTaskResource(registry, api.max_body_bytes),
        "rerun": RerunTaskResource(registry, api.max_body_bytes),
        # One gthread thread of each process stays free of long polls: /ping, /health and
        # submits are answered however many clients wait. The embedded server starts a
        # thread per request.
        "status": TaskStatusResource(
            registry,
            api.max_wait,
            max_waiters=None if config.embedded else max(1, api.threads - 1),
        ),
        "failures": FailuresResource(registry),
        "workers": WorkersResource(registry),
        "metrics": MetricsResource(collector),
        "stats": StatsResource(collector),
        "openapi": OpenApiResource(document),
        "dashboard": DashboardResource(),
    }
    app = HubApp(
        registry,
        health,
        routes,
        middleware=[RequestId(), AccessLog(), auth, BodyLimit(api.max_body_bytes)],
    )
    app.req_options.auto_parse_qs_csv = False
    errors.install(app)
    for route in routes:
        resource = resources[route.resource]
        _check_responders(route, resource)
        app.add_route(route.path, resource)
    return app


def _check_responders(route: Route, resource: object) -> None:
    """Fail at startup if a resource answers other methods than the route table lists."""
    declared = {operation.method for operation in route.operations}
    served = {
        name[3:].upper()
        for name in dir(resource)
        if name.startswith("on_") and callable(getattr(resource, name))
    }
    if declared != served:
        raise RuntimeError(
            f"route {route.path}: table lists {sorted(declared)}, resource serves {sorted(served)}"
        )
