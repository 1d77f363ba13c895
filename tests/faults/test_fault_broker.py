"""RabbitMQ connection loss and outage under load, on the session's private node.

Submitters run in threads through ``create_hub(config).submit`` while a worker is busy. During
an outage a submit must fail fast with ``BrokerUnavailable`` and leave no pending record; the
worker and the submitters reconnect by themselves; every accepted task reaches a final status.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fault_kit import Load, Outcome, RabbitNode, executions, summarize, wait_final, wait_submitted

from nagatha.config import FrameworkConfig
from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

LOAD = "2 submitter threads ~25/s, sleep 0.05-0.2 s, worker 1x4"
#: Seconds the broker stays away during the outage test.
OUTAGE_SECONDS = 3.0


def _new_load(hub: TaskRegistry) -> Load:
    return Load(hub, threads=2, interval=0.08, seconds=(0.05, 0.2))


def test_connection_loss_is_survived_by_workers_and_submitters(
    rabbit_node: RabbitNode,
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    # Given a busy worker and two submitters
    worker = start_worker(processes=1, threads=4)
    load = _new_load(fault_hub).start()
    try:
        wait_submitted(load, 30)
        # When RabbitMQ closes every client connection
        cut_at = time.monotonic()
        rabbit_node.close_all_connections()
        worker.wait_for_log(r"Consumer encountered a connection error", timeout=30)
        # Then the worker's consumer comes back by itself and tasks submitted after the cut run
        worker.wait_for_log(r"Restarting consumer", timeout=30)
        wait_submitted(load, 40)
        after_cut = load.accepted_after(cut_at)
        wait_until(
            lambda: any(
                (r := fault_hub.store.get(i)) is not None and r.status.final for i in after_cut
            ),
            30,
            message="a task submitted after the cut finished",
        )
    finally:
        load.stop()

    records = wait_final(fault_hub.store, load.ids, timeout=60)
    starts = executions([worker.log()])
    outcome = summarize(
        "RabbitMQ close_all_connections",
        LOAD,
        records,
        starts,
        cut_at,
        f"{len(load.refused)} submits refused (pika reconnected inside enqueue's retries); the "
        "worker logged the connection error and restarted its consumer after 3 s; duplicates "
        "are messages whose ack was lost with the channel",
        refused=len(load.refused),
    )
    record_fault(outcome)
    assert load.unexpected == []
    assert outcome.lost == 0
    assert all(r is not None and r.status == "success" for r in records.values())
    assert worker.process.poll() is None and "died with exit code" not in worker.log()


def test_broker_outage_refuses_fast_and_every_accepted_task_finishes(
    rabbit_node: RabbitNode,
    fault_hub: TaskRegistry,
    fault_config: FrameworkConfig,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    # Given a busy worker and two submitters
    worker = start_worker(processes=1, threads=4)
    load = _new_load(fault_hub).start()
    down_at = up_at = time.monotonic()
    try:
        wait_submitted(load, 30)
        # When RabbitMQ's application stops for a few seconds, and starts again
        try:
            down_at = time.monotonic()
            rabbit_node.stop_app()
            wait_until(
                lambda: (
                    time.monotonic() - down_at >= OUTAGE_SECONDS
                    and len(load.refused_between(down_at, time.monotonic())) >= 5
                ),
                OUTAGE_SECONDS + 30,
                message="submits refused during the outage",
            )
        finally:
            rabbit_node.start_app()
        up_at = time.monotonic()
        # Then submits are accepted again and the worker runs them without a restart
        wait_submitted(load, 40, timeout=30)
        after_outage = load.accepted_after(up_at)
        wait_until(
            lambda: any(
                (r := fault_hub.store.get(i)) is not None and r.status.final for i in after_outage
            ),
            45,
            message="a task submitted after the outage finished",
        )
    finally:
        load.stop()

    records = wait_final(fault_hub.store, load.ids, timeout=60)
    refused = load.refused_between(down_at, up_at)
    slowest = max((r.seconds for r in refused), default=0.0)
    leftovers = {r.task_id: fault_hub.store.get(r.task_id) for r in load.refused}
    phantoms = [i for i, rec in leftovers.items() if rec is not None]
    starts = executions([worker.log()])
    outcome = summarize(
        f"RabbitMQ stop_app {OUTAGE_SECONDS:g} s + start_app",
        LOAD,
        records,
        starts,
        up_at,
        f"{len(refused)} submits refused with BrokerUnavailable (slowest {slowest:.2f} s, "
        f"connect timeout {fault_config.broker.connect_timeout:g} s), no pending record left; "
        "worker consumer retried every 3 s and resumed by itself",
        refused=len(load.refused),
        slowest_refusal_s=round(slowest, 3),
        refused_but_ran=len(phantoms),
    )
    record_fault(outcome)
    assert load.unexpected == []
    assert refused and {r.error for r in refused} == {"BrokerUnavailable"}
    assert slowest <= fault_config.broker.connect_timeout + 1.0
    assert not [i for i, rec in leftovers.items() if rec is not None and not rec.status.final]
    assert outcome.lost == 0
    assert all(r is not None and r.status == "success" for r in records.values())
    assert worker.process.poll() is None and "died with exit code" not in worker.log()
