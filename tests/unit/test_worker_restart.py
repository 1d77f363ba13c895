"""The supervisor's wait before it replaces a worker process that died."""

from __future__ import annotations

import threading

import pytest

from nagatha import worker
from nagatha.config import FrameworkConfig
from nagatha.testing import wait_until
from nagatha.worker import RESTART_CAP, RESTART_FIRST, STABLE_S, Supervisor, restart_delay


def test_a_process_that_keeps_dying_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    delays = [restart_delay(None, 0.5)]
    for _ in range(8):
        delays.append(restart_delay(delays[-1], 0.5))
    assert delays[:4] == [RESTART_FIRST, 2 * RESTART_FIRST, 4 * RESTART_FIRST, 8 * RESTART_FIRST]
    assert max(delays) == delays[-1] == RESTART_CAP


def test_a_process_that_ran_long_enough_is_restarted_after_the_first_delay_again() -> None:
    assert restart_delay(RESTART_CAP, STABLE_S) == RESTART_FIRST
    assert restart_delay(RESTART_CAP, STABLE_S - 1) == RESTART_CAP


class FakeChild:
    """A worker process as the supervisor sees it (no pid: nothing is ever signalled)."""

    pid = None
    exitcode = -9

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        return None


def in_memory_supervisor(processes: int) -> Supervisor:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    return Supervisor(config, processes=processes, threads=1, queues=[])


def test_each_dead_process_waits_its_own_delay_not_another_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supervisor = in_memory_supervisor(2)
    spawned: list[FakeChild] = []

    def spawn() -> FakeChild:
        spawned.append(FakeChild())
        return spawned[-1]

    decided: list[float] = []

    def restart_delay(previous: float | None, ran: float) -> float:
        decided.append([30.0, 0.2][len(decided)])  # the first to die waits long, then briefly
        return decided[-1]

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    monkeypatch.setattr(worker, "restart_delay", restart_delay)
    monkeypatch.setattr(worker.signal, "signal", lambda *args: None)  # not the main thread
    runner = threading.Thread(target=supervisor.run)
    runner.start()
    try:
        wait_until(lambda: len(spawned) == 2, 5)
        spawned[0].alive = False
        wait_until(lambda: decided == [30.0], 5, message="the first death seen")
        spawned[1].alive = False
        # The second is back after its 0.2 s while the first still waits its 30 s.
        wait_until(lambda: len(spawned) == 3, 10, message="the second process restarted")
        assert supervisor._children[1] is spawned[2] and supervisor._children[0] is spawned[0]
    finally:
        supervisor.stop()
        runner.join(10)
    assert not runner.is_alive()


def test_a_failed_fork_is_tried_again_later_and_the_supervisor_keeps_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = in_memory_supervisor(1)
    spawned: list[FakeChild] = []
    attempts: list[int] = []

    def spawn() -> FakeChild:
        attempts.append(1)
        if len(attempts) == 2:  # the first restart
            raise OSError(11, "Resource temporarily unavailable")
        spawned.append(FakeChild())
        return spawned[-1]

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    monkeypatch.setattr(worker, "restart_delay", lambda previous, ran: 0.1)
    monkeypatch.setattr(worker.signal, "signal", lambda *args: None)
    runner = threading.Thread(target=supervisor.run)
    with caplog.at_level("ERROR", logger="nagatha.worker"):
        runner.start()
        try:
            wait_until(lambda: len(spawned) == 1, 5)
            spawned[0].alive = False
            wait_until(lambda: len(spawned) == 2, 10, message="restarted after the failed fork")
            assert runner.is_alive() and supervisor._children == [spawned[1]]
        finally:
            supervisor.stop()
            runner.join(10)
    assert "could not start a worker process" in caplog.text


def test_sigterm_in_a_worker_process_before_its_own_handlers_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supervisor = in_memory_supervisor(1)
    real_pid = worker.os.getpid()
    monkeypatch.setattr(worker.os, "getpid", lambda: real_pid + 1)  # as in a forked child
    with pytest.raises(SystemExit) as info:
        supervisor.stop()
    assert info.value.code == 0 and not supervisor._stopping.is_set()
