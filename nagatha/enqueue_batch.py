"""Enqueue a batch of Dramatiq messages with one round trip to RabbitMQ.

``RabbitmqBroker.enqueue`` (publisher confirms) waits for RabbitMQ once per message. A
:class:`BatchEnqueuer` publishes every message of a batch as that method does (same queue,
delay queue and ``eta``, properties, ``mandatory``, ``enqueue`` middleware hooks), but on a
second channel of the calling thread's broker connection, in transaction mode, and commits
once. RabbitMQ answers ``tx.commit-ok`` only after every message of the batch was routed and
persisted: the guarantee a confirm gives for one message, given for all of them.

Other brokers (the in-memory stub of the embedded mode) get one ``enqueue`` per message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import dramatiq
import dramatiq.errors
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis, dq_name, q_name
from pika.adapters.blocking_connection import BlockingChannel

from nagatha.broker_errors import CONNECTION_ERRORS
from nagatha.errors import BrokerUnavailable

__all__ = ["BatchEnqueuer", "Enqueue"]

logger = logging.getLogger("nagatha.broker")

#: Commit attempts before giving up; each failed attempt reopens the thread's connection.
ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class Enqueue:
    """One message of a batch; ``delay_ms`` as for ``Broker.enqueue(delay=...)``."""

    message: dramatiq.Message[Any]
    delay_ms: int | None = None


class BatchEnqueuer:
    """Enqueue batches on ``broker``; thread-safe (one transaction channel per thread)."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        self._local = threading.local()

    def enqueue(self, batch: Sequence[Enqueue]) -> None:
        """Enqueue every message of ``batch``; return once RabbitMQ holds all of them.

        A batch whose connection fails is published again whole on a new connection, up to
        :data:`ATTEMPTS` times: a message whose commit was lost with its connection may be
        enqueued twice (as with a lost confirm), never not at all without an error. Messages
        RabbitMQ returns as unroutable (their queue was deleted) are published again, alone,
        once Dramatiq declared their queues again.

        Raises:
            BrokerUnavailable: RabbitMQ did not take the batch; some of it may be enqueued.
        """
        broker = self.broker
        if not isinstance(broker, RabbitmqBroker):
            for item in batch:
                broker.enqueue(item.message, delay=item.delay_ms)
            return
        todo = list(batch)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                todo = self._publish(broker, todo)
            except CONNECTION_ERRORS as exc:
                del broker.connection  # Dramatiq's deleter closes the thread's connection
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if not todo:
                    return
                queues = sorted({item.message.queue_name for item in todo})
                problem = f"no queue took the messages for {', '.join(queues)}"
            if attempt == ATTEMPTS:
                raise BrokerUnavailable(
                    f"RabbitMQ did not take {len(todo)} of a batch of {len(batch)} tasks after "
                    f"{attempt} attempts: {problem}"
                )
            logger.debug("batch enqueue attempt %d failed (%s); trying again", attempt, problem)

    def _publish(self, broker: RabbitmqBroker, batch: list[Enqueue]) -> list[Enqueue]:
        """Publish ``batch`` in one transaction; return the items RabbitMQ could not route."""
        channel = self._channel(broker)
        returned: set[str] = self._local.returned
        returned.clear()
        sent = []
        for item in batch:
            queue = item.message.queue_name
            broker.declare_queue(queue, ensure=True)
            message = item.message
            if item.delay_ms is not None:
                message = message.copy(
                    queue_name=dq_name(queue),
                    options={"eta": current_millis() + item.delay_ms},
                )
            broker.emit_before("enqueue", message, item.delay_ms)
            channel.basic_publish(
                exchange="",
                routing_key=message.queue_name,
                body=message.encode(),
                properties=pika.BasicProperties(
                    delivery_mode=2, priority=message.options.get("broker_priority")
                ),
                mandatory=True,
            )
            sent.append((item, message))
        channel.tx_commit()
        # RabbitMQ sends basic.return before tx.commit-ok; pika hands it over on dispatch.
        channel.connection.process_data_events(time_limit=0)
        # A queue deleted under us: every message to it came back; have Dramatiq declare it
        # again before they are published again.
        broker.queues_pending.update(q_name(name) for name in returned)
        for item, message in sent:
            if message.queue_name not in returned:
                broker.emit_after("enqueue", message, item.delay_ms)
        return [item for item, message in sent if message.queue_name in returned]

    def _channel(self, broker: RabbitmqBroker) -> BlockingChannel:
        """This thread's transaction channel on the broker's connection for this thread."""
        connection = broker.connection
        channel: BlockingChannel | None = getattr(self._local, "channel", None)
        if channel is None or not channel.is_open or channel.connection is not connection:
            channel = connection.channel()
            channel.tx_select()
            returned: set[str] = set()
            channel.add_on_return_callback(
                lambda _channel, method, _properties, _body: returned.add(method.routing_key)
            )
            self._local.channel, self._local.returned = channel, returned
        return channel
