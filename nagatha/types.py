"""The hub's data shapes, shared by the status store, the CLI and the HTTP API.

Each is defined once here; ``model_dump(mode="json")`` of any of them is the JSON document
that ``nagatha ... --json`` prints and the HTTP API answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


class TaskStatus(StrEnum):
    """Where a task is in its life. ``success`` and ``failure`` are final."""

    PENDING = "pending"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCESS = "success"
    FAILURE = "failure"

    @property
    def final(self) -> bool:
        """True for ``success`` and ``failure``: nothing moves a record on from them."""
        return self in (TaskStatus.SUCCESS, TaskStatus.FAILURE)

    @property
    def cancellable(self) -> bool:
        """True for ``pending`` and ``retrying``: waiting to run, so a cancel can stop it."""
        return self in (TaskStatus.PENDING, TaskStatus.RETRYING)


#: The ``error`` of a record cancelled before it ran (``DELETE /tasks/{id}``, ``nagatha cancel``).
CANCELLED_ERROR = "Cancelled: cancelled before it ran"
#: The ``error`` of a record a Celery client revoked before it ran (through a bridge).
REVOKED_ERROR = "TaskRevokedError: revoked by a Celery client before it ran"


#: Error types of the record the bridge makes for a Celery message it refused unread
#: (pickle, malformed, a task name no module could register): it holds no arguments.
REFUSAL_ERRORS = ("ContentDisallowed", "InvalidTaskError", "NotRegistered")


class TaskRecord(BaseModel):
    """The status record of one task id (DESIGN.md §4)."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    task_name: str
    status: TaskStatus
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: str | None = None
    retries: int = 0
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def cancelled(self) -> bool:
        """True if a cancel made this record final (:data:`CANCELLED_ERROR`)."""
        return self.status is TaskStatus.FAILURE and self.error == CANCELLED_ERROR

    @property
    def stopped_before_run(self) -> bool:
        """True if a cancel or a Celery revoke made this record final before it ran: a run
        that missed the cancel or revoke replaces it (see :class:`~nagatha.stores.StatusStore`)."""
        return self.status is TaskStatus.FAILURE and self.error in (CANCELLED_ERROR, REVOKED_ERROR)

    @property
    def arguments_unread(self) -> bool:
        """True for the failure the bridge recorded for a Celery message it refused unread
        (:data:`REFUSAL_ERRORS`): its ``args`` and ``kwargs`` are not the message's."""
        return (
            self.status is TaskStatus.FAILURE
            and self.started_at is None
            and (self.error or "").partition(":")[0] in REFUSAL_ERRORS
        )

    @property
    def failed(self) -> bool:
        """True for a ``failure`` that is no cancel (a run's, or a refusal's)."""
        return self.status is TaskStatus.FAILURE and not self.cancelled


#: The kinds of process that announce themselves (``GET /workers``).
WorkerKind = Literal["worker", "bridge"]

#: Intervals a worker or bridge may go unheard of before reads leave it out (``GET /workers``).
MISSED_BEATS = 3


class RunningTask(BaseModel):
    """A task a worker process runs right now (one of a worker's ``running``)."""

    task_id: str
    task_name: str
    started_at: AwareDatetime
    retries: int = Field(default=0, ge=0)


class WorkerInfo(BaseModel):
    """What one worker or bridge process last told about itself (``GET /workers``).

    Each process announces itself every ``interval`` seconds; one not heard of for three
    intervals is left out.
    """

    id: str = Field(description="hostname:pid")
    kind: WorkerKind
    hostname: str
    pid: int = Field(ge=0, le=2**31)
    version: str
    queues: list[str]
    concurrency: int = Field(ge=0, le=1_000_000, description="worker threads, or bridge lanes")
    state: Literal["running", "stopping"] = "running"
    started_at: AwareDatetime
    interval: float = Field(
        gt=0, le=300, allow_inf_nan=False, description="seconds between its announcements"
    )
    running: list[RunningTask] = Field(
        default_factory=list, description="tasks it runs now (workers)"
    )
    counts: dict[str, Annotated[int, Field(ge=0, le=2**53)]] = Field(
        default_factory=dict,
        description="since it started: succeeded, failed, retried, skipped (workers); "
        "handled (bridges)",
    )
    seen_seconds_ago: float | None = Field(
        default=None, description="since its last announcement, by the store's clock"
    )

    @property
    def gone_after(self) -> float:
        """Seconds after its last announcement that reads leave this process out
        (:data:`MISSED_BEATS` intervals)."""
        return self.interval * MISSED_BEATS


class TaskParameter(BaseModel):
    """One parameter of a task, read from the function's signature."""

    name: str
    required: bool
    default: Any = None
    annotation: str | None = None


class TaskInfo(BaseModel):
    """A registered task as listed by ``/tasks`` and ``nagatha list tasks``."""

    name: str
    module: str
    description: str = ""
    queue: str
    parameters: list[TaskParameter] = Field(default_factory=list)


class ModuleMetadata(BaseModel):
    """A discovered module as listed by ``/modules`` and ``nagatha modules``."""

    name: str
    version: str | None = None
    description: str = ""
    path: str | None = None
    status: Literal["loaded", "failed", "disabled"]
    error: str | None = None
    tasks: list[str] = Field(default_factory=list)
    heartbeat: dict[str, Any] | None = None


#: The longest a worker may hold a message unacknowledged before it runs (a delay, a retry's
#: backoff), in ms: RabbitMQ closes the channel of a consumer that holds a message longer than
#: its ``consumer_timeout`` (30 minutes by default), and every message on that channel,
#: running tasks included, is delivered again.
MAX_HOLD_MS = 1_500_000


class TaskRequest(BaseModel):
    """A request to run a task by name (the body of ``POST /tasks/run``)."""

    model_config = ConfigDict(extra="forbid")

    task_name: str = Field(min_length=1, max_length=200)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    delay_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_HOLD_MS,
        strict=True,  # true is no delay, and "100" no number
        description="run no earlier than this many ms from now (at most 25 minutes: a worker "
        "holds a delayed task unacknowledged, within RabbitMQ's consumer_timeout)",
    )


class RerunRequest(BaseModel):
    """A request to run an ended task again (the body of ``POST /tasks/rerun``)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1, description="the task to run again, with its arguments")


class CheckResult(BaseModel):
    """The state of one dependency when it was probed (``GET /health``, ``nagatha stats``)."""

    status: Literal["ok", "unavailable", "timeout"]
    detail: str | None = None
    latency_ms: float | None = None


class TaskStats(BaseModel):
    """What one task did, all processes together (a row of ``GET /stats``)."""

    task: str
    submitted: int
    started: int
    retried: int
    succeeded: int
    failed: int
    cancelled: int
    runs: int = Field(description="runs that ended (success or failure)")
    mean_seconds: float | None = Field(description="mean run time; null: no runs")
    p95_at_most_seconds: float | None = Field(
        description="the run-time bucket bound 95% of runs stayed under (null: no runs, or "
        "past the last bound, 30 min)"
    )


class QueueStats(BaseModel):
    """One queue as RabbitMQ answered a passive declare (a row of ``GET /stats``)."""

    queue: str
    messages: int = Field(description="ready, not those workers hold")
    consumers: int | None


class StatsReport(BaseModel):
    """Body of ``GET /stats``, and what ``nagatha stats --json`` prints."""

    tasks: list[TaskStats] | None = Field(description="null when Redis did not answer")
    queues: list[QueueStats] | None = Field(description="null when RabbitMQ did not answer")
    checks: dict[str, CheckResult] = Field(description="store and broker, as /health has them")
