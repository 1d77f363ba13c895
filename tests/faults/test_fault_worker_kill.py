"""Worker SIGKILL with tasks in flight and prefetched: a new worker finishes every one."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from fault_kit import (
    Outcome,
    count_status,
    executions,
    kill_tree,
    records_of,
    summarize,
    wait_final,
)

from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

TASKS = 40
PROCESSES, THREADS = 2, 2
#: Dramatiq prefetches 2 x threads per process; that many messages can be unacked per process.
UNACKED_BOUND = PROCESSES * 2 * THREADS


def test_a_sigkilled_worker_loses_no_task_and_leaves_none_started(
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    # Given a worker of 2 processes x 2 threads, busy with 40 queued sleep tasks
    store = fault_hub.store
    first = start_worker(processes=PROCESSES, threads=THREADS)
    ids = [
        fault_hub.submit(
            "diagnostics.sleep", kwargs={"seconds": round(random.uniform(0.2, 0.5), 2)}
        ).task_id
        for _ in range(TASKS)
    ]
    wait_until(
        lambda: (
            count_status(store, ids, "success") >= 4 and count_status(store, ids, "started") >= 2
        ),
        60,
        interval=0.02,
        message="tasks finished and in flight",
    )

    # When the supervisor and its worker processes are SIGKILLed, then a new worker starts
    children = first.children()
    kill_tree(first, children)
    killed_at = time.monotonic()
    at_kill = records_of(store, ids)
    in_flight = sorted(i for i, r in at_kill.items() if r is not None and r.status == "started")
    done_before = sum(1 for r in at_kill.values() if r is not None and r.status.final)
    second = start_worker(processes=1, threads=4)
    restarted_at = time.monotonic()

    # Then every task finishes, none stays started, and only unacked ones ran twice
    records = wait_final(store, ids, timeout=90)
    starts = executions([first.log(), second.log()])
    outcome = summarize(
        "worker SIGKILL (supervisor + 2 procs)",
        f"{TASKS} sleep 0.2-0.5 s, 2x2 threads, prefetch 4/proc",
        records,
        starts,
        restarted_at,
        f"{len(in_flight)} started and {done_before} done at the kill; RabbitMQ redelivered "
        "every unacked message to the new worker; the killed ones ran again there",
        in_flight=len(in_flight),
        new_worker_boot_s=round(restarted_at - killed_at, 2),
    )
    record_fault(outcome)
    assert outcome.lost == 0, {
        i: r and r.status for i, r in records.items() if not r or not r.status.final
    }
    assert all(r is not None and r.status == "success" for r in records.values())
    assert not [i for i, r in records.items() if r is not None and r.status == "started"]
    assert all(starts[i] >= 2 for i in in_flight), "an in-flight task was not run again"
    assert outcome.executed_twice <= UNACKED_BOUND
    assert all(starts[i] >= 1 for i in ids)
