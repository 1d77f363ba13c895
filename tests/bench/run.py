"""Benchmark nagatha against FastAPI + Celery, bare Dramatiq, a Celery worker and raw pika.

Usage::

    python tests/bench/run.py [--quick] [--out FILE] [--only SCENARIO ...] [--rounds N]

Needs RabbitMQ (127.0.0.1:5672, guest, ``rabbitmqctl`` on PATH) and Redis (127.0.0.1:6379)
and the ``bench`` extra. Everything runs on loopback in a vhost of its own and under a Redis
key prefix of its own, removed at the end whatever happens. Prints a Markdown table and writes
the same figures as JSON (see tests/bench/README.md for how to read them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import harness
import scenario_bridge
import scenario_ceiling
import scenario_http
import scenario_worker
from harness import ROOT, Services
from report import Scenario, markdown

SCENARIOS = ("ceiling", "http_e2e", "latency", "worker", "bridge")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"

#: (quick, full) sizes; --rounds overrides the number of rounds.
SIZES = {
    "rounds": (2, 5),
    "ceiling_messages": (3_000, 10_000),
    "ceiling_in_round": (1_000, 4_000),
    "http_tasks": (160, 1_600),
    "latency_samples": (30, 200),
    "worker_tasks": (1_000, 8_000),
    "bridge_tasks": (800, 2_000),
}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    found = {}
    for name in ("nagatha", "dramatiq", "pika", "redis", "falcon", "gunicorn", "celery", "kombu",
                 "fastapi", "uvicorn"):  # fmt: skip
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        found["rabbitmq"] = subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found["rabbitmq"] = "unknown"
    try:
        client = harness.redis.Redis(host="127.0.0.1", port=6379)
        found["redis_server"] = str(client.info("server").get("redis_version"))
        client.close()
    except harness.redis.RedisError:
        found["redis_server"] = "unknown"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        found["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, metavar="SCENARIO",
                        help=f"run only these ({', '.join(SCENARIOS)})")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 2 quick, 5 full)")
    parser.add_argument("--clients", type=int, default=16, help="HTTP clients (default 16)")
    parser.add_argument("--processes", type=int, default=2,
                        help="processes of every contender (default 2)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=8, help="threads per hub process")
    parser.add_argument("--redis-db", type=int, default=11, help="Redis DB (default 11)")
    return parser.parse_args(argv)


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = {key: value[0 if args.quick else 1] for key, value in SIZES.items()}
    rounds = args.rounds or size["rounds"]
    wanted = [s for s in SCENARIOS if not args.only or s in args.only]
    signal.signal(signal.SIGTERM, _on_term)
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "quick": args.quick,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rounds": rounds,
            "machine": machine(),
            "versions": versions(),
            "sizes": {**size, "rounds": rounds},
            "clients": args.clients,
            "processes": args.processes,
            "threads": args.threads,
        }
    }
    scenarios: dict[str, Scenario] = {}
    services = Services(redis_db=args.redis_db)
    try:
        services.open()
        print(f"vhost {services.vhost.name if services.vhost else '?'}, redis db {args.redis_db}, "
              f"prefix {services.hub_prefix}", flush=True)  # fmt: skip
        for key in wanted:
            if key in scenarios:
                continue
            print(f"== {key}", flush=True)
            began = time.monotonic()
            try:
                scenarios.update(_run_scenario(key, wanted, services, args, size, rounds))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken scenario must not stop the others
                failed = Scenario(key, key)
                failed.skip("all", f"error: {type(exc).__name__}: {exc}")
                scenarios[key] = failed
            print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        harness.stop_all()
        services.close()
    for key in SCENARIOS:
        if key in scenarios:
            results[key] = scenarios[key].to_json()
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["meta"]["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    print(f"\nJSON written to {args.out} ({results['meta']['duration_s']:.0f} s)")
    return 0


def _run_scenario(
    key: str,
    wanted: list[str],
    services: Services,
    args: argparse.Namespace,
    size: dict[str, int],
    rounds: int,
) -> dict[str, Scenario]:
    probe = scenario_ceiling.InRound(
        services.amqp_url, size["ceiling_in_round"], args.processes, args.threads
    )
    if key == "ceiling":
        params = scenario_ceiling.CeilingParams(
            rounds, size["ceiling_messages"], args.processes, args.threads
        )
        return {key: scenario_ceiling.run(services.amqp_url, params)}
    if key in ("http_e2e", "latency"):
        http = scenario_http.HttpParams(
            rounds=rounds,
            clients=args.clients,
            tasks=size["http_tasks"],
            latency_samples=size["latency_samples"],
            workers=args.processes,
            threads=args.threads,
            ceiling=probe,
        )
        both = {k for k in ("http_e2e", "latency") if k in wanted}
        return dict(scenario_http.run(services, http, both))
    if key == "worker":
        params_w = scenario_worker.WorkerParams(
            rounds, size["worker_tasks"], args.processes, args.threads, ceiling=probe
        )
        return {key: scenario_worker.run(services, params_w)}
    params_b = scenario_bridge.BridgeParams(
        rounds, size["bridge_tasks"], args.processes, args.threads, ceiling=probe
    )
    return {key: scenario_bridge.run(services, params_b)}


if __name__ == "__main__":
    sys.exit(main())
