"""The in-memory status store's expiry (the embedded mode's ``results.ttl``), on a fake clock."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from nagatha.stores import memory
from nagatha.stores.memory import MemoryStatusStore
from nagatha.types import TaskRecord, TaskStatus, utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_renew_starts_the_expiry_again_and_makes_no_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(memory, "time", SimpleNamespace(monotonic=clock))  # this module only
    store = MemoryStatusStore(ttl=10)
    record = TaskRecord(
        task_id="t", task_name="m.t", status=TaskStatus.PENDING, created_at=utcnow()
    )
    store.create(record)
    clock.now += 8
    store.renew("t")
    clock.now += 7  # 15 s after the write, 7 after the renewal
    assert store.get("t") == record
    clock.now += 4
    assert store.get("t") is None
    store.renew("t")
    assert store.get("t") is None


def test_a_wait_longer_than_threads_can_wait_still_wakes_on_the_final_write() -> None:
    store = MemoryStatusStore()
    pending = TaskRecord(task_id="t", task_name="a.b", status="pending", created_at=utcnow())
    store.create(pending)
    seen: list[TaskRecord | None] = []
    waiter = threading.Thread(target=lambda: seen.append(store.wait("t", 1e12)))
    waiter.start()
    store.update("t", TaskStatus.SUCCESS, {"result": 1})
    waiter.join(10)
    assert not waiter.is_alive() and seen[0] is not None and seen[0].result == 1


def test_stop_waits_answers_every_wait_now_and_later_ones_at_once() -> None:
    store = MemoryStatusStore()
    store.create(TaskRecord(task_id="t", task_name="a.b", status="pending", created_at=utcnow()))
    seen: list[TaskRecord | None] = []
    waiter = threading.Thread(target=lambda: seen.append(store.wait("t", 60)))
    waiter.start()
    store.stop_waits()  # the embedded server stopping
    waiter.join(10)
    assert not waiter.is_alive() and seen[0] is not None and seen[0].status is TaskStatus.PENDING
    assert store.wait("t", 60).status is TaskStatus.PENDING  # type: ignore[union-attr]
