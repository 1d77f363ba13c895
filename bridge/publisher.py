"""Publish to RabbitMQ with publisher confirms from any thread: one connection per thread.

pika's ``BlockingConnection`` is not thread-safe, so :class:`ConfirmedPublisher` keeps one
connection and one confirm-mode channel per calling thread (like Dramatiq's RabbitMQ broker),
opened on the first publish and never at construction: an instance may be built before a fork
or in a process that never publishes.

It implements :class:`bridge.workflows.TaskPublisher` (``publish``) and the channel protocol
that :class:`bridge.celery_results.RpcReplyWriter` writes to (``basic_publish``), so the
worker-side middleware sends rpc replies and workflow messages through the same connections.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from bridge.queues import declare_celery_queue
from nagatha.broker_errors import refused_for_good
from nagatha.errors import BrokerUnavailable, PublishRefused

__all__ = ["ConfirmedPublisher", "Unroutable"]

logger = logging.getLogger("nagatha.bridge.publisher")

#: Publish attempts before giving up; each failed attempt reopens the thread's connection.
DEFAULT_ATTEMPTS: Final = 3
#: Seconds to wait before the second attempt (doubles for each further attempt).
RETRY_DELAY_S: Final = 0.25

# Errors after which the thread's connection is dropped and the publish tried again. A
# NackError (RabbitMQ refused the message) is worth another try too; UnroutableError is not
# (only raised with mandatory=True, and a missing queue will not appear by itself).
_RETRYABLE: Final = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.NackError,
    AMQPConnectorException,  # e.g. no AMQP handshake in time
    OSError,
)


class Unroutable(BrokerUnavailable):
    """RabbitMQ had no queue for a message published ``mandatory``."""


class ConfirmedPublisher:
    """Publish messages and return only once RabbitMQ confirmed them.

    Example::

        publisher = ConfirmedPublisher("amqp://guest:guest@localhost:5672/%2F")
        publisher.publish(exchange="", routing_key="celery", body=b"...", headers={...},
                          properties={"content_type": "application/json"})

    A failure on a broken connection (RabbitMQ restarted, heartbeat missed) reopens the
    thread's connection and tries again, up to ``attempts`` times, then raises
    :class:`~nagatha.errors.BrokerUnavailable`. A message whose confirm was lost with the
    connection may therefore be published twice: consumers must tolerate duplicates.
    """

    def __init__(self, url: str, *, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.url = url
        self.attempts = attempts
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[pika.BlockingConnection] = set()

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        properties: dict[str, Any],
        declare_queue: bool = False,
    ) -> None:
        """Publish one message; ``properties`` are :class:`pika.BasicProperties` fields.

        With ``declare_queue`` (for the default exchange ``""``, where the routing key names
        the queue), a message RabbitMQ cannot route because its queue does not exist is
        published again once the queue is declared as Celery declares it
        (:func:`bridge.queues.declare_celery_queue`): a Celery worker's producer declares the
        queue of every task it sends, so a chain step for a queue no consumer declared yet
        waits there instead of being dropped.

        Raises:
            BrokerUnavailable: RabbitMQ did not confirm the message after every attempt.
            TypeError: ``properties`` names a field AMQP does not have.
        """
        basic = pika.BasicProperties(headers=headers, **properties)
        if not declare_queue:
            self.basic_publish(exchange, routing_key, body, basic)
            return
        try:
            self.basic_publish(exchange, routing_key, body, basic, mandatory=True)
        except Unroutable:
            declare_celery_queue(self._channel(), routing_key)
            self.basic_publish(exchange, routing_key, body, basic, mandatory=True)

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish like ``BlockingChannel.basic_publish`` on this thread's confirm channel.

        Raises:
            BrokerUnavailable: not confirmed after every attempt, or unroutable with
                ``mandatory``.
            PublishRefused: refused for good (a channel closed with one of
                :data:`~nagatha.broker_errors.REFUSAL_CODES`; an id or ``reply_to``
                over AMQP's 255 bytes); not tried again.
        """
        delay = RETRY_DELAY_S
        for attempt in range(1, self.attempts + 1):
            try:
                channel = self._channel()
                channel.basic_publish(exchange, routing_key, body, properties, mandatory)
                return
            except pika.exceptions.UnroutableError:
                raise Unroutable(
                    f"RabbitMQ could not route the message to {exchange!r}/{routing_key!r}"
                ) from None
            except (*_RETRYABLE, pika.exceptions.ShortStringTooLong) as exc:
                self._drop()
                if refused_for_good(exc, nacks=False):  # a NACK is worth another attempt
                    raise PublishRefused(
                        f"RabbitMQ refused the message to {exchange!r}/{routing_key!r}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                if attempt == self.attempts:
                    raise BrokerUnavailable(
                        f"RabbitMQ did not confirm the message to {exchange!r}/{routing_key!r} "
                        f"after {attempt} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                logger.debug("publish attempt %d failed (%r); reconnecting", attempt, exc)
                if attempt > 1:
                    time.sleep(delay)
                    delay *= 2

    def close(self) -> None:
        """Close the calling thread's connection, if it has one."""
        self._drop()

    def close_all(self) -> None:
        """Close every thread's connection; call only once no thread publishes any more."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _close_quietly(connection)
        self._local = threading.local()

    def _channel(self) -> BlockingChannel:
        channel: BlockingChannel | None = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return channel
        self._drop()
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        with self._lock:
            self._connections.add(connection)
        self._local.connection = connection
        channel = connection.channel()
        channel.confirm_delivery()
        self._local.channel = channel
        return channel

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = self._local.channel = None
        if connection is not None:
            with self._lock:
                self._connections.discard(connection)
            _close_quietly(connection)


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # closing a broken connection may raise anything pika has
        logger.debug("closing a publisher connection failed", exc_info=True)
