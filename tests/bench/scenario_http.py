"""Scenarios ``http_e2e`` and ``latency``: the hub's HTTP API against FastAPI + Celery.

Both stacks run side by side for the whole scenario (each idles while the other is measured),
with the same process counts: a gunicorn master with ``W`` workers, plus a worker supervisor
with ``W`` worker processes (hub: ``nagatha serve`` + ``nagatha worker``; contender: gunicorn
with uvicorn workers + ``celery worker -c W``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpload
from harness import (
    CONTENDERS,
    Proc,
    QueueProbe,
    ServerCpu,
    Services,
    Skip,
    Stack,
    stop_procs,
    wait_until,
)
from report import Ratio, Scenario
from scenario_ceiling import InRound

from nagatha.testing import free_port

HUB, FASTAPI, CEILING = "hub", "fastapi_celery", "ceiling"


@dataclass(frozen=True)
class HttpParams:
    """Sizes of the two HTTP scenarios."""

    rounds: int
    clients: int
    tasks: int
    latency_samples: int
    workers: int = 2
    threads: int = 8
    timeout: float = 120.0
    ceiling: InRound | None = None


def _ping(port: int) -> bool:
    try:
        client = httpload.Client(port, timeout=2)
        code, _ = client.request("GET", "/ping")
        client.close()
        return code == 200
    except OSError:
        return False


def hub_command_available(command: str) -> str | None:
    """``None`` if ``nagatha COMMAND --help`` works, else why not."""
    done = subprocess.run(
        [sys.executable, "-m", "nagatha", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
    return f"`nagatha {command}` is not available yet ({' '.join(last)[:160]})"


def start_hub(services: Services, params: HttpParams) -> tuple[Stack, int]:
    reason = hub_command_available("serve")
    if reason:
        raise Skip(reason)
    port = free_port()
    env = services.hub_env()
    w, t = str(params.workers), str(params.threads)
    api = Proc(
        "hub-api",
        [sys.executable, "-m", "nagatha", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", w, "--threads", t],
        env,
        services.workdir,
    )  # fmt: skip
    worker = Proc(
        "hub-worker",
        [sys.executable, "-m", "nagatha", "worker", "--processes", w, "--threads", t],
        env,
        services.workdir,
    )
    stack = Stack(
        HUB,
        [api, worker],
        f"nagatha serve (gunicorn gthread {w}x{t}) + nagatha worker ({w} processes x {t} threads)",
    )
    return stack, port


def start_fastapi(services: Services, params: HttpParams) -> tuple[Stack, int]:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"install the bench extra ({', '.join(missing)} missing)")
    port = free_port()
    env = services.contender_env()
    w = str(params.workers)
    api = Proc(
        "fastapi",
        [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", w,
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "fastapi_celery_app:app"],
        env,
        services.workdir,
        cwd=CONTENDERS,
    )  # fmt: skip
    worker = Proc(
        "celery-worker",
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-c", w, "-P", "prefork",
         "-Q", "celery", "-l", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        env,
        services.workdir,
        cwd=CONTENDERS,
    )  # fmt: skip
    stack = Stack(
        FASTAPI,
        [api, worker],
        f"FastAPI under gunicorn ({w} uvicorn workers) + celery worker (prefork -c {w}), "
        "Redis backend, task_track_started, acks_late, confirm_publish",
    )
    return stack, port


def _wait_ready(stack: Stack, port: int, queue: str, consumers: int, url: str) -> None:
    def up() -> bool:
        stack.check()
        return _ping(port)

    wait_until(up, 90, interval=0.2, message=f"{stack.name} HTTP")
    probe = QueueProbe(url, queue)
    try:
        probe.wait_consumers(consumers, 90, stack)
    finally:
        probe.close()
    # Warm-up: imports, connections and first requests of every process, not measured.
    warm = httpload.closed_loop(port, 4, 5, 60)
    if warm.ok < 20:
        raise Skip(f"{stack.name} failed the warm-up: {warm.ok}/20 ok {warm.errors[:2]}")


def run(services: Services, params: HttpParams, want: set[str]) -> dict[str, Scenario]:
    """Run ``http_e2e`` and/or ``latency`` (keys in ``want``) on one pair of stacks."""
    e2e = Scenario(
        "http_e2e",
        "HTTP end to end: N clients POST /tasks/run echo_bot.echo, long-poll until final",
        params={
            "clients": params.clients,
            "tasks_per_phase": params.tasks,
            "rounds": params.rounds,
            "gunicorn_workers": params.workers,
            "threads": params.threads,
            "worker_processes": params.workers,
        },
        ratio_specs=[
            Ratio("tasks_per_s", HUB, FASTAPI, (">=", 2.0)),
            Ratio("submit_rate_per_s", HUB, FASTAPI),
            Ratio("rt_p99_ms", HUB, FASTAPI, ("<=", 1.0)),
            Ratio("submit_p99_ms", HUB, FASTAPI, ("<=", 1.0)),
            Ratio("cpu_ms_per_task", HUB, FASTAPI),
            Ratio("api_cpu_ms_per_task", HUB, FASTAPI),
            Ratio("broker_cpu_ms_per_task", HUB, FASTAPI),
            Ratio("tasks_per_s", HUB, CEILING),
            Ratio("tasks_per_s", FASTAPI, CEILING),
        ],
    )
    latency = Scenario(
        "latency",
        "Single-task latency: one client, POST then GET ?wait= until final",
        params={"samples": params.latency_samples, "rounds": params.rounds},
        ratio_specs=[
            Ratio("rt_p50_ms", HUB, FASTAPI),
            Ratio("rt_p99_ms", HUB, FASTAPI),
        ],
    )
    scenarios = {"http_e2e": e2e, "latency": latency}
    stacks: dict[str, tuple[Stack, int]] = {}
    try:
        queues = {HUB: "default", FASTAPI: "celery"}
        for name, start in ((HUB, start_hub), (FASTAPI, start_fastapi)):
            try:
                stacks[name] = start(services, params)
            except Skip as exc:
                for key in want:
                    scenarios[key].skip(name, str(exc))
        for name, (stack, port) in list(stacks.items()):
            try:
                _wait_ready(stack, port, queues[name], 1, services.amqp_url)
                for scenario in scenarios.values():
                    scenario.contenders[name] = stack.description
            except (Skip, TimeoutError) as exc:
                for key in want:
                    scenarios[key].skip(name, str(exc))
                stacks.pop(name)[0].stop()
        names = list(stacks)
        for index in range(params.rounds):
            order = names if index % 2 == 0 else names[::-1]
            if params.ceiling is not None and "http_e2e" in want and names:
                e2e.add(CEILING, params.ceiling.figures("publish"))
            for name in order:
                stack, port = stacks[name]
                if "http_e2e" in want:
                    e2e.add(name, _e2e_round(stack, port, params, services.servers))
                if "latency" in want:
                    latency.add(name, _latency_round(port, params))
                print(f"  http round {index + 1}/{params.rounds} {name} done", flush=True)
        for name, (stack, _) in stacks.items():
            for scenario in scenarios.values():
                scenario.memory[name] = stack.memory()
    finally:
        stop_procs([proc for stack, _ in stacks.values() for proc in stack.procs])
    return {key: scenarios[key] for key in want}


def _e2e_round(stack: Stack, port: int, params: HttpParams, servers: ServerCpu) -> dict[str, Any]:
    per_client = max(1, params.tasks // params.clients)
    cpu_before, api_before = stack.cpu(), stack.procs[0].cpu()
    servers_before = servers.snapshot()
    burst = httpload.open_loop(port, params.clients, per_client, params.timeout)
    drained = httpload.collect(port, burst.task_ids, params.clients, params.timeout)
    loop = httpload.closed_loop(port, params.clients, per_client, params.timeout)
    cpu_used, api_used = stack.cpu() - cpu_before, stack.procs[0].cpu() - api_before
    tasks = len(burst.task_ids) + loop.ok + loop.failed
    stack.check()
    figures = {
        "submit_rate_per_s": len(burst.task_ids) / burst.elapsed,
        "submit_p50_ms": burst.figures()["submit_p50_ms"],
        "submit_p99_ms": burst.figures()["submit_p99_ms"],
        "tasks_per_s": loop.ok / loop.elapsed,
        "rt_p50_ms": loop.figures()["rt_p50_ms"],
        "rt_p99_ms": loop.figures()["rt_p99_ms"],
        "lost": burst.lost + drained.lost + loop.lost,
        "failed": burst.failed + drained.failed + loop.failed,
        "cpu_ms_per_task": 1000 * cpu_used / max(1, tasks),
        "api_cpu_ms_per_task": 1000 * api_used / max(1, tasks),
        **servers.figures(servers_before, tasks),
    }
    errors = burst.errors + drained.errors + loop.errors
    if errors:
        print(f"    {stack.name}: {len(errors)} client errors, e.g. {errors[0]}", flush=True)
    return figures


def _latency_round(port: int, params: HttpParams) -> dict[str, Any]:
    result = httpload.closed_loop(port, 1, params.latency_samples, params.timeout)
    time.sleep(0.05)
    return {
        "rt_p50_ms": result.figures()["rt_p50_ms"],
        "rt_p99_ms": result.figures()["rt_p99_ms"],
        "lost": result.lost,
        "failed": result.failed,
    }
