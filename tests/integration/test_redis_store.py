"""RedisStatusStore against a real Redis: create-once, sticky finals, expiry, woken waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.stores import RedisStatusStore
from nagatha.stores import redis as redis_store
from nagatha.stores.batching import Write
from nagatha.testing import RedisPrefix, free_port, wait_until
from nagatha.types import TaskRecord, TaskStatus, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_prefix: RedisPrefix) -> Iterator[RedisStatusStore]:
    store = RedisStatusStore(redis_prefix.url, prefix=redis_prefix.prefix, ttl=120)
    yield store
    store.close()


def listener_connections(store: RedisStatusStore) -> list[dict[str, Any]]:
    """The pub/sub connections of ``store``'s wait listener in this process."""
    clients = store.client.client_list(_type="pubsub")
    return [c for c in clients if c["name"] == store.waiter_client_name]


def listening(store: RedisStatusStore, task_id: str, waiters: int = 1) -> bool:
    """True once ``waiters`` waits on ``task_id`` are registered with a subscribed listener."""
    listener = store._listener
    return listener is not None and listener.ready and listener.waiting(task_id) == waiters


def wait_in_thread(
    store: RedisStatusStore, task_id: str, timeout: float
) -> tuple[threading.Thread, list[TaskRecord | None]]:
    results: list[TaskRecord | None] = []
    thread = threading.Thread(target=lambda: results.append(store.wait(task_id, timeout)))
    thread.start()
    return thread, results


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


def test_renew_starts_the_expiry_again_and_makes_no_record(store: RedisStatusStore) -> None:
    store.create(pending("r"))
    store.client.expire(f"{store.prefix}task:r", 5)
    store.renew("r")
    assert 5 < store.client.ttl(f"{store.prefix}task:r") <= 120
    record = store.get("r")
    assert record is not None and record.status is TaskStatus.PENDING and record.args == [1]
    store.renew("none")
    assert store.get("none") is None


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
    waiter, results = wait_in_thread(store, "d", 30)
    wait_until(lambda: listening(store, "d"), 10, message="waiter registered")
    started = time.monotonic()
    store.update("d", TaskStatus.SUCCESS, {"result": 1})
    waiter.join(30)
    assert not waiter.is_alive()
    assert results[0] is not None and results[0].status is TaskStatus.SUCCESS
    assert time.monotonic() - started < 4  # woken by the publish, not by a 5 s re-read


def test_wait_on_a_final_record_returns_without_subscribing(store: RedisStatusStore) -> None:
    store.create(pending("f"))
    store.update("f", TaskStatus.FAILURE, {"error": "E: x"})
    record = store.wait("f", 30)
    assert record is not None and record.status is TaskStatus.FAILURE
    assert store._listener is None
    assert listener_connections(store) == []


def test_concurrent_waiters_share_one_pubsub_connection(store: RedisStatusStore) -> None:
    ids = [f"many-{n}" for n in range(20)]
    for task_id in ids:
        store.create(pending(task_id))
    waiters = [wait_in_thread(store, task_id, 30) for task_id in ids]
    wait_until(
        lambda: all(listening(store, task_id) for task_id in ids), 10, message="all registered"
    )
    assert len(listener_connections(store)) == 1
    for task_id in ids:
        store.update(task_id, TaskStatus.SUCCESS, {"result": task_id})
    for thread, results in waiters:
        thread.join(30)
        assert not thread.is_alive()
        assert results[0] is not None and results[0].status is TaskStatus.SUCCESS
    assert [results[0].result for _, results in waiters if results[0]] == ids
    assert len(listener_connections(store)) == 1


def test_a_waiter_survives_its_listener_connection_being_killed(store: RedisStatusStore) -> None:
    store.create(pending("k"))
    waiter, results = wait_in_thread(store, "k", 30)
    wait_until(lambda: listening(store, "k"), 10, message="waiter registered")
    (connection,) = listener_connections(store)
    store.client.client_kill_filter(_id=connection["id"])
    started = time.monotonic()
    store.update("k", TaskStatus.SUCCESS, {"result": "after the kill"})
    waiter.join(30)
    assert not waiter.is_alive()
    assert results[0] is not None and results[0].result == "after the kill"
    assert time.monotonic() - started < 25  # before the 30 s timeout
    # The listener comes back on a new connection and wakes later waiters again.
    new = wait_until(lambda: listener_connections(store), 10, message="listener reconnected")
    assert new[0]["id"] != connection["id"]
    store.create(pending("k2"))
    waiter, results = wait_in_thread(store, "k2", 30)
    wait_until(lambda: listening(store, "k2"), 10, message="second waiter registered")
    store.update("k2", TaskStatus.SUCCESS, {"result": 2})
    waiter.join(30)
    assert results[0] is not None and results[0].result == 2


def test_a_listener_inherited_from_another_process_is_replaced(store: RedisStatusStore) -> None:
    store.create(pending("p"))
    waiter, _ = wait_in_thread(store, "p", 30)
    wait_until(lambda: listening(store, "p"), 10, message="waiter registered")
    inherited = store._listener
    assert inherited is not None
    inherited.pid = -1  # as seen from a forked child
    assert store._waiter() is not inherited
    store.update("p", TaskStatus.SUCCESS, {"result": None})
    waiter.join(30)
    inherited.close()


def test_update_keeps_empty_containers_apart(store: RedisStatusStore) -> None:
    assert store.update(
        "e",
        TaskStatus.SUCCESS,
        {"result": {"list": [], "dict": {}, "text": 'é\u0000"', "n": 1.5}},
        {"task_name": "m.t", "created_at": utcnow(), "args": [], "kwargs": {}},
    )
    record = store.get("e")
    assert record is not None and record.args == [] and record.kwargs == {}
    assert record.result == {"list": [], "dict": {}, "text": 'é\u0000"', "n": 1.5}
    assert record.task_id == "e" and record.status is TaskStatus.SUCCESS


def test_a_later_write_recreates_a_missing_record_from_defaults(store: RedisStatusStore) -> None:
    defaults = {"task_name": "m.t", "created_at": utcnow(), "args": [2], "kwargs": {}}
    assert store.update("g", TaskStatus.RETRYING, {"error": "E: x"}, defaults)
    record = store.get("g")
    assert record is not None and record.task_name == "m.t" and record.args == [2]
    assert record.status is TaskStatus.RETRYING and record.error == "E: x"


def test_wait_on_an_unknown_id_returns_none_at_once(store: RedisStatusStore) -> None:
    assert store.wait("never-issued", 30) is None


def test_an_unreachable_redis_raises_store_unavailable() -> None:
    dead = RedisStatusStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    with pytest.raises(StoreUnavailable):
        dead.get("x")
    with pytest.raises(StoreUnavailable):
        dead.ping()


def test_update_soon_writes_started_without_blocking_and_creates_the_record(
    store: RedisStatusStore,
) -> None:
    defaults = {"task_name": "m.t", "created_at": utcnow(), "args": [1], "kwargs": {}}
    store.update_soon("s", TaskStatus.STARTED, {"started_at": utcnow()}, defaults)
    record = wait_until(lambda: store.get("s"), timeout=10, message="the started record")
    assert record.status is TaskStatus.STARTED and record.started_at is not None
    assert record.task_name == "m.t" and record.args == [1]


def test_updates_from_many_threads_all_land(store: RedisStatusStore) -> None:
    defaults = {"task_name": "m.t", "created_at": utcnow(), "args": [], "kwargs": {}}
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for n in range(40):
                task_id = f"t{thread}-{n}"
                store.update_soon(task_id, TaskStatus.STARTED, {"started_at": utcnow()}, defaults)
                assert store.update(task_id, TaskStatus.SUCCESS, {"result": [thread, n]}, defaults)
        except BaseException as exc:  # reported below, with the thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for t in range(12):
        for n in range(40):
            record = store.get(f"t{t}-{n}")
            assert record is not None and record.status is TaskStatus.SUCCESS
            assert record.result == [t, n] and record.started_at is not None


def test_a_write_that_absorbed_started_creates_a_missing_record_in_one_pipeline(
    store: RedisStatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines: list[int] = []
    run_pipeline = store._pipeline

    def counted(writes: list[Write], **kwargs: Any) -> None:
        pipelines.append(len(writes))
        run_pipeline(writes, **kwargs)

    monkeypatch.setattr(store, "_pipeline", counted)
    defaults = {"task_name": "m.t", "created_at": utcnow(), "args": [3], "kwargs": {}}
    write = Write("m1", TaskStatus.SUCCESS, {"result": 1, "started_at": utcnow()}, defaults)
    write.absorbed = True
    store._send([write])
    assert write.error is None and write.answer == 1 and pipelines == [1]
    record = store.get("m1")
    assert record is not None and record.status is TaskStatus.SUCCESS and record.args == [3]


def test_a_write_the_store_cannot_take_fails_alone_and_its_batch_goes_out(
    store: RedisStatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = {"task_name": "m.t", "created_at": utcnow(), "args": [], "kwargs": {}}
    deep: Any = ()
    for _ in range(300):  # past the encoder's depth limit
        deep = (deep,)
    bad = Write("bad", TaskStatus.SUCCESS, {"result": deep}, defaults)
    innocent = Write("fine", TaskStatus.SUCCESS, {"result": 1}, defaults)
    monkeypatch.setattr(redis_store, "MAX_ARGUMENT_CHARS", 1000)
    large = Write("large", TaskStatus.SUCCESS, {"result": "x" * 1000}, defaults)
    store._send([bad, innocent, large])
    assert isinstance(bad.error, StoreRejected) and "cannot be stored as JSON" in str(bad.error)
    assert isinstance(large.error, StoreRejected) and "too large for Redis" in str(large.error)
    assert innocent.error is None and innocent.answer == 1
    assert store.get("bad") is None and store.get("large") is None
    record = store.get("fine")
    assert record is not None and record.result == 1
    with pytest.raises(StoreRejected):
        store.update("bad", TaskStatus.SUCCESS, {"result": deep}, defaults)


def test_an_error_answer_is_a_refusal_unless_it_passes() -> None:
    refused = redis_store._error_of(ResponseError("ERR Protocol error: invalid bulk length"))
    assert isinstance(refused, StoreRejected)
    for passing in (
        ResponseError("BUSY Redis is busy running a script"),
        ReadOnlyError("You can't write against a read only replica."),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        RedisConnectionError("Connection reset by peer"),
    ):
        assert isinstance(redis_store._error_of(passing), StoreUnavailable)


def test_redeliveries_are_counted_per_task_with_the_records_expiry(
    store: RedisStatusStore,
) -> None:
    assert store.redeliveries("r1") == 0
    assert [store.count_redelivery("r1") for _ in range(3)] == [1, 2, 3]
    assert store.redeliveries("r1") == 3 and store.redeliveries("r2") == 0
    assert 0 < store.client.ttl(f"{store.prefix}redelivered:r1") <= store.ttl


def test_updates_survive_a_flushed_script_cache(store: RedisStatusStore) -> None:
    defaults = {"task_name": "m.t", "created_at": utcnow(), "args": [], "kwargs": {}}
    assert store.update("f1", TaskStatus.RETRYING, {"error": "E: x"}, defaults)
    store.client.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    assert store.update("f1", TaskStatus.SUCCESS, {"result": 1})
    record = store.get("f1")
    assert record is not None and record.status is TaskStatus.SUCCESS and record.result == 1


def test_writes_to_an_unreachable_redis_raise_or_are_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = RedisStatusStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    try:
        with pytest.raises(StoreUnavailable, match="status store \\(Redis\\) unavailable"):
            dead.update("x", TaskStatus.SUCCESS, {"result": 1})
        with caplog.at_level("WARNING", logger="nagatha.stores"):
            dead.update_soon("y", TaskStatus.STARTED, {"started_at": utcnow()})  # never raises
            wait_until(lambda: "task y: started not recorded yet" in caplog.text, timeout=10)
    finally:
        dead.close()


def test_create_many_writes_new_records_and_keeps_existing_ones(
    store: RedisStatusStore,
) -> None:
    store.create(pending("c1"))
    store.update("c1", TaskStatus.SUCCESS, {"result": 1})
    store.client.script_flush()  # the reload path too: EVALSHA answers NOSCRIPT first

    store.create_many([pending(task_id) for task_id in ("c1", "c2", "c3")])

    kept = store.get("c1")
    assert kept is not None and kept.status is TaskStatus.SUCCESS and kept.result == 1
    for task_id in ("c2", "c3"):
        record = store.get(task_id)
        assert record is not None and record.status is TaskStatus.PENDING
        assert record.kwargs == {"k": "é"}
        assert 0 < store.client.ttl(f"{store.prefix}task:{task_id}") <= 120


def test_create_many_on_an_unreachable_redis_raises_store_unavailable() -> None:
    dead = RedisStatusStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    try:
        with pytest.raises(StoreUnavailable, match="status store \\(Redis\\) unavailable"):
            dead.create_many([pending("x")])
    finally:
        dead.close()


def test_stop_waits_answers_every_wait_now_and_later_ones_at_once(store: RedisStatusStore) -> None:
    store.create(pending("s"))
    waiter, results = wait_in_thread(store, "s", 60)
    wait_until(lambda: listening(store, "s"), 10, message="waiter registered")
    store.stop_waits()  # a stopping API server
    waiter.join(10)
    assert not waiter.is_alive()
    assert results[0] is not None and results[0].status is TaskStatus.PENDING
    record = store.wait("s", 60)  # would block a minute before
    assert record is not None and record.status is TaskStatus.PENDING
