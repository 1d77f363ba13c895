"""Scenario ``bridge``: a Celery client sends N tasks to the queue ``celery`` and waits for all.

Contenders consume the same queue, one at a time (each is started for its round and stopped
after it; start-up and a warm-up are not timed), with the same number of processes:

* hub: ``nagatha bridge`` (1 process) + ``nagatha worker`` (``W - 1`` processes under a
  supervisor) - the bridge turns each Celery message into a Dramatiq message and writes the
  result where the client waits (Redis backend). Configured like the Celery worker, whose
  result backend is Redis: ``bridge.rpc_replies`` off (a Celery worker with a Redis backend
  sends no ``rpc://`` replies either; with them on, every result is also published, with a
  confirm, to the client's ``reply_to``);
* celery: a real ``celery worker -c W`` (prefork, ``W`` children under the master).

The client is a stock Celery app: ``send_task("echo_bot.echo", kwargs=...)`` with the Redis
result backend, then ``ResultSet.get`` polling every 50 ms. Time runs from the first send to
the last result.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import ResultSet
from harness import CONTENDERS, Proc, QueueProbe, Services, Skip, Stack
from report import Ratio, Scenario
from scenario_ceiling import InRound
from scenario_http import hub_command_available

HUB, CELERY, CEILING = "hub_bridge", "celery", "ceiling"
MESSAGE = "bench"
#: Seconds between the client's polls for results (same for both contenders).
POLL_S = 0.05


@dataclass(frozen=True)
class BridgeParams:
    """Size of the bridge scenario."""

    rounds: int
    tasks: int
    processes: int = 2
    threads: int = 8
    timeout: float = 180.0
    ceiling: InRound | None = None


def client_app(services: Services) -> Celery:
    """A stock Celery client of this run's vhost and Redis DB."""
    app = Celery("bench_client", broker=services.amqp_url, backend=services.redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


def _start(services: Services, name: str, params: BridgeParams) -> Stack:
    if name == HUB:
        reason = hub_command_available("bridge")
        if reason:
            raise Skip(reason)
        workers = max(1, params.processes - 1)
        env = services.hub_env(NAGATHA_BRIDGE_RPC_REPLIES="false")
        worker = Proc(
            "hub-worker",
            [sys.executable, "-m", "nagatha", "worker", "--processes", str(workers),
             "--threads", str(params.threads)],
            env,
            services.workdir,
        )  # fmt: skip
        bridge = Proc(
            "hub-bridge", [sys.executable, "-m", "nagatha", "bridge"], env, services.workdir
        )
        stack = Stack(
            HUB,
            [worker, bridge],
            f"nagatha bridge (1 process) + nagatha worker ({workers} x {params.threads} threads)",
        )
        probes = [("default", workers), ("celery", 1)]
    else:
        worker = Proc(
            "celery-bridge-rival",
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-c",
             str(params.processes), "-P", "prefork", "-Q", "celery", "-l", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            services.contender_env(),
            services.workdir,
            cwd=CONTENDERS,
        )  # fmt: skip
        stack = Stack(
            CELERY,
            [worker],
            f"celery worker prefork -c {params.processes}, Redis backend, track_started, acks_late",
        )
        probes = [("celery", 1)]
    try:
        for queue, count in probes:
            probe = QueueProbe(services.amqp_url, queue)
            try:
                probe.wait_consumers(count, 90, stack)
            finally:
                probe.close()
    except (Skip, TimeoutError):
        stack.stop()
        raise
    return stack


def _send_and_wait(
    app: Celery, services: Services, count: int, timeout: float
) -> tuple[float, int, int]:
    """Send ``count`` echo tasks, wait for all; return (seconds, failed, lost)."""
    start = time.perf_counter()
    results = []
    with app.producer_or_acquire() as producer:
        for n in range(count):
            results.append(
                app.send_task(
                    "echo_bot.echo",
                    kwargs={"message": f"{MESSAGE}-{n}"},
                    task_id=services.task_id(),
                    producer=producer,
                )
            )
    group = ResultSet(results, app=app)
    try:
        # Celery polls the backend for a ResultSet (MGET of the pending ids) every ``interval``
        # seconds, 0.5 by default: that would round each round's time up to half a second.
        values = group.get(timeout=timeout, propagate=False, interval=POLL_S)
    except CeleryTimeout:
        values = None
    elapsed = time.perf_counter() - start
    if values is None:
        lost = sum(1 for r in results if not r.ready())
        failed = sum(1 for r in results if r.ready() and r.state != "SUCCESS")
    else:
        lost = 0
        failed = sum(1 for n, v in enumerate(values) if v != f"{MESSAGE}-{n}")
    return elapsed, failed, lost


def run(services: Services, params: BridgeParams) -> Scenario:
    scenario = Scenario(
        "bridge",
        "Bridge: a Celery client sends N tasks (Redis backend) and waits for every result",
        params={
            "tasks": params.tasks,
            "rounds": params.rounds,
            "processes": params.processes,
            "threads": params.threads,
        },
        ratio_specs=[
            Ratio("tasks_per_s", HUB, CELERY, (">=", 1.0)),
            Ratio("cpu_ms_per_task", HUB, CELERY),
            Ratio("broker_cpu_ms_per_task", HUB, CELERY),
            Ratio("tasks_per_s", HUB, CEILING),
            Ratio("tasks_per_s", CELERY, CEILING),
        ],
    )
    app = client_app(services)
    names = [HUB, CELERY]
    peak: dict[str, dict[str, Any]] = {}
    try:
        for index in range(params.rounds):
            order = names if index % 2 == 0 else names[::-1]
            if params.ceiling is not None:
                scenario.add(CEILING, params.ceiling.figures("publish"))
            for name in order:
                if name in scenario.skipped:
                    continue
                try:
                    stack = _start(services, name, params)
                except (Skip, TimeoutError) as exc:
                    scenario.skip(name, str(exc))
                    continue
                try:
                    scenario.contenders[name] = stack.description
                    _, warm_failed, warm_lost = _send_and_wait(app, services, 10, 60)
                    if warm_failed or warm_lost:
                        scenario.skip(name, f"warm-up: {warm_failed} failed, {warm_lost} lost")
                        continue
                    cpu_before = stack.cpu()
                    servers_before = services.servers.snapshot()
                    elapsed, failed, lost = _send_and_wait(
                        app, services, params.tasks, params.timeout
                    )
                    cpu_used = stack.cpu() - cpu_before
                    stack.check()
                    scenario.add(
                        name,
                        {
                            "tasks_per_s": (params.tasks - lost) / elapsed,
                            "failed": failed,
                            "lost": lost,
                            "cpu_ms_per_task": 1000 * cpu_used / params.tasks,
                            **services.servers.figures(servers_before, params.tasks),
                        },
                    )
                    memory = stack.memory()
                    if memory["peak_rss_mb_sum"] >= peak.get(name, {}).get("peak_rss_mb_sum", 0):
                        peak[name] = memory
                    print(
                        f"  bridge round {index + 1}/{params.rounds} {name}: "
                        f"{(params.tasks - lost) / elapsed:.0f} tasks/s",
                        flush=True,
                    )
                finally:
                    stack.stop()
    finally:
        app.close()
    scenario.memory = peak
    return scenario
