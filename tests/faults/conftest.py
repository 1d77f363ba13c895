"""Fault fixtures: servers of our own to break, hub processes, and the results table.

* ``rabbit_node`` (session) - a private RabbitMQ node on free ports; halted at the end.
* ``redis_private`` - a private append-only Redis for one test; stopped at the end.
* ``fault_env`` / ``fault_config`` / ``fault_hub`` - a hub on a fresh vhost of that node and
  that Redis, for subprocesses and for in-test submitters.
* ``start_worker`` - ``nagatha worker`` subprocesses; every one still running is stopped at
  teardown, and any worker process it left behind is killed by PID.
* ``record_fault`` - adds a test's figures to ``tests/faults/results.json`` and to the
  terminal summary (``faults/report.py``).

Missing ``rabbitmq-server``/``redis-server`` skips these tests locally and fails them in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_kit import Outcome, RabbitNode, RedisServer, ServerError, _alive, _is_ours
from faults.report import PLUGIN_NAME

from nagatha.config import FrameworkConfig, load_config
from nagatha.hub import create_hub
from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess, missing_service

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "modules"


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this session's own; the shared one is never touched."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(tool) is None:
            missing_service(f"{tool} is not installed")
    node = RabbitNode(Path(tempfile.mkdtemp(prefix="nagatha-faults-rmq-")))
    try:
        node.start()
    except (ServerError, OSError) as exc:
        node.stop()
        missing_service(f"a private RabbitMQ node could not be started: {exc}")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def redis_private() -> Iterator[RedisServer]:
    """An append-only Redis of this test's own on a free port (it may be killed)."""
    if shutil.which("redis-server") is None:
        missing_service("redis-server is not installed")
    server = RedisServer(Path(tempfile.mkdtemp(prefix="nagatha-faults-redis-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker_url(rabbit_node: RabbitNode) -> str:
    """AMQP URL of a fresh vhost on the private node."""
    return rabbit_node.add_vhost()


@pytest.fixture
def fault_env(broker_url: str, redis_private: RedisServer, tmp_path: Path) -> dict[str, str]:
    """Environment of hub subprocesses: private broker vhost, private Redis, shipped modules."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    env.update(
        {
            "HOME": str(home),
            "NAGATHA_BROKER_URL": broker_url,
            "NAGATHA_BROKER_CONNECT_TIMEOUT": "2",
            "NAGATHA_RESULTS_URL": redis_private.url,
            "NAGATHA_RESULTS_SOCKET_TIMEOUT": "2",
            "NAGATHA_MODULES_PATHS": str(MODULES),
            "NAGATHA_LOGGING_LEVEL": "INFO",
            "NAGATHA_WORKER_SHUTDOWN_GRACE": "5",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture
def fault_config(fault_env: dict[str, str]) -> FrameworkConfig:
    """The config the hub subprocesses of ``fault_env`` see."""
    home = Path(fault_env["HOME"])
    return load_config(env=fault_env, home=home, cwd=home).config


@pytest.fixture
def fault_hub(fault_config: FrameworkConfig) -> Iterator[TaskRegistry]:
    """A hub in the test process (the submitters' side); its connections closed at the end."""
    registry = create_hub(fault_config)
    try:
        yield registry
    finally:
        registry.broker.close()
        registry.store.close()


@pytest.fixture
def start_worker(fault_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., HubProcess]]:
    """Start ``nagatha worker -p P -t T`` and wait until every process consumes."""
    started: list[tuple[HubProcess, set[int]]] = []

    def start(
        processes: int = 1, threads: int = 4, env: dict[str, str] | None = None
    ) -> HubProcess:
        process = HubProcess(
            ["worker", "--processes", str(processes), "--threads", str(threads)],
            env or fault_env,
            cwd=tmp_path,
        )
        children: set[int] = set()
        started.append((process, children))
        process.wait_for_log(r"worker process \d+ consuming", timeout=90, count=processes)
        children.update(process.children())
        return process

    yield start
    for process, children in started:
        children.update(process.children())
        if process.process.poll() is None:
            process.stop(timeout=30)
        for pid in children:
            if _alive(pid) and _is_ours(pid):
                os.kill(pid, signal.SIGKILL)
        if process.process.returncode not in (0, -9, -15):
            sys.stderr.write(f"\n--- nagatha {' '.join(process.args)} ---\n{process.log()[-4000:]}")
        process.log_path.unlink(missing_ok=True)


@pytest.fixture
def record_fault(request: pytest.FixtureRequest) -> Callable[[Outcome], None]:
    """Record a test's figures for the summary (printed, and written to results.json)."""

    def record(outcome: Outcome) -> None:
        entry = {"test": request.node.name, **outcome.as_dict()}
        request.config.pluginmanager.get_plugin(PLUGIN_NAME).record(entry)
        print(f"\nFAULT RESULT {json.dumps(entry)}")

    return record
