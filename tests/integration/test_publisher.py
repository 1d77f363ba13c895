"""ConfirmedPublisher against a real RabbitMQ: a task for a queue nobody declared yet."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from bridge.publisher import ConfirmedPublisher
from bridge.queues import CELERY_EXCHANGE
from nagatha.errors import PublishRefused
from nagatha.testing import RabbitVhost, amqp_channel

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(vhost: RabbitVhost) -> Iterator[str]:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    yield name
    with amqp_channel(vhost.url) as channel:
        channel.queue_delete(name)


@pytest.fixture
def channel(vhost: RabbitVhost) -> Iterator[Any]:
    with amqp_channel(vhost.url) as channel:
        yield channel


def publish(publisher: ConfirmedPublisher, queue: str, body: bytes, **options: Any) -> None:
    publisher.publish(
        exchange="",
        routing_key=queue,
        body=body,
        headers={"task": "m.t"},
        properties={"content_type": "application/json", "delivery_mode": 2},
        **options,
    )


def test_a_task_for_a_queue_nobody_declared_declares_it_as_celery_does(
    vhost: RabbitVhost, queue: str, channel: Any
) -> None:
    publisher = ConfirmedPublisher(vhost.url)
    try:
        publish(publisher, queue, b"first", declare_queue=True)
        publish(publisher, queue, b"second", declare_queue=True)  # the queue exists now
    finally:
        publisher.close_all()

    assert channel.basic_get(queue, auto_ack=True)[2] == b"first"
    assert channel.basic_get(queue, auto_ack=True)[2] == b"second"
    # Declared like the bridge's own queues: durable, bound to Celery's exchange.
    channel.queue_declare(queue, durable=True, passive=True)
    channel.confirm_delivery()
    channel.basic_publish(CELERY_EXCHANGE, queue, b"routed", mandatory=True)
    assert channel.basic_get(queue, auto_ack=True)[2] == b"routed"


def test_without_declare_queue_nothing_is_declared(
    vhost: RabbitVhost, queue: str, channel: Any
) -> None:
    publisher = ConfirmedPublisher(vhost.url)
    try:
        publish(publisher, queue, b"dropped")  # as RabbitMQ does with any unroutable message
    finally:
        publisher.close_all()

    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
        channel.queue_declare(queue, passive=True)


@pytest.mark.parametrize(
    ("exchange", "routing_key", "properties"),
    [
        ("no-such-exchange", "x", {}),  # 404 NOT_FOUND closes the channel
        ("", "q", {"correlation_id": "ü" * 200}),  # 400 bytes: over AMQP's short string
    ],
)
def test_a_publish_refused_for_good_is_not_an_outage_and_not_retried(
    vhost: RabbitVhost,
    queue: str,
    channel: Any,
    exchange: str,
    routing_key: str,
    properties: dict[str, Any],
) -> None:
    publisher = ConfirmedPublisher(vhost.url, attempts=3)
    try:
        with pytest.raises(PublishRefused, match="refused"):
            publisher.publish(
                exchange=exchange,
                routing_key=routing_key,
                body=b"x",
                headers={},
                properties=properties,
            )
        # The publisher still works for the next message.
        channel.queue_declare(queue)
        publish(publisher, queue, b"after")
    finally:
        publisher.close_all()
    assert channel.basic_get(queue, auto_ack=True)[2] == b"after"
