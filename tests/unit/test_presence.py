"""Worker presence (``GET /workers``): announcements, what a worker process reports, metrics.

The Redis store's half (its clock, stale entries) and real worker and bridge processes are in
``tests/integration/test_workers.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from prometheus_client.parser import text_string_to_metric_families

from nagatha.api.metrics import MetricsCollector
from nagatha.cli import cli
from nagatha.cli.output import _age
from nagatha.config import FrameworkConfig
from nagatha.errors import StoreUnavailable
from nagatha.hub import create_hub
from nagatha.middleware.presence import WorkerPresence
from nagatha.presence import Announcer
from nagatha.registry import TaskRegistry
from nagatha.stores import MemoryStatusStore, memory
from nagatha.testing import wait_until
from nagatha.types import RunningTask, TaskStatus, WorkerInfo, utcnow
from nagatha.worker import start_worker

INTERVAL = 0.1


def info(worker_id: str = "host:1", *, kind: str = "worker", interval: float = 10.0) -> WorkerInfo:
    hostname, pid = worker_id.split(":")
    return WorkerInfo.model_validate(
        {
            "id": worker_id,
            "kind": kind,
            "hostname": hostname,
            "pid": int(pid),
            "version": "1",
            "queues": ["default"],
            "concurrency": 4,
            "started_at": utcnow(),
            "interval": interval,
        }
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The memory store's monotonic clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(memory, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_memory_store_keeps_the_last_announcement_until_gone_after(clock: list[float]) -> None:
    store = MemoryStatusStore()
    store.announce(info("b:2"))
    store.announce(info("a:9", kind="bridge"))
    store.announce(info("a:1"))
    clock[0] += 5
    store.announce(info("a:1").model_copy(update={"concurrency": 8}))
    listed = store.workers()
    assert [(w.kind, w.id) for w in listed] == [
        ("bridge", "a:9"),
        ("worker", "a:1"),
        ("worker", "b:2"),
    ]
    assert [w.seen_seconds_ago for w in listed] == [5.0, 0.0, 5.0]
    assert listed[1].concurrency == 8  # the last announcement wins
    clock[0] += 25  # 30 s = 3 intervals since b:2 and a:9 announced: gone
    assert [w.id for w in store.workers()] == ["a:1"]
    store.withdraw("a:1")
    store.withdraw("never-announced:3")
    assert store.workers() == []


def test_announcer_logs_an_outage_once_and_its_end(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(MemoryStatusStore):
        down = True

        def announce(self, worker: WorkerInfo) -> None:
            if self.down:
                raise StoreUnavailable("status store (Redis) unavailable: ConnectionError: refused")
            super().announce(worker)

    store = Flaky()
    announcer = Announcer(store, lambda: info("h:5"), interval=60)
    with caplog.at_level(logging.INFO, logger="nagatha.presence"):
        for _ in range(3):
            announcer.announce()
        store.down = False
        announcer.announce()
        announcer.announce()
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "could not announce" in m and "refused" in m]) == 1
    assert messages[-1] == "announcing this process again (GET /workers)"
    assert [w.id for w in store.workers()] == ["h:5"]
    announcer.stop()  # never started: withdraws all the same
    assert store.workers() == []


def test_a_stopped_announcer_never_brings_its_entry_back() -> None:
    store = MemoryStatusStore()
    announcer = Announcer(store, lambda: info("h:6"), interval=INTERVAL)
    announcer.start()
    wait_until(store.workers, timeout=10, message="first announcement")
    announcer.stop()
    assert store.workers() == []
    announcer.announce()  # a turn of the thread that came late
    assert store.workers() == []


def test_a_snapshot_that_raises_does_not_end_the_announcements(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStatusStore()
    calls = iter([RuntimeError("bug"), None])

    def snapshot() -> WorkerInfo:
        problem = next(calls, None)
        if problem is not None:
            raise problem
        return info("h:7")

    announcer = Announcer(store, snapshot, interval=INTERVAL)
    with caplog.at_level(logging.ERROR, logger="nagatha.presence"):
        announcer.start()
        try:
            wait_until(store.workers, timeout=10, message="announcement after the failed one")
        finally:
            announcer.stop()
    assert any(r.exc_info for r in caplog.records), "the bug's traceback is logged"


@pytest.fixture
def hub() -> Iterator[tuple[TaskRegistry, dict[str, threading.Event]]]:
    """An embedded hub announcing every 100 ms, with tasks that wait for the test."""
    config = FrameworkConfig.model_validate(
        {
            "broker": {"url": "memory://"},
            "results": {"url": "memory://"},
            "worker": {"presence_interval": INTERVAL, "min_backoff": 1, "max_backoff": 1},
        }
    )
    registry = create_hub(config, load_modules=False)
    gates = {"go": threading.Event(), "in": threading.Event()}

    def block() -> str:
        gates["in"].set()
        assert gates["go"].wait(30), "the test never opened the gate"
        return "done"

    def fail() -> None:
        raise ValueError("no")

    attempts = iter(range(100))

    def flaky() -> int:
        if next(attempts) == 0:
            raise ValueError("first attempt")
        return 1

    registry.register_task("t", "block", block)
    registry.register_task("t", "fail", fail, max_retries=0)
    registry.register_task("t", "flaky", flaky, max_retries=1)
    worker = start_worker(registry.broker, threads=3)
    try:
        yield registry, gates
    finally:
        gates["go"].set()
        worker.stop(timeout=5000)


def only_worker(registry: TaskRegistry) -> WorkerInfo | None:
    workers = registry.workers()
    return workers[0] if len(workers) == 1 else None


def test_a_worker_process_reports_what_it_runs_and_what_it_did(
    hub: tuple[TaskRegistry, dict[str, threading.Event]],
) -> None:
    registry, gates = hub
    first = wait_until(lambda: only_worker(registry), timeout=10, message="announced")
    assert (first.kind, first.concurrency, first.queues, first.state) == (
        "worker",
        3,
        ["default"],
        "running",
    )
    assert first.counts == {"succeeded": 0, "failed": 0, "retried": 0, "skipped": 0}

    blocked = registry.run_task("t.block")
    assert gates["in"].wait(10)
    running = wait_until(
        lambda: (w := only_worker(registry)) and w.running and w.running, timeout=10
    )
    assert [(task.task_id, task.task_name, task.retries) for task in running] == [
        (blocked, "t.block", 0)
    ]
    assert isinstance(running[0], RunningTask)

    for task_id in (registry.run_task("t.fail"), registry.run_task("t.flaky")):
        assert registry.wait_for(task_id, 10).status.final
    gates["go"].set()
    assert registry.wait_for(blocked, 10).status is TaskStatus.SUCCESS

    def settled() -> WorkerInfo | None:
        worker = only_worker(registry)
        return worker if worker and not worker.running and worker.counts["succeeded"] == 2 else None

    done = wait_until(settled, timeout=10, message="outcomes counted")
    # block and flaky's second attempt succeeded; flaky's first attempt retried; fail failed.
    assert done.counts == {"succeeded": 2, "failed": 1, "retried": 1, "skipped": 0}
    assert done.started_at == first.started_at


def test_a_cancelled_task_is_skipped_and_never_shown_running(
    hub: tuple[TaskRegistry, dict[str, threading.Event]],
) -> None:
    registry, _ = hub
    task_id = registry.submit("t.flaky", delay_ms=300).task_id
    registry.cancel(task_id)

    def skipped() -> WorkerInfo | None:
        worker = only_worker(registry)
        return worker if worker and worker.counts["skipped"] == 1 else None

    worker = wait_until(skipped, timeout=10, message="the cancelled message reached the worker")
    assert worker.running == []
    assert worker.counts["succeeded"] == worker.counts["retried"] == 0


def test_a_stopping_worker_says_so_while_it_finishes_then_leaves() -> None:
    config = FrameworkConfig.model_validate(
        {
            "broker": {"url": "memory://"},
            "results": {"url": "memory://"},
            "worker": {"presence_interval": 60},  # after boot, only the shutdown announces
        }
    )
    registry = create_hub(config, load_modules=False)
    inside, release = threading.Event(), threading.Event()

    def block() -> None:
        inside.set()
        assert release.wait(30)

    registry.register_task("t", "block", block)
    worker = start_worker(registry.broker, threads=1)
    wait_until(registry.workers, timeout=10, message="the boot announcement")
    registry.run_task("t.block")
    assert inside.wait(10)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 30_000})
    stopper.start()
    try:
        stopping = wait_until(
            lambda: [w for w in registry.workers() if w.state == "stopping"],
            timeout=10,
            message="announced as stopping while its task runs",
        )
        assert [run.task_name for run in stopping[0].running] == ["t.block"]
    finally:
        release.set()
        stopper.join(30)
    assert registry.workers() == []


def test_stop_does_not_wait_for_a_store_that_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entered, unblock = threading.Event(), threading.Event()
    withdrawn: list[str] = []

    class Frozen(MemoryStatusStore):
        def announce(self, worker: WorkerInfo) -> None:
            entered.set()
            unblock.wait(60)

        def withdraw(self, worker_id: str) -> None:
            withdrawn.append(worker_id)

    announcer = Announcer(Frozen(), lambda: info("h:8"), interval=60)
    announcer.start()
    try:
        assert entered.wait(10)
        with caplog.at_level(logging.INFO, logger="nagatha.presence"):
            announcer.stop()  # returns while the announcement still hangs
        assert not unblock.is_set() and withdrawn == []
        assert "entry will expire" in caplog.text
    finally:
        unblock.set()


def test_a_task_delivered_twice_to_one_process_shows_twice_and_leaves_twice() -> None:
    store = MemoryStatusStore()
    presence = WorkerPresence(store, interval=60)
    broker = StubBroker()
    broker.declare_queue("default")
    worker = SimpleNamespace(consumer_whitelist=None, worker_threads=2)
    presence.after_worker_boot(broker, worker)  # type: ignore[arg-type]
    try:
        first, second = (
            MessageProxy(Message("default", "t.slow", (), {}, {}, message_id="same"))
            for _ in range(2)
        )
        presence.before_process_message(broker, first)
        presence.before_process_message(broker, second)  # the redelivery, the first still runs
        presence.after_process_message(broker, second)
        presence.before_worker_shutdown(broker, worker)  # type: ignore[arg-type]
        listed = wait_until(
            lambda: [w for w in store.workers() if w.state == "stopping"], timeout=10
        )
        assert [run.task_id for run in listed[0].running] == ["same"]
        assert listed[0].counts["succeeded"] == 1
        # WorkerLost and the like fail the message as they skip it: counted failed, as the
        # record and /metrics count it.
        first.fail()
        presence.after_skip_message(broker, first)
        assert presence._counts == {"succeeded": 1, "failed": 1, "retried": 0, "skipped": 0}
        assert presence._running == {}
    finally:
        presence.after_worker_shutdown(broker, worker)  # type: ignore[arg-type]
    assert store.workers() == []


def test_metrics_stand_when_the_workers_cannot_be_read() -> None:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    registry = create_hub(config, load_modules=False)
    registry.register_task("t", "idle", lambda: None)

    def broken() -> list[WorkerInfo]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    registry.store.workers = broken  # type: ignore[method-assign]
    body, _ = MetricsCollector(registry, config, cache_seconds=0).render(None)
    text = body.decode()
    assert 'nagatha_up{dependency="store"} 1.0' in text
    assert 'nagatha_task_events_total{event="submitted",task="t.idle"} 0.0' in text
    assert "nagatha_workers" not in text


def test_metrics_count_processes_threads_and_running_tasks() -> None:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    registry = create_hub(config, load_modules=False)
    registry.register_task("t", "idle", lambda: None)
    store = registry.store
    started = utcnow() - timedelta(seconds=3)
    busy = info("a:1").model_copy(
        update={
            "running": [
                RunningTask(task_id="x", task_name="t.slow", started_at=started),
                RunningTask(task_id="y", task_name="t.slow", started_at=started),
            ]
        }
    )
    store.announce(busy)
    store.announce(info("b:2").model_copy(update={"concurrency": 2}))
    store.announce(info("c:3", kind="bridge"))
    body, _ = MetricsCollector(registry, config, cache_seconds=0).render(None)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("nagatha_workers", (("kind", "worker"),))] == 2
    assert samples[("nagatha_workers", (("kind", "bridge"),))] == 1
    assert samples[("nagatha_worker_threads", ())] == 6  # the bridge's lanes are no threads
    assert samples[("nagatha_tasks_running", (("task", "t.slow"),))] == 2
    assert samples[("nagatha_tasks_running", (("task", "t.idle"),))] == 0  # registered


def test_workers_command_refuses_an_embedded_config(tmp_path: object) -> None:
    runner = CliRunner()
    done = runner.invoke(
        cli,
        ["workers"],
        env={"NAGATHA_BROKER_URL": "memory://", "NAGATHA_RESULTS_URL": "memory://"},
    )
    assert done.exit_code == 2
    assert "GET /workers" in done.output


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-2, "0 s"),
        (0.42, "0.42 s"),
        (12.4, "12 s"),
        (300, "5 min"),
        (12_600, "3.5 h"),
        (2 * 86_400, "2 d"),
    ],
)
def test_ages_read_like_a_person_would_say_them(seconds: float, shown: str) -> None:
    assert _age(seconds) == shown
