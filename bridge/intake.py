"""Turn Celery task messages into Dramatiq messages for the hub, or refuse them.

:meth:`Intake.handle` decides what happens to a batch of deliveries; the consumer acks them
only after it returned (every write it made is then durable):

================================  ============================================================
the message                       what happens
================================  ============================================================
not a valid Celery task, pickle,  dead-lettered with the reason; FAILURE answered when the
over ``bridge.max_message_bytes``  task id is readable (``InvalidTaskError``, pickle:
                                  ``kombu.exceptions.ContentDisallowed``)
task name no hub module has       dead-lettered; FAILURE ``NotRegistered(name)``
``expires`` already passed        REVOKED ``TaskRevokedError('expired')``
arguments that do not fit         FAILURE ``TypeError`` (what the task call would raise)
anything else                     hub ``pending`` record, then the Dramatiq message published
                                  (``delay`` from ``eta``, 25 min at most per hop)
a bug of the bridge               dead-lettered with the error
================================  ============================================================

The tasks of a batch that are enqueued cost one Redis pipeline (their ``pending`` records) and
one RabbitMQ transaction (their messages), not a round trip each. A task revoked by a Celery
client (pidbox ``revoke``) is enqueued all the same: the worker checks for revocations before
it runs a task, which covers a revoke that arrives after the bridge took the message, too.

Every answer also lands in the hub's status record (as ``failure`` with the reason). Redis or
RabbitMQ failures raise :class:`~nagatha.errors.ServiceUnavailable`: the messages must then
stay unacked, to be handled again after a reconnect (at least once, never lost).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

import pika
import pika.exceptions

from bridge import workflows
from bridge.answers import Answers
from bridge.celery_results import (
    REVOKED_HUB_ERRORS,
    error_info,
    failure_meta,
    not_registered_meta,
    revoked_meta,
)
from bridge.dead_letters import DeadLetters
from bridge.protocol import parse_message
from bridge.publisher import ConfirmedPublisher
from bridge.serialization import to_jsonable
from bridge.task import CeleryTask
from nagatha.broker_errors import CONNECTION_ERRORS
from nagatha.enqueue_batch import BatchEnqueuer, Enqueue
from nagatha.errors import (
    InvalidArguments,
    InvalidTaskName,
    PickleRefused,
    ProtocolError,
    ServiceUnavailable,
    UnknownTask,
)
from nagatha.registry import TaskRegistry, TaskSpec
from nagatha.types import MAX_HOLD_MS, TaskRecord, utcnow

__all__ = ["ENQUEUED", "SERVICE_ERRORS", "Delivery", "Intake", "PartlyHandled"]

logger = logging.getLogger("nagatha.bridge")

# Outcomes returned by Intake.handle (also logged).
ENQUEUED: Final = "enqueued"
DEAD_LETTERED: Final = "dead-lettered"
EXPIRED: Final = "expired"
REFUSED: Final = "refused"
#: Errors of Redis or RabbitMQ: the batch stays unacked (anything else is a bug of ours).
SERVICE_ERRORS: Final = (ServiceUnavailable, *CONNECTION_ERRORS)
#: Task name in the hub record of a message whose name could not be read.
UNREADABLE_NAME: Final = "(unreadable)"


class PartlyHandled(Exception):
    """Redis or RabbitMQ failed during a batch: ``error``; the deliveries at indexes ``done``
    were handled before it (answered, dead-lettered) and are to be acked, the others not."""

    def __init__(self, error: Exception, done: list[int]) -> None:
        super().__init__(str(error))
        self.error = error
        self.done = done


class Delivery(NamedTuple):
    """One Celery message as consumed from ``queue``."""

    queue: str
    body: bytes
    properties: pika.BasicProperties


@dataclass(frozen=True, slots=True)
class _Admitted:
    record: TaskRecord
    enqueue: Enqueue


class Intake:
    """Decide the fate of Celery deliveries (see the module docstring)."""

    def __init__(
        self,
        registry: TaskRegistry,
        *,
        answers: Answers,
        dead_letters: DeadLetters,
        publisher: ConfirmedPublisher,
        max_body_bytes: int,
        enqueuer: BatchEnqueuer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.answers = answers
        self.dead_letters = dead_letters
        self.publisher = publisher
        self.max_body_bytes = max_body_bytes
        self.enqueuer = enqueuer or BatchEnqueuer(registry.broker)
        self.clock = clock

    def handle(self, deliveries: Sequence[Delivery]) -> list[str]:
        """Handle a batch of messages; return what was done with each.

        Raises:
            PartlyHandled: Redis or RabbitMQ failed; ack only the deliveries it names (a
                message dead-lettered before the failure must not be dead-lettered again
                when RabbitMQ delivers the batch again).
        """
        outcomes: list[str] = []
        try:
            return self._handle(deliveries, outcomes)
        except SERVICE_ERRORS as exc:
            done = [index for index, outcome in enumerate(outcomes) if outcome != ENQUEUED]
            raise PartlyHandled(exc, done) from exc

    def _handle(self, deliveries: Sequence[Delivery], outcomes: list[str]) -> list[str]:
        admitted: list[tuple[Delivery, _Admitted]] = []
        for delivery in deliveries:
            try:
                decision = self._admit(delivery)
            except SERVICE_ERRORS:
                raise
            except Exception as exc:  # a bug of ours must not stop the bridge or loop forever
                logger.exception("message from %s could not be handled", delivery.queue)
                decision = self._bridge_error(delivery, exc)
            if isinstance(decision, str):
                outcomes.append(decision)
            else:
                admitted.append((delivery, decision))
                outcomes.append(ENQUEUED)
        if admitted:
            try:
                self._enqueue([task for _, task in admitted])
            except SERVICE_ERRORS:
                raise
            except Exception as exc:
                logger.exception("a batch of %d tasks could not be enqueued", len(admitted))
                for index, outcome in enumerate(list(outcomes)):
                    if outcome == ENQUEUED:  # admitted, in order
                        self._bridge_error(deliveries[index], exc)
                        outcomes[index] = DEAD_LETTERED  # done, should an outage come next
                return outcomes
        return outcomes

    def _admit(self, delivery: Delivery) -> _Admitted | str:
        """Check one message; answer and return the outcome unless it is to be enqueued."""
        queue, body, properties = delivery
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
        task = dataclasses.replace(task, queue=queue)
        try:
            spec = self.registry.get_task(task.task_name)
        except UnknownTask as exc:
            reason = f"unknown task {task.task_name!r}: no hub module registers it"
            # A Celery worker stores this one even for ignore_result (its client would wait
            # for ever on a task no worker knows).
            self._fail(
                task,
                not_registered_meta(task.task_id, task.task_name),
                f"NotRegistered: {exc}",
                even_ignored=True,
            )
            self._dead_letter(queue, body, properties, reason, task.task_id, task.task_name)
            return DEAD_LETTERED
        if task.expires is not None and task.expires <= now:
            return self._expire(task)
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
        return self._admitted(spec, task, args, kwargs, now)

    @staticmethod
    def _admitted(
        spec: TaskSpec, task: CeleryTask, args: Any, kwargs: Any, now: datetime
    ) -> _Admitted:
        """The pending record and Dramatiq message of a task that passed every check."""
        options: dict[str, Any] = {"celery": task.to_options()}
        # NOTE: Dramatiq has one time limit, raised inside the task like Celery's soft one:
        # the earlier of the two, as a hub task (which knows nothing of Celery) does not
        # catch SoftTimeLimitExceeded, and a Celery worker would fail it there.
        limit_s = min((s for s in (task.time_limit, task.soft_time_limit) if s), default=None)
        if limit_s:
            options["time_limit"] = max(1, math.ceil(limit_s * 1000))
        record, message = spec.pending(task.task_id, args, kwargs, now, options)
        delay_ms = None
        if task.eta is not None and task.eta > now:
            # Rounded up: no start before the eta by this host's clock (a worker allows for
            # clocks that differ: ETA_SLACK_MS in bridge/middleware.py, where a longer countdown
            # goes on in hops).
            delay_ms = min(math.ceil((task.eta - now).total_seconds() * 1000), MAX_HOLD_MS)
        return _Admitted(record, Enqueue(message, delay_ms))

    def _enqueue(self, tasks: list[_Admitted]) -> None:
        """Record ``pending`` for every task, then publish their Dramatiq messages."""
        self.registry.store.create_many([task.record for task in tasks])
        self.enqueuer.enqueue([task.enqueue for task in tasks])
        if logger.isEnabledFor(logging.INFO):
            for task in tasks:
                message, delay_ms = task.enqueue.message, task.enqueue.delay_ms
                logger.info(
                    "task %s %s enqueued on %s%s",
                    message.message_id,
                    message.actor_name,
                    message.queue_name,
                    f" (delay {delay_ms} ms)" if delay_ms else "",
                )

    def _bridge_error(self, delivery: Delivery, exc: Exception) -> str:
        """Dead-letter a message the bridge failed on (a bug): kept, never retried in a loop."""
        self.dead_letters.put(
            body=delivery.body,
            properties=delivery.properties,
            reason=f"bridge error: {type(exc).__name__}: {exc}",
            source_queue=delivery.queue,
        )
        return DEAD_LETTERED

    def _refuse(
        self, queue: str, body: bytes, properties: pika.BasicProperties, exc: ProtocolError
    ) -> str:
        """Dead-letter an unusable message; answer FAILURE if the client can be told."""
        if exc.task_id:
            if isinstance(exc, PickleRefused):
                info = error_info("ContentDisallowed", [exc.reason], "kombu.exceptions")
            elif isinstance(exc, InvalidTaskName):  # what a Celery worker answers
                info = error_info("NotRegistered", [exc.name], "celery.exceptions")
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

    def _expire(self, task: CeleryTask) -> str:
        """Answer REVOKED ``expired``: never run, still counted by a chord."""
        if not task.ignore_result:
            meta = revoked_meta(
                task.task_id, EXPIRED, group_id=task.group_id, parent_id=task.parent_id
            )
            self.answers.celery(meta, reply_to=task.reply_to, correlation_id=task.correlation_id)
        self.answers.hub_failure(
            task.task_id,
            task_name=task.task_name,
            error=REVOKED_HUB_ERRORS[EXPIRED],
            args=_jsonable_or_empty(task.args),
            kwargs=_jsonable_or_empty(task.kwargs),
        )
        self._workflow(
            task,
            lambda: workflows.dispatch_revoked(task, EXPIRED, **self._workflow_kwargs()),
        )
        logger.info("task %s %s discarded: %s", task.task_id, task.task_name, EXPIRED)
        return EXPIRED

    def _fail(
        self, task: CeleryTask, meta: dict[str, Any], hub_error: str, *, even_ignored: bool = False
    ) -> None:
        """Answer a FAILURE that happened before the task ran (not to a client that set
        ``ignore_result``, unless ``even_ignored``), and fail its workflow (the chain before
        the answer, as :mod:`bridge.workflows` says)."""
        meta = {**meta}
        if task.group_id:
            meta["group_id"] = task.group_id
        if task.parent_id:
            meta["parent_id"] = task.parent_id
        self._workflow(
            task,
            lambda: workflows.fail_chain(
                task, meta["result"], rpc=self.answers.replies, **self._workflow_kwargs()
            ),
        )
        if even_ignored or not task.ignore_result:
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
