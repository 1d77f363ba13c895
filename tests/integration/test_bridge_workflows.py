"""Celery workflows through the bridge, seen by the real ``celery`` client.

Two layers:

* **Dispatch against the real services** - a vhost of this module's own on the local
  RabbitMQ and Redis DB 15. The real client applies a canvas; the test plays the worker the
  way ``bridge/middleware.py`` does (take the message; :func:`dispatch_success` and store
  the answer, or :func:`fail_chain`, store it, :func:`dispatch_failure`) with a pika
  publisher, and the client's
  ``AsyncResult``/``GroupResult`` must see what a Celery worker would have given it. Chord
  joins run on real Redis, including with Celery's own ``on_chord_part_return`` for some
  members and the bridge's for the others.
* **End to end** - ``nagatha worker`` + ``nagatha bridge`` processes and the same client:
  chains, link callbacks, groups, chords, errbacks and a failing chain step.

Every key created in Redis DB 15 is deleted afterwards.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis
from bridge_stack import BRIDGE_READY, CELERY_BACKEND, CeleryClient, HubStack, hub_stack
from celery import Celery, chain, chord, group
from celery.app.task import Context
from celery.exceptions import ChordError
from celery.result import AsyncResult, GroupResult

from bridge.celery_results import (
    RedisResultWriter,
    exception_info,
    failure_meta,
    success_meta,
)
from bridge.protocol import parse_message
from bridge.task import CeleryTask
from bridge.workflows import dispatch_failure, dispatch_success, fail_chain
from nagatha.testing import HubProcess, RabbitVhost, wait_until

pytestmark = pytest.mark.integration

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
GET_TIMEOUT = 60
_CHORD_SUFFIXES = ("", ".s", ".j", ".t", ".d", ".c")


def forget(client: redis.Redis, ids: set[str]) -> None:
    """Delete the task and chord keys of ``ids`` (the only keys these tests create)."""
    keys = [f"celery-task-meta-{i}" for i in ids]
    keys += [f"celery-taskset-meta-{i}{suffix}" for i in ids for suffix in _CHORD_SUFFIXES]
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


# --- dispatch against RabbitMQ and Redis -------------------------------------------------------


class PikaPublisher:
    """A TaskPublisher with publisher confirms, and a reader of the ``celery`` queue."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.queue_declare("celery", durable=True)

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
        props = pika.BasicProperties(headers=headers, **properties)
        self.channel.basic_publish(exchange, routing_key, body, props, mandatory=True)

    def take(self) -> tuple[CeleryTask, bytes] | None:
        """The next task message of the ``celery`` queue, parsed, or None."""
        method, props, body = self.channel.basic_get("celery", auto_ack=True)
        if method is None:
            return None
        task = parse_message(
            body,
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            headers=props.headers,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            priority=props.priority,
        )
        return task, body

    def close(self) -> None:
        self.connection.close()


class MiniWorker:
    """The worker side of the bridge around a task, as ``bridge/middleware.py`` runs it."""

    def __init__(self, publisher: PikaPublisher, client: redis.Redis) -> None:
        self.publisher = publisher
        self.redis = client
        self.results = RedisResultWriter(client, expires_s=300)
        self.ids: set[str] = set()

    def take(self) -> CeleryTask:
        """Wait (bounded) for the next task message."""
        task, body = wait_until(self.publisher.take, 20, message="a task message")
        self.ids.update(UUID.findall(body.decode()), [task.task_id])
        return task

    def assert_queue_empty(self) -> None:
        assert self.publisher.take() is None

    def succeed(self, task: CeleryTask, result: Any) -> list[Any]:
        children = dispatch_success(task, result, **self._services())
        meta = success_meta(
            task.task_id,
            result,
            children=children,
            group_id=task.group_id,
            parent_id=task.parent_id,
        )
        self.results.write(meta)
        return children

    def fail(self, task: CeleryTask, exc: Exception) -> None:
        info = exception_info(exc)
        fail_chain(task, info, **self._services())
        meta = failure_meta(task.task_id, info, group_id=task.group_id, parent_id=task.parent_id)
        self.results.write(meta)
        dispatch_failure(task, info, **self._services())

    def _services(self) -> dict[str, Any]:
        return {"publisher": self.publisher, "results": self.results, "redis_client": self.redis}


@pytest.fixture(scope="module")
def own_vhost(rabbitmq: None) -> Iterator[RabbitVhost]:
    with RabbitVhost() as created:
        yield created


@pytest.fixture
def redis_db(redis_server: None) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(CELERY_BACKEND)
    yield client
    client.close()


@pytest.fixture
def celery_app(own_vhost: RabbitVhost) -> Iterator[Celery]:
    app = Celery(
        "workflow-tests", broker=own_vhost.url, backend=CELERY_BACKEND, set_as_current=False
    )
    yield app
    app.close()


@pytest.fixture
def mini(own_vhost: RabbitVhost, redis_db: redis.Redis) -> Iterator[MiniWorker]:
    publisher = PikaPublisher(own_vhost.url)
    created = MiniWorker(publisher, redis_db)
    yield created
    publisher.channel.queue_purge("celery")
    publisher.close()
    forget(redis_db, created.ids)


def sig(app: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
    return app.signature(name, args=args, kwargs=kwargs)


def test_a_chain_of_three_answers_the_clients_get(celery_app: Celery, mini: MiniWorker) -> None:
    # Given a chain applied by the real client
    canvas = chain(
        sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.add", 10), sig(celery_app, "m.add", 100)
    )
    result = canvas.apply_async()
    # When each step is run as the bridge runs it
    first = mini.take()
    mini.succeed(first, 2)
    second = mini.take()
    assert (second.args, second.parent_id, second.root_id) == (
        [2, 10],
        first.task_id,
        first.task_id,
    )
    mini.succeed(second, 12)
    third = mini.take()
    assert third.task_id == result.id and third.chain == []
    mini.succeed(third, 112)
    # Then the client's result (the last step) and its parents are all there
    assert result.get(timeout=GET_TIMEOUT) == 112
    assert result.parent.get(timeout=GET_TIMEOUT) == 12
    assert [child.id for child in result.parent.parent.children] == [second.task_id]


def test_a_failing_middle_step_makes_get_raise_instead_of_hanging(
    celery_app: Celery, mini: MiniWorker
) -> None:
    canvas = chain(
        sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.fail"), sig(celery_app, "m.add", 100)
    )
    result = canvas.apply_async()
    mini.succeed(mini.take(), 2)
    mini.fail(mini.take(), ValueError("mid"))
    with pytest.raises(ValueError, match="mid"):
        result.get(timeout=GET_TIMEOUT)
    mini.assert_queue_empty()


def test_a_link_callback_gets_the_result(celery_app: Celery, mini: MiniWorker) -> None:
    ok = sig(celery_app, "m.add", 2, 3).apply_async(link=sig(celery_app, "m.double"))
    task = mini.take()
    assert mini.succeed(task, 5) != []
    linked = mini.take()
    assert (linked.task_name, linked.args, linked.parent_id) == ("m.double", [5], ok.id)
    mini.succeed(linked, 10)
    assert ok.get(timeout=GET_TIMEOUT) == 5
    assert [child.get(timeout=GET_TIMEOUT) for child in ok.children] == [10]


def test_two_link_callbacks_are_one_group_result_in_the_clients_children(
    celery_app: Celery, mini: MiniWorker
) -> None:
    links = [sig(celery_app, "m.double"), sig(celery_app, "m.add", 1)]
    ok = sig(celery_app, "m.add", 2, 3).apply_async(link=links)
    mini.succeed(mini.take(), 5)
    members = [mini.take(), mini.take()]
    for member, value in zip(members, (10, 6), strict=True):
        mini.succeed(member, value)
    assert ok.get(timeout=GET_TIMEOUT) == 5
    (child,) = ok.children  # as a Celery worker stores it: one GroupResult
    assert isinstance(child, GroupResult)
    assert [m.id for m in child.results] == [m.task_id for m in members]
    assert child.get(timeout=GET_TIMEOUT) == [10, 6]


def test_an_errback_gets_the_failed_task_id_first(celery_app: Celery, mini: MiniWorker) -> None:
    errback_id = str(uuid.uuid4())
    errback = sig(celery_app, "m.on_error", "extra").set(task_id=errback_id)
    bad = sig(celery_app, "m.fail").apply_async(link_error=errback)
    mini.fail(mini.take(), KeyError("nope"))
    handler = mini.take()
    assert (handler.task_id, handler.args, handler.parent_id) == (
        errback_id,
        [bad.id, "extra"],
        bad.id,
    )
    mini.succeed(handler, "handled")
    assert AsyncResult(errback_id, app=celery_app).get(timeout=GET_TIMEOUT) == "handled"
    with pytest.raises(KeyError):
        bad.get(timeout=GET_TIMEOUT)


def test_a_group_is_answered_through_its_members(celery_app: Celery, mini: MiniWorker) -> None:
    result = group(sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.add", 2, 2)).apply_async()
    members = [mini.take(), mini.take()]
    assert {m.group_id for m in members} == {result.id}
    for member in reversed(members):
        mini.succeed(member, sum(member.args))
    assert result.get(timeout=GET_TIMEOUT) == [2, 4]
    mini.ids.add(result.id)


def test_a_chord_body_gets_the_header_results_in_order_exactly_once(
    celery_app: Celery, mini: MiniWorker, redis_db: redis.Redis
) -> None:
    # Given a chord whose size the client wrote to Redis
    result = chord([sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.add", 2, 2)])(
        sig(celery_app, "m.total", "extra")
    )
    first, second = mini.take(), mini.take()
    group_id = first.group_id
    assert group_id and redis_db.get(f"celery-taskset-meta-{group_id}.s") == b"2"
    # When the members complete in reverse order, one of them twice (a redelivery)
    mini.succeed(second, 4)
    mini.succeed(second, 4)
    mini.assert_queue_empty()
    mini.succeed(first, 2)
    # Then the body is published once, with the results in header order
    body = mini.take()
    assert (body.task_id, body.args, body.group_id) == (result.id, [[2, 4], "extra"], group_id)
    mini.succeed(first, 2)
    mini.assert_queue_empty()
    assert redis_db.get(f"celery-taskset-meta-{group_id}.c") == b"done"
    assert not redis_db.exists(*(f"celery-taskset-meta-{group_id}{s}" for s in (".s", ".j", ".d")))
    mini.succeed(body, 6)
    # and the client's chord result and its GroupResult parent see everything
    assert result.get(timeout=GET_TIMEOUT) == 6
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=GET_TIMEOUT) == [2, 4]


def test_a_failed_header_member_fails_the_chord_body_with_chord_error(
    celery_app: Celery, mini: MiniWorker
) -> None:
    result = chord([sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.fail")])(
        sig(celery_app, "m.total")
    )
    first, second = mini.take(), mini.take()
    mini.fail(second, ValueError("header broke"))
    mini.succeed(first, 2)
    with pytest.raises(ValueError, match="header broke"):  # the client checks parents first
        result.get(timeout=GET_TIMEOUT)
    body = AsyncResult(result.id, app=celery_app)
    with pytest.raises(ChordError, match=rf"Dependency {second.task_id} raised ValueError"):
        body.get(timeout=GET_TIMEOUT)
    mini.assert_queue_empty()


def test_a_chord_in_a_chain_records_its_size_and_continues_the_chain(
    celery_app: Celery, mini: MiniWorker, redis_db: redis.Redis
) -> None:
    canvas = chain(
        sig(celery_app, "m.add", 1, 1),
        group(sig(celery_app, "m.add", 1), sig(celery_app, "m.add", 2)),
        sig(celery_app, "m.total"),
        sig(celery_app, "m.add", 100),
    )
    result = canvas.apply_async()
    mini.succeed(mini.take(), 2)
    header = [mini.take(), mini.take()]
    assert redis_db.get(f"celery-taskset-meta-{header[0].group_id}.s") == b"2"
    for member in header:
        mini.succeed(member, sum(member.args))
    body = mini.take()
    assert body.args == [[3, 4]]
    mini.succeed(body, 7)
    last = mini.take()
    assert (last.task_id, last.args) == (result.id, [7, 100])
    mini.succeed(last, 107)
    assert result.get(timeout=GET_TIMEOUT) == 107


def test_a_chain_inside_a_client_applied_chord_header_counts_at_its_last_step(
    celery_app: Celery, mini: MiniWorker
) -> None:
    header = [
        chain(sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.add", 10)),
        sig(celery_app, "m.add", 2, 2),
    ]
    result = chord(header)(sig(celery_app, "m.total"))
    head, other = mini.take(), mini.take()
    assert head.chord is None and head.chain  # the chain's last step carries the chord
    mini.succeed(other, 4)
    mini.succeed(head, 2)
    last = mini.take()
    assert (last.args, last.group_index) == ([2, 10], 0) and last.chord is not None
    mini.succeed(last, 12)
    body = mini.take()
    assert (body.task_id, body.args) == (result.id, [[12, 4]])


@pytest.mark.parametrize(
    "celery_first", [True, False], ids=["celery-then-bridge", "bridge-then-celery"]
)
def test_the_join_shares_its_keys_with_celerys_own(
    celery_app: Celery, mini: MiniWorker, celery_first: bool
) -> None:
    # Given a chord, one member counted by Celery's Redis backend and one by the bridge
    result = chord([sig(celery_app, "m.add", 1, 1), sig(celery_app, "m.add", 2, 2)])(
        sig(celery_app, "m.total")
    )
    first, second = mini.take(), mini.take()

    def celery_counts(task: CeleryTask, value: Any) -> None:
        request = Context(
            id=task.task_id, group=task.group_id, group_index=task.group_index, chord=task.chord
        )
        celery_app.backend.on_chord_part_return(request, "SUCCESS", value)

    if celery_first:
        celery_counts(first, 2)
        mini.succeed(second, 4)
    else:
        mini.succeed(second, 4)
        celery_counts(first, 2)
    # Then exactly one body is published, whoever completed the header
    body = mini.take()
    assert (body.task_id, body.args) == (result.id, [[2, 4]])
    mini.assert_queue_empty()


# --- end to end: nagatha worker + nagatha bridge ----------------------------------------------


@pytest.fixture(scope="module")
def stack(
    rabbitmq: None, redis_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubStack]:
    with hub_stack(tmp_path_factory.mktemp("workflows")) as created:
        yield created


@pytest.fixture(scope="module")
def hub(stack: HubStack) -> tuple[HubProcess, HubProcess]:
    return stack.start_worker(), stack.start_bridge()


@pytest.fixture
def client(
    stack: HubStack, hub: tuple[HubProcess, HubProcess], redis_db: redis.Redis
) -> Iterator[CeleryClient]:
    created = CeleryClient(stack)
    yield created
    created.close()
    forget(redis_db, set(created.ids))


def remember(client: CeleryClient, result: Any) -> Any:
    """Record every id of a canvas result (parents, group members) for the cleanup."""
    pending = [result]
    while pending:
        node = pending.pop()
        if node is None:
            continue
        client.ids.append(node.id)
        pending.append(node.parent)
        pending.extend(getattr(node, "results", None) or [])
    return result


def hub_sig(client: CeleryClient, name: str, *args: Any, **options: Any) -> Any:
    return client.app.signature(name, args=args, **options)


def test_e2e_a_chain_of_three(client: CeleryClient) -> None:
    add = "diagnostics.add"
    canvas = chain(hub_sig(client, add, 1, 1), hub_sig(client, add, 10), hub_sig(client, add, 100))
    result = remember(client, canvas.apply_async())
    assert result.get(timeout=GET_TIMEOUT) == 112
    assert result.parent.get(timeout=GET_TIMEOUT) == 12


def test_e2e_a_link_callback_runs_with_the_result(client: CeleryClient) -> None:
    callback_id = str(uuid.uuid4())
    callback = hub_sig(client, "echo_bot.echo").set(task_id=callback_id)
    result = remember(client, hub_sig(client, "diagnostics.add", 2, 3).apply_async(link=callback))
    assert result.get(timeout=GET_TIMEOUT) == 5
    assert client.result(callback_id).get(timeout=GET_TIMEOUT) == 5
    assert [child.id for child in result.children] == [callback_id]


def test_e2e_a_group(client: CeleryClient) -> None:
    canvas = group(hub_sig(client, "diagnostics.add", i, i) for i in range(4))
    result = remember(client, canvas.apply_async())
    assert result.get(timeout=GET_TIMEOUT) == [0, 2, 4, 6]


def test_e2e_a_chord_and_a_chord_inside_a_chain(client: CeleryClient) -> None:
    header = [hub_sig(client, "diagnostics.add", 1, 1), hub_sig(client, "diagnostics.add", 2, 2)]
    result = remember(client, chord(header)(hub_sig(client, "echo_bot.echo")))
    assert result.get(timeout=GET_TIMEOUT) == [2, 4]
    canvas = chain(
        hub_sig(client, "diagnostics.add", 1, 1),
        group(hub_sig(client, "diagnostics.add", 1), hub_sig(client, "diagnostics.add", 2)),
        hub_sig(client, "echo_bot.echo"),
    )
    assert remember(client, canvas.apply_async()).get(timeout=GET_TIMEOUT) == [3, 4]


def test_e2e_an_errback_gets_the_failed_task_id(client: CeleryClient) -> None:
    errback_id = str(uuid.uuid4())
    errback = hub_sig(client, "echo_bot.echo").set(task_id=errback_id)
    failing = hub_sig(client, "diagnostics.fail", "boom")
    result = remember(client, failing.apply_async(link_error=errback))
    with pytest.raises(Exception, match="boom"):
        result.get(timeout=GET_TIMEOUT)
    assert client.result(errback_id).get(timeout=GET_TIMEOUT) == result.id


def test_e2e_a_failing_middle_step_makes_the_chain_raise(client: CeleryClient) -> None:
    canvas = chain(
        hub_sig(client, "diagnostics.add", 1, 1),
        hub_sig(client, "diagnostics.fail"),
        hub_sig(client, "diagnostics.add", 100),
    )
    result = remember(client, canvas.apply_async())
    with pytest.raises(Exception, match="2"):
        result.get(timeout=GET_TIMEOUT)
    assert result.state == "FAILURE"


@pytest.mark.parametrize(
    "middle",
    ["diagnostics.fail", "no_such_module.task"],
    ids=["fails-on-the-worker", "refused-by-the-bridge"],
)
def test_e2e_the_rest_of_a_chain_fails_before_the_failed_step_is_answered(
    client: CeleryClient, redis_db: redis.Redis, middle: str
) -> None:
    # Celery stores the failed step first: a client whose get() raised on that parent could
    # still read the last step as PENDING. Result channels are published in write order.
    middle_id, last_id = str(uuid.uuid4()), str(uuid.uuid4())
    names = {f"celery-task-meta-{middle_id}".encode(): "middle"}
    names[f"celery-task-meta-{last_id}".encode()] = "last"
    watch = redis_db.pubsub()
    try:
        watch.subscribe(*names)
        read_messages(watch, "subscribe", len(names))
        canvas = chain(
            hub_sig(client, "diagnostics.add", 1, 1),
            hub_sig(client, middle).set(task_id=middle_id),
            hub_sig(client, "diagnostics.add", 100).set(task_id=last_id),
        )
        remember(client, canvas.apply_async())
        published = read_messages(watch, "message", len(names))
    finally:
        watch.close()
    order = [(names[got["channel"]], json.loads(got["data"])["status"]) for got in published]
    assert order == [("last", "FAILURE"), ("middle", "FAILURE")]


def read_messages(watch: Any, kind: str, count: int) -> list[dict[str, Any]]:
    """The next ``count`` pub/sub messages of type ``kind``, in arrival order."""
    taken: list[dict[str, Any]] = []

    def all_taken() -> bool:
        message = watch.get_message(timeout=0.5)
        if message is not None and message["type"] == kind:
            taken.append(message)
        return len(taken) == count

    wait_until(all_taken, timeout=GET_TIMEOUT, interval=0, message=f"{count} {kind} messages")
    return taken


def test_e2e_chord_keys_are_left_for_expiry_only_as_done_markers(
    client: CeleryClient, redis_db: redis.Redis
) -> None:
    header = [hub_sig(client, "diagnostics.add", 1, 1), hub_sig(client, "diagnostics.add", 2, 2)]
    result = remember(client, chord(header)(hub_sig(client, "echo_bot.echo")))
    assert result.get(timeout=GET_TIMEOUT) == [2, 4]
    group_id = result.parent.id
    # The member that published the body marks the join done just after: it may come after
    # the body's answer.
    marker = f"celery-taskset-meta-{group_id}.c"
    wait_until(lambda: redis_db.get(marker) == b"done", GET_TIMEOUT, message=f"{marker} done")
    assert json.loads(redis_db.get(f"celery-task-meta-{result.id}"))["group_id"] == group_id


def test_e2e_steps_go_to_the_queue_their_parent_came_from(
    rabbitmq: None, redis_server: None, tmp_path: Path, redis_db: redis.Redis
) -> None:
    """A bridge on another queue only (`--queue reports`, a client whose default queue it
    is): chain steps and callbacks, which name no queue, follow their parent there."""
    with hub_stack(tmp_path) as stack:
        stack.start_worker()
        stack.start(["bridge", "--queue", "reports"]).wait_for_log(BRIDGE_READY, timeout=90)
        client = CeleryClient(stack, task_default_queue="reports")
        try:
            add = "diagnostics.add"
            canvas = chain(hub_sig(client, add, 1, 2), hub_sig(client, add, 3))
            assert remember(client, canvas.apply_async()).get(timeout=GET_TIMEOUT) == 6
            callback_id = str(uuid.uuid4())
            callback = hub_sig(client, add, 10).set(task_id=callback_id)
            linked = remember(client, hub_sig(client, add, 1, 2).apply_async(link=callback))
            assert linked.get(timeout=GET_TIMEOUT) == 3
            assert client.result(callback_id).get(timeout=GET_TIMEOUT) == 13
        finally:
            client.close()
            forget(redis_db, set(client.ids))


def test_e2e_a_group_after_a_group_in_a_chain_is_a_chord_with_a_group_body(
    client: CeleryClient,
) -> None:
    """Celery turns ``group | group`` in a chain into a chord whose body is the second group;
    the bridge applies it when the first step ends, as a worker would."""
    echo = "echo_bot.echo"
    canvas = chain(
        hub_sig(client, echo, "x"),
        group(hub_sig(client, echo), hub_sig(client, echo)),
        group(hub_sig(client, echo), hub_sig(client, echo), hub_sig(client, echo)),
    )
    result = remember(client, canvas.apply_async())
    assert result.get(timeout=GET_TIMEOUT) == [["x", "x"]] * 3
    nested = chain(
        hub_sig(client, "diagnostics.add", 1, 2),
        chord([hub_sig(client, echo)], group(hub_sig(client, echo), hub_sig(client, echo))),
    )
    assert remember(client, nested.apply_async()).get(timeout=GET_TIMEOUT) == [[3], [3]]
    empty = chain(
        hub_sig(client, echo, "a"), chord([], group(hub_sig(client, echo), hub_sig(client, echo)))
    )
    assert remember(client, empty.apply_async()).get(timeout=GET_TIMEOUT) == [[], []]
