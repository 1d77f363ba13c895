"""BatchEnqueuer against a real RabbitMQ: one transaction per batch, Dramatiq's wire format."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name

from nagatha.enqueue_batch import BatchEnqueuer, Enqueue
from nagatha.errors import BrokerUnavailable
from nagatha.testing import LOOPBACK, RabbitVhost, amqp_channel, free_port

pytestmark = pytest.mark.integration


class Recorder(dramatiq.Middleware):
    """Records the ``enqueue`` hooks, as a module's middleware would see them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int | None]] = []

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        self.calls.append(("before", message.message_id, delay))

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        self.calls.append(("after", message.message_id, delay))


@pytest.fixture
def own_vhost(rabbitmq: None) -> Iterator[RabbitVhost]:
    with RabbitVhost() as vhost:
        yield vhost


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def broker(own_vhost: RabbitVhost, recorder: Recorder) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(url=own_vhost.url, confirm_delivery=True, middleware=[recorder])
    yield broker
    broker.close()


@pytest.fixture
def channel(own_vhost: RabbitVhost) -> Iterator[Any]:
    with amqp_channel(own_vhost.url) as channel:
        yield channel


def message(queue: str = "batch", n: int = 0) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue,
        actor_name="m.t",
        args=(n,),
        kwargs={"k": "é"},
        options={},
        message_id=str(uuid.uuid4()),
    )


def drain(channel: Any, queue: str) -> list[dict[str, Any]]:
    """Every message now in ``queue``, decoded, acked."""
    bodies = []
    while True:
        method, _properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(json.loads(body))


def test_a_batch_lands_in_order_with_the_delayed_ones_in_the_delay_queue(
    broker: RabbitmqBroker, channel: Any, recorder: Recorder
) -> None:
    batch = [Enqueue(message(n=n), delay_ms=60_000 if n % 3 == 0 else None) for n in range(12)]

    BatchEnqueuer(broker).enqueue(batch)

    now = drain(channel, "batch")
    delayed = drain(channel, dq_name("batch"))
    assert [m["args"] for m in now] == [[n] for n in range(12) if n % 3]
    assert [m["args"] for m in delayed] == [[n] for n in range(12) if n % 3 == 0]
    assert all(m["queue_name"] == dq_name("batch") and m["options"]["eta"] for m in delayed)
    assert now[0]["kwargs"] == {"k": "é"} and now[0]["actor_name"] == "m.t"
    ids = [item.message.message_id for item in batch]
    assert [call[1] for call in recorder.calls if call[0] == "before"] == ids
    assert [call[1] for call in recorder.calls if call[0] == "after"] == ids


def test_a_queue_deleted_under_the_enqueuer_is_declared_again(
    broker: RabbitmqBroker, channel: Any
) -> None:
    enqueuer = BatchEnqueuer(broker)
    enqueuer.enqueue([Enqueue(message(n=0)), Enqueue(message("other", n=0))])
    assert len(drain(channel, "batch")) == 1 and len(drain(channel, "other")) == 1
    for queue in ("batch", dq_name("batch"), xq_name("batch")):
        channel.queue_delete(queue)

    enqueuer.enqueue([Enqueue(message(n=1)), Enqueue(message("other", n=1))])

    # The message to the deleted queue came back unroutable (mandatory) and was published
    # again once its queue was declared again; the other one was not published twice.
    assert [m["args"] for m in drain(channel, "batch")] == [[1]]
    assert [m["args"] for m in drain(channel, "other")] == [[1]]


def test_a_connection_lost_between_batches_is_made_again(
    broker: RabbitmqBroker, channel: Any
) -> None:
    enqueuer = BatchEnqueuer(broker)
    enqueuer.enqueue([Enqueue(message(n=0))])
    broker.connection.close()  # as RabbitMQ closing it between two batches

    enqueuer.enqueue([Enqueue(message(n=1))])

    assert [m["args"] for m in drain(channel, "batch")] == [[0], [1]]


def test_an_unreachable_rabbitmq_raises_broker_unavailable() -> None:
    broker = RabbitmqBroker(
        url=f"amqp://guest:guest@{LOOPBACK}:{free_port()}/%2F?connection_attempts=1",
        confirm_delivery=True,
    )
    try:
        with pytest.raises(BrokerUnavailable, match="did not take 1 of a batch of 1 tasks after 3"):
            BatchEnqueuer(broker).enqueue([Enqueue(message())])
    finally:
        broker.close()


def test_other_brokers_get_one_enqueue_per_message() -> None:
    broker = StubBroker()
    broker.declare_queue("batch")

    BatchEnqueuer(broker).enqueue([Enqueue(message(n=n)) for n in range(3)])

    assert broker.queues["batch"].qsize() == 3
