"""Scenario ``worker``: drain N no-op tasks already in the broker.

Contenders, each ``W`` processes under one master/supervisor: ``nagatha worker`` (status
tracking in Redis), bare Dramatiq actors (``dramatiq`` CLI, broker without middleware), a
Celery worker (prefork, Redis backend, ``task_track_started``, late acks) and, for reference only,
Dramatiq with just its ``Results`` middleware (one Redis write per task, no target).

All three run for the whole scenario, idle on their own (empty) queue while another is measured.
A round for one contender: pause its process tree (SIGSTOP), publish N messages in its own wire
format to its queue, resume (SIGCONT) and time until the queue has no ready message left. Start-up
is never timed; the last prefetched messages (at most prefetch x processes, under 0.5 % of N in
the full run) are still being processed at that moment.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import dramatiq
import pika
from celery import Celery
from harness import (
    CONTENDERS,
    Proc,
    QueueProbe,
    Services,
    Skip,
    Stack,
    amqp_connection,
    stop_procs,
    unacked,
)
from report import Ratio, Scenario
from scenario_ceiling import InRound

HUB, BARE, RESULTS, CELERY = "hub", "bare_dramatiq", "dramatiq_results", "celery"
CEILING = "ceiling"
QUEUES = {HUB: "default", BARE: "bench_bare", RESULTS: "bench_results", CELERY: "bench_noop"}
ACTORS = {HUB: "diagnostics.noop", BARE: "bench.noop", RESULTS: "bench.noop"}


@dataclass(frozen=True)
class WorkerParams:
    """Size of the worker scenario."""

    rounds: int
    tasks: int
    processes: int = 2
    threads: int = 8
    timeout: float = 300.0
    ceiling: InRound | None = None


def _stacks(services: Services, params: WorkerParams) -> list[tuple[Stack, int]]:
    p, t = str(params.processes), str(params.threads)
    hub = Proc(
        "hub-worker",
        [sys.executable, "-m", "nagatha", "worker", "--processes", p, "--threads", t],
        services.hub_env(),
        services.workdir,
    )
    bare = Proc(
        "bare-dramatiq",
        [sys.executable, "-m", "dramatiq", "bare_dramatiq", "--processes", p, "--threads", t,
         "--path", str(CONTENDERS)],
        services.contender_env(),
        services.workdir,
        cwd=CONTENDERS,
    )  # fmt: skip
    results = Proc(
        "dramatiq-results",
        [sys.executable, "-m", "dramatiq", "bare_dramatiq", "--processes", p, "--threads", t,
         "--path", str(CONTENDERS)],
        services.contender_env(BENCH_DRAMATIQ_RESULTS="1"),
        services.workdir,
        cwd=CONTENDERS,
    )  # fmt: skip
    celery = Proc(
        "celery-noop",
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-c", p, "-P", "prefork",
         "-Q", QUEUES[CELERY], "-l", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        services.contender_env(),
        services.workdir,
        cwd=CONTENDERS,
    )  # fmt: skip
    return [
        (Stack(HUB, [hub], f"nagatha worker {p} processes x {t} threads"), params.processes),
        (Stack(BARE, [bare], f"dramatiq CLI {p} processes x {t} threads, no middleware"),
         params.processes),
        (Stack(RESULTS, [results], f"dramatiq CLI {p} x {t}, only the Results middleware "
         "(Redis backend): informative, one Redis write per task"), params.processes),
        (Stack(CELERY, [celery], f"celery worker prefork -c {p}, Redis backend, track_started, "
         "acks_late"), 1),
    ]  # fmt: skip


def _bodies(services: Services, contender: str, count: int) -> list[tuple[bytes, Any]]:
    """``count`` messages in ``contender``'s wire format: (body, pika properties)."""
    out = []
    if contender in ACTORS:
        props = pika.BasicProperties(delivery_mode=2)
        now = int(time.time() * 1000)
        for _ in range(count):
            message = dramatiq.Message(
                queue_name=QUEUES[contender],
                actor_name=ACTORS[contender],
                args=(),
                kwargs={},
                options={},
                message_id=services.task_id(),
                message_timestamp=now,
            )
            out.append((message.encode(), props))
        return out
    app = Celery("bench_client", broker=services.amqp_url, backend=services.redis_url)
    for _ in range(count):
        task = app.amqp.as_task_v2(services.task_id(), "diagnostics.noop")
        props = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            content_encoding="utf-8",
            headers=task.headers,
            correlation_id=task.properties["correlation_id"],
            reply_to=task.properties["reply_to"] or None,
            priority=0,
        )
        out.append((json.dumps(task.body).encode(), props))
    return out


def _publish(url: str, queue: str, bodies: list[tuple[bytes, Any]]) -> None:
    connection = amqp_connection(url)
    try:
        channel = connection.channel()
        for body, props in bodies:
            channel.basic_publish("", queue, body, props)
        # Same channel, so the declare-ok comes after every publish above was routed.
        channel.queue_declare(queue, passive=True)
    finally:
        connection.close()


def run(services: Services, params: WorkerParams) -> Scenario:
    scenario = Scenario(
        "worker",
        "Worker throughput: drain N no-op tasks already in the broker",
        params={
            "tasks": params.tasks,
            "rounds": params.rounds,
            "processes": params.processes,
            "threads": params.threads,
        },
        ratio_specs=[
            Ratio("tasks_per_s", HUB, BARE, (">=", 0.7)),
            Ratio("tasks_per_s", HUB, CELERY, (">=", 2.0)),
            Ratio("tasks_per_s", HUB, RESULTS),
            Ratio("cpu_ms_per_task", HUB, BARE),
            Ratio("cpu_ms_per_task", HUB, CELERY),
            Ratio("tasks_per_s", HUB, CEILING),
            Ratio("tasks_per_s", BARE, CEILING),
            Ratio("tasks_per_s", CELERY, CEILING),
        ],
    )
    running: list[tuple[Stack, QueueProbe]] = []
    try:
        for stack, consumers in _stacks(services, params):
            probe = QueueProbe(services.amqp_url, QUEUES[stack.name])
            try:
                probe.wait_consumers(consumers, 90, stack)
            except (Skip, TimeoutError) as exc:
                scenario.skip(stack.name, str(exc))
                stack.stop()
                probe.close()
                continue
            running.append((stack, probe))
            scenario.contenders[stack.name] = stack.description
        for index in range(params.rounds):
            order = running if index % 2 == 0 else running[::-1]
            if params.ceiling is not None and running:
                scenario.add(CEILING, params.ceiling.figures("consume"))
            for stack, probe in order:
                figures = _round(services, stack, probe, params)
                scenario.add(stack.name, figures)
                print(
                    f"  worker round {index + 1}/{params.rounds} {stack.name}: "
                    f"{figures['tasks_per_s']:.0f} tasks/s",
                    flush=True,
                )
        in_flight = unacked(services.vhost.name if services.vhost else "")
        for stack, _ in running:
            scenario.memory[stack.name] = stack.memory()
            if in_flight.get(QUEUES[stack.name]):
                scenario.notes.append(
                    f"{stack.name}: {in_flight[QUEUES[stack.name]]} messages unacked at the end"
                )
    finally:
        for _, probe in running:
            probe.close()
        stop_procs([proc for stack, _ in running for proc in stack.procs])
    return scenario


def _round(
    services: Services, stack: Stack, probe: QueueProbe, params: WorkerParams
) -> dict[str, float]:
    queue = QUEUES[stack.name]
    bodies = _bodies(services, stack.name, params.tasks)
    stack.pause()
    try:
        _publish(services.amqp_url, queue, bodies)
    finally:
        cpu_before = stack.cpu()
        servers_before = services.servers.snapshot()
        start = time.perf_counter()
        stack.resume()
    deadline = time.monotonic() + params.timeout
    left = params.tasks
    while time.monotonic() < deadline:
        state = probe.state()
        left = state[0] if state else left
        if left == 0:
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    cpu_used = stack.cpu() - cpu_before
    servers = services.servers.figures(servers_before, params.tasks)
    stack.check()
    # Not timed: let the last prefetched messages finish (at most a few dozen), so the next
    # round starts on an idle machine; rabbitmqctl checks that nothing stayed unacked at the end.
    time.sleep(0.5)
    return {
        "tasks_per_s": (params.tasks - left) / elapsed,
        "cpu_ms_per_task": 1000 * cpu_used / params.tasks,
        **servers,
        "not_drained": float(left),
    }
