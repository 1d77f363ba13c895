"""RedisStatusStore against a real Redis: create-once, sticky finals, expiry, woken waits."""

from __future__ import annotations

import threading
import time

import pytest

from nagatha.errors import StoreUnavailable
from nagatha.stores import RedisStatusStore
from nagatha.testing import RedisPrefix, free_port, wait_until
from nagatha.types import TaskRecord, TaskStatus, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_prefix: RedisPrefix) -> RedisStatusStore:
    return RedisStatusStore(redis_prefix.url, prefix=redis_prefix.prefix, ttl=120)


def pending(task_id: str) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        task_name="m.t",
        status=TaskStatus.PENDING,
        args=[1],
        kwargs={"k": "é"},
        created_at=utcnow(),
    )


def test_create_writes_once_with_a_ttl(store: RedisStatusStore) -> None:
    assert store.create(pending("a"))
    assert not store.create(pending("a"))
    record = store.get("a")
    assert record is not None and record.kwargs == {"k": "é"} and record.args == [1]
    assert 0 < store.client.ttl(f"{store.prefix}task:a") <= 120


def test_final_status_is_sticky(store: RedisStatusStore) -> None:
    store.create(pending("b"))
    assert store.update("b", TaskStatus.SUCCESS, {"result": {"v": [1]}, "completed_at": utcnow()})
    assert not store.update("b", TaskStatus.STARTED, {"started_at": utcnow()})
    assert not store.update("b", TaskStatus.FAILURE, {"error": "late duplicate"})
    record = store.get("b")
    assert record is not None and record.status is TaskStatus.SUCCESS
    assert record.result == {"v": [1]} and record.error is None


def test_update_without_a_record_creates_it_from_defaults(store: RedisStatusStore) -> None:
    assert store.update(
        "c",
        TaskStatus.STARTED,
        {"started_at": utcnow()},
        {"task_name": "m.t", "created_at": utcnow(), "args": [], "kwargs": {}},
    )
    record = store.get("c")
    assert record is not None and record.task_name == "m.t" and record.status is TaskStatus.STARTED


def test_wait_wakes_on_the_final_write(store: RedisStatusStore) -> None:
    store.create(pending("d"))
    results: list[TaskRecord | None] = []
    waiter = threading.Thread(target=lambda: results.append(store.wait("d", 30)))
    waiter.start()
    channel = f"{store.prefix}done:d"
    wait_until(
        lambda: dict(store.client.pubsub_numsub(channel)).get(channel) == 1,
        10,
        message="waiter subscribed",
    )
    started = time.monotonic()
    store.update("d", TaskStatus.SUCCESS, {"result": 1})
    waiter.join(30)
    assert not waiter.is_alive()
    assert results[0] is not None and results[0].status is TaskStatus.SUCCESS
    assert time.monotonic() - started < 25  # woken by the publish, not by the 30 s bound


def test_wait_on_an_unknown_id_returns_none_at_once(store: RedisStatusStore) -> None:
    assert store.wait("never-issued", 30) is None


def test_an_unreachable_redis_raises_store_unavailable() -> None:
    dead = RedisStatusStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    with pytest.raises(StoreUnavailable):
        dead.get("x")
    with pytest.raises(StoreUnavailable):
        dead.ping()
