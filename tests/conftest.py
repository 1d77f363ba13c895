"""Fixtures: one per collaborator, each isolated and cleaned up.

Integration fixtures need the local RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379). When
one is missing they skip locally and **fail** when ``CI`` or ``NAGATHA_REQUIRE_SERVICES`` is set,
so CI can never pass without having run them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from faults.report import PLUGIN_NAME, FaultReport

from nagatha.config import FrameworkConfig, load_config
from nagatha.testing import (
    LOOPBACK,
    HubProcess,
    RabbitVhost,
    RedisPrefix,
    free_port,
    interrupt_on_sigterm,
    missing_service,
    port_open,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "modules"


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped by SIGTERM still stops the servers and processes its fixtures started.
    interrupt_on_sigterm()
    config.pluginmanager.register(FaultReport(), PLUGIN_NAME)


def require_service(name: str, port: int) -> None:
    """Fail (CI) or skip (locally) unless ``name`` answers on loopback ``port``."""
    if port_open(LOOPBACK, port):
        return
    missing_service(f"{name} is not answering on {LOOPBACK}:{port}")


@pytest.fixture(scope="session")
def rabbitmq() -> None:
    """RabbitMQ must answer."""
    require_service("RabbitMQ", 5672)


@pytest.fixture(scope="session")
def redis_server() -> None:
    """Redis must answer."""
    require_service("Redis", 6379)


@pytest.fixture(scope="session")
def vhost(rabbitmq: None) -> Iterator[RabbitVhost]:
    """A RabbitMQ vhost for this test session, deleted at the end."""
    with RabbitVhost() as created:
        yield created


@pytest.fixture
def redis_prefix(redis_server: None) -> Iterator[RedisPrefix]:
    """A unique Redis key prefix (DB 15) for one test, its keys deleted at the end."""
    prefix = RedisPrefix()
    yield prefix
    prefix.cleanup()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty home directory, so no ~/.nagatha of the developer leaks into a test."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def hub_env(vhost: RabbitVhost, redis_prefix: RedisPrefix, home: Path) -> dict[str, str]:
    """Environment for hub subprocesses: own vhost, own Redis prefix, shipped modules."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    env.update(
        {
            "HOME": str(home),
            "NAGATHA_BROKER_URL": vhost.url,
            "NAGATHA_RESULTS_URL": redis_prefix.url,
            "NAGATHA_RESULTS_PREFIX": redis_prefix.prefix,
            "NAGATHA_MODULES_PATHS": str(MODULES),
            "NAGATHA_LOGGING_LEVEL": "INFO",
            "NAGATHA_WORKER_SHUTDOWN_GRACE": "5",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture
def hub_config(hub_env: dict[str, str], home: Path) -> FrameworkConfig:
    """The config the hub processes of ``hub_env`` see, for in-test clients."""
    return load_config(env=hub_env, home=home, cwd=home).config


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[type[HubProcess]]:
    """Start ``nagatha`` subprocesses; every one still running is stopped at teardown."""
    started: list[HubProcess] = []

    class Tracked(HubProcess):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            kwargs.setdefault("cwd", str(tmp_path))
            super().__init__(*args, **kwargs)
            started.append(self)

    yield Tracked
    for process in started:
        if process.process.poll() is None:
            process.stop(timeout=20)
        if process.process.returncode not in (0, -9, -15):
            sys.stderr.write(
                f"\n--- log of nagatha {' '.join(process.args)} ---\n{process.log()[-4000:]}"
            )


@pytest.fixture
def worker(hub_env: dict[str, str], start_process: type[HubProcess]) -> HubProcess:
    """A running ``nagatha worker`` (1 process, 4 threads) on the test vhost."""
    process = start_process(["worker", "--processes", "1", "--threads", "4"], hub_env)
    process.wait_for_log(r"worker process \d+ consuming", timeout=60)
    return process


@pytest.fixture
def temp_dir() -> Iterator[Path]:
    """A temporary directory outside pytest's tmp_path (for module trees)."""
    with tempfile.TemporaryDirectory(prefix="nagatha-") as name:
        yield Path(name)


@pytest.fixture
def bare_env(home: Path) -> dict[str, str]:
    """No broker, store or module settings at all: what a newcomer's shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    env.update({"HOME": str(home), "PYTHONPATH": str(ROOT), "NAGATHA_WORKER_TIME_LIMIT": "1000"})
    return env


@pytest.fixture
def embedded(
    bare_env: dict[str, str], start_process: type[HubProcess]
) -> Iterator[tuple[HubProcess, httpx.Client]]:
    """A ``nagatha serve --embedded`` subprocess (no services) and a client of it."""
    port = free_port()
    process = start_process(["serve", "--embedded", "--port", str(port)], bare_env)
    process.wait_for_log(rf"embedded hub serving on http://127\.0\.0\.1:{port}", timeout=60)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_until(lambda: client.get("/ping").status_code == 200, 30, message="/ping")
        yield process, client
