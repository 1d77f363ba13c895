"""Redis connection loss and outage under load, on a Redis server of the test's own.

The status store is killed (SIGKILL) and started again on the same port and directory
(append-only file), while submitters and a busy worker run. Workers hold a result they cannot
write (the message stays unacked and the final write is retried); submits fail with
``StoreUnavailable`` before anything is published.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from fault_kit import (
    Load,
    Outcome,
    RedisServer,
    count_status,
    executions,
    summarize,
    wait_final,
    wait_submitted,
)

from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

#: Seconds the store stays away.
OUTAGE_SECONDS = 4.0
BACKLOG = 12
HELD_LINE = re.compile(r"task ([0-9a-f-]{36}) \S+: store unavailable, holding")


def test_redis_loss_and_outage_lose_no_result_and_enqueue_nothing_refused(
    redis_private: RedisServer,
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    store = fault_hub.store
    # Given a busy worker and two submitters
    worker = start_worker(processes=1, threads=4)
    load = Load(fault_hub, threads=2, interval=0.08, seconds=(0.05, 0.2)).start()
    down_at = up_at = time.monotonic()
    try:
        wait_submitted(load, 20)
        # When Redis drops every client connection, the clients reconnect unnoticed
        with redis_private.client() as admin:
            dropped = admin.client_kill_filter(_type="normal", skipme=True)
        wait_submitted(load, 20)
        refused_by_loss = len(load.refused)

        # When Redis is killed while tasks run and others wait in the queue
        backlog = [load.submit_one(0.5) for _ in range(BACKLOG)]
        wait_until(
            lambda: count_status(store, [i for i in backlog if i], "started") >= 2,
            30,
            message="backlog running",
        )
        down_at = time.monotonic()
        redis_private.kill()
        try:
            wait_until(
                lambda: (
                    time.monotonic() - down_at >= OUTAGE_SECONDS
                    and len(load.refused_between(down_at, time.monotonic())) >= 2
                ),
                OUTAGE_SECONDS + 30,
                message="submits refused during the outage",
            )
        finally:
            # ... and started again on the same port and directory
            redis_private.start()
        up_at = time.monotonic()
        wait_submitted(load, 20)
    finally:
        load.stop()

    # Then every accepted task has its final record, and nothing refused ever ran
    records = wait_final(store, load.ids, timeout=90)
    refused = load.refused_between(down_at, up_at)
    slowest = max((r.seconds for r in refused), default=0.0)
    starts = executions([worker.log()])
    refused_ids = [r.task_id for r in load.refused]
    ran_anyway = [i for i in refused_ids if starts[i]]
    # A create that reached Redis just before the kill, whose reply was lost, leaves a pending
    # record nobody has the id of (it expires with results.ttl); it must never have run.
    left = {i: r for i in refused_ids if (r := store.get(i)) is not None}
    held = len(set(HELD_LINE.findall(worker.log())))
    outcome = summarize(
        f"Redis CLIENT KILL + SIGKILL {OUTAGE_SECONDS:g} s + restart (AOF)",
        "2 submitter threads ~25/s sleep 0.05-0.2 s + 12 x 0.5 s backlog, worker 1x4",
        records,
        starts,
        up_at,
        f"CLIENT KILL dropped {dropped} connections, {refused_by_loss} submits refused by it; "
        f"outage: {len(refused)} submits refused with StoreUnavailable (slowest "
        f"{slowest:.2f} s), none enqueued; worker held the final write of {held} tasks "
        "(message unacked, retried) and wrote them after the restart",
        dropped_connections=dropped,
        refused=len(load.refused),
        slowest_refusal_s=round(slowest, 3),
        held_tasks=held,
        refused_left_pending=len(left),
    )
    record_fault(outcome)
    assert load.unexpected == []
    assert refused_by_loss == 0
    assert refused and {r.error for r in refused} == {"StoreUnavailable"}
    assert ran_anyway == []
    assert all(r.status == "pending" for r in left.values())
    assert held > 0, "no final write was held: the outage did not hit a running task"
    assert outcome.lost == 0
    assert all(r is not None and r.status == "success" for r in records.values())
    assert worker.process.poll() is None, worker.log()[-3000:]
    assert "died with exit code" not in worker.log(), worker.log()[-6000:]


SHUTDOWN_GRACE = 6.0


def test_a_result_held_when_the_worker_is_stopped_is_redelivered_not_acked(
    redis_private: RedisServer,
    fault_env: dict[str, str],
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    store = fault_hub.store
    env = {**fault_env, "NAGATHA_WORKER_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE)}
    # Given a worker holding two finished results because Redis is down
    first = start_worker(processes=1, threads=2, env=env)
    # 3 s: still running when Redis is killed, however late this test sees them start
    ids = [fault_hub.submit("diagnostics.sleep", kwargs={"seconds": 3.0}).task_id for _ in range(2)]
    wait_until(lambda: count_status(store, ids, "started") == 2, 30, message="both started")
    redis_private.kill()
    down_at = time.monotonic()
    try:
        wait_until(lambda: set(ids) <= set(HELD_LINE.findall(first.log())), 60, message="both held")
        # When the worker is stopped (SIGTERM) while it still holds them
        first.signal(15)
        code = first.process.wait(SHUTDOWN_GRACE + 30)
    finally:
        # ... and the store comes back, and a new worker starts
        redis_private.start()
    up_at = time.monotonic()
    second = start_worker(processes=1, threads=2, env=env)

    # Then both tasks end with their final record (run again by the new worker)
    records = wait_final(store, ids, timeout=60)
    outcome = summarize(
        "Redis down + worker SIGTERM while holding",
        f"2 sleep 1 s finished during the outage, grace {SHUTDOWN_GRACE:g} s",
        records,
        executions([first.log(), second.log()]),
        up_at,
        f"first worker exited {code} after {up_at - down_at:.1f} s with both results "
        "unwritten; the messages were not acked, RabbitMQ redelivered them and the new "
        "worker ran and recorded them",
    )
    record_fault(outcome)
    assert code == 0
    assert outcome.lost == 0, {i: r and r.status for i, r in records.items()}
    assert all(r is not None and r.status == "success" for r in records.values())
