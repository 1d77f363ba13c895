"""Write each task's status record from Dramatiq's lifecycle hooks.

Placement matters: this middleware must come before ``Retries`` in the broker's list (see
:func:`nagatha.broker.build_middleware`), so that its ``after_process_message`` runs after
``Retries`` has marked a message whose retries are exhausted as failed.

=========================  ==================================================================
hook                       status written
=========================  ==================================================================
before_process_message     ``started`` (deferred: may go out with the outcome, see
                           :meth:`~nagatha.stores.StatusStore.update_soon`)
after_process_message      ``success``; ``retrying`` while Retries will try again;
                           ``failure`` once the message is failed (retries exhausted, throws,
                           time limit) or when the result is not JSON-serializable
after_skip_message         ``failure`` when the message was failed (expired, AgeLimit)
after_nack                 ``failure`` for what no worker thread saw (unknown task name),
                           deferred: this runs on the consumer thread
=========================  ==================================================================

Final writes are retried while the store is unreachable: the worker thread holds the message
(unacked) until its result is recorded, so a result is never dropped on a Redis outage. There is
no giving up: Dramatiq logs and swallows an exception from an ``after_*`` hook and then *acks*
the message, which would lose the result. A worker stopped while it holds a write exits at the
end of its grace period without the ack, and RabbitMQ redelivers the message. Only a write the
store refuses for good (``StoreRejected``: a result too large for Redis, or one its encoder
cannot take) is not held: a success is then recorded as the failure ``ResultNotStored``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import SkipMessage, TimeLimitExceeded

from nagatha import jsontext
from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.middleware.holding import hold
from nagatha.stores import StatusStore
from nagatha.types import TaskStatus, utcnow

logger = logging.getLogger("nagatha.tasks")

#: Attribute a middleware sets on a message it fails on purpose (a retry or a countdown hop
#: RabbitMQ refused): the ``error`` the record gets and the failure is logged with.
FAILED_BECAUSE = "nagatha_failed_because"
#: Attribute set on a message whose task returned a result the store could not keep: why
#: (the Celery results middleware, whose hooks run after these, answers the same failure).
RESULT_REFUSED = "nagatha_result_refused"
#: Attribute holding ``(retries, started_at)`` of the attempt that runs the message. Each
#: delivery is a new message object, so an attempt never sees another one's.
_ATTEMPT = "nagatha_attempt"
#: Attribute set on a message whose failure a worker thread recorded (after_nack skips it).
_RECORDED = "nagatha_failure_recorded"


def result_problem(result: Any) -> str | None:
    """Why the status store cannot keep ``result`` as the task's JSON result, or None."""
    if jsontext.too_deep(result):
        return f"it nests deeper than {jsontext.MAX_DEPTH} levels"
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return str(exc) or type(exc).__name__
    return None


def record_defaults(message: MessageProxy) -> dict[str, Any]:
    """The fields a write for ``message`` creates its record with, if it has none."""
    return {
        "task_name": message.actor_name,
        "args": list(message.args),
        "kwargs": dict(message.kwargs),
        "created_at": message.message_datetime,
    }


def _not_recorded(message: MessageProxy, status: str, exc: Exception) -> None:
    logger.error(
        "task %s %s: %s could not be recorded: %s",
        message.message_id,
        message.actor_name,
        status,
        exc,
    )


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not keep the failure from being recorded
        return f"(its message could not be read: {type(exc).__name__}.__str__ raised)"


def describe_exception(
    exc: BaseException | None, message: MessageProxy, *, time_limit_ms: int | None = None
) -> str:
    """The ``error`` text of a failed task: ``Type: message``, clear for the usual causes."""
    if isinstance(exc, ActorNotFound):
        return f"UnknownTask: no worker has a task named {message.actor_name!r}"
    if isinstance(exc, TimeLimitExceeded):
        suffix = f" ({time_limit_ms} ms)" if time_limit_ms else ""
        return f"TimeLimitExceeded: time limit exceeded{suffix}"
    if exc is None or isinstance(exc, SkipMessage):
        return "Expired: the message expired before a worker could run it"
    text = _text_of(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StatusMiddleware(dramatiq.Middleware):
    """Keeps the status store in step with each message (see the module docstring)."""

    def __init__(self, store: StatusStore, *, time_limit: int | None = None) -> None:
        """``time_limit``: the worker's default (ms), named in a timed-out task's error."""
        self.store = store
        self.time_limit = time_limit

    def _write(
        self, message: MessageProxy, status: TaskStatus, *, soon: bool = False, **fields: Any
    ) -> None:
        attempt: tuple[int, Any] | None = getattr(message, _ATTEMPT, None)
        if attempt is not None:
            # Every write of the attempt carries its start: the outcome is complete even when
            # the deferred started write was lost.
            fields.setdefault("retries", attempt[0])
            fields.setdefault("started_at", attempt[1])
        else:
            fields.setdefault("retries", message.options.get("retries", 0))
        write = self.store.update_soon if soon else self.store.update
        defaults = record_defaults(message)
        if not status.final:
            try:
                write(message.message_id, status, fields, defaults)
            except (StoreUnavailable, StoreRejected) as exc:
                _not_recorded(message, status.value, exc)
            return

        def report(exc: Exception) -> None:
            logger.warning(
                "task %s %s: store unavailable, holding %s: %s",
                message.message_id,
                message.actor_name,
                status.value,
                exc,
            )

        # Held for as long as this process lives (see the module docstring): raising here
        # would get the message acked and its result lost.
        try:
            hold(
                lambda: write(message.message_id, status, fields, defaults),
                StoreUnavailable,
                report,
            )
        except StoreRejected as exc:
            if status is TaskStatus.SUCCESS:
                setattr(message, RESULT_REFUSED, f"the result could not be stored: {exc}")
                self._fail(message, f"ResultNotStored: {exc}")
            else:
                _not_recorded(message, status.value, exc)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        # Retries bumps options["retries"] before our after_* hooks run: keep the attempt's
        # own count, and its start.
        setattr(message, _ATTEMPT, (message.options.get("retries", 0), utcnow()))
        logger.info("task %s %s started", message.message_id, message.actor_name)
        # Deferred: a task that ends before this write went out records started_at with its
        # outcome, in one write (see nagatha/stores/batching.py).
        self._write(message, TaskStatus.STARTED, soon=True, completed_at=None)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            problem = result_problem(result)
            if problem is not None:
                reason = f"the result ({type(result).__name__}) is not JSON-serializable: {problem}"
                setattr(message, RESULT_REFUSED, reason)
                self._fail(message, f"TypeError: {reason}")
                return
            logger.info("task %s %s succeeded", message.message_id, message.actor_name)
            self._write(
                message, TaskStatus.SUCCESS, result=result, error=None, completed_at=utcnow()
            )
        elif message.failed:
            limit = self._time_limit(broker, message)
            refused: str | None = getattr(message, FAILED_BECAUSE, None)  # HeldRetries gave up
            self._fail(
                message, refused or describe_exception(exception, message, time_limit_ms=limit)
            )
        else:
            error = describe_exception(exception, message)
            logger.warning(
                "task %s %s will retry: %s", message.message_id, message.actor_name, error
            )
            self._write(
                message, TaskStatus.RETRYING, error=error, retries=message.options.get("retries", 0)
            )

    def _time_limit(self, broker: dramatiq.Broker, message: MessageProxy) -> int | None:
        """The limit ``TimeLimit`` applied: the message's, else the task's, else the default."""
        actor = broker.actors.get(message.actor_name)
        own = actor.options.get("time_limit") if actor is not None else None
        limit: int | None = message.options.get("time_limit") or own or self.time_limit
        return limit

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.failed:
            # A middleware that failed the message on purpose named why (a refused countdown
            # hop, which made the record final itself: then this logs the reason, no more).
            reason: str | None = getattr(message, FAILED_BECAUSE, None)
            self._fail(
                message,
                reason or describe_exception(getattr(message, "_exception", None), message),
            )

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if getattr(message, _RECORDED, False):
            return
        # A message no worker thread saw (an unknown task): this runs on the consumer thread,
        # which must not wait for Redis, so the write is deferred (a failed one is logged).
        error = describe_exception(getattr(message, "_exception", None), message)
        fields = {
            "error": error,
            "completed_at": utcnow(),
            "retries": message.options.get("retries", 0),
        }
        logger.error("task %s %s failed: %s", message.message_id, message.actor_name, error)
        try:
            self.store.update_soon(
                message.message_id, TaskStatus.FAILURE, fields, record_defaults(message)
            )
        except (StoreUnavailable, StoreRejected) as exc:
            _not_recorded(message, "failure", exc)

    def _fail(self, message: MessageProxy, error: str) -> None:
        logger.error("task %s %s failed: %s", message.message_id, message.actor_name, error)
        self._write(message, TaskStatus.FAILURE, error=error, completed_at=utcnow())
        setattr(message, _RECORDED, True)
