"""The one exception tree of nagatha.

Every error a user can cause or meet derives from :class:`NagathaError`. The HTTP API maps
these classes to status codes in ``nagatha/api/errors.py`` and the CLI maps them to exit codes
in ``nagatha/cli/errors.py``; nowhere else decides either.

::

    NagathaError
    ├── ConfigError                 bad value, file or source in the configuration
    ├── ModuleLoadError             a plug-in module could not be loaded (reported, never fatal)
    ├── TaskError
    │   ├── UnknownTask             no task of that name is registered
    │   ├── InvalidArguments        kwargs that do not bind to the task's signature
    │   ├── TaskNotFound            no status record for that id (never issued or expired)
    │   ├── TaskNotCancellable      a cancel for a task that is running or has ended
    │   ├── TaskNotRerunnable       a rerun of a task that has not ended, or whose arguments
    │   │                           were never read
    │   └── TaskWaitTimeout         a wait for a final status ran out
    ├── ServiceUnavailable
    │   ├── BrokerUnavailable       RabbitMQ did not accept (or confirm) a message
    │   └── StoreUnavailable        the status store (Redis) did not answer
    └── BridgeError
        └── ProtocolError           a Celery message that cannot be turned into a task
            ├── PickleRefused       a pickle-serialized Celery message (never deserialized)
            └── InvalidTaskName     a task name no module can register (Celery: NotRegistered)
"""

from __future__ import annotations

from collections.abc import Iterable


class NagathaError(Exception):
    """Base class of every error nagatha raises on purpose.

    ``str(error)`` is a complete one-line message for a person: what is wrong and, where it
    helps, what to do.
    """


class ConfigError(NagathaError):
    """A configuration value, file or source is invalid."""


class ModuleLoadError(NagathaError):
    """A plug-in module failed to import or to register its tasks."""


class TaskError(NagathaError):
    """Base class of errors about one task or task id."""


class UnknownTask(TaskError):
    """No task of that name is registered."""

    def __init__(
        self, task_name: str, *, module_error: str | None = None, hint: str | None = None
    ) -> None:
        """``module_error``: why the module the name points at failed to load, if it did;
        ``hint``: what to say instead of pointing to the list of names."""
        self.task_name = task_name
        if module_error:
            hint = f"its module failed to load: {module_error}"
        hint = hint or "see `nagatha list tasks` or GET /tasks for the names"
        super().__init__(f"unknown task {task_name!r}: {hint}")


#: Names an error lists at most (and characters of each): an answer stays short whatever
#: the client sent.
MAX_NAMES, MAX_NAME_CHARS = 20, 100


def short_name(name: str) -> str:
    """``name`` cut to :data:`MAX_NAME_CHARS` characters (with ``...``)."""
    return name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "..."


def _listed(names: list[str], total: int) -> str:
    more = f" and {total - len(names)} more" if total > len(names) else ""
    return ", ".join(names) + more


class InvalidArguments(TaskError):
    """The given arguments do not bind to the task's parameters."""

    def __init__(
        self,
        task_name: str,
        *,
        unknown: Iterable[str] = (),
        missing: Iterable[str] = (),
        detail: str | None = None,
    ) -> None:
        self.task_name = task_name
        # A body may name thousands of unknown keys: the error names the first few.
        unknown_all, missing_all = sorted(unknown), sorted(missing)
        self.unknown = [short_name(name) for name in unknown_all[:MAX_NAMES]]
        self.missing = [short_name(name) for name in missing_all[:MAX_NAMES]]
        parts = []
        if self.unknown:
            parts.append("unknown " + _listed(self.unknown, len(unknown_all)))
        if self.missing:
            parts.append("missing " + _listed(self.missing, len(missing_all)))
        if detail:
            parts.append(detail)
        super().__init__(f"arguments do not fit task {task_name!r}: " + "; ".join(parts))


class TaskNotFound(TaskError):
    """No status record exists for the id: it was never handed out, or it has expired."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id!r} not found (unknown id, or its record has expired)")


class TaskNotCancellable(TaskError):
    """A cancel for a task that no longer waits to run: it is running, or it has ended."""

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        why = (
            "it is running, and a running task cannot be stopped"
            if status == "started"
            else "it has already ended"
        )
        super().__init__(f"task {task_id!r} cannot be cancelled: {why} (status {status})")


class TaskNotRerunnable(TaskError):
    """A rerun of a task that has not ended yet (pending, started or retrying), or of one whose
    arguments were never read (a Celery message the bridge refused)."""

    def __init__(self, task_id: str, status: str, *, arguments_unread: bool = False) -> None:
        self.task_id = task_id
        self.status = status
        why = (
            "the bridge refused its Celery message, so its arguments were never read; replay "
            f"the message instead: `nagatha bridge dlq replay {task_id}`"
            if arguments_unread
            else f"it has not ended (status {status}); wait until it ends, or cancel it"
        )
        super().__init__(f"task {task_id!r} cannot be run again: {why}")


class TaskWaitTimeout(TaskError):
    """A wait for a task's final status ran out before the task finished."""

    def __init__(self, task_id: str, timeout: float, status: str) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.status = status
        hint = " (is a worker running and consuming its queue?)" if status == "pending" else ""
        super().__init__(f"task {task_id!r} still {status} after {timeout:g}s{hint}")


class ServiceUnavailable(NagathaError):
    """A service the hub needs (RabbitMQ or Redis) is not reachable right now."""


class BrokerUnavailable(ServiceUnavailable):
    """RabbitMQ could not be reached or did not confirm the message: the task was not accepted."""


class StoreUnavailable(ServiceUnavailable):
    """The status store (Redis) could not be reached."""


class StoreRejected(NagathaError):
    """The status store refused a write for good (a value it cannot hold, an error answer
    that is no outage): unlike :class:`StoreUnavailable`, writing it again cannot help."""


class BridgeError(NagathaError):
    """Base class of errors raised by the Celery bridge."""


class PublishRefused(BridgeError):
    """RabbitMQ refused a message for good (no such exchange, no permission, a field too
    long): unlike an outage, sending it again cannot help."""


class ProtocolError(BridgeError):
    """A Celery message could not be parsed into a task.

    ``task_id`` and ``task_name`` are set when they could be read before the failure, so
    that the bridge can still answer a waiting client with a FAILURE result.
    """

    def __init__(
        self, reason: str, *, task_id: str | None = None, task_name: str | None = None
    ) -> None:
        self.reason = reason
        self.task_id = task_id
        self.task_name = task_name
        super().__init__(reason)


class PickleRefused(ProtocolError):
    """A pickle-serialized message: refused because unpickling executes arbitrary code."""


class InvalidTaskName(ProtocolError):
    """A task name no hub module could register (spaces, ``/``, over 200 characters, ...).

    A Celery worker answers any name it lacks with ``NotRegistered``, and so does the bridge;
    ``name`` is the name as sent, cut to 80 characters.
    """

    def __init__(self, reason: str, name: str) -> None:
        self.name = name
        super().__init__(reason)
