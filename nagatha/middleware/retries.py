"""Dramatiq's ``Retries``, except that a retry it cannot enqueue is never lost.

``Retries`` sends the retry of a failed attempt from its ``after_process_message`` hook. When
that publish fails, Dramatiq logs and swallows the error and then *acks* the message: the task
is gone and its record says ``retrying`` for a day (Dramatiq issue 545). Here the publish is
tried again with backoff:

* while RabbitMQ cannot be reached, for as long as this process lives. The consumer's
  connection is down too, so RabbitMQ will deliver the attempt again anyway; once it is back
  the retry goes out as well, and the task may run once more than planned (at least once,
  never lost);
* while RabbitMQ refuses it (a ``reject-publish`` limit on the delay queue, a delay queue
  declared otherwise), for up to :data:`HOLD_S`. Then the message is failed instead of acked:
  RabbitMQ dead-letters it, and the record says ``failure`` with ``RetryRefused: ...``
  (:data:`~nagatha.middleware.status.FAILED_BECAUSE`), so a refusal that never clears costs a
  worker thread for a minute, not forever.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import BrokerConnectionError

from nagatha.broker_errors import refused_for_good
from nagatha.middleware.holding import hold
from nagatha.middleware.status import FAILED_BECAUSE

logger = logging.getLogger("nagatha.tasks")

#: Seconds a worker thread keeps trying to enqueue a retry RabbitMQ refuses before it fails
#: the message.
HOLD_S = 60.0


def enqueue_held(
    broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None, what: str
) -> Any:
    """``broker.enqueue(message, delay=delay)`` from a worker thread, held as described above.

    Raises ``BrokerConnectionError`` once RabbitMQ refused it for :data:`HOLD_S`; ``what``
    names the message in the warnings (``"the retry"``).
    """

    def report(exc: Exception) -> None:
        logger.warning(
            "task %s %s: %s could not be enqueued, holding it: %s: %s",
            message.message_id,
            message.actor_name,
            what,
            type(exc).__name__,
            exc,
        )

    return hold(
        lambda: broker.enqueue(message, delay=delay),
        BrokerConnectionError,
        report,
        give_up_after=HOLD_S,
        permanent=refused_for_good,
    )


class _HoldingEnqueue:
    """The broker as ``Retries`` sees it: ``enqueue`` is :func:`enqueue_held`."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        return enqueue_held(self._broker, message, delay, "the retry")


class HeldRetries(dramatiq.middleware.Retries):
    """``Retries`` whose retry publish is held, then the message failed (module docstring)."""

    def __init__(self, *, max_retries: int, min_backoff: int, max_backoff: int) -> None:
        super().__init__(max_retries=max_retries)
        # Set here: Retries reads a backoff of 0 as "unset" and takes its defaults, 15 s and
        # 7 days, far past what a worker may hold a message (MAX_HOLD_MS).
        self.min_backoff, self.max_backoff = min_backoff, max_backoff

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return  # nothing to retry (Retries returns too): no wrapper on the hot path
        try:
            super().after_process_message(  # type: ignore[no-untyped-call]
                _HoldingEnqueue(broker),
                message,
                result=result,
                exception=exception,
            )
        except BrokerConnectionError as exc:
            reason = (
                f"RetryRefused: RabbitMQ refused the retry for {HOLD_S:g}s ({exc}); the "
                f"message was dead-lettered after attempt {message.options.get('retries', 0)}"
            )
            setattr(message, FAILED_BECAUSE, reason)  # recorded and logged by StatusMiddleware
            message.fail()
