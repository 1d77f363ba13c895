"""Turn one Celery task message into a Dramatiq message for the hub, or refuse it.

:meth:`Intake.handle` decides what happens to one delivery; the consumer acks the Celery
message only after it returned (every write it made is then durable):

================================  ============================================================
the message                       what happens
================================  ============================================================
not a valid Celery task, pickle,  dead-lettered with the reason; FAILURE answered when the
over ``bridge.max_message_bytes``  task id is readable (``InvalidTaskError``, pickle:
                                  ``kombu.exceptions.ContentDisallowed``)
task name no hub module has       dead-lettered; FAILURE ``NotRegistered(name)``
``expires`` already passed        REVOKED ``TaskRevokedError('expired')``
revoked (pidbox ``revoke``)       REVOKED ``TaskRevokedError('revoked')``
arguments that do not fit         FAILURE ``TypeError`` (what the task call would raise)
anything else                     hub ``pending`` record, then the Dramatiq message published
                                  with confirms (``delay`` from ``eta``)
================================  ============================================================

Every answer also lands in the hub's status record (as ``failure`` with the reason). Redis or
RabbitMQ failures raise :class:`~nagatha.errors.ServiceUnavailable`: the message must then
stay unacked, to be handled again after a reconnect (at least once, never lost).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import dramatiq
import dramatiq.errors
import pika
import pika.exceptions

from bridge import workflows
from bridge.answers import Answers
from bridge.celery_results import error_info, failure_meta, not_registered_meta, revoked_meta
from bridge.dead_letters import DeadLetters
from bridge.protocol import parse_message
from bridge.publisher import ConfirmedPublisher
from bridge.revocations import RevocationStore
from bridge.serialization import to_jsonable
from bridge.task import CeleryTask
from nagatha.errors import (
    BrokerUnavailable,
    InvalidArguments,
    PickleRefused,
    ProtocolError,
    ServiceUnavailable,
    UnknownTask,
)
from nagatha.registry import TaskRegistry, TaskSpec
from nagatha.types import TaskRecord, TaskStatus, utcnow

__all__ = ["ENQUEUED", "Intake"]

logger = logging.getLogger("nagatha.bridge")

# Outcomes returned by Intake.handle (also logged).
ENQUEUED: Final = "enqueued"
DEAD_LETTERED: Final = "dead-lettered"
EXPIRED: Final = "expired"
REVOKED: Final = "revoked"
REFUSED: Final = "refused"
#: Task name in the hub record of a message whose name could not be read.
UNREADABLE_NAME: Final = "(unreadable)"
_HUB_REASONS: Final = {
    EXPIRED: "TaskRevokedError: expired (its expires time had passed before it could run)",
    REVOKED: "TaskRevokedError: revoked by a Celery client before it ran",
}


class Intake:
    """Decide the fate of Celery deliveries (see the module docstring)."""

    def __init__(
        self,
        registry: TaskRegistry,
        *,
        answers: Answers,
        revocations: RevocationStore,
        dead_letters: DeadLetters,
        publisher: ConfirmedPublisher,
        max_body_bytes: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.answers = answers
        self.revocations = revocations
        self.dead_letters = dead_letters
        self.publisher = publisher
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    def handle(self, queue: str, body: bytes, properties: pika.BasicProperties) -> str:
        """Handle one message from Celery queue ``queue``; return what was done.

        Raises:
            ServiceUnavailable: Redis or RabbitMQ failed; do not ack the message.
        """
        now = self.clock()
        try:
            task = parse_message(
                body,
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
                headers=properties.headers,
                correlation_id=properties.correlation_id,
                reply_to=properties.reply_to,
                priority=properties.priority,
                max_body_bytes=self.max_body_bytes,
            )
        except ProtocolError as exc:
            return self._refuse(queue, body, properties, exc)
        try:
            spec = self.registry.get_task(task.task_name)
        except UnknownTask as exc:
            reason = f"unknown task {task.task_name!r}: no hub module registers it"
            self._fail(
                task, not_registered_meta(task.task_id, task.task_name), f"NotRegistered: {exc}"
            )
            self._dead_letter(queue, body, properties, reason, task.task_id, task.task_name)
            return DEAD_LETTERED
        if task.expires is not None and task.expires <= now:
            return self._revoke(task, EXPIRED)
        if self.revocations.is_revoked(task.task_id):
            return self._revoke(task, REVOKED)
        try:
            spec.bind(task.args, task.kwargs)
            args, kwargs = to_jsonable(task.args), to_jsonable(task.kwargs)
        except InvalidArguments as exc:
            info = error_info("TypeError", [str(exc)])
            self._fail(task, failure_meta(task.task_id, info), f"TypeError: {exc}")
            logger.warning("task %s %s refused: %s", task.task_id, task.task_name, exc)
            return REFUSED
        except (TypeError, ValueError) as exc:  # values kombu's JSON cannot carry either
            refused = ProtocolError(
                f"arguments cannot be carried as JSON: {exc}",
                task_id=task.task_id,
                task_name=task.task_name,
            )
            return self._refuse(queue, body, properties, refused)
        self._enqueue(spec, task, args, kwargs, now)
        return ENQUEUED

    def _enqueue(
        self, spec: TaskSpec, task: CeleryTask, args: Any, kwargs: Any, now: datetime
    ) -> None:
        """Record ``pending``, then publish the Dramatiq message and wait for its confirm."""
        self.registry.store.create(
            TaskRecord(
                task_id=task.task_id,
                task_name=spec.name,
                status=TaskStatus.PENDING,
                args=args,
                kwargs=kwargs,
                created_at=now,
            )
        )
        options: dict[str, Any] = {"celery": task.to_options()}
        # NOTE: Dramatiq has one time limit, raised inside the task like Celery's soft one;
        # the hard limit wins, the soft one is used when it is the only one set.
        limit_s = task.time_limit or task.soft_time_limit
        if limit_s:
            options["time_limit"] = max(1, math.ceil(limit_s * 1000))
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=spec.queue,
            actor_name=spec.name,
            args=tuple(args),
            kwargs=kwargs,
            options=options,
            message_id=task.task_id,
            message_timestamp=int(now.timestamp() * 1000),
        )
        delay_ms = None
        if task.eta is not None and task.eta > now:
            # Rounded up: the task never starts before the eta the client asked for.
            delay_ms = math.ceil((task.eta - now).total_seconds() * 1000)
        try:
            self.registry.broker.enqueue(message, delay=delay_ms)
        except (dramatiq.errors.BrokerError, pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(
                f"RabbitMQ did not take task {task.task_id}: {type(exc).__name__}: {exc}"
            ) from exc
        logger.info(
            "task %s %s enqueued on %s%s",
            task.task_id,
            spec.name,
            spec.queue,
            f" (delay {delay_ms} ms)" if delay_ms else "",
        )

    def _refuse(
        self, queue: str, body: bytes, properties: pika.BasicProperties, exc: ProtocolError
    ) -> str:
        """Dead-letter an unusable message; answer FAILURE if the client can be told."""
        if exc.task_id:
            if isinstance(exc, PickleRefused):
                info = error_info("ContentDisallowed", [exc.reason], "kombu.exceptions")
            else:
                info = error_info("InvalidTaskError", [exc.reason], "celery.exceptions")
            meta = failure_meta(exc.task_id, info)
            self.answers.celery(
                meta, reply_to=properties.reply_to, correlation_id=properties.correlation_id
            )
            self.answers.hub_failure(
                exc.task_id,
                task_name=exc.task_name or UNREADABLE_NAME,
                error=f"{info['exc_type']}: {exc.reason}",
            )
        self._dead_letter(queue, body, properties, exc.reason, exc.task_id, exc.task_name)
        return DEAD_LETTERED

    def _revoke(self, task: CeleryTask, reason: str) -> str:
        """Answer REVOKED (``expired``/``revoked``): never run, still counted by a chord."""
        if not task.ignore_result:
            meta = revoked_meta(
                task.task_id, reason, group_id=task.group_id, parent_id=task.parent_id
            )
            self.answers.celery(meta, reply_to=task.reply_to, correlation_id=task.correlation_id)
        self.answers.hub_failure(
            task.task_id,
            task_name=task.task_name,
            error=_HUB_REASONS[reason],
            args=_jsonable_or_empty(task.args),
            kwargs=_jsonable_or_empty(task.kwargs),
        )
        self._workflow(
            task,
            lambda: workflows.dispatch_revoked(task, reason, **self._workflow_kwargs()),
        )
        logger.info("task %s %s discarded: %s", task.task_id, task.task_name, reason)
        return reason

    def _fail(self, task: CeleryTask, meta: dict[str, Any], hub_error: str) -> None:
        """Answer a FAILURE that happened before the task ran, then fail its workflow."""
        meta = {**meta}
        if task.group_id:
            meta["group_id"] = task.group_id
        if task.parent_id:
            meta["parent_id"] = task.parent_id
        if not task.ignore_result:
            self.answers.celery(meta, reply_to=task.reply_to, correlation_id=task.correlation_id)
        self.answers.hub_failure(
            task.task_id,
            task_name=task.task_name,
            error=hub_error,
            args=_jsonable_or_empty(task.args),
            kwargs=_jsonable_or_empty(task.kwargs),
        )
        self._workflow(
            task,
            lambda: workflows.dispatch_failure(
                task, meta["result"], rpc=self.answers.replies, **self._workflow_kwargs()
            ),
        )

    def _workflow_kwargs(self) -> dict[str, Any]:
        # The chord join uses the result backend's Redis (workflows derive it from results).
        return {"publisher": self.publisher, "results": self.answers.results}

    def _workflow(self, task: CeleryTask, dispatch: Callable[[], None]) -> None:
        """Run a workflow dispatch; service failures propagate (the message is redelivered)."""
        try:
            dispatch()
        except ServiceUnavailable:
            raise
        except Exception:  # a workflow error must not stop the bridge; the answer is stored
            logger.exception("task %s: its workflow could not be carried on", task.task_id)

    def _dead_letter(
        self,
        queue: str,
        body: bytes,
        properties: pika.BasicProperties,
        reason: str,
        task_id: str | None,
        task_name: str | None,
    ) -> None:
        letter_id = self.dead_letters.put(
            body=body,
            properties=properties,
            reason=reason,
            source_queue=queue,
            task_id=task_id,
            task_name=task_name,
        )
        logger.warning(
            "message from %s dead-lettered as %s (task %s %s): %s",
            queue,
            letter_id,
            task_id or "?",
            task_name or "?",
            reason,
        )


def _jsonable_or_empty(value: Any) -> Any:
    """``value`` as JSON data for the hub record, or empty when it cannot be JSON."""
    try:
        return to_jsonable(value)
    except (TypeError, ValueError):
        return type(value)()
