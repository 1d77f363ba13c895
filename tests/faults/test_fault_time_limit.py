"""A task past its time limit fails clearly and frees its worker thread."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fault_kit import Outcome, executions, summarize, wait_final

from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

LIMIT_MS = 1000
SLEEP_SECONDS = 8.0


def test_a_task_past_its_time_limit_fails_and_frees_the_only_thread(
    fault_env: dict[str, str],
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    # Given a worker with one thread and a 1 s time limit for every task
    worker = start_worker(
        processes=1, threads=1, env={**fault_env, "NAGATHA_WORKER_TIME_LIMIT": str(LIMIT_MS)}
    )
    # When a task that would sleep 8 s is followed by a quick one
    slow = fault_hub.submit("diagnostics.sleep", kwargs={"seconds": SLEEP_SECONDS}).task_id
    quick = fault_hub.submit("diagnostics.add", kwargs={"x": 1, "y": 2}).task_id

    # Then the slow one fails with a clear error and the quick one runs on the freed thread
    records = wait_final(fault_hub.store, [slow, quick], timeout=60)
    slow_record, quick_record = records[slow], records[quick]
    assert slow_record is not None and quick_record is not None
    assert slow_record.started_at and slow_record.completed_at and quick_record.completed_at
    ran_for = (slow_record.completed_at - slow_record.started_at).total_seconds()
    freed_after = (quick_record.completed_at - slow_record.started_at).total_seconds()
    outcome = summarize(
        f"time limit {LIMIT_MS} ms on an {SLEEP_SECONDS:g} s task",
        "1 worker thread: sleep 8 s, then add(1, 2)",
        records,
        executions([worker.log()]),
        None,
        f"killed after {ran_for:.1f} s: failure '{slow_record.error}'; the next task finished "
        f"{freed_after:.1f} s after the slow one started, on the same thread",
        limited_after_s=round(ran_for, 2),
    )
    outcome.recovery_s = freed_after
    record_fault(outcome)
    assert slow_record.status == "failure"
    assert slow_record.error is not None and "time limit exceeded" in slow_record.error
    assert slow_record.retries == 0
    assert ran_for < LIMIT_MS / 1000 + 2.5
    assert quick_record.status == "success" and quick_record.result == 3
    assert freed_after < SLEEP_SECONDS / 2
    assert outcome.executed_twice == 0
