"""Cancelling a task that waits to run: store, registry, worker, HTTP (stub broker, memory)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage
from falcon.testing import TestClient

from nagatha.api import create_app
from nagatha.config import FrameworkConfig
from nagatha.errors import StoreUnavailable, TaskNotCancellable, TaskNotFound
from nagatha.hub import create_hub
from nagatha.middleware.cancellation import Cancellation
from nagatha.middleware.presence import WorkerPresence
from nagatha.middleware.status import StatusMiddleware
from nagatha.registry import TaskRegistry
from nagatha.stores.memory import MemoryStatusStore
from nagatha.testing import embedded_hub, wait_until
from nagatha.types import CANCELLED_ERROR, REVOKED_ERROR, TaskRecord, TaskStatus, utcnow

BODY = """
    import threading
    ran = []
    release = threading.Event()

    def record(tag):
        ran.append(tag)
        return tag

    def held():
        ran.append("held")
        release.wait(10)
        return "done"

    def failing(tag):
        ran.append(tag)
        raise RuntimeError("not yet")

    def failing_when_released(tag):
        ran.append(tag)
        release.wait(10)
        raise RuntimeError("not yet")

    def register_tasks(registry):
        registry.register_task("stop", "record", record)
        registry.register_task("stop", "held", held)
        registry.register_task("stop", "failing", failing, max_retries=1, min_backoff=2000,
                               max_backoff=2000)
        registry.register_task("stop", "failing_when_released", failing_when_released,
                               max_retries=1, min_backoff=2000, max_backoff=2000)
"""


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TaskRegistry]:
    with embedded_hub(tmp_path / "mods", "stop", BODY) as registry:
        yield registry
        registry.get_task("stop.held").func.__globals__["release"].set()


def ran(hub: TaskRegistry) -> list[str]:
    return list(hub.get_task("stop.record").func.__globals__["ran"])


def drained(hub: TaskRegistry) -> None:
    """Wait until the stub broker has nothing queued or delayed and no worker holds a task."""
    hub.broker.join("default", timeout=10_000)  # type: ignore[attr-defined]


def test_a_waiting_task_is_cancelled_at_once_and_never_runs(hub: TaskRegistry) -> None:
    record = hub.submit("stop.record", kwargs={"tag": "late"}, delay_ms=2000)
    cancelled = hub.cancel(record.task_id)
    assert cancelled.status is TaskStatus.FAILURE
    assert cancelled.error == CANCELLED_ERROR
    assert cancelled.completed_at is not None and cancelled.started_at is None
    drained(hub)
    assert "late" not in ran(hub)
    assert hub.get_task_status(record.task_id) == cancelled  # left as the cancel wrote it
    # The worker is not stuck: the next task runs.
    assert hub.wait_for(hub.run_task("stop.record", tag="next"), 10).result == "next"


def test_cancel_is_idempotent(hub: TaskRegistry) -> None:
    task_id = hub.submit("stop.record", kwargs={"tag": "twice"}, delay_ms=2000).task_id
    assert hub.cancel(task_id) == hub.cancel(task_id)


def test_a_waiter_wakes_on_the_cancel(hub: TaskRegistry) -> None:
    task_id = hub.submit("stop.record", kwargs={"tag": "waited"}, delay_ms=5000).task_id
    seen: list[TaskRecord] = []
    waiter = threading.Thread(target=lambda: seen.append(hub.wait_for(task_id, 30)))
    waiter.start()
    wait_until(lambda: hub.store.get(task_id) is not None, 5)
    hub.cancel(task_id)
    waiter.join(10)
    assert not waiter.is_alive()
    assert seen[0].error == CANCELLED_ERROR


def test_a_running_task_is_not_cancelled(hub: TaskRegistry) -> None:
    task_id = hub.run_task("stop.held")
    wait_until(lambda: hub.get_task_status(task_id).status is TaskStatus.STARTED, 10)
    with pytest.raises(TaskNotCancellable, match="running") as caught:
        hub.cancel(task_id)
    assert caught.value.status == "started"
    hub.get_task("stop.held").func.__globals__["release"].set()
    assert hub.wait_for(task_id, 10).status is TaskStatus.SUCCESS


def test_an_ended_task_is_not_cancelled(hub: TaskRegistry) -> None:
    task_id = hub.run_task("stop.record", tag="quick")
    assert hub.wait_for(task_id, 10).status is TaskStatus.SUCCESS
    with pytest.raises(TaskNotCancellable, match="already ended"):
        hub.cancel(task_id)
    assert hub.get_task_status(task_id).result == "quick"


def test_an_unknown_id_is_not_found(hub: TaskRegistry) -> None:
    with pytest.raises(TaskNotFound):
        hub.cancel("no-such-id")


def test_a_task_waiting_for_its_retry_is_cancelled_and_not_tried_again(hub: TaskRegistry) -> None:
    task_id = hub.run_task("stop.failing", tag="first try")
    wait_until(lambda: hub.get_task_status(task_id).status is TaskStatus.RETRYING, 10)
    record = hub.cancel(task_id)
    assert record.error == CANCELLED_ERROR and record.retries == 1
    drained(hub)
    assert ran(hub).count("first try") == 1


def test_a_run_the_cancel_missed_replaces_the_cancel_with_what_happened(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its started write lost (a Redis outage): the record looks pending while it runs, so
    the cancel is answered; the run's outcome then replaces the cancel in the record."""
    monkeypatch.setattr(hub.store, "update_soon", lambda *args, **kwargs: None)
    task_id = hub.run_task("stop.held")
    wait_until(lambda: "held" in ran(hub), 10, message="the task started")
    assert hub.cancel(task_id).error == CANCELLED_ERROR
    hub.get_task("stop.held").func.__globals__["release"].set()
    record = wait_until(lambda: (r := hub.store.get(task_id)) and r.result == "done" and r, 10)
    assert record.status is TaskStatus.SUCCESS and record.error is None
    assert record.started_at is not None and record.completed_at is not None


def test_a_retry_after_a_missed_cancel_is_skipped_and_the_record_says_cancelled(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.store, "update_soon", lambda *args, **kwargs: None)
    task_id = hub.run_task("stop.failing_when_released", tag="raced")
    wait_until(lambda: "raced" in ran(hub), 10, message="the first attempt started")
    hub.cancel(task_id)
    # The attempt fails: its retrying write replaces the cancel, then the retry comes.
    hub.get_task("stop.held").func.__globals__["release"].set()
    drained(hub)
    record = hub.get_task_status(task_id)
    assert record.status is TaskStatus.FAILURE and record.error == CANCELLED_ERROR
    assert ran(hub).count("raced") == 1


def test_a_revoked_hub_task_that_started_is_not_run_again(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a Celery worker skips a revoked id's later messages: the retry does not run, and
    the record, which no cancel made final, is made so."""
    monkeypatch.setattr(hub.store, "update_soon", lambda *args, **kwargs: None)
    task_id = hub.run_task("stop.failing_when_released", tag="revoked")
    wait_until(lambda: "revoked" in ran(hub), 10, message="the first attempt started")
    hub.store.revoke([task_id])
    hub.get_task("stop.held").func.__globals__["release"].set()
    drained(hub)
    record = hub.get_task_status(task_id)
    assert record.status is TaskStatus.FAILURE and record.error == CANCELLED_ERROR
    assert ran(hub).count("revoked") == 1


class FlakyStore(MemoryStatusStore):
    """Unavailable for the first ``outages`` updates."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def update(self, *args: Any, **kwargs: Any) -> bool:
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("Redis is down")
        return super().update(*args, **kwargs)


def test_a_skipped_tasks_record_is_held_until_the_store_takes_it() -> None:
    store = FlakyStore(outages=2)
    store.create(TaskRecord(task_id="t", task_name="stop.record", status=TaskStatus.RETRYING,
                            created_at=utcnow()))  # fmt: skip
    store.revoke(["t"])
    message = MessageProxy(dramatiq.Message("default", "stop.record", (), {}, {}, message_id="t"))
    with pytest.raises(SkipMessage):
        Cancellation(store).before_process_message(StubBroker(), message)
    assert store.outages == 0
    record = store.get("t")
    assert record is not None and record.error == CANCELLED_ERROR


def test_cancellation_sits_after_celery_results_and_before_presence_and_status() -> None:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    kinds = [type(m) for m in create_hub(config, load_modules=False).broker.middleware]
    # Presence between them: a skipped task never shows as running.
    assert kinds.index(Cancellation) + 2 == kinds.index(StatusMiddleware)
    assert kinds.index(WorkerPresence) + 1 == kinds.index(StatusMiddleware)


def test_memory_store_cancels_only_waiting_records() -> None:
    store = MemoryStatusStore()
    fields = {"error": CANCELLED_ERROR, "completed_at": utcnow()}
    assert store.cancel("none", fields) is None
    for status in TaskStatus:
        task_id = f"id-{status.value}"
        store.create(
            TaskRecord(task_id=task_id, task_name="t.t", status=status, created_at=utcnow())
        )
        after = store.cancel(task_id, fields)
        assert after is not None
        if status.cancellable:
            assert after.status is TaskStatus.FAILURE and after.error == CANCELLED_ERROR
        else:
            assert after.status is status and after.error is None
        assert store.is_cancelled(task_id) is status.cancellable
    # A cancelled record gives way only to a write of a run (it carries started_at).
    cancelled = "id-pending"
    assert not store.update(cancelled, TaskStatus.FAILURE, {"error": "Expired: ..."})
    assert store.update(cancelled, TaskStatus.STARTED, {"started_at": utcnow()})
    after = store.get(cancelled)
    assert after is not None and after.status is TaskStatus.STARTED
    assert after.error is None and after.completed_at is None
    assert not store.update("id-success", TaskStatus.STARTED, {"started_at": utcnow()})


@pytest.mark.parametrize("error", [CANCELLED_ERROR, REVOKED_ERROR])
def test_memory_store_a_record_stopped_before_it_ran_gives_way_to_a_run(error: str) -> None:
    store = MemoryStatusStore()
    store.create(TaskRecord(task_id="t", task_name="t.t", status=TaskStatus.PENDING,
                            created_at=utcnow()))  # fmt: skip
    assert store.update("t", TaskStatus.FAILURE, {"error": error, "completed_at": utcnow()})
    assert not store.update("t", TaskStatus.FAILURE, {"error": "Expired: ..."})
    assert store.update("t", TaskStatus.STARTED, {"started_at": utcnow()})
    record = store.get("t")
    assert record is not None and record.status is TaskStatus.STARTED and record.error is None


def test_memory_store_a_failure_of_another_kind_never_gives_way() -> None:
    store = MemoryStatusStore()
    store.create(TaskRecord(task_id="t", task_name="t.t", status=TaskStatus.PENDING,
                            created_at=utcnow()))  # fmt: skip
    assert store.update("t", TaskStatus.FAILURE, {"error": "TaskRevokedError: expired"})
    assert not store.update("t", TaskStatus.STARTED, {"started_at": utcnow()})


def test_memory_store_revokes_ids_without_touching_records() -> None:
    store = MemoryStatusStore()
    store.create(
        TaskRecord(task_id="ended", task_name="t.t", status=TaskStatus.SUCCESS, created_at=utcnow())
    )
    store.revoke(["ended", "unknown", "ended"])
    assert store.is_cancelled("ended") and store.is_cancelled("unknown")
    with pytest.raises(TypeError, match="not one string"):
        store.revoke("ended")
    assert not store.is_cancelled("other")
    assert store.get("ended").status is TaskStatus.SUCCESS  # type: ignore[union-attr]
    assert store.get("unknown") is None


# -- HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def client(hub: TaskRegistry) -> TestClient:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    return TestClient(create_app(config, hub))


def error_of(result: Any, status: int) -> dict[str, Any]:
    assert result.status_code == status, result.text
    body: dict[str, Any] = result.json
    assert body["title"] and body["description"] and body["request_id"]
    return body


def test_delete_cancels_and_answers_the_record(hub: TaskRegistry, client: TestClient) -> None:
    task_id = hub.submit("stop.record", kwargs={"tag": "http"}, delay_ms=2000).task_id
    for path in (f"/tasks/{task_id}", f"/status/{task_id}"):  # the second: idempotent, alias
        result = client.simulate_delete(path)
        assert result.status_code == 200, result.text
        assert result.json["status"] == "failure"
        assert result.json["error"] == CANCELLED_ERROR
        assert result.headers["cache-control"] == "no-store"
    drained(hub)
    assert "http" not in ran(hub)


def test_delete_of_a_task_that_ended_is_a_conflict(hub: TaskRegistry, client: TestClient) -> None:
    task_id = hub.run_task("stop.record", tag="done")
    hub.wait_for(task_id, 10)
    body = error_of(client.simulate_delete(f"/tasks/{task_id}"), 409)
    assert body["status"] == "success"
    assert "cannot be cancelled" in body["description"]


def test_delete_of_an_unknown_or_overlong_id_is_not_found(client: TestClient) -> None:
    error_of(client.simulate_delete("/tasks/no-such-id"), 404)
    error_of(client.simulate_delete("/tasks/" + "x" * 300), 404)


def test_openapi_describes_the_cancel(client: TestClient) -> None:
    operation = client.simulate_get("/openapi.json").json["paths"]["/tasks/{task_id}"]["delete"]
    assert operation["operationId"] == "cancelTask"
    assert {"200", "404", "409", "503"} <= set(operation["responses"])
