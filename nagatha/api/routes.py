"""The route table: every path, method and status code the API serves, in one place.

:func:`nagatha.api.app.create_app` mounts these routes and checks that each resource answers
exactly the methods listed; :func:`nagatha.api.openapi.build_openapi` describes them. Statuses
that the middleware adds to every route (401 where a token is required, 413, 500) are not
repeated here: :func:`common_replies` adds them, from the same policy the middleware applies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from nagatha.api.schemas import (
    ErrorBody,
    FailureList,
    HealthReport,
    ModuleList,
    OpenApiDocument,
    Ping,
    RerunAccepted,
    TaskAccepted,
    TaskList,
    WorkerList,
)
from nagatha.config import ApiConfig
from nagatha.stores.base import DEFAULT_FAILURES, RECENT_FAILURES
from nagatha.types import MISSED_BEATS, RerunRequest, StatsReport, TaskRecord, TaskRequest


@dataclass(frozen=True)
class Reply:
    """One documented response: what it means and the model of its JSON body (None: a text
    body, of one of ``media_types`` as the request's ``Accept`` asks)."""

    description: str
    model: type[BaseModel] | None = ErrorBody
    media_types: tuple[str, ...] = ("text/plain",)


@dataclass(frozen=True)
class Parameter:
    """A path or query parameter with its JSON Schema."""

    name: str
    location: Literal["path", "query"]
    description: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One method on one path."""

    method: str
    operation_id: str
    summary: str
    replies: Mapping[int, Reply]
    body: type[BaseModel] | None = None
    parameters: tuple[Parameter, ...] = ()


@dataclass(frozen=True)
class Route:
    """A path (a Falcon URI template), the key of the resource serving it, its operations."""

    path: str
    resource: str
    operations: tuple[Operation, ...] = field(default_factory=tuple)

    @property
    def openapi_path(self) -> str:
        """The path as OpenAPI writes it: ``{task_id:path}`` becomes ``{task_id}``."""
        return _CONVERTER.sub(r"{\1}", self.path)


_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")


NOT_AUTHORIZED = Reply("Missing or invalid bearer token (`Authorization: Bearer <token>`).")
TOO_LARGE = Reply("Request body larger than `api.max_body_bytes`.")
UNEXPECTED = Reply("Unexpected error; logged with the request id, no internals in the body.")


def common_replies(protected: bool) -> dict[int, Reply]:
    """The statuses the middleware may answer on any route (401 only where ``protected``)."""
    replies = {413: TOO_LARGE, 500: UNEXPECTED}
    if protected:
        replies[401] = NOT_AUTHORIZED
    return replies


TASK_ID = Parameter(
    "task_id", "path", "The task id handed out by `POST /tasks/run`.", {"type": "string"}, True
)


def _status_operation(operation_id: str, summary: str, max_wait: float) -> Operation:
    return Operation(
        method="GET",
        operation_id=operation_id,
        summary=summary,
        parameters=(
            TASK_ID,
            Parameter(
                "wait",
                "query",
                "Hold the request up to this many seconds until the task is final "
                "(success or failure); the record is answered as it is then.",
                {"type": "number", "minimum": 0, "maximum": max_wait, "default": 0},
            ),
        ),
        replies={
            200: Reply("The status record (final, or as it was when `wait` ran out).", TaskRecord),
            400: Reply("`wait` is not a number of seconds within the allowed range."),
            404: Reply("No record for this id: never handed out, or expired."),
            503: Reply("The status store (Redis) is unreachable."),
        },
    )


def _cancel_operation(operation_id: str, summary: str) -> Operation:
    return Operation(
        method="DELETE",
        operation_id=operation_id,
        summary=summary,
        parameters=(TASK_ID,),
        replies={
            200: Reply(
                "Cancelled (or cancelled before): the record, now `failure` with the error "
                "`Cancelled: cancelled before it ran`; no worker runs the task.",
                TaskRecord,
            ),
            404: Reply("No record for this id: never handed out, or expired."),
            409: Reply("The task is running (`started`) or has ended: not cancelled."),
            503: Reply("The status store (Redis) is unreachable: nothing was cancelled."),
        },
    )


HEALTH_REPLIES = {
    200: Reply("Broker and store answer.", HealthReport),
    503: Reply("Broker or store does not answer.", HealthReport),
}


def build_routes(api: ApiConfig) -> tuple[Route, ...]:
    """The API's routes for this configuration (``?wait`` is bounded by ``api.max_wait``)."""
    return (
        Route(
            "/ping",
            "ping",
            (
                Operation(
                    "GET",
                    "ping",
                    "Liveness: answers without touching RabbitMQ or Redis.",
                    {200: Reply("The process is up.", Ping)},
                ),
                Operation(
                    "HEAD",
                    "pingHead",
                    "Liveness for probes that send HEAD: the status of GET, no body.",
                    {200: Reply("The process is up.", Ping)},
                ),
            ),
        ),
        Route(
            "/health",
            "health",
            (
                Operation(
                    "GET",
                    "health",
                    "Readiness: RabbitMQ, the status store and each module's heartbeat.",
                    HEALTH_REPLIES,
                ),
                Operation(
                    "HEAD",
                    "healthHead",
                    "Readiness for probes that send HEAD: the status of GET, no body.",
                    HEALTH_REPLIES,
                ),
            ),
        ),
        Route(
            "/modules",
            "modules",
            (
                Operation(
                    "GET",
                    "listModules",
                    "Modules with version, description, status (loaded/failed/disabled), tasks.",
                    {200: Reply("Every discovered module.", ModuleList)},
                ),
            ),
        ),
        Route(
            "/tasks",
            "tasks",
            (
                Operation(
                    "GET",
                    "listTasks",
                    "Tasks with module, description, queue and parameters.",
                    {200: Reply("Every registered task.", TaskList)},
                ),
            ),
        ),
        Route(
            "/tasks/run",
            "run",
            (
                Operation(
                    "POST",
                    "runTask",
                    "Start a task by name; 202 once RabbitMQ has confirmed the message.",
                    {
                        202: Reply("Enqueued and confirmed by the broker.", TaskAccepted),
                        400: Reply("Malformed JSON, a body that is not an object, or bad fields."),
                        404: Reply("No task of that name."),
                        411: Reply("A chunked body where the server cannot read one (embedded)."),
                        422: Reply("kwargs do not bind to the task (`unknown`, `missing`)."),
                        503: Reply("Broker or store unreachable: the task was not accepted."),
                    },
                    body=TaskRequest,
                ),
            ),
        ),
        Route(
            "/tasks/rerun",
            "rerun",
            (
                Operation(
                    "POST",
                    "rerunTask",
                    "Run an ended task (success or failure) again with the same arguments, as "
                    "a new task; its old record stays as it is.",
                    {
                        202: Reply("The new task, enqueued and confirmed.", RerunAccepted),
                        400: Reply("Malformed JSON, a body that is not an object, or bad fields."),
                        404: Reply(
                            "No record for this id (never handed out, or expired), or no module "
                            "registers its task now."
                        ),
                        409: Reply(
                            "The task has not ended (`pending`, `started`, `retrying`), or the "
                            "bridge refused its Celery message unread (replay that instead)."
                        ),
                        411: Reply("A chunked body where the server cannot read one (embedded)."),
                        422: Reply("Its arguments no longer bind to the task."),
                        503: Reply("Broker or store unreachable: nothing was enqueued."),
                    },
                    body=RerunRequest,
                ),
            ),
        ),
        Route(
            # :path: a Celery client may choose an id with a slash (sent as %2F).
            "/tasks/{task_id:path}",
            "status",
            (
                _status_operation("getTask", "The status record of a task.", api.max_wait),
                _cancel_operation(
                    "cancelTask",
                    "Cancel a task that waits to run (`pending`, or `retrying` between attempts).",
                ),
            ),
        ),
        Route(
            "/status/{task_id:path}",
            "status",
            (
                _status_operation("getStatus", "Alias of `GET /tasks/{task_id}`.", api.max_wait),
                _cancel_operation("cancelStatus", "Alias of `DELETE /tasks/{task_id}`."),
            ),
        ),
        Route(
            "/failures",
            "failures",
            (
                Operation(
                    "GET",
                    "listFailures",
                    f"The newest failed tasks (of the last {RECENT_FAILURES}), newest first.",
                    {
                        200: Reply("Their status records (expired ones left out).", FailureList),
                        400: Reply(f"`limit` is not a whole number from 1 to {RECENT_FAILURES}."),
                        503: Reply("The status store (Redis) is unreachable."),
                    },
                    parameters=(
                        Parameter(
                            "limit",
                            "query",
                            "How many records at most.",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": RECENT_FAILURES,
                                "default": DEFAULT_FAILURES,
                            },
                        ),
                    ),
                ),
            ),
        ),
        Route(
            "/workers",
            "workers",
            (
                Operation(
                    "GET",
                    "listWorkers",
                    "The worker and bridge processes heard of lately (each announces itself "
                    "every `worker.presence_interval` seconds): where they run, their queues, "
                    "the tasks they run now and what they did since they started.",
                    {
                        200: Reply(
                            "By kind, hostname and pid; a process unheard of for "
                            f"{MISSED_BEATS} of its intervals is left out.",
                            WorkerList,
                        ),
                        503: Reply("The status store (Redis) is unreachable."),
                    },
                ),
            ),
        ),
        Route(
            "/stats",
            "stats",
            (
                Operation(
                    "GET",
                    "stats",
                    "The whole hub as JSON (what `nagatha stats --json` prints): per task its "
                    "events, runs and run times, per queue its ready messages and consumers.",
                    {
                        200: Reply(
                            "What could be read: a service that did not answer is null, and its "
                            "check says why.",
                            StatsReport,
                        )
                    },
                ),
            ),
        ),
        Route(
            "/metrics",
            "metrics",
            (
                Operation(
                    "GET",
                    "metrics",
                    "The whole hub (all workers) as Prometheus metrics: task events, run "
                    "times, queue depths and consumers.",
                    {
                        200: Reply(
                            "Prometheus text format (OpenMetrics if the `Accept` header asks "
                            "for it); a dependency that did not answer has `nagatha_up` 0.",
                            None,
                            ("text/plain", "application/openmetrics-text"),
                        )
                    },
                ),
            ),
        ),
        Route(
            "/ui",
            "dashboard",
            (
                Operation(
                    "GET",
                    "dashboard",
                    "A dashboard page (workers, running tasks, queues, task counts, recent "
                    "failures with a rerun button); it holds no data and needs no token, its "
                    "script asks for one.",
                    {200: Reply("The page.", None, ("text/html",))},
                ),
                Operation(
                    "HEAD",
                    "dashboardHead",
                    "The status of GET, no body (uptime checks).",
                    {200: Reply("The page is served.", None, ("text/html",))},
                ),
            ),
        ),
        Route(
            "/openapi.json",
            "openapi",
            (
                Operation(
                    "GET",
                    "openapi",
                    "This OpenAPI document.",
                    {200: Reply("An OpenAPI 3.1 document.", OpenApiDocument)},
                ),
            ),
        ),
    )
