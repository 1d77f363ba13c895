"""Short-lived checks of RabbitMQ, each on a connection of its own that it closes again:
whether it answers (``/health``) and how deep the hub's queues are (``/metrics``,
``nagatha stats``). The publisher and consumer connections cannot answer these: an idle one
RabbitMQ already reaped still reports ``is_open``."""

from __future__ import annotations

from collections.abc import Sequence

import pika
import pika.exceptions
from dramatiq.brokers.stub import StubBroker

from nagatha.broker import amqp_url
from nagatha.broker_errors import refused_access
from nagatha.config import BrokerConfig
from nagatha.errors import BrokerUnavailable


def probe_parameters(config: BrokerConfig, timeout: float) -> pika.URLParameters:
    """Connection parameters for a short-lived check of ``config.url`` (``/health``,
    ``/metrics``, ``nagatha stats``): one attempt, ``timeout`` seconds for each step."""
    params = pika.URLParameters(amqp_url(config))
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    return params


def probe_rabbitmq(config: BrokerConfig, timeout: float) -> None:
    """Open and close one AMQP connection to ``config.url``; raise if that fails (a refused
    login or vhost as :class:`BrokerUnavailable` saying what to fix)."""
    try:
        pika.BlockingConnection(probe_parameters(config, timeout)).close()
    except pika.exceptions.AMQPConnectionError as exc:
        refused = refused_access(exc)
        if refused is None:
            raise
        raise BrokerUnavailable(refused) from None


#: ``queue -> (messages ready, consumers or None when the broker cannot tell)``.
QueueDepths = dict[str, tuple[int, int | None]]


def rabbitmq_queue_depths(
    config: BrokerConfig, queues: Sequence[str], timeout: float
) -> QueueDepths:
    """Passively declare each of ``queues`` on one fresh connection; a queue that does not
    exist (yet) is left out. Raises the connection's error if RabbitMQ does not answer."""
    depths: QueueDepths = {}
    connection = pika.BlockingConnection(probe_parameters(config, timeout))
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                frame = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: RabbitMQ closes the channel
                channel = connection.channel()
                continue
            depths[queue] = (frame.method.message_count, frame.method.consumer_count)
    finally:
        connection.close()
    return depths


def stub_queue_depths(broker: StubBroker, queues: Sequence[str]) -> QueueDepths:
    """The embedded broker's queues (in this process): messages only, consumers unknown."""
    return {
        queue: (broker.queues[queue].qsize(), None) for queue in queues if queue in broker.queues
    }
