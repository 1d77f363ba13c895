"""Dramatiq's ``Retries``, except that a retry it cannot enqueue is held, never lost.

``Retries`` sends the retry of a failed attempt from its ``after_process_message`` hook. When
that publish fails (RabbitMQ gone for longer than Dramatiq's own reconnect attempts, a memory
alarm, a ``reject-publish`` length limit on the delay queue), Dramatiq logs and swallows the
error and then *acks* the message: the task is gone and its record says ``retrying`` forever
(Dramatiq issue 545). Here the publish is tried again, with backoff, for as long as this
process lives; a worker stopped meanwhile exits without the ack and RabbitMQ redelivers the
attempt, so the task runs again either way.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.errors import BrokerConnectionError

from nagatha.middleware.holding import hold

logger = logging.getLogger("nagatha.tasks")


class _HoldingEnqueue:
    """The broker as ``Retries`` sees it: ``enqueue`` returns only once the broker took it."""

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
            lambda: self._broker.enqueue(message, delay=delay), BrokerConnectionError, report
        )


class HeldRetries(dramatiq.middleware.Retries):
    """``Retries`` whose retry publish is held until RabbitMQ takes it (module docstring)."""

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        super().after_process_message(  # type: ignore[no-untyped-call]
            _HoldingEnqueue(broker),
            message,
            result=result,
            exception=exception,
        )
