"""Dramatiq's ``Retries``, except that a retry it cannot enqueue is never lost.

``Retries`` sends the retry of a failed attempt from its ``after_process_message`` hook. When
that publish fails (a memory alarm, a ``reject-publish`` length limit on the delay queue,
RabbitMQ gone for longer than Dramatiq's own reconnects), Dramatiq logs and swallows the error
and then *acks* the message: the task is gone and its record says ``retrying`` for a day
(Dramatiq issue 545). Here the publish is tried again, with backoff, for up to
:data:`HOLD_S`; then the message is failed instead of acked:

* with the consumer's connection alive, RabbitMQ dead-letters it and the record says
  ``failure``: a refusal that does not clear (a delay queue declared otherwise) costs a
  worker thread for a minute, not forever;
* with that connection gone too (RabbitMQ down), neither ack nor nack reaches RabbitMQ, which
  delivers the attempt again: the task is retried that way.

A retry enqueued while the consumer's connection was lost is one more run of the task (its
attempt is delivered again as well): at least once, never lost.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import BrokerConnectionError

from nagatha.middleware.holding import hold

logger = logging.getLogger("nagatha.tasks")

#: Seconds a worker thread keeps trying to enqueue a retry before it fails the message.
HOLD_S = 60.0


class _HoldingEnqueue:
    """The broker as ``Retries`` sees it: ``enqueue`` tries for up to :data:`HOLD_S`."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        def report(exc: Exception) -> None:
            logger.warning(
                "task %s %s: the retry could not be enqueued, holding it: %s: %s",
                message.message_id,
                message.actor_name,
                type(exc).__name__,
                exc,
            )

        return hold(
            lambda: self._broker.enqueue(message, delay=delay),
            BrokerConnectionError,
            report,
            give_up_after=HOLD_S,
        )


class HeldRetries(dramatiq.middleware.Retries):
    """``Retries`` whose retry publish is held, then the message failed (module docstring)."""

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        try:
            super().after_process_message(  # type: ignore[no-untyped-call]
                _HoldingEnqueue(broker),
                message,
                result=result,
                exception=exception,
            )
        except BrokerConnectionError as exc:
            logger.error(
                "task %s %s: its retry was not enqueued in %gs (%s); failing the message "
                "rather than acking it",
                message.message_id,
                message.actor_name,
                HOLD_S,
                exc,
            )
            message.fail()
