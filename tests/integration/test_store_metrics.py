"""Task metrics counted by the status stores: Redis (in its Lua scripts) and memory, alike.

Each test runs the same writes on a :class:`RedisStatusStore` against the real Redis (own
prefix) and on a :class:`MemoryStatusStore`, and expects the same counts from both.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from nagatha.errors import StoreUnavailable
from nagatha.metrics import MAX_FIELDS, OTHER, RUNTIME_BUCKETS, UNREGISTERED, bucket_of
from nagatha.stores import MemoryStatusStore, RedisStatusStore
from nagatha.stores.base import RECENT_FAILURES, StatusStore
from nagatha.stores.batching import Write
from nagatha.testing import RedisPrefix
from nagatha.types import CANCELLED_ERROR, TaskRecord, TaskStatus, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[StatusStore]:
    if request.param == "memory":
        yield MemoryStatusStore(ttl=120)
        return
    prefix: RedisPrefix = request.getfixturevalue("redis_prefix")
    created = RedisStatusStore(prefix.url, prefix=prefix.prefix, ttl=120)
    yield created
    created.close()


def pending(task_id: str, task_name: str = "m.t") -> TaskRecord:
    return TaskRecord(
        task_id=task_id, task_name=task_name, status=TaskStatus.PENDING, created_at=utcnow()
    )


def run(store: StatusStore, task_id: str, started: datetime, completed: datetime) -> None:
    """Write a run as a worker does: every write of the attempt carries its start."""
    store.update(task_id, TaskStatus.STARTED, {"started_at": started})
    outcome = {"result": 1, "started_at": started, "completed_at": completed}
    store.update(task_id, TaskStatus.SUCCESS, outcome)


def test_each_change_of_status_counts_its_event_once(store: StatusStore) -> None:
    assert store.create(pending("a"))
    assert not store.create(pending("a"))
    now, again = utcnow(), utcnow() + timedelta(seconds=1)
    store.update("a", TaskStatus.STARTED, {"started_at": now})
    store.update("a", TaskStatus.STARTED, {"started_at": now})  # the same write sent again
    store.update("a", TaskStatus.RETRYING, {"retries": 1})
    store.update("a", TaskStatus.STARTED, {"started_at": again})
    store.update("a", TaskStatus.FAILURE, {"error": "E: x", "completed_at": now})
    store.update("a", TaskStatus.SUCCESS, {"completed_at": now})  # refused: already final
    assert store.metrics().events == {
        ("m.t", "submitted"): 1,
        ("m.t", "started"): 2,
        ("m.t", "retried"): 1,
        ("m.t", "failed"): 1,
    }


def test_a_start_counts_once_though_every_write_of_the_run_carries_it(
    store: StatusStore,
) -> None:
    now, later = utcnow(), utcnow() + timedelta(seconds=0.2)
    store.create(pending("r"))
    run(store, "r", now, later)
    metrics = store.metrics()
    assert metrics.events[("m.t", "started")] == metrics.events[("m.t", "succeeded")] == 1
    assert metrics.runtimes["m.t"].count == 1


def test_two_runs_at_once_count_two_starts(store: StatusStore) -> None:
    # A worker that lost its connection mid-run finishes while RabbitMQ's redelivery runs
    # on another: two starts, one outcome (the first; the second is refused).
    first, second = utcnow(), utcnow() + timedelta(seconds=1)
    store.create(pending("twice"))
    store.update("twice", TaskStatus.STARTED, {"started_at": first})
    store.update("twice", TaskStatus.STARTED, {"started_at": second})
    outcome = {"result": 1, "started_at": first, "completed_at": second}
    store.update("twice", TaskStatus.SUCCESS, outcome)  # the first run's, carrying its start
    events = store.metrics().events
    assert events[("m.t", "started")] == 2
    assert events[("m.t", "succeeded")] == 1


def test_an_outcome_that_absorbed_its_start_counts_the_start(redis_prefix: RedisPrefix) -> None:
    # Only the Redis store defers started writes: one still queued when the outcome comes is
    # absorbed into it and never sent.
    store = RedisStatusStore(redis_prefix.url, prefix=redis_prefix.prefix, ttl=120)
    try:
        now = utcnow()
        for task_id, status, outcome in (
            ("ok", TaskStatus.SUCCESS, {"result": 1}),
            ("missed", TaskStatus.FAILURE, {"error": "ValueError: x"}),
        ):
            store.create(pending(task_id))
            if task_id == "missed":  # the cancel came as the run began
                store.cancel(task_id, {"error": CANCELLED_ERROR, "completed_at": now})
            fields = {**outcome, "started_at": now, "completed_at": now}
            write = Write(task_id, status, fields, {"task_name": "m.t"})
            write.absorbed = True
            store._send([write])
            assert write.error is None and write.answer == 1
        metrics = store.metrics()
        assert metrics.events[("m.t", "started")] == 2
        assert metrics.events[("m.t", "succeeded")] == metrics.events[("m.t", "failed")] == 1
        assert metrics.runtimes["m.t"].count == 2
    finally:
        store.close()


def test_a_start_sent_again_inside_its_outcome_counts_once(redis_prefix: RedisPrefix) -> None:
    # Redis applied a started write but the pipeline's answer was lost (a dropped
    # connection): the batcher sends the start again, absorbed into the outcome.
    store = RedisStatusStore(redis_prefix.url, prefix=redis_prefix.prefix, ttl=120)
    try:
        now = utcnow()
        store.create(pending("blip"))
        store._send([Write("blip", TaskStatus.STARTED, {"started_at": now})])
        outcome = {"result": 1, "started_at": now, "completed_at": now}
        write = Write("blip", TaskStatus.SUCCESS, outcome, {"task_name": "m.t"})
        write.absorbed = True
        store._send([write])
        events = store.metrics().events
        assert events[("m.t", "started")] == events[("m.t", "succeeded")] == 1
    finally:
        store.close()


def test_a_cancel_counts_cancelled_and_a_run_it_missed_counts_too(store: StatusStore) -> None:
    store.create(pending("c"))
    fields = {"error": CANCELLED_ERROR, "completed_at": utcnow()}
    store.cancel("c", fields)
    store.cancel("c", fields)
    for task_id, status in (("late", TaskStatus.SUCCESS), ("failing", TaskStatus.FAILURE)):
        store.create(pending(task_id))
        store.cancel(task_id, fields)
        now = utcnow()
        store.update(task_id, TaskStatus.STARTED, {"started_at": now})
        store.update(task_id, status, {"error": None, "started_at": now, "completed_at": now})
    metrics = store.metrics()
    assert metrics.events[("m.t", "cancelled")] == 3
    assert metrics.events[("m.t", "started")] == 2
    assert metrics.events[("m.t", "succeeded")] == metrics.events[("m.t", "failed")] == 1
    assert metrics.runtimes["m.t"].count == 2


def test_names_no_module_registered_count_as_unregistered(store: StatusStore) -> None:
    store.count_names({"m.t"})
    store.create(pending("known"))
    store.update("known", TaskStatus.STARTED, {"started_at": utcnow()})  # no defaults: its name
    store.create(pending("odd", "no_such.task"))
    defaults = {"task_name": "x" * 200, "created_at": utcnow()}  # a Celery client's name
    store.update("stray", TaskStatus.FAILURE, {"error": "NotRegistered: x"}, defaults)
    # A cancel counts under the record's stored name, in both stores.
    store.cancel("odd", {"error": CANCELLED_ERROR, "completed_at": utcnow()})
    assert store.metrics().events == {
        ("m.t", "submitted"): 1,
        ("m.t", "started"): 1,
        ("no_such.task", "cancelled"): 1,
        (UNREGISTERED, "submitted"): 1,
        (UNREGISTERED, "failed"): 1,
    }


@pytest.mark.parametrize(
    ("started", "completed"),
    [
        ("2026-11-29T10:00:00.100000", "2026-11-29T10:00:00.400000"),
        ("2027-12-31T23:59:59.750000", "2028-01-01T00:00:00.500000"),
        ("2028-02-28T12:00:00", "2028-03-01T12:00:00"),  # a leap day between
        ("2026-11-29T10:00:01", "2026-11-29T10:00:01"),
    ],
)
def test_run_times_are_measured_across_days_and_fall_in_their_bucket(
    store: StatusStore, started: str, completed: str
) -> None:
    begin, end = (datetime.fromisoformat(text).replace(tzinfo=UTC) for text in (started, completed))
    store.create(pending("r"))
    run(store, "r", begin, end)
    runtime = store.metrics().runtimes["m.t"]
    seconds = (end - begin).total_seconds()
    assert runtime.total == pytest.approx(seconds, abs=1e-6)
    assert runtime.count == 1 and runtime.buckets[bucket_of(seconds)] == 1


def test_an_end_without_a_start_counts_no_run_time(store: StatusStore) -> None:
    store.create(pending("x"))
    store.update("x", TaskStatus.FAILURE, {"error": "E: x", "completed_at": utcnow()})
    store.create(pending("y"))
    later = utcnow()
    run(store, "y", later, later - timedelta(seconds=1))  # clocks of two hosts disagreeing
    metrics = store.metrics()
    assert metrics.events[("m.t", "failed")] == 1
    assert metrics.events[("m.t", "succeeded")] == 1
    assert "m.t" not in metrics.runtimes


def test_a_record_made_from_defaults_counts_under_its_task_name(store: StatusStore) -> None:
    defaults = {"task_name": "bridged.task", "created_at": utcnow()}
    now = utcnow()
    store.update("d", TaskStatus.STARTED, {"started_at": now}, defaults)
    store.update(
        "d", TaskStatus.SUCCESS, {"started_at": now, "completed_at": now + timedelta(seconds=2)}
    )
    metrics = store.metrics()
    assert metrics.events == {("bridged.task", "started"): 1, ("bridged.task", "succeeded"): 1}
    assert metrics.runtimes["bridged.task"].buckets[RUNTIME_BUCKETS.index(2.5)] == 1


def test_past_the_field_limit_only_known_names_keep_their_own_counts(
    store: StatusStore,
) -> None:
    store.create(pending("k", "known.task"))
    filler = {f"filler\t{index}": 1 for index in range(MAX_FIELDS)}
    if isinstance(store, RedisStatusStore):
        store.client.hset(f"{store.prefix}metrics", mapping=filler)
    else:
        store._metrics.fields.update(filler)
    store.create(pending("k2", "known.task"))
    store.create(pending("n", "new.task"))
    run(store, "n", utcnow(), utcnow())
    metrics = store.metrics()
    assert metrics.events[("known.task", "submitted")] == 2
    assert metrics.events[(OTHER, "submitted")] == 1
    assert metrics.events[(OTHER, "succeeded")] == 1
    assert ("new.task", "submitted") not in metrics.events
    assert list(metrics.runtimes) == [OTHER]


def test_a_metrics_key_redis_refuses_never_fails_a_status_write(
    redis_prefix: RedisPrefix,
) -> None:
    store = RedisStatusStore(redis_prefix.url, prefix=redis_prefix.prefix, ttl=120)
    try:
        store.client.set(f"{store.prefix}metrics", "not a hash")  # WRONGTYPE for HINCRBY
        assert store.create(pending("w"))
        now = utcnow()
        assert store.update("w", TaskStatus.STARTED, {"started_at": now})
        assert store.update("w", TaskStatus.SUCCESS, {"started_at": now, "completed_at": now})
        record = store.get("w")
        assert record is not None and record.status is TaskStatus.SUCCESS
        with pytest.raises(StoreUnavailable):
            store.metrics()
    finally:
        store.close()


# -- recent failures ---------------------------------------------------------------------


def test_recent_failures_are_the_newest_failed_records_newest_first(store: StatusStore) -> None:
    now = utcnow()
    for task_id in ("f1", "ok", "f2", "cancelled", "retried", "f3"):
        store.create(pending(task_id))
    store.update("f1", TaskStatus.FAILURE, {"error": "E: 1", "completed_at": now})
    run(store, "ok", now, now)
    store.update("f2", TaskStatus.FAILURE, {"error": "E: 2", "completed_at": now})
    store.update("f2", TaskStatus.FAILURE, {"error": "E: again"})  # refused: final already
    store.cancel("cancelled", {"error": CANCELLED_ERROR, "completed_at": now})
    store.update("retried", TaskStatus.RETRYING, {"error": "E: once", "retries": 1})
    store.update("f3", TaskStatus.FAILURE, {"error": "E: 3", "completed_at": now})
    assert [r.task_id for r in store.recent_failures(10)] == ["f3", "f2", "f1"]
    assert [r.error for r in store.recent_failures(2)] == ["E: 3", "E: 2"]
    store.delete("f2")  # expired meanwhile
    assert [r.task_id for r in store.recent_failures(10)] == ["f3", "f1"]


def test_only_the_newest_failures_are_kept(store: StatusStore) -> None:
    for index in range(RECENT_FAILURES + 3):
        defaults = {"task_name": "m.t", "created_at": utcnow()}
        store.update(f"f{index}", TaskStatus.FAILURE, {"error": "E: x"}, defaults)
    kept = store.recent_failures(RECENT_FAILURES + 3)
    assert len(kept) == RECENT_FAILURES
    assert (kept[0].task_id, kept[-1].task_id) == (f"f{RECENT_FAILURES + 2}", "f3")


def test_only_records_that_are_failures_now_are_listed(store: StatusStore) -> None:
    now = utcnow()
    for task_id in ("old", "missed", "cancelled", "again", "expired"):
        store.create(pending(task_id))
    store.update("old", TaskStatus.FAILURE, {"error": "E: old", "completed_at": now})
    # A cancel a run got past, and the run then failed: a failure.
    store.cancel("missed", {"error": CANCELLED_ERROR, "completed_at": now})
    store.update("missed", TaskStatus.FAILURE, {"error": "E: ran", "started_at": now})
    # A worker writing the cancel of a task waiting for its retry: no failure.
    store.update("cancelled", TaskStatus.RETRYING, {"error": "E: once", "retries": 1})
    store.update("cancelled", TaskStatus.FAILURE, {"error": CANCELLED_ERROR})
    # Failed, then deleted and made again (a dead letter replayed): pending now.
    store.update("again", TaskStatus.FAILURE, {"error": "E: then", "completed_at": now})
    store.delete("again")
    store.create(pending("again"))
    # Failed, then expired and made again under the same id (the sorted set still names it).
    store.update("expired", TaskStatus.FAILURE, {"error": "E: gone", "completed_at": now})
    if isinstance(store, RedisStatusStore):
        store.client.delete(f"{store.prefix}task:expired")
    else:
        store._records.pop("expired")
    store.create(pending("expired"))
    assert [r.task_id for r in store.recent_failures(10)] == ["missed", "old"]
    assert [r.task_id for r in store.recent_failures(1)] == ["missed"]
    store.delete("missed")
    assert [r.task_id for r in store.recent_failures(1)] == ["old"]  # read on past the gaps
