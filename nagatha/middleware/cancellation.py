"""Skip the tasks that were cancelled while they waited in the broker.

``DELETE /tasks/{id}`` and ``nagatha cancel`` make a waiting task's record final at once
(:meth:`nagatha.registry.TaskRegistry.cancel`); its message is still queued, or on the delay
queue between retries. When a worker takes it, :class:`Cancellation` raises ``SkipMessage``:
the task does not run and the message is acked, the record left as the cancel wrote it.

The check is a lookup in the process (:meth:`nagatha.stores.StatusStore.is_cancelled`), so it
costs no round trip per task. Bridged Celery tasks are answered REVOKED by
:class:`bridge.middleware.CeleryResultsMiddleware`, whose hook runs first.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from nagatha.errors import StoreUnavailable
from nagatha.stores import StatusStore

logger = logging.getLogger("nagatha.tasks")


class Cancellation(dramatiq.Middleware):
    """Raises ``SkipMessage`` for a task whose id was cancelled (see the module docstring)."""

    def __init__(self, store: StatusStore) -> None:
        self.store = store

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        try:
            cancelled = self.store.is_cancelled(message.message_id)
        except StoreUnavailable as exc:
            # Its outcome cannot be recorded either until the store is back, and a cancelled
            # record is never overwritten.
            logger.warning(
                "task %s: cancel check skipped (%s); running it", message.message_id, exc
            )
            return
        if cancelled:
            logger.info("task %s %s not run: cancelled", message.message_id, message.actor_name)
            raise SkipMessage("cancelled")
