"""``POST /tasks/run`` and ``/tasks/rerun``, ``GET`` and ``DELETE /tasks/{task_id}`` (also
``/status/{task_id}``), ``GET /failures``."""

from __future__ import annotations

import math
import re
import sys
import threading

import falcon

from nagatha.api.body import parse_model, read_json_object
from nagatha.api.errors import bad_request
from nagatha.api.resources import send
from nagatha.api.schemas import FailureList, RerunAccepted, TaskAccepted
from nagatha.errors import TaskNotFound
from nagatha.registry import TaskRegistry
from nagatha.stores.base import DEFAULT_FAILURES, RECENT_FAILURES
from nagatha.types import RerunRequest, TaskRecord, TaskRequest

#: Longer ids (in UTF-8 bytes) were never handed out: the bridge takes Celery ids up to AMQP's
#: short-string size. Refusing them early keeps them out of Redis keys.
MAX_TASK_ID_BYTES = 255


def status_url(task_id: str) -> str:
    """The path where a task is followed (relative: no trust in the Host header)."""
    return f"/tasks/{falcon.uri.encode_value(task_id)}"


class RunTaskResource:
    """Start a task by name; answer 202 only once the broker confirmed the message."""

    def __init__(self, registry: TaskRegistry, max_body_bytes: int) -> None:
        self.registry = registry
        self.max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Validate the body, submit, answer 202 with the task id and where to follow it.

        Errors come from the registry (unknown task 404, kwargs 422, broker or store 503) and
        from :mod:`nagatha.api.body` (400, 413); see :mod:`nagatha.api.errors`.
        """
        request = parse_model(TaskRequest, read_json_object(req, self.max_body_bytes))
        record = self.registry.submit(
            request.task_name, kwargs=request.kwargs, delay_ms=request.delay_ms
        )
        _accepted(resp, record)


class RerunTaskResource(RunTaskResource):
    """Run an ended task again with its arguments, as a new task; 202 once confirmed."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer 202 with the new task and ``rerun_of``; 404 for an unknown id (or a task no
        module registers now), 409 for a task that has not ended or whose arguments were
        never read, 422 for arguments that no longer fit, 503 when RabbitMQ or Redis is
        unreachable (nothing was enqueued)."""
        request = parse_model(RerunRequest, read_json_object(req, self.max_body_bytes))
        _check_length(request.task_id)
        _accepted(resp, self.registry.rerun(request.task_id), rerun_of=request.task_id)


def _accepted(resp: falcon.Response, record: TaskRecord, rerun_of: str | None = None) -> None:
    """Answer 202 for the new task ``record``, with ``Location`` where to follow it."""
    url = status_url(record.task_id)
    resp.location = url
    fields = {
        "task_id": record.task_id,
        "task_name": record.task_name,
        "status": record.status,
        "created_at": record.created_at,
        "status_url": url,
    }
    if rerun_of is None:
        send(resp, TaskAccepted.model_validate(fields), 202)
    else:
        send(resp, RerunAccepted.model_validate({**fields, "rerun_of": rerun_of}), 202)


class TaskStatusResource:
    """The status record of a task; ``?wait=S`` holds until it is final or S seconds pass.

    At most ``max_waiters`` requests of the process wait at once; past that, a ``?wait=`` is
    answered at once, with the record as it is and ``Retry-After: 1``: a thread held by a
    long poll serves nothing else, and gthread has a fixed number of them.
    """

    def __init__(self, registry: TaskRegistry, max_wait: float, *, max_waiters: int | None) -> None:
        """``max_waiters`` None: no limit."""
        self.registry = registry
        self.max_wait = max_wait
        self._waiters = threading.BoundedSemaphore(max_waiters or sys.maxsize)

    def wait_seconds(self, req: falcon.Request) -> float:
        """The ``wait`` query parameter: seconds in ``[0, max_wait]`` (0 when absent); else 400."""
        raw = req.get_param("wait")
        if raw is None or raw == "":
            return 0.0
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 <= value <= self.max_wait):
            raise bad_request(
                "Invalid parameter",
                f'The "wait" parameter is invalid. The value must be a number of seconds '
                f"from 0 to {self.max_wait:g}.",
            )
        return value

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        """Answer the record; with ``wait``, as soon as it is final (the store wakes us)."""
        wait = self.wait_seconds(req)
        _check_length(task_id)
        if wait > 0 and self._waiters.acquire(blocking=False):
            try:
                record = self.registry.wait_for(task_id, wait)
            finally:
                self._waiters.release()
        else:
            record = self.registry.get_task_status(task_id)
            if wait > 0 and not record.status.final:
                resp.append_header("Retry-After", "1")  # every waiting slot is taken
        send(resp, record)
        resp.cache_control = ["no-store"]

    def on_delete(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        """Cancel a task that waits to run; answer its record, now final (``failure``).

        404 for an unknown id, 409 (:class:`~nagatha.errors.TaskNotCancellable`) for a task
        that is running or has ended; cancelling a cancelled task answers it again.
        """
        _check_length(task_id)
        send(resp, self.registry.cancel(task_id))
        resp.cache_control = ["no-store"]


class FailuresResource:
    """The newest failed tasks, newest first: ``?limit=N`` (1 to :data:`RECENT_FAILURES`,
    default :data:`DEFAULT_FAILURES`)."""

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``{"tasks": [records]}``; 400 for a ``limit`` out of range."""
        raw = req.get_param("limit") or str(DEFAULT_FAILURES)
        if not (re.fullmatch(r"[0-9]{1,4}", raw) and 1 <= int(raw) <= RECENT_FAILURES):
            raise bad_request(
                "Invalid parameter",
                f'The "limit" parameter is invalid. The value must be a whole number from 1 '
                f"to {RECENT_FAILURES}.",
            )
        send(resp, FailureList(tasks=self.registry.recent_failures(int(raw))))
        resp.cache_control = ["no-store"]


def _check_length(task_id: str) -> None:
    """Raise :class:`TaskNotFound` for an id longer than any handed out."""
    if len(task_id.encode("utf-8", "surrogatepass")) > MAX_TASK_ID_BYTES:
        raise TaskNotFound(task_id[:MAX_TASK_ID_BYTES] + "...")
