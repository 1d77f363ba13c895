"""`nagatha serve --embedded`: API and worker in one process, no RabbitMQ or Redis (the
``embedded`` fixture is in ``tests/conftest.py``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nagatha.testing import HubProcess, free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_and_wait(client: httpx.Client, task_name: str, **kwargs: object) -> dict[str, Any]:
    """Submit ``task_name`` (202 required) and answer its record once final (20 s at most)."""
    response = client.post("/tasks/run", json={"task_name": task_name, "kwargs": kwargs})
    assert response.status_code == 202, response.text
    record: dict[str, Any] = client.get(response.json()["status_url"], params={"wait": 20}).json()
    return record


def test_embedded_hub_adds_20_and_22_over_http(
    embedded: tuple[HubProcess, httpx.Client],
) -> None:
    _, client = embedded
    record = run_and_wait(client, "diagnostics.add", x=20, y=22)
    assert (record["status"], record["result"]) == ("success", 42)


def test_embedded_hub_lists_its_own_worker_with_what_it_ran(
    embedded: tuple[HubProcess, httpx.Client],
) -> None:
    process, client = embedded
    assert run_and_wait(client, "diagnostics.add", x=1, y=2)["result"] == 3

    def counted() -> list[dict[str, object]] | None:
        workers: list[dict[str, object]] = client.get("/workers").json()["workers"]
        return workers if workers and workers[0]["counts"] == {**ZERO, "succeeded": 1} else None

    workers = wait_until(counted, timeout=30, message="the worker's next announcement")
    assert len(workers) == 1
    assert (workers[0]["kind"], workers[0]["pid"]) == ("worker", process.pid)
    assert workers[0]["concurrency"] == 8  # worker.threads


ZERO = {"succeeded": 0, "failed": 0, "retried": 0, "skipped": 0}


def test_embedded_hub_is_healthy_and_lists_its_tasks(
    embedded: tuple[HubProcess, httpx.Client],
) -> None:
    _, client = embedded
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert "memory://" in health["checks"]["broker"]["detail"]
    names = {task["name"] for task in client.get("/tasks").json()["tasks"]}
    assert {"diagnostics.add", "echo_bot.echo"} <= names


def test_embedded_worker_enforces_time_limits(embedded: tuple[HubProcess, httpx.Client]) -> None:
    _, client = embedded
    body = {"task_name": "diagnostics.sleep", "kwargs": {"seconds": 20}}
    task_id = client.post("/tasks/run", json=body).json()["task_id"]
    record = client.get(f"/tasks/{task_id}", params={"wait": 15}).json()
    assert record["status"] == "failure"
    assert "TimeLimitExceeded" in record["error"]


def test_embedded_hub_stops_on_sigterm(embedded: tuple[HubProcess, httpx.Client]) -> None:
    process, _ = embedded
    assert process.stop(timeout=30) == 0
    assert "embedded hub stopping" in process.log()


def test_embedded_hub_answers_a_burst_of_connections(
    embedded: tuple[HubProcess, httpx.Client],
) -> None:
    """100 clients connecting at once: a listen backlog of 5 left a third unanswered."""
    _, client = embedded
    address = (client.base_url.host, client.base_url.port)
    answers: list[bytes | str] = []
    gate = threading.Barrier(100)

    def one() -> None:
        gate.wait(30)
        try:
            with socket.create_connection(address, timeout=20) as sock:
                sock.sendall(b"GET /ping HTTP/1.0\r\nHost: hub\r\n\r\n")
                answers.append(sock.recv(12))
        except OSError as exc:
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [b"HTTP/1.0 200"] * 100


def test_a_hung_heartbeat_does_not_hold_the_embedded_hub_open(
    bare_env: dict[str, str], start_process: type[HubProcess], tmp_path: Path
) -> None:
    (tmp_path / "mods" / "stuck").mkdir(parents=True)
    (tmp_path / "mods" / "stuck" / "__init__.py").write_text(
        "import threading\n"
        "def heartbeat():\n"
        "    threading.Event().wait()\n"
        "def register_tasks(registry):\n"
        "    pass\n"
    )
    port = free_port()
    env = {**bare_env, "NAGATHA_MODULES_PATHS": str(tmp_path / "mods")}
    process = start_process(["serve", "--embedded", "--port", str(port)], env)
    process.wait_for_ping(f"http://127.0.0.1:{port}")
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
    assert health["modules"]["stuck"]["status"] == "timeout"
    assert process.stop(timeout=30) == 0


def test_embedded_hub_refuses_a_chunked_body_at_once(
    embedded: tuple[HubProcess, httpx.Client],
) -> None:
    # wsgiref cannot read chunked bodies: without the refusal the request waited for the
    # client to give up. gunicorn reads them (tests/integration/test_api.py).
    _, client = embedded

    def chunks() -> Iterator[bytes]:
        yield b'{"task_name": "diagnostics.noop"}'

    response = client.post("/tasks/run", content=chunks(), timeout=10)
    assert response.status_code == 411
    assert "Content-Length" in response.json()["description"]
    assert client.get("/ping").status_code == 200
