"""Results written by bridge.celery_results, read by the real Celery client.

Needs Redis on 127.0.0.1:6379 (DB 13, only keys with this run's ids are touched and deleted)
and RabbitMQ on 127.0.0.1:5672 (one uniquely named queue, deleted afterwards). A missing
service makes these tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pika
import pytest
import redis
from celery import Celery
from celery.exceptions import NotRegistered, TaskRevokedError
from celery.result import AsyncResult

from bridge.celery_results import (
    FAILURE,
    READY_STATES,
    RETRY,
    STARTED,
    SUCCESS,
    RedisResultWriter,
    RpcReplyWriter,
    error_info,
    failure_meta,
    not_registered_meta,
    retry_meta,
    revoked_meta,
    started_meta,
    success_meta,
)
from bridge.protocol import parse_message
from nagatha.errors import StoreUnavailable

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/13"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
PIKA_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
RUN = f"nagatha-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # fails the test when Redis is missing
    yield client
    for key in client.scan_iter(match=f"*{RUN}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def task_id() -> str:
    return f"{RUN}-{uuid.uuid4().hex}"


@pytest.fixture
def writer(redis_client: redis.Redis) -> RedisResultWriter:
    return RedisResultWriter(redis_client, expires_s=300)


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    app = Celery(
        "nagatha-results-test", broker="memory://", backend=REDIS_URL, set_as_current=False
    )
    yield app
    app.close()


def result_of(app: Celery, task_id: str) -> AsyncResult:
    return AsyncResult(task_id, app=app)


# --- Redis backend --------------------------------------------------------------------------


def test_a_success_is_returned_by_get_with_kombu_types(
    writer: RedisResultWriter, celery_app: Celery, task_id: str
) -> None:
    value = {"text": "hi", "when": datetime(2030, 1, 2, tzinfo=UTC), "n": Decimal("1.5")}
    assert writer.write(success_meta(task_id, value)) is True
    result = result_of(celery_app, task_id)
    assert result.get(timeout=5) == value
    assert result.state == SUCCESS and result.date_done is not None


def test_a_failure_raises_the_builtin_exception_with_its_message_and_traceback(
    writer: RedisResultWriter, celery_app: Celery, task_id: str
) -> None:
    trace = "Traceback (most recent call last):\n  ...\nValueError: bad thing\n"
    writer.write(failure_meta(task_id, ValueError("bad thing"), traceback=trace))
    result = result_of(celery_app, task_id)
    with pytest.raises(ValueError) as caught:
        result.get(timeout=5)
    assert caught.value.args == ("bad thing",)
    assert result.traceback == trace and result.state == FAILURE


def test_a_failure_of_a_hub_only_exception_raises_a_same_named_class(
    writer: RedisResultWriter, celery_app: Celery, task_id: str
) -> None:
    info = error_info("BotError", ["bad input", 3], "nagatha_hub_only.errors")
    writer.write(failure_meta(task_id, info))
    with pytest.raises(Exception) as caught:
        result_of(celery_app, task_id).get(timeout=5)
    assert type(caught.value).__name__ == "BotError"
    assert caught.value.args == ("bad input", 3)


@pytest.mark.parametrize("reason", ["revoked", "expired", "terminated"])
def test_a_revoked_task_raises_task_revoked_error(
    writer: RedisResultWriter, celery_app: Celery, task_id: str, reason: str
) -> None:
    writer.write(revoked_meta(task_id, reason))
    with pytest.raises(TaskRevokedError) as caught:
        result_of(celery_app, task_id).get(timeout=5)
    assert caught.value.args == (reason,)


def test_an_unknown_task_raises_not_registered_with_the_name(
    writer: RedisResultWriter, celery_app: Celery, task_id: str
) -> None:
    writer.write(not_registered_meta(task_id, "nope.missing"))
    with pytest.raises(NotRegistered) as caught:
        result_of(celery_app, task_id).get(timeout=5)
    assert caught.value.args == ("nope.missing",)


def test_started_and_retry_are_visible_states_until_the_final_one(
    writer: RedisResultWriter, celery_app: Celery, task_id: str
) -> None:
    result = result_of(celery_app, task_id)
    writer.write(started_meta(task_id, pid=123, hostname="bridge@host"))
    assert result.state == STARTED
    assert result.info == {"pid": 123, "hostname": "bridge@host"}
    writer.write(retry_meta(task_id, RuntimeError("try again"), traceback="tb"))
    assert result.state == RETRY and isinstance(result.info, RuntimeError)
    writer.write(success_meta(task_id, 42))
    assert result.get(timeout=5) == 42


def test_a_final_state_is_never_overwritten(
    writer: RedisResultWriter, celery_app: Celery, task_id: str
) -> None:
    assert writer.write(success_meta(task_id, "first")) is True
    assert writer.write(failure_meta(task_id, ValueError("late"))) is False
    assert writer.write(started_meta(task_id, pid=1, hostname="h")) is False
    assert writer.write(revoked_meta(task_id)) is False
    assert result_of(celery_app, task_id).get(timeout=5) == "first"


def test_a_blocked_get_is_woken_by_the_publish(
    writer: RedisResultWriter,
    celery_app: Celery,
    redis_client: redis.Redis,
    task_id: str,
) -> None:
    # Given a client blocked in get(): subscribed, and past its one initial GET
    initial_get_done = threading.Event()
    outcome: dict[str, Any] = {}

    def wait() -> None:
        # NOTE: app.backend is per thread, so the probe is installed from the waiting thread.
        consumer = celery_app.backend.result_consumer
        original = consumer.on_wait_for_pending

        def on_wait_for_pending(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            finally:
                initial_get_done.set()

        consumer.on_wait_for_pending = on_wait_for_pending
        try:
            outcome["value"] = result_of(celery_app, task_id).get(timeout=10)
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    key = writer.key_for(task_id)
    assert initial_get_done.wait(timeout=10)
    wait_until(lambda: dict(redis_client.pubsub_numsub(key)).get(key.encode(), 0) >= 1)
    assert waiter.is_alive() and redis_client.get(key) is None
    # When the result is written
    writer.write(success_meta(task_id, {"woken": True}))
    # Then the waiting get() returns it
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert outcome == {"value": {"woken": True}}


def test_metas_are_stored_in_celery_field_order_with_expiry(
    writer: RedisResultWriter, redis_client: redis.Redis, task_id: str
) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    writer.write(success_meta(task_id, 6, group_id="g", parent_id="p", now=now))
    stored = redis_client.get(writer.key_for(task_id))
    assert stored is not None
    assert list(json.loads(stored)) == [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "group_id",
        "parent_id",
        "task_id",
    ]
    assert json.loads(stored)["date_done"] == "2030-01-02T03:04:05+00:00"
    assert 0 < redis_client.ttl(writer.key_for(task_id)) <= 300


def test_no_expiry_and_a_global_key_prefix_work_with_the_client(
    redis_client: redis.Redis, task_id: str
) -> None:
    writer = RedisResultWriter(redis_client, expires_s=None, key_prefix=RUN)
    assert writer.key_for(task_id).startswith(f"{RUN}_celery-task-meta-")
    app = Celery("nagatha-prefix-test", broker="memory://", backend=REDIS_URL, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": RUN}
    try:
        writer.write(success_meta(task_id, "prefixed"))
        assert redis_client.ttl(writer.key_for(task_id)) == -1
        assert result_of(app, task_id).get(timeout=5) == "prefixed"
    finally:
        app.close()


def test_invalid_metas_are_refused_before_anything_is_written(
    writer: RedisResultWriter, redis_client: redis.Redis, task_id: str
) -> None:
    with pytest.raises(ValueError, match="task_id"):
        writer.write({"status": SUCCESS, "result": 1})
    with pytest.raises(TypeError):
        writer.write(success_meta(task_id, {1, 2}))
    assert redis_client.get(writer.key_for(task_id)) is None


def test_an_unreachable_redis_is_store_unavailable(task_id: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry=None)
    with pytest.raises(StoreUnavailable):
        RedisResultWriter(client).write(success_meta(task_id, 1))


def test_exception_arguments_that_json_cannot_hold_are_sent_as_repr() -> None:
    meta = failure_meta("x", ValueError({1, 2}, "ok"))
    assert meta["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["{1, 2}", "ok"],
        "exc_module": "builtins",
    }
    assert meta["status"] in READY_STATES and meta["date_done"] is not None


# --- rpc:// backend -------------------------------------------------------------------------


@pytest.fixture
def amqp_channel() -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
    yield connection.channel()
    connection.close()


@pytest.fixture
def rpc_app() -> Iterator[Celery]:
    app = Celery("nagatha-rpc-test", broker=AMQP_URL, backend="rpc://", set_as_current=False)
    app.conf.result_expires = 60  # the client's reply queue gets x-expires 60 s
    yield app
    app.close()


@pytest.fixture
def task_queue(amqp_channel: Any) -> Iterator[str]:
    name = f"{RUN}-{uuid.uuid4().hex[:8]}"
    yield name
    amqp_channel.queue_delete(name)
    amqp_channel.exchange_delete(name)


def take_task(channel: Any, queue: str) -> Any:
    """Read the Celery message from ``queue`` as the bridge would, and parse it."""
    method, properties, body = wait_until(
        lambda: (lambda got: got if got[0] is not None else None)(channel.basic_get(queue, True))
    )
    return parse_message(
        body,
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=properties.headers,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        priority=properties.priority,
    )


def test_an_rpc_client_gets_the_reply_published_on_reply_to(
    rpc_app: Celery, amqp_channel: Any, task_queue: str
) -> None:
    # Given a task sent by an rpc:// client to a queue nobody consumes
    result = rpc_app.send_task("echo_bot.echo", kwargs={"text": "hi"}, queue=task_queue)
    task = take_task(amqp_channel, task_queue)
    assert task.task_id == result.id and task.reply_to
    # When the bridge replies with STARTED then SUCCESS
    replies = RpcReplyWriter(amqp_channel)
    replies.write(started_meta(task.task_id, pid=1, hostname="bridge"), reply_to=task.reply_to)
    replies.write(
        success_meta(task.task_id, {"echo": task.kwargs["text"]}),
        reply_to=task.reply_to,
        correlation_id=task.correlation_id,
    )
    # Then get() returns the value
    assert result.get(timeout=10) == {"echo": "hi"}


def test_an_rpc_client_gets_a_failure_as_the_exception(
    rpc_app: Celery, amqp_channel: Any, task_queue: str
) -> None:
    result = rpc_app.send_task("nope.missing", queue=task_queue)
    task = take_task(amqp_channel, task_queue)
    RpcReplyWriter(amqp_channel).write(
        not_registered_meta(task.task_id, task.task_name), reply_to=task.reply_to
    )
    with pytest.raises(NotRegistered) as caught:
        result.get(timeout=10)
    assert caught.value.args == ("nope.missing",)
