"""SIGTERM to a busy worker: in-flight tasks finish within the grace, nothing is lost."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import pytest
from fault_kit import (
    SUCCEEDED_LINE,
    Outcome,
    count_status,
    executions,
    records_of,
    summarize,
    wait_final,
)

from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

GRACE = 2.0
SHORT_TASKS = 24
LONG_SECONDS = 10.0  # well past the moment of the SIGTERM, however loaded the machine


def test_sigterm_finishes_in_flight_work_within_the_grace_and_loses_nothing(
    fault_env: dict[str, str],
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    store = fault_hub.store
    env = {**fault_env, "NAGATHA_WORKER_SHUTDOWN_GRACE": str(GRACE)}
    # Given a busy worker (2 processes x 2 threads) and one task longer than the grace period
    first = start_worker(processes=2, threads=2, env=env)
    long_id = fault_hub.submit("diagnostics.sleep", kwargs={"seconds": LONG_SECONDS}).task_id
    short = [
        fault_hub.submit(
            "diagnostics.sleep", kwargs={"seconds": round(random.uniform(0.2, 0.6), 2)}
        ).task_id
        for _ in range(SHORT_TASKS)
    ]
    ids = [long_id, *short]
    wait_until(
        lambda: (
            count_status(store, short, "success") >= 3
            and count_status(store, ids, "started") >= 3
            and count_status(store, [long_id], "started") == 1
        ),
        60,
        interval=0.02,
        message="short tasks in flight while the long one runs",
    )

    # When the supervisor gets SIGTERM
    at_term = records_of(store, short)
    in_flight = [i for i, r in at_term.items() if r is not None and r.status == "started"]
    termed_at = time.monotonic()
    first.signal(15)
    code = first.process.wait(GRACE + 30)
    stopped_in = time.monotonic() - termed_at
    first_log = first.log()

    # Then it stops within the grace, having finished what was in flight except the long task
    finished_by_first = set(SUCCEEDED_LINE.findall(first_log))
    long_after_stop = store.get(long_id)
    second = start_worker(processes=1, threads=4, env=env)
    restarted_at = time.monotonic()
    records = wait_final(store, ids, timeout=60)
    starts = executions([first_log, second.log()])
    outcome = summarize(
        f"SIGTERM, grace {GRACE:g} s",
        f"{SHORT_TASKS} sleep 0.2-0.6 s + 1 x {LONG_SECONDS:g} s, 2x2 threads",
        records,
        starts,
        restarted_at,
        f"stopped in {stopped_in:.1f} s with exit {code}; the {len(in_flight)} short tasks in "
        f"flight finished before exit; the {LONG_SECONDS:g} s task was cut at the grace, left "
        f"'{long_after_stop.status if long_after_stop else None}' and was redelivered to the "
        "next worker; prefetched messages went back to the queue unstarted",
        stop_s=round(stopped_in, 2),
        in_flight=len(in_flight),
    )
    record_fault(outcome)
    assert code == 0
    assert stopped_in < GRACE + 5
    assert not re.search(r"did not stop in time", first_log)
    assert set(in_flight) <= finished_by_first
    assert long_id not in finished_by_first and starts[long_id] == 2
    assert outcome.lost == 0
    assert all(r is not None and r.status == "success" for r in records.values())
    assert {i for i in ids if starts[i] >= 2} == {long_id}
