"""RedeliveryLimit: counting redelivered starts, failing poison tasks, repeat messages alone."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from nagatha.errors import StoreUnavailable
from nagatha.middleware import redelivery
from nagatha.middleware.redelivery import RedeliveryLimit, WorkerLost
from nagatha.middleware.status import FAILED_BECAUSE
from nagatha.stores import MemoryStatusStore
from nagatha.types import TaskRecord, TaskStatus, utcnow


class Message:
    """What the middleware reads of a Dramatiq message proxy."""

    def __init__(self, task_id: str, *, redelivered: bool = True) -> None:
        self.message_id, self.actor_name, self.redelivered = task_id, "m.t", redelivered
        self.failed = False

    def fail(self) -> None:
        self.failed = True


@pytest.fixture
def store() -> MemoryStatusStore:
    return MemoryStatusStore()


def start(limit: RedeliveryLimit, message: Message) -> None:
    limit.before_process_message(None, message)  # type: ignore[arg-type]


def finish(limit: RedeliveryLimit, message: Message) -> None:
    limit.after_process_message(None, message)  # type: ignore[arg-type]


def test_first_deliveries_cost_nothing_and_are_not_counted(store: MemoryStatusStore) -> None:
    limit = RedeliveryLimit(store, 1)
    for _ in range(3):
        start(limit, Message("a", redelivered=False))
    assert store.redeliveries("a") == 0


def test_past_the_limit_a_redelivered_task_is_failed_as_lost(store: MemoryStatusStore) -> None:
    limit = RedeliveryLimit(store, 2)
    for count in (1, 2):
        message = Message("p")
        start(limit, message)
        finish(limit, message)
        assert store.redeliveries("p") == count and not message.failed
    message = Message("p")
    with pytest.raises(WorkerLost, match="a worker stopped while running it, 3 times"):
        start(limit, message)
    assert message.failed and getattr(message, FAILED_BECAUSE).startswith("WorkerLost: ")
    limit.after_skip_message(None, message)  # type: ignore[arg-type]
    assert not limit._alone.locked()


def test_a_finished_task_is_not_counted_unless_it_was_already_lost(
    store: MemoryStatusStore,
) -> None:
    store.create(
        TaskRecord(task_id="f", task_name="m.t", status=TaskStatus.PENDING, created_at=utcnow())
    )
    store.update("f", TaskStatus.SUCCESS, {"result": 1})
    limit = RedeliveryLimit(store, 1)
    start(limit, Message("f"))  # ran to its end, its ack was lost: runs again, uncounted
    assert store.redeliveries("f") == 0
    store.count_redelivery("f")
    store.count_redelivery("f")  # failed as lost before, but the nack never went out
    with pytest.raises(WorkerLost):
        start(limit, Message("f"))


def test_a_repeat_message_runs_alone_among_repeat_messages(store: MemoryStatusStore) -> None:
    limit = RedeliveryLimit(store, 5)
    for task_id in ("x", "y"):
        store.count_redelivery(task_id)  # both redelivered before
    first, second = Message("x"), Message("y")
    start(limit, first)
    started = threading.Event()

    def run_second() -> None:
        start(limit, second)
        started.set()
        finish(limit, second)

    runner = threading.Thread(target=run_second)
    runner.start()
    assert not started.wait(0.3)  # waits for the lock, not counted meanwhile
    assert store.redeliveries("y") == 1
    finish(limit, first)
    assert started.wait(5)
    runner.join(5)
    assert store.redeliveries("y") == 2 and not limit._alone.locked()


def test_a_twin_failed_as_lost_while_it_waited_is_failed_again_not_run(
    store: MemoryStatusStore,
) -> None:
    store.create(
        TaskRecord(task_id="t", task_name="m.t", status=TaskStatus.PENDING, created_at=utcnow())
    )
    store.count_redelivery("t")
    limit = RedeliveryLimit(store, 2)
    holder = Message("h")
    store.count_redelivery("h")
    start(limit, holder)  # holds the lock for repeat messages
    outcome: list[BaseException | None] = []

    def twin() -> None:
        try:
            start(limit, Message("t"))
            outcome.append(None)
        except WorkerLost as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=twin)
    waiter.start()
    # Meanwhile another copy of "t" is counted past the limit and failed as lost.
    store.count_redelivery("t")
    store.count_redelivery("t")
    store.update("t", TaskStatus.FAILURE, {"error": "WorkerLost: ..."})
    finish(limit, holder)
    waiter.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], WorkerLost)


def test_a_repeat_message_runs_beside_a_stuck_one_after_the_wait(
    store: MemoryStatusStore, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(redelivery, "ALONE_WAIT_S", 0.1)
    limit = RedeliveryLimit(store, 5)
    for task_id in ("x", "y"):
        store.count_redelivery(task_id)
    start(limit, Message("x"))  # never finishes
    with caplog.at_level("WARNING", logger="nagatha.tasks"):
        start(limit, Message("y"))
    assert "running beside it" in caplog.text and store.redeliveries("y") == 2


def stop_worker(limit: RedeliveryLimit) -> None:
    """A graceful stop whose grace period ends with what runs still running."""
    limit.before_worker_shutdown(None, None)  # type: ignore[arg-type]
    limit.after_worker_shutdown(None, None)  # type: ignore[arg-type]


def test_graceful_stops_that_cut_a_task_short_never_fail_it(
    store: MemoryStatusStore, caplog: Any
) -> None:
    limit = RedeliveryLimit(store, 1)
    start(limit, Message("long", redelivered=False))
    done = Message("short", redelivered=False)
    start(limit, done)
    finish(limit, done)
    with caplog.at_level("WARNING", logger="nagatha.tasks"):
        stop_worker(limit)  # the grace period ended with "long" still running
    assert "task long m.t: still running when the grace period ended; given back" in caplog.text
    assert "short" not in caplog.text and store.redeliveries("short") == 0
    for _ in range(5):  # a deploy after a deploy: each new worker cut short again
        limit = RedeliveryLimit(store, 1)
        message = Message("long")
        start(limit, message)
        assert not message.failed and store.redeliveries("long") == 0
        stop_worker(limit)
    limit = RedeliveryLimit(store, 1)
    start(limit, Message("long"))  # the last one was given back: this start is not counted
    assert store.redeliveries("long") == 0
    # ... but deaths while it runs still are: killed twice, it is failed as lost.
    limit = RedeliveryLimit(store, 1)
    start(limit, Message("long"))
    with pytest.raises(WorkerLost, match="2 times"):
        start(RedeliveryLimit(store, 1), Message("long"))


def test_the_count_comes_off_before_the_messages_are_released(store: MemoryStatusStore) -> None:
    # RabbitMQ hands the messages to another worker once this one's consumers close, after
    # the grace period: a count taken off only then could come after that worker's.
    limit = RedeliveryLimit(store, 5)
    store.count_redelivery("long")  # one death before
    start(limit, Message("long"))
    assert store.redeliveries("long") == 2
    limit.before_worker_shutdown(None, None)  # type: ignore[arg-type]
    assert store.redeliveries("long") == 1


def test_a_redelivered_task_waiting_to_run_alone_is_not_given_back(
    store: MemoryStatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not counted yet, so giving it back would forgive the death that brought it back.
    limit = RedeliveryLimit(store, 5)
    store.count_redelivery("x")
    store.count_redelivery("y")
    start(limit, Message("x"))  # holds the lock for repeat messages
    waiting = threading.Thread(target=start, args=(limit, Message("y")))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()  # y waits for the lock, not counted yet
    limit.before_worker_shutdown(None, None)  # type: ignore[arg-type]
    assert (store.redeliveries("x"), store.redeliveries("y")) == (1, 1)
    limit._alone.release()
    waiting.join(5)


def test_a_task_that_cannot_be_given_back_is_logged_and_the_stop_goes_on(
    store: MemoryStatusStore, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    limit = RedeliveryLimit(store, 1)
    start(limit, Message("long", redelivered=False))

    def down(task_id: str, delta: int = 1) -> int:
        raise StoreUnavailable("status store (Redis) unavailable: connection refused")

    monkeypatch.setattr(store, "count_redelivery", down)
    with caplog.at_level("WARNING", logger="nagatha.tasks"):
        stop_worker(limit)
    assert "still running when the grace period ended; not given back (status store" in caplog.text
