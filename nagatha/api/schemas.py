"""Bodies only the HTTP API answers; everything else is a model of :mod:`nagatha.types`.

Each model here is both the serializer of a response and, through its JSON Schema, its
description in ``/openapi.json`` (see :mod:`nagatha.api.openapi`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from nagatha.types import (
    CheckResult,
    ModuleMetadata,
    TaskInfo,
    TaskRecord,
    TaskStatus,
    WorkerInfo,
)


class Ping(BaseModel):
    """Body of ``GET /ping``."""

    status: Literal["ok"] = "ok"
    version: str


class HealthReport(BaseModel):
    """Body of ``GET /health`` (status 200 when ``status`` is ``ok``, else 503)."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckResult] = Field(description="broker and store")
    modules: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="each module's heartbeat() answer"
    )
    checked_at: datetime


class ModuleList(BaseModel):
    """Body of ``GET /modules``."""

    modules: list[ModuleMetadata]


class TaskList(BaseModel):
    """Body of ``GET /tasks``."""

    tasks: list[TaskInfo]


class FailureList(BaseModel):
    """Body of ``GET /failures``: the newest failed tasks' records, newest first."""

    tasks: list[TaskRecord]


class WorkerList(BaseModel):
    """Body of ``GET /workers``: the worker and bridge processes heard of lately."""

    workers: list[WorkerInfo]


class TaskAccepted(BaseModel):
    """Body of a ``202`` from ``POST /tasks/run``: the task is confirmed by the broker."""

    task_id: str
    task_name: str
    status: TaskStatus
    created_at: datetime
    status_url: str = Field(description="where to follow the task (also the Location header)")


class RerunAccepted(TaskAccepted):
    """Body of a ``202`` from ``POST /tasks/rerun``: the new task, confirmed by the broker."""

    rerun_of: str = Field(description="the task this one runs again")


class FieldError(BaseModel):
    """One problem with the request body's shape."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape of the API (Falcon's ``title``/``description`` plus extras)."""

    title: str
    description: str
    request_id: str | None = Field(default=None, description="also in the X-Request-ID header")
    unknown: list[str] | None = Field(default=None, description="422: kwargs the task lacks")
    missing: list[str] | None = Field(default=None, description="422: required kwargs not given")
    errors: list[FieldError] | None = Field(default=None, description="400: body fields at fault")
    status: TaskStatus | None = Field(
        default=None, description="409: the status of the task that cannot be cancelled"
    )


class OpenApiDocument(BaseModel):
    """Body of ``GET /openapi.json``: an OpenAPI 3.1 document (spec.openapis.org/oas/v3.1.0)."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]
