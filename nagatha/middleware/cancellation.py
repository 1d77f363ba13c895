"""Skip the tasks that were cancelled while they waited in the broker.

``DELETE /tasks/{id}`` and ``nagatha cancel`` make a waiting task's record final at once
(:meth:`nagatha.registry.TaskRegistry.cancel`); its message is still queued, or on the delay
queue between retries. When a worker takes it, :class:`Cancellation` raises ``SkipMessage``:
the task does not run and the message is acked, the record left as the cancel wrote it (or
written so again: see :meth:`Cancellation._record`).

The check is a lookup in the process (:meth:`nagatha.stores.StatusStore.is_cancelled`), so it
costs no round trip per task. Bridged Celery tasks are answered REVOKED by
:class:`bridge.middleware.CeleryResultsMiddleware`, whose hook runs first. An id a Celery
client revoked (:meth:`nagatha.stores.StatusStore.revoke`) is skipped the same way, as a
Celery worker skips a revoked id's every later message (a retry too): a hub task's record
then says cancelled.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.middleware.holding import hold
from nagatha.middleware.status import record_defaults
from nagatha.stores import StatusStore
from nagatha.types import CANCELLED_ERROR, TaskStatus, utcnow

logger = logging.getLogger("nagatha.tasks")


class Cancellation(dramatiq.Middleware):
    """Raises ``SkipMessage`` for a task whose id was cancelled (see the module docstring)."""

    def __init__(self, store: StatusStore) -> None:
        self.store = store

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        try:
            cancelled = self.store.is_cancelled(message.message_id)
        except StoreUnavailable as exc:
            # Not known here to be cancelled, and Redis cannot say: run it, as every task runs
            # through an outage. If it was cancelled, its writes replace the cancel once Redis
            # is back, so the record tells what happened.
            logger.warning(
                "task %s: cancel check skipped (%s); running it", message.message_id, exc
            )
            return
        if cancelled:
            logger.info("task %s %s not run: cancelled", message.message_id, message.actor_name)
            self._record(message)
            raise SkipMessage("cancelled")

    def _record(self, message: MessageProxy) -> None:
        """Make sure the record is final: it is, unless an attempt that started as the cancel
        came in replaced it (see :meth:`nagatha.stores.StatusStore.update`) and then failed into
        ``retrying``, or a Celery client revoked the id of a hub task that had started; nothing
        overwrites a record that ended otherwise. Held while the store is unavailable, as a
        final status write is: the message is acked after it."""
        fields = {"error": CANCELLED_ERROR, "completed_at": utcnow()}
        defaults = record_defaults(message)

        def report(exc: Exception) -> None:
            logger.warning("task %s: holding the cancel's record: %s", message.message_id, exc)

        try:
            hold(
                lambda: self.store.update(message.message_id, TaskStatus.FAILURE, fields, defaults),
                StoreUnavailable,
                report,
            )
        except StoreRejected as exc:
            logger.warning("task %s: cancel could not be recorded: %s", message.message_id, exc)
