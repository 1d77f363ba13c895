"""The bridge under bad input and hard stops: dead letters, replay, SIGKILL under load.

Real ``celery`` clients and raw pika publishes (for what no Celery client would send) against
``nagatha worker``/``nagatha bridge`` subprocesses, each test on a stack of its own.
"""

from __future__ import annotations

import json
import re
import signal
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pika.data
import pytest
from billiard.exceptions import WorkerLostError
from bridge_stack import BRIDGE_READY, ROOT, CeleryClient, HubStack, hub_stack
from celery.exceptions import InvalidTaskError, NotRegistered

from bridge.consumer import Bridge
from bridge.dead_letters import HEADER_PREFIX, declare_dead_letter_queue
from bridge.intake import Delivery
from nagatha.broker import amqp_url
from nagatha.errors import BrokerUnavailable
from nagatha.hub import create_hub
from nagatha.middleware import retries
from nagatha.testing import amqp_channel, rabbitmqctl, run_cli, wait_until
from nagatha.types import TaskStatus

pytestmark = pytest.mark.integration

GET_TIMEOUT = 60
#: The bridge's size limit in these tests; "huge" messages are bigger.
MAX_BYTES = 65_536


@pytest.fixture
def stack(rabbitmq: None, redis_server: None, tmp_path: Path) -> Iterator[HubStack]:
    """A vhost and Redis prefix of this test's own, with a worker running."""
    with hub_stack(tmp_path, NAGATHA_BRIDGE_MAX_MESSAGE_BYTES=str(MAX_BYTES)) as created:
        created.start_worker()
        yield created


@pytest.fixture
def client(stack: HubStack) -> Iterator[CeleryClient]:
    """A Celery app with the Redis result backend."""
    created = CeleryClient(stack)
    yield created
    created.close()


def publish_raw(stack: HubStack, body: bytes, **properties: Any) -> None:
    """Publish what no Celery client would: straight to the ``celery`` queue."""
    with amqp_channel(amqp_url(stack.config.broker)) as channel:
        channel.confirm_delivery()
        channel.basic_publish("", "celery", body, pika.BasicProperties(**properties))


class RawField:
    """A header value the test's pika sends as exactly these field bytes (type tag first)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


@pytest.fixture
def raw_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``publish_raw`` send :class:`RawField` header values."""
    encode_value = pika.data.encode_value

    def encode(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, RawField):
            pieces.append(value.raw)
            return len(value.raw)
        return encode_value(pieces, value)

    monkeypatch.setattr(pika.data, "encode_value", encode)


def first_dead_letter(stack: HubStack) -> tuple[pika.BasicProperties, bytes]:
    """Wait for a dead letter; return the oldest one's properties and body (left in place)."""
    wait_until(lambda: dlq(stack, "list")["dead_letters"], GET_TIMEOUT, message="a dead letter")
    with amqp_channel(amqp_url(stack.config.broker)) as channel:
        method, properties, body = channel.basic_get(stack.config.bridge.dead_letter_queue)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=True)
    return properties, body


def has_consumer(stack: HubStack, queue: str) -> bool:
    """True once ``queue`` exists and a consumer reads it."""
    try:
        with amqp_channel(amqp_url(stack.config.broker)) as channel:
            return channel.queue_declare(queue, passive=True).method.consumer_count > 0
    except pika.exceptions.ChannelClosedByBroker:  # 404: not declared yet
        return False


def dlq(stack: HubStack, *args: str) -> Any:
    """Run ``nagatha bridge dlq ARGS --json`` and return its JSON output."""
    done = run_cli(["bridge", "dlq", *args, "--json"], stack.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bad_messages_are_dead_lettered_while_good_ones_around_them_complete(
    stack: HubStack, client: CeleryClient
) -> None:
    bridge = stack.start_bridge()
    before = client.send("echo_bot.echo", kwargs={"message": "before"})
    bad_id = client.new_id()
    publish_raw(  # a body that is not JSON, with a readable task id
        stack,
        b"{not json",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "echo_bot.echo", "id": bad_id},
    )
    publish_raw(  # a protocol 2 body without its headers
        stack,
        b'[[], {"message": "x"}, {}]',
        content_type="application/json",
        content_encoding="utf-8",
    )
    publish_raw(  # headers of the wrong types
        stack,
        b"[[], {}, {}]",
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": 42, "id": ["not", "text"]},
    )
    huge = client.send("echo_bot.echo", kwargs={"message": "x" * (MAX_BYTES + 1)})
    after = client.send("echo_bot.echo", kwargs={"message": "after"})

    assert before.get(timeout=GET_TIMEOUT) == "before"
    assert after.get(timeout=GET_TIMEOUT) == "after"
    with pytest.raises(InvalidTaskError, match=f"exceeds {MAX_BYTES}"):
        huge.get(timeout=GET_TIMEOUT)
    with pytest.raises(InvalidTaskError, match="cannot decode"):
        client.result(bad_id).get(timeout=GET_TIMEOUT)

    letters = wait_until(
        lambda: (found := dlq(stack, "list")["dead_letters"]) and len(found) == 4 and found,
        GET_TIMEOUT,
        message="four dead letters",
    )
    reasons = sorted((letter["task_id"] or "", letter["reason"]) for letter in letters)
    anonymous = [reason for task_id, reason in reasons if not task_id]
    assert dict(reasons)[huge.id].endswith(f"bytes exceeds {MAX_BYTES}")
    assert "cannot decode" in dict(reasons)[bad_id]
    assert any("not a Celery task message" in reason for reason in anonymous)
    assert any("must be a string" in reason for reason in anonymous)
    assert all(letter["queue"] == "celery" for letter in letters)
    bridge.wait_for_log(r"dead-lettered as \w+", count=4)
    assert bridge.process.poll() is None, "the bridge must stay up"


def test_a_backlog_mixing_bad_and_good_messages_is_handled_in_batches(
    stack: HubStack, client: CeleryClient
) -> None:
    # Given a backlog (queued before the bridge starts, so that it arrives in batches) where
    # bad messages sit between good ones
    good = []
    for n in range(30):
        good.append(client.send("echo_bot.echo", kwargs={"message": f"m{n}"}))
        if n % 10 == 5:
            publish_raw(stack, b"{not json", content_type="application/json")
            client.send("nope.missing")
    # When the bridge takes it
    bridge = stack.start_bridge()
    # Then every good one completes, every bad one is dead-lettered, nothing stays unacked
    assert [r.get(timeout=GET_TIMEOUT) for r in good] == [f"m{n}" for n in range(30)]
    wait_until(lambda: len(dlq(stack, "list")["dead_letters"]) == 6, GET_TIMEOUT, message="6 dlq")
    wait_until(
        lambda: _celery_queue(stack.vhost.name) == (0, 0), GET_TIMEOUT, message="queue acked"
    )
    assert bridge.process.poll() is None


def test_a_bridge_bug_while_enqueueing_a_batch_dead_letters_the_batch(stack: HubStack) -> None:
    class Broken:
        def enqueue(self, batch: Any) -> None:
            raise RuntimeError("boom")

    registry = create_hub(stack.config)
    bridge = Bridge(stack.config, registry)
    with amqp_channel(bridge.url) as channel:  # as a bridge's lane does before consuming
        declare_dead_letter_queue(channel, stack.config.bridge.dead_letter_queue)
    try:
        bridge.intake.enqueuer = Broken()  # type: ignore[assignment]
        ids = [CeleryClient.new_id() for _ in range(2)]
        deliveries = [
            Delivery(
                "celery",
                json.dumps([[], {"message": task_id}, {}]).encode(),
                pika.BasicProperties(
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers={"task": "echo_bot.echo", "id": task_id, "lang": "py"},
                ),
            )
            for task_id in ids
        ]

        assert bridge.intake.handle(deliveries) == ["dead-lettered", "dead-lettered"]
    finally:
        bridge.publisher.close_all()
        registry.broker.close()
        registry.store.close()
    letters = dlq(stack, "list")["dead_letters"]
    assert (
        sorted(letter["reason"] for letter in letters) == ["bridge error: RuntimeError: boom"] * 2
    )


def test_a_batch_cut_short_by_an_outage_acks_what_it_dead_lettered_before(
    stack: HubStack,
) -> None:
    class Down:
        def enqueue(self, batch: Any) -> None:
            raise BrokerUnavailable("RabbitMQ did not take the batch")

    class Channel:  # records the acks the lane sends
        def __init__(self) -> None:
            self.acks: list[tuple[int, bool]] = []

        def basic_ack(self, tag: int, multiple: bool = False) -> None:
            self.acks.append((tag, multiple))

    registry = create_hub(stack.config)
    bridge = Bridge(stack.config, registry)
    with amqp_channel(bridge.url) as channel:
        declare_dead_letter_queue(channel, stack.config.bridge.dead_letter_queue)
    try:
        bridge.intake.enqueuer = Down()  # type: ignore[assignment]
        batch = [
            (
                tag,
                Delivery(
                    "celery",
                    json.dumps([[], {"message": "m"}, {}]).encode(),
                    pika.BasicProperties(
                        content_type="application/json",
                        content_encoding="utf-8",
                        headers={"task": name, "id": CeleryClient.new_id(), "lang": "py"},
                    ),
                ),
            )
            for tag, name in ((7, "echo_bot.echo"), (8, "nope.missing"), (9, "echo_bot.echo"))
        ]
        lane = Channel()
        with pytest.raises(BrokerUnavailable):
            bridge._handle(lane, batch)  # type: ignore[arg-type]
    finally:
        bridge.publisher.close_all()
        registry.broker.close()
        registry.store.close()
    # The refused message was dead-lettered and is acked alone; the others come back.
    assert lane.acks == [(8, False)]
    assert [letter["task_name"] for letter in dlq(stack, "list")["dead_letters"]] == [
        "nope.missing"
    ]


def test_dead_letters_keep_the_message_and_say_why(stack: HubStack, client: CeleryClient) -> None:
    stack.start_bridge()
    result = client.send("nope.missing", kwargs={"a": 1})
    with pytest.raises(NotRegistered):
        result.get(timeout=GET_TIMEOUT)
    # The client is answered first, then the message is dead-lettered.
    properties, body = first_dead_letter(stack)
    headers = properties.headers
    assert headers["id"] == result.id and headers["task"] == "nope.missing"
    assert "unknown task 'nope.missing'" in headers[f"{HEADER_PREFIX}reason"]
    assert json.loads(body)[1] == {"a": 1}
    # A name no module could register gets NotRegistered too, as from a Celery worker.
    for name in ("my task", "a/b", "proj..tasks", "x" * 300):
        odd = client.send(name)
        with pytest.raises(NotRegistered, match=re.escape(name[:80])):
            odd.get(timeout=GET_TIMEOUT)
    # The table, piped (80 columns), still shows whole ids that `dlq replay` takes.
    letter_id = dlq(stack, "list")["dead_letters"][0]["id"]
    table = run_cli(["bridge", "dlq", "list"], stack.env)
    assert table.returncode == 0, table.stderr
    assert letter_id in table.stdout and "nope.missing" in table.stdout
    assert "unknown task 'nope.missing'" in " ".join(table.stdout.split())


@pytest.mark.usefixtures("raw_fields")
def test_headers_pika_could_not_decode_or_send_again_stall_no_lane(
    stack: HubStack, client: CeleryClient
) -> None:
    bridge = stack.start_bridge(NAGATHA_BRIDGE_CONCURRENCY="1")
    nested = b"A" + struct.pack(">I", 0)
    for _ in range(300):
        nested = b"A" + struct.pack(">I", len(nested)) + nested
    hostile = {
        "x-when": RawField(b"T" + struct.pack(">Q", 2**64 - 1)),  # past datetime's range
        "x-deep": RawField(nested),  # past Python's recursion in pika's decoder
    }
    sent = []
    for name, value in hostile.items():
        task_id = client.new_id()
        client.ids.append(task_id)
        publish_raw(
            stack,
            json.dumps([[], {"message": name}, {}]).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "echo_bot.echo", "id": task_id, "lang": "py", name: value},
        )
        sent.append((task_id, name))
    # Refused, with headers that fill RabbitMQ's frame: the dead letter cannot keep them.
    padded = client.send("nope.missing", headers={"pad": "x" * 130_500})
    after = client.send("echo_bot.echo", kwargs={"message": "after"})

    assert after.get(timeout=GET_TIMEOUT) == "after"
    for task_id, name in sent:
        assert client.result(task_id).get(timeout=GET_TIMEOUT) == name
    with pytest.raises(NotRegistered):
        padded.get(timeout=GET_TIMEOUT)
    headers = first_dead_letter(stack)[0].headers
    assert "pad" not in headers and headers[f"{HEADER_PREFIX}task-id"] == padded.id
    assert "too large to keep" in headers[f"{HEADER_PREFIX}headers-dropped"]
    assert bridge.process.poll() is None
    assert "connection lost" not in bridge.log()


def with_module(root: Path, name: str, source: str) -> dict[str, str]:
    """Write module ``name`` under ``root``; return the setting that adds it to the shipped."""
    (root / "mods" / name).mkdir(parents=True)
    (root / "mods" / name / "__init__.py").write_text(source)
    return {"NAGATHA_MODULES_PATHS": f"{ROOT / 'modules'}:{root / 'mods'}"}


POISON = """
import os

def crash():
    os._exit(9)  # as a segfault or the OOM killer would end the worker process

def register_tasks(registry):
    registry.register_task("poison", "crash", crash, max_retries=0)
"""


def test_a_task_that_kills_its_worker_fails_as_worker_lost_and_the_rest_runs(
    rabbitmq: None, redis_server: None, tmp_path: Path
) -> None:
    settings = with_module(tmp_path, "poison", POISON)
    with hub_stack(tmp_path, **settings, NAGATHA_WORKER_MAX_REDELIVERIES="2") as stack:
        worker = stack.start_worker()
        stack.start_bridge()
        client = CeleryClient(stack)
        try:
            poison = client.send("poison.crash")
            innocent = client.send("echo_bot.echo", kwargs={"message": "still runs"})
            # The first run and two redeliveries kill the worker process (and the innocent
            # task beside it at first); the third redelivery is past the limit.
            with pytest.raises(WorkerLostError, match="a worker stopped while running it, 3"):
                poison.get(timeout=GET_TIMEOUT)
            assert innocent.get(timeout=GET_TIMEOUT) == "still runs"
        finally:
            client.close()
        record = stack.final_record(poison.id)
        assert record.status is TaskStatus.FAILURE
        assert (record.error or "").startswith("WorkerLost: a worker stopped while running it")
        with amqp_channel(amqp_url(stack.config.broker)) as channel:

            def dead_letters() -> int:
                return int(channel.queue_declare("default.XQ", passive=True).method.message_count)

            # The nack that dead-letters it comes after the answers, a moment later.
            wait_until(lambda: dead_letters() == 1, 30, message="the poison message in XQ")
        worker.wait_for_log(r"died with exit code 9", count=3)
        assert "not run again" in worker.log()


SHAPES = """
def deep(levels):
    value = []
    for _ in range(levels):
        value = [value]
    return value

def register_tasks(registry):
    registry.register_task("shapes", "deep", deep, max_retries=0)
"""


def test_a_result_the_hub_cannot_store_fails_for_the_celery_client_too(
    rabbitmq: None, redis_server: None, tmp_path: Path
) -> None:
    with hub_stack(tmp_path, **with_module(tmp_path, "shapes", SHAPES)) as stack:
        stack.start_worker()
        stack.start_bridge()
        client = CeleryClient(stack)
        try:
            # 250 levels pass json.dumps but not the store; 5,000 overflow json.dumps itself.
            for levels in (250, 5000):
                result = client.send("shapes.deep", kwargs={"levels": levels})
                with pytest.raises(TypeError, match="nests deeper than 200 levels"):
                    result.get(timeout=GET_TIMEOUT)
                record = stack.final_record(result.id)
                assert record.status is TaskStatus.FAILURE
                assert "nests deeper than 200 levels" in (record.error or "")
            assert client.send("shapes.deep", kwargs={"levels": 3}).get(GET_TIMEOUT) == [[[[]]]]
        finally:
            client.close()


def test_a_replayed_dead_letter_runs_and_stores_its_new_outcome(
    stack: HubStack, client: CeleryClient
) -> None:
    # Given a bridge that does not know the diagnostics module (disabled by mistake)
    bridge = stack.start_bridge(NAGATHA_MODULES_DISABLED="diagnostics")
    first = client.send("diagnostics.add", kwargs={"x": 40, "y": 2})
    second = client.send("diagnostics.add", kwargs={"x": 1, "y": 1})
    for result in (first, second):
        with pytest.raises(NotRegistered):
            result.get(timeout=GET_TIMEOUT)
    letters = wait_until(
        lambda: len(found := dlq(stack, "list")["dead_letters"]) == 2 and found, GET_TIMEOUT
    )
    by_task = {letter["task_id"]: letter["id"] for letter in letters}
    # When the bridge is fixed and one dead letter is replayed
    bridge.stop()
    stack.start_bridge()
    replayed = dlq(stack, "replay", by_task[first.id])["replayed"]
    assert [letter["task_id"] for letter in replayed] == [first.id]
    # Then it runs and the real result is stored (read by a new client: a Celery app caches
    # the final states it has seen); the other one stays put until replayed in turn
    reader = CeleryClient(stack)
    try:
        assert reader.result(first.id).get(timeout=GET_TIMEOUT) == 42
        assert [letter["id"] for letter in dlq(stack, "list")["dead_letters"]] == [
            by_task[second.id]
        ]
        assert dlq(stack, "replay", "--all")["replayed"][0]["task_id"] == second.id
        assert reader.result(second.id).get(timeout=GET_TIMEOUT) == 2
    finally:
        reader.close()
    assert dlq(stack, "list")["dead_letters"] == []


def test_a_worker_without_the_task_answers_not_registered(
    rabbitmq: None, redis_server: None, tmp_path: Path
) -> None:
    # Given a bridge that knows diagnostics.add and a worker that does not
    with hub_stack(tmp_path) as stack:
        stack.start_worker(NAGATHA_MODULES_DISABLED="diagnostics")
        stack.start_bridge()
        client = CeleryClient(stack)
        try:
            result = client.send("diagnostics.add", args=[1, 2])
            # Then the worker's dead-lettering still answers the client
            with pytest.raises(NotRegistered, match="diagnostics.add"):
                result.get(timeout=GET_TIMEOUT)
            assert stack.final_record(result.id).status.value == "failure"
        finally:
            client.close()


def test_a_hub_task_queue_is_refused_as_a_celery_queue(
    rabbitmq: None, redis_server: None, tmp_path: Path
) -> None:
    with hub_stack(tmp_path) as stack:
        done = run_cli(["bridge", "--queue", "default"], stack.env)
    assert done.returncode == 2
    assert "queue default is a hub task queue" in done.stderr


def test_replay_of_an_unknown_id_exits_1(stack: HubStack) -> None:
    done = run_cli(["bridge", "dlq", "replay", "no-such-letter"], stack.env)
    assert done.returncode == 1
    assert "no dead letter with id no-such-letter" in done.stderr


def test_a_bridge_killed_under_load_loses_nothing(stack: HubStack, client: CeleryClient) -> None:
    # Given a bridge busy with a backlog (queued first: a bridge consuming while the client
    # sends could keep up and leave nothing queued to kill it over)
    total = 1500
    results = [client.send("diagnostics.add", args=[i, i]) for i in range(total)]
    bridge = stack.start_bridge()
    taken = wait_until(
        lambda: (n := _hub_records(stack)) >= 100 and n, GET_TIMEOUT, message="100 taken"
    )
    # When it is killed with SIGKILL mid-stream and started again
    bridge.signal(signal.SIGKILL)
    bridge.process.wait(30)
    assert taken < total, "the kill must land while messages are still queued"
    stack.start_bridge()
    # Then every client gets its one result
    assert [r.get(timeout=GET_TIMEOUT) for r in results] == [2 * i for i in range(total)]


@pytest.mark.faults
def test_bridge_and_workers_reconnect_when_rabbitmq_drops_their_connections(
    stack: HubStack, client: CeleryClient
) -> None:
    # Given a working bridge
    bridge = stack.start_bridge()
    assert client.send("diagnostics.add", args=[1, 1]).get(timeout=GET_TIMEOUT) == 2
    # When RabbitMQ closes every connection of this vhost (bridge, worker, client)
    assert _close_connections(stack.vhost.name) > 0
    bridge.wait_for_log(r"bridge connection lost", timeout=GET_TIMEOUT)
    bridge.wait_for_log(BRIDGE_READY, count=2, timeout=GET_TIMEOUT)
    # Then tasks sent afterwards are all answered
    results = [client.send("diagnostics.add", args=[i, 1]) for i in range(20)]
    assert [r.get(timeout=GET_TIMEOUT) for r in results] == [i + 1 for i in range(20)]


@pytest.mark.faults
def test_a_deleted_celery_queue_is_declared_again(stack: HubStack, client: CeleryClient) -> None:
    bridge = stack.start_bridge()
    with amqp_channel(amqp_url(stack.config.broker)) as channel:
        channel.queue_delete("celery")
    bridge.wait_for_log(r"bridge connection lost \(ConsumerCancelled", timeout=GET_TIMEOUT)
    bridge.wait_for_log(BRIDGE_READY, count=2, timeout=GET_TIMEOUT)
    assert client.send("diagnostics.add", args=[2, 2]).get(timeout=GET_TIMEOUT) == 4


@pytest.mark.faults
def test_a_deleted_dead_letter_queue_is_declared_again_and_loses_no_letter(
    stack: HubStack, client: CeleryClient
) -> None:
    bridge = stack.start_bridge()
    with amqp_channel(amqp_url(stack.config.broker)) as channel:
        channel.queue_delete(stack.config.bridge.dead_letter_queue)
    client.send("nope.missing")  # dead-lettered: its letter finds no queue at first
    bridge.wait_for_log(
        r"bridge connection lost \(Unroutable: .*nagatha\.bridge\.dead", timeout=GET_TIMEOUT
    )
    letters = wait_until(
        lambda: dlq(stack, "list")["dead_letters"], GET_TIMEOUT, message="the dead letter"
    )
    assert [letter["task_name"] for letter in letters] == ["nope.missing"]
    assert bridge.process.poll() is None


def test_sigterm_stops_the_bridge_gracefully(stack: HubStack) -> None:
    bridge = stack.start_bridge()
    node = bridge.wait_for_log(r"bridge (\S+) consuming").group(1)
    assert bridge.stop(timeout=30) == 0
    assert re.search(rf"bridge {re.escape(node)} stopped", bridge.log())


def _hub_records(stack: HubStack) -> int:
    pattern = f"{stack.config.results.prefix}task:*"
    return sum(1 for _ in stack.store.client.scan_iter(match=pattern, count=1000))


def _celery_queue(vhost: str) -> tuple[int, int]:
    """(ready, unacked) messages of the ``celery`` queue of ``vhost``."""
    listed = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged",
        "--no-table-headers", "--quiet",
    )  # fmt: skip
    for line in listed.splitlines():
        name, ready, unacked = line.split("\t")
        if name == "celery":
            return int(ready), int(unacked)
    raise AssertionError(f"no celery queue in {vhost}: {listed!r}")


def _close_connections(vhost: str) -> int:
    """Close every AMQP connection of ``vhost`` (only this test's processes use it)."""
    listed = rabbitmqctl("list_connections", "pid", "vhost", "--no-table-headers", "--quiet")
    pids = [line.split("\t")[0] for line in listed.splitlines() if line.endswith(f"\t{vhost}")]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "nagatha test: connection dropped on purpose")
    return len(pids)


def test_an_errback_rabbitmq_refuses_does_not_stall_intake(
    stack: HubStack, client: CeleryClient
) -> None:
    stack.start_bridge()
    errback = client.app.signature("nope.errback").set(exchange="no-such-exchange", routing_key="x")
    refused = client.send("nope.unknown", link_error=errback)
    with pytest.raises(NotRegistered):
        refused.get(timeout=GET_TIMEOUT)
    # The message behind it is handled: the refusal was not taken for an outage.
    assert client.send("diagnostics.add", args=[1, 2]).get(timeout=GET_TIMEOUT) == 3
    letters = dlq(stack, "list")["dead_letters"]
    assert [letter["task_id"] for letter in letters] == [refused.id]


def test_a_link_rabbitmq_refuses_fails_the_task_instead_of_holding_a_worker(
    stack: HubStack, client: CeleryClient
) -> None:
    stack.start_bridge()
    link = client.app.signature("nope.callback").set(exchange="no-such-exchange", routing_key="x")
    result = client.send("diagnostics.add", args=[1, 2], link=link)
    with pytest.raises(Exception, match="refused"):
        result.get(timeout=GET_TIMEOUT)
    assert result.state == "FAILURE"


def test_malformed_control_commands_keep_the_bridge_consuming(
    stack: HubStack, client: CeleryClient
) -> None:
    bridge = stack.start_bridge()
    node = bridge.wait_for_log(r"bridge (\S+) consuming").group(1)
    client.app.control.broadcast("revoke", arguments={"task_id": 5})
    command = {
        "method": "ping",
        "arguments": {},
        "destination": None,
        "pattern": None,
        "matcher": None,
        "ticket": "t-1",
        "reply_to": {"exchange": "celery", "routing_key": "x"},  # declared otherwise: 406
    }
    with amqp_channel(amqp_url(stack.config.broker)) as channel:
        channel.basic_publish(
            "celery.pidbox",
            "",
            json.dumps(command).encode(),
            pika.BasicProperties(content_type="application/json", content_encoding="utf-8"),
        )
    bridge.wait_for_log(r"control reply to exchange 'celery' not sent", timeout=30)
    assert {node: {"ok": "pong"}} in client.app.control.ping(timeout=5)
    assert client.send("diagnostics.add", args=[2, 2]).get(timeout=GET_TIMEOUT) == 4
    assert "failed; restarting" not in bridge.log()


def test_a_countdown_hop_rabbitmq_refuses_fails_the_task_and_dead_letters_it(
    rabbitmq: None, redis_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process, to shorten the minute a worker tries a refused publish for.
    monkeypatch.setattr(retries, "HOLD_S", 0.5)
    with hub_stack(tmp_path) as stack:
        hub = create_hub(stack.config)
        worker = dramatiq.Worker(hub.broker, worker_threads=1)
        client = CeleryClient(stack)
        # No room in the delay queue: RabbitMQ NACKs every hop.
        full = json.dumps({"max-length": 0, "overflow": "reject-publish"})
        name = stack.vhost.name
        rabbitmqctl(
            "set_policy", "-p", name, "--apply-to", "queues", "full", r"^default\.DQ$", full
        )
        try:
            worker.start()
            wait_until(lambda: has_consumer(stack, "default"), GET_TIMEOUT, message="a consumer")
            result = client.result(client.new_id())  # its result key is deleted after the test
            task_id = result.id
            eta = datetime.now(UTC) + timedelta(minutes=40)
            stack.publish_due_later(task_id, eta, record_ttl=3600)
            record = stack.final_record(task_id)
            assert record.status is TaskStatus.FAILURE
            assert (record.error or "").startswith(
                "EtaRefused: RabbitMQ refused the next hop of its countdown for 0.5s"
            )
            assert record.started_at is None  # never run early
            with pytest.raises(RuntimeError, match="refused the next hop"):
                result.get(timeout=GET_TIMEOUT)
            with amqp_channel(amqp_url(stack.config.broker)) as channel:
                wait_until(
                    lambda: channel.queue_declare("default.XQ", passive=True).method.message_count,
                    GET_TIMEOUT,
                    message="the refused message dead-lettered",
                )
        finally:
            worker.stop()
            hub.broker.close()
            hub.store.close()
            client.close()
            rabbitmqctl("clear_policy", "-p", name, "full")
