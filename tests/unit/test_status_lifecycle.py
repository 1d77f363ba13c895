"""Status records through Dramatiq's real hooks (stub broker, in-process worker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pika.exceptions
import pytest
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import TimeLimit

from nagatha.config import FrameworkConfig
from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.hub import create_hub
from nagatha.middleware import retries
from nagatha.middleware.retries import HeldRetries
from nagatha.middleware.status import StatusMiddleware
from nagatha.registry import TaskRegistry
from nagatha.testing import embedded_hub, wait_until
from nagatha.types import TaskRecord, TaskStatus

BODY = """
    import threading
    calls = {"flaky": 0}

    def ok(x):
        return {"x": x, "list": [1, "é"]}

    def flaky():
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError(f"attempt {calls['flaky']}")
        return "third time"

    def always():
        raise ValueError("never works")

    def unserializable():
        return object()

    def deep(levels):
        value = []
        for _ in range(levels):
            value = [value]
        return value

    class Unprintable(Exception):
        def __str__(self):
            return self.never_set

    def unprintable():
        raise Unprintable()

    def slow():
        import time
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)

    def register_tasks(registry):
        registry.register_task("life", "ok", ok)
        registry.register_task("life", "flaky", flaky, max_retries=5, min_backoff=10,
                               max_backoff=20)
        registry.register_task("life", "always", always, max_retries=2, min_backoff=10,
                               max_backoff=20)
        registry.register_task("life", "unserializable", unserializable)
        registry.register_task("life", "deep", deep)
        registry.register_task("life", "unprintable", unprintable, max_retries=0)
        registry.register_task("life", "slow", slow, time_limit=300, max_retries=3)
        registry.register_task("life", "quick", ok, time_limit=300)
"""


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TaskRegistry]:
    with embedded_hub(tmp_path / "mods", "life", BODY) as registry:
        yield registry


def final_record(hub: TaskRegistry, task_id: str) -> TaskRecord:
    """Wait for a record that appears without a pending write (message enqueued directly)."""
    return wait_until(lambda: (r := hub.store.get(task_id)) and r.status.final and r, 10)


def finish(hub: TaskRegistry, name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    record = hub.submit(name, kwargs=kwargs)
    return hub.wait_for(record.task_id, 15, strict=True)


def test_middleware_order_status_then_retries_then_the_time_limit_last() -> None:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    kinds = [type(m) for m in create_hub(config, load_modules=False).broker.middleware]
    # after_* hooks run in reverse: TimeLimit disarms, Retries decides, then status is written.
    assert kinds.index(StatusMiddleware) < kinds.index(HeldRetries) < kinds.index(TimeLimit)
    assert kinds[-1] is TimeLimit


@pytest.mark.parametrize(("low", "high"), [(0, 0), (0, 50), (20, 40)])
def test_worker_backoffs_are_taken_as_set_zero_included(low: int, high: int) -> None:
    config = FrameworkConfig.model_validate(
        {
            "broker": {"url": "memory://"},
            "results": {"url": "memory://"},
            "worker": {"min_backoff": low, "max_backoff": high},
        }
    )
    broker = create_hub(config, load_modules=False).broker
    (held,) = [m for m in broker.middleware if isinstance(m, HeldRetries)]
    assert (held.min_backoff, held.max_backoff) == (low, high)


def test_success_records_result_and_all_timestamps(hub: TaskRegistry) -> None:
    record = finish(hub, "life.ok", x=1)
    assert record.status is TaskStatus.SUCCESS
    assert record.result == {"x": 1, "list": [1, "é"]}
    assert record.created_at <= record.started_at <= record.completed_at  # type: ignore[operator]
    assert record.error is None and record.retries == 0


def test_the_outcome_carries_started_at_when_the_started_write_was_lost(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.store, "update_soon", lambda *args, **kwargs: None)
    record = finish(hub, "life.ok", x=2)
    assert record.status is TaskStatus.SUCCESS
    assert record.created_at <= record.started_at <= record.completed_at  # type: ignore[operator]


def test_retries_are_recorded_then_success_clears_the_error(hub: TaskRegistry) -> None:
    record = finish(hub, "life.flaky")
    assert record.status is TaskStatus.SUCCESS
    assert record.result == "third time"
    assert record.retries == 2
    assert record.error is None


def test_retrying_status_is_visible_between_attempts(hub: TaskRegistry) -> None:
    seen: list[TaskStatus] = []
    original = hub.store.update

    def spy(task_id, status, fields, defaults=None):  # type: ignore[no-untyped-def]
        seen.append(status)
        return original(task_id, status, fields, defaults)

    hub.store.update = spy  # type: ignore[method-assign]
    record = finish(hub, "life.always")
    assert record.status is TaskStatus.FAILURE
    assert seen.count(TaskStatus.RETRYING) == 2
    last_retrying = len(seen) - 1 - seen[::-1].index(TaskStatus.RETRYING)
    assert seen.index(TaskStatus.FAILURE) > last_retrying


def test_final_failure_comes_only_after_retries_are_exhausted(hub: TaskRegistry) -> None:
    record = finish(hub, "life.always")
    assert record.status is TaskStatus.FAILURE
    assert record.error == "ValueError: never works"
    assert record.retries == 2


def test_a_result_that_is_not_json_fails_the_task_clearly(hub: TaskRegistry) -> None:
    record = finish(hub, "life.unserializable")
    assert record.status is TaskStatus.FAILURE
    assert "not JSON-serializable" in (record.error or "")


@pytest.mark.parametrize("levels", [300, 5000])
def test_a_result_nested_too_deep_for_the_store_fails_the_task_clearly(
    hub: TaskRegistry, levels: int
) -> None:
    # 300 levels pass json.dumps but not the store's encoder; 5000 overflow json.dumps.
    record = finish(hub, "life.deep", levels=levels)
    assert record.status is TaskStatus.FAILURE
    assert record.error == (
        "TypeError: the result (list) is not JSON-serializable: it nests deeper than 200 levels"
    )
    assert finish(hub, "life.deep", levels=199).result is not None


def test_an_exception_whose_message_cannot_be_read_is_still_recorded(hub: TaskRegistry) -> None:
    record = finish(hub, "life.unprintable")
    assert record.status is TaskStatus.FAILURE
    assert record.error == (
        "Unprintable: (its message could not be read: Unprintable.__str__ raised)"
    )


def test_a_result_the_store_refuses_for_good_is_recorded_as_not_stored(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = hub.store.update

    def refuse_results(task_id, status, fields, defaults=None):  # type: ignore[no-untyped-def]
        if status is TaskStatus.SUCCESS:
            raise StoreRejected("status store (Redis) refused the write: too large")
        return original(task_id, status, fields, defaults)

    monkeypatch.setattr(hub.store, "update", refuse_results)
    record = finish(hub, "life.ok", x=3)
    assert record.status is TaskStatus.FAILURE
    assert record.error == "ResultNotStored: status store (Redis) refused the write: too large"


def test_a_failure_is_written_once_not_again_when_the_message_is_nacked(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []
    for name in ("update", "update_soon"):
        original = getattr(hub.store, name)

        def spy(task_id, status, fields, defaults=None, _write=original):  # type: ignore[no-untyped-def]
            if status is TaskStatus.FAILURE:
                failures.append(task_id)
            return _write(task_id, status, fields, defaults)

        monkeypatch.setattr(hub.store, name, spy)
    record = finish(hub, "life.always")
    assert record.status is TaskStatus.FAILURE
    # The nack reaches the consumer thread after the record is final: poll for its hook.
    wait_until(lambda: hub.broker.queues and all(q.empty() for q in hub.broker.queues.values()), 5)
    assert failures == [record.task_id]


def test_time_limit_fails_without_retrying(hub: TaskRegistry) -> None:
    record = finish(hub, "life.slow")
    assert record.status is TaskStatus.FAILURE
    assert record.error == "TimeLimitExceeded: time limit exceeded (300 ms)"
    assert record.retries == 0


def test_a_final_write_held_past_the_time_limit_keeps_the_success(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outcome waits out a store outage (4 refusals: 3 s of backoff) far beyond the task's
    # 300 ms limit; the limit must be disarmed by then, not fire inside the held write.
    refusals = {"left": 4}
    original = hub.store.update

    def outage(task_id, status, fields, defaults=None):  # type: ignore[no-untyped-def]
        if status.final and refusals["left"]:
            refusals["left"] -= 1
            raise StoreUnavailable("simulated outage")
        return original(task_id, status, fields, defaults)

    monkeypatch.setattr(hub.store, "update", outage)
    record = finish(hub, "life.quick", x=5)
    assert refusals["left"] == 0
    assert record.status is TaskStatus.SUCCESS
    assert record.result == {"x": 5, "list": [1, "é"]}


def test_a_retry_the_broker_refuses_for_good_fails_the_task_after_the_hold(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retries, "HOLD_S", 0.5)
    original = hub.broker.enqueue

    def refusing(message, *, delay=None):  # type: ignore[no-untyped-def]
        if delay is not None:  # every retry: Dramatiq wraps pika's NACK like this
            raise ConnectionClosed(pika.exceptions.NackError([]))
        return original(message, delay=delay)

    monkeypatch.setattr(hub.broker, "enqueue", refusing)
    record = finish(hub, "life.flaky")
    assert record.status is TaskStatus.FAILURE  # not acked and forgotten as "retrying"
    assert (record.error or "").startswith("RetryRefused: RabbitMQ refused the retry for 0.5s")
    assert "dead-lettered after attempt 1" in (record.error or "")


def test_a_retry_while_rabbitmq_is_unreachable_is_held_past_the_refusal_limit(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unreachable: the attempt will be delivered again anyway, so nothing is failed; the
    # retry goes out once RabbitMQ answers (3 refusals: 1.4 s of backoff, past HOLD_S).
    monkeypatch.setattr(retries, "HOLD_S", 0.1)
    refusals = {"left": 3}
    original = hub.broker.enqueue

    def unreachable(message, *, delay=None):  # type: ignore[no-untyped-def]
        if delay is not None and refusals["left"]:
            refusals["left"] -= 1
            raise ConnectionClosed(pika.exceptions.AMQPConnectionError("connection refused"))
        return original(message, delay=delay)

    monkeypatch.setattr(hub.broker, "enqueue", unreachable)
    record = finish(hub, "life.flaky")
    assert refusals["left"] == 0
    assert record.status is TaskStatus.SUCCESS and record.retries == 2


def test_a_retry_the_broker_refuses_is_held_until_it_is_enqueued(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals = {"left": 2}
    original = hub.broker.enqueue

    def refusing(message, *, delay=None):  # type: ignore[no-untyped-def]
        if delay is not None and refusals["left"]:  # only the retries carry a delay
            refusals["left"] -= 1
            raise ConnectionClosed(RuntimeError("simulated: 1 message(s) NACKed"))
        return original(message, delay=delay)

    monkeypatch.setattr(hub.broker, "enqueue", refusing)
    record = finish(hub, "life.flaky")
    assert refusals["left"] == 0
    assert record.status is TaskStatus.SUCCESS
    assert record.retries == 2


def test_message_for_an_unknown_actor_ends_as_failure(hub: TaskRegistry) -> None:
    message = dramatiq.Message(
        queue_name="default", actor_name="life.gone", args=(), kwargs={}, options={}
    )
    hub.broker.enqueue(message)
    record = final_record(hub, message.message_id)
    assert record.status is TaskStatus.FAILURE
    assert "no worker has a task named 'life.gone'" in (record.error or "")


def test_expired_message_ends_as_failure(hub: TaskRegistry) -> None:
    message = dramatiq.Message(
        queue_name="default",
        actor_name="life.ok",
        args=(1,),
        kwargs={},
        options={"max_age": 1},
        message_timestamp=1,
    )
    hub.broker.enqueue(message)
    record = final_record(hub, message.message_id)
    assert record.status is TaskStatus.FAILURE
    assert "expired" in (record.error or "")


def test_final_status_is_sticky_against_duplicate_deliveries(hub: TaskRegistry) -> None:
    record = finish(hub, "life.ok", x=2)
    assert not hub.store.update(record.task_id, TaskStatus.STARTED, {"started_at": None})
    assert hub.get_task_status(record.task_id).status is TaskStatus.SUCCESS
