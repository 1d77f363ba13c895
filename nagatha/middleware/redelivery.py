"""Stop a task that keeps taking its worker down with it (a poison message).

A task that kills the process running it (a segfault in an extension, the kernel's OOM
killer, ``os._exit``) is never acked: RabbitMQ delivers it again, the next worker process
dies the same way, and every task running beside it dies with it, for ever. RabbitMQ marks
such a message *redelivered*. :class:`RedeliveryLimit` counts the starts of redelivered
messages in the status store (Redis round trips only for those) and, past
``worker.max_redeliveries``, fails the message instead of running it: the record says
``failure`` with ``WorkerLost: ...``, RabbitMQ dead-letters the message (``<queue>.XQ``) and a
Celery client gets ``WorkerLostError``.

A redelivered message whose record is already final ran to its end and only its ack was lost:
it is not counted (and runs again, as at-least-once delivery has it).

Blame goes to the task that was running, not to its neighbours:

* a message is also redelivered when its worker stopped, or lost its connection, before it
  ran it (prefetched): it is counted once when it starts, finishes, and is done;
* the tasks that ran beside the poison one come back with it, all together. A message
  redelivered a second time runs *alone* among such repeat messages of its process (a lock,
  taken before it is counted, waited for at most :data:`ALONE_WAIT_S`): a poison message then
  dies with no repeat neighbour running, and the neighbours waiting for the lock are not
  counted for that death. After an ordinary restart, messages are redelivered once and run as
  usual, concurrently.

A connection to RabbitMQ that drops also makes it redeliver what the worker held, while the
worker may still run its copy: each drop counts once for the tasks running then, so a task
running through more than ``max_redeliveries`` drops is failed as lost.

A worker that stops gracefully (SIGTERM: a deploy, a scale-down) gives back the tasks it runs:
one count is taken off each as the stop begins (before RabbitMQ can hand it to another
worker), and those still running when the grace period ends are logged, so their next start
is not blamed on them. Restarts, however many, never fail a task that outlasts the
grace period; only deaths while it runs do.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.middleware.status import FAILED_BECAUSE
from nagatha.stores import StatusStore

logger = logging.getLogger("nagatha.tasks")

#: Seconds a repeat message waits to run alone before it runs beside the other one (bounds
#: the wait behind a long or stuck task, well within RabbitMQ's 30 min consumer timeout).
ALONE_WAIT_S = 60.0


class WorkerLost(SkipMessage):
    """The task was not run again: its workers kept stopping while they ran it."""


class RedeliveryLimit(dramatiq.Middleware):
    """Fails a message started more than ``max_redeliveries`` times after a redelivery.

    Must come before the middleware that act when a task starts (the status record's
    ``started``, the Celery ``STARTED``), so that a message it stops never looks started.
    """

    def __init__(self, store: StatusStore, max_redeliveries: int) -> None:
        self.store = store
        self.max_redeliveries = max_redeliveries
        self._alone = threading.Lock()  # held while a repeat message runs
        self._holding = threading.local()
        # id(message) -> message, while it runs, once counted (a message not counted is not
        # given back); then, during a graceful stop, id(message) -> what became of its count.
        self._running: dict[int, MessageProxy] = {}
        self._given_back: dict[int, str] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if not getattr(message, "redelivered", False):  # RabbitMQ's flag
            self._running[id(message)] = message
            return
        task_id = message.message_id
        try:
            counted = self.store.redeliveries(task_id)
            if self._finished(message, counted):
                return
            if counted > 0:
                self._wait_alone(message)
                # While it waited, a twin (after a dropped connection) may have finished or
                # been failed as lost.
                if self._finished(message, self.store.redeliveries(task_id)):
                    return
            count = self.store.count_redelivery(task_id)
        except (StoreUnavailable, StoreRejected) as exc:
            logger.warning(
                "task %s %s: redelivered, not counted (%s): running it",
                message.message_id,
                message.actor_name,
                exc,
            )
            return
        if count > self.max_redeliveries:
            self._lose(message, count)
        self._running[id(message)] = message
        if count <= 0:
            logger.info(
                "task %s %s: redelivered after a worker stopping gracefully gave it back",
                message.message_id,
                message.actor_name,
            )
        else:
            logger.warning(
                "task %s %s: redelivered (%d of at most %d): a worker stopped before it finished",
                message.message_id,
                message.actor_name,
                count,
                self.max_redeliveries,
            )

    def _finished(self, message: MessageProxy, counted: int) -> bool:
        """True if the task ran to its end before (only its ack was lost): it runs again,
        uncounted, so that what came after its outcome (a Celery result, a workflow's next
        step) is done too. Unless it was already failed as lost: that failure went out but
        not the nack, and it is failed again."""
        record = self.store.get(message.message_id)
        if record is None or not record.status.final:
            return False
        if counted > self.max_redeliveries:
            self._lose(message, counted)
        logger.warning(
            "task %s %s: redelivered after it finished (%s): running it again",
            message.message_id,
            message.actor_name,
            record.status.value,
        )
        self._release()
        return True

    def _wait_alone(self, message: MessageProxy) -> None:
        """Take the process's lock for repeat messages, for at most :data:`ALONE_WAIT_S`."""
        if self._alone.acquire(timeout=ALONE_WAIT_S):
            self._holding.lock = True
            return
        logger.warning(
            "task %s %s: redelivered again; another such task ran for %gs, running beside it",
            message.message_id,
            message.actor_name,
            ALONE_WAIT_S,
        )

    def _lose(self, message: MessageProxy, count: int) -> None:
        reason = (
            f"WorkerLost: a worker stopped while running it, {count} times (killed, out of "
            "memory or crashed); it is not run again (worker.max_redeliveries is "
            f"{self.max_redeliveries})"
        )
        setattr(message, FAILED_BECAUSE, reason)  # recorded and logged by StatusMiddleware
        message.fail()
        raise WorkerLost(reason)

    def after_process_message(
        self, broker: dramatiq.Broker, message: MessageProxy, **outcome: Any
    ) -> None:
        self._running.pop(id(message), None)
        self._release()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._running.pop(id(message), None)
        self._release()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Give back every task running as a graceful stop begins, ahead of time.

        The count comes off now, while this process still holds the messages: once its
        consumers close (after the grace period), RabbitMQ hands them to another worker, which
        may count a start before a later write. A task that then ends within the grace keeps
        a count one below its due, which only a redelivery of an ended task would read, and
        such a start is never counted. A store that does not answer is asked once.
        """
        self._given_back = {}
        for key, message in self._running.copy().items():
            try:
                self.store.count_redelivery(message.message_id, -1)
            except (StoreUnavailable, StoreRejected) as exc:
                for rest in self._running:
                    self._given_back.setdefault(rest, f"not given back ({exc})")
                return
            self._given_back[key] = "given back, to run again from the start"

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Log what the grace period cut short (Dramatiq waited for the worker threads as long
        as it would): RabbitMQ delivers it again once this process's connection closes."""
        for key, message in self._running.copy().items():
            logger.warning(
                "task %s %s: still running when the grace period ended; %s",
                message.message_id,
                message.actor_name,
                self._given_back.get(key, "not given back (it started as the stop began)"),
            )

    def _release(self) -> None:
        if getattr(self._holding, "lock", False):
            self._holding.lock = False
            self._alone.release()
