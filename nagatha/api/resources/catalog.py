"""``GET /modules`` and ``GET /tasks``: what the hub can run (in memory, no I/O)."""

from __future__ import annotations

import falcon

from nagatha.api.resources import send
from nagatha.api.schemas import ModuleList, TaskList
from nagatha.registry import TaskRegistry


class ModulesResource:
    """The discovered modules, loaded or not (heartbeats are on ``/health``)."""

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"modules": [...]}``."""
        send(resp, ModuleList(modules=self.registry.list_modules()))


class TasksResource:
    """The registered tasks with their parameters."""

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"tasks": [...]}``."""
        send(resp, TaskList(tasks=self.registry.list_tasks()))
