"""HTTP load for the task contract: keep-alive clients, bounded loops, per-request timings.

Every loop is bounded twice: a fixed number of tasks per client and a deadline for the whole
round; a task not final by then is counted as lost, never waited on forever.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from harness import percentile

FINAL = frozenset({"success", "failure"})
WAIT_S = 10


class Client:
    """One keep-alive connection; reconnects once when the server closed it."""

    def __init__(self, port: int, timeout: float = 70.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection before reading the request.
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.getheader("connection", "").lower() == "close":
                self.close()
            try:
                return response.status, json.loads(data) if data else None
            except ValueError:
                return response.status, data[:200]
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def submit(self, message: str) -> tuple[float, int, str | None]:
        """POST one ``echo_bot.echo``; return (seconds, HTTP status, task id)."""
        body = {"task_name": "echo_bot.echo", "kwargs": {"message": message}}
        start = time.perf_counter()
        status, data = self.request("POST", "/tasks/run", body)
        elapsed = time.perf_counter() - start
        task_id = data.get("task_id") if status == 202 and isinstance(data, dict) else None
        return elapsed, status, task_id

    def wait_final(self, task_id: str, deadline: float) -> str:
        """Long-poll ``GET /tasks/{id}?wait=`` until final or ``deadline``; the last status."""
        status_text = "lost"
        while time.monotonic() < deadline:
            wait = max(1, min(WAIT_S, int(deadline - time.monotonic())))
            try:
                code, data = self.request("GET", f"/tasks/{task_id}?wait={wait}")
            except OSError:
                self.close()
                continue
            if code != 200 or not isinstance(data, dict):
                status_text = f"http {code}"
                time.sleep(0.05)
                continue
            status_text = str(data.get("status"))
            if status_text in FINAL:
                return status_text
        return "lost"


@dataclass
class RoundResult:
    """Timings and outcomes of one round."""

    elapsed: float = 0.0
    submit_latency: list[float] = field(default_factory=list)
    round_trip: list[float] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    lost: int = 0
    task_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def merge(self, other: RoundResult) -> None:
        self.submit_latency += other.submit_latency
        self.round_trip += other.round_trip
        self.ok += other.ok
        self.failed += other.failed
        self.lost += other.lost
        self.task_ids += other.task_ids
        self.errors += other.errors[:3]

    def figures(self, prefix: str = "") -> dict[str, float]:
        ms = 1000.0
        return {
            "submit_p50_ms": percentile(self.submit_latency, 50) * ms,
            "submit_p99_ms": percentile(self.submit_latency, 99) * ms,
            "rt_p50_ms": percentile(self.round_trip, 50) * ms,
            "rt_p99_ms": percentile(self.round_trip, 99) * ms,
        }


def _run_clients(clients: int, work: Any) -> RoundResult:
    """Run ``work(index, result)`` in ``clients`` threads started together; merge the results."""
    results = [RoundResult() for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def body(index: int) -> None:
        barrier.wait()
        try:
            work(index, results[index])
        except Exception as exc:  # counted, never fatal: the round still reports
            results[index].errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    total = RoundResult(elapsed=time.perf_counter() - start)
    for result in results:
        total.merge(result)
    return total


def closed_loop(port: int, clients: int, per_client: int, timeout: float) -> RoundResult:
    """Each client: POST, then long-poll until final, ``per_client`` times."""
    deadline = time.monotonic() + timeout

    def work(index: int, result: RoundResult) -> None:
        client = Client(port)
        try:
            for n in range(per_client):
                if time.monotonic() > deadline:
                    result.lost += per_client - n
                    return
                start = time.perf_counter()
                try:
                    elapsed, code, task_id = client.submit(f"c{index}-{n}")
                except OSError as exc:
                    client.close()
                    result.failed += 1
                    result.errors.append(f"POST: {type(exc).__name__}: {exc}")
                    continue
                result.submit_latency.append(elapsed)
                if task_id is None:
                    result.failed += 1
                    result.errors.append(f"POST answered {code}")
                    continue
                outcome = client.wait_final(task_id, deadline)
                if outcome == "success":
                    result.ok += 1
                    result.round_trip.append(time.perf_counter() - start)
                elif outcome == "lost":
                    result.lost += 1
                else:
                    result.failed += 1
        finally:
            client.close()

    return _run_clients(clients, work)


def open_loop(port: int, clients: int, per_client: int, timeout: float) -> RoundResult:
    """Each client POSTs ``per_client`` tasks back to back (submit rate, submit latency)."""
    deadline = time.monotonic() + timeout

    def work(index: int, result: RoundResult) -> None:
        client = Client(port)
        try:
            for n in range(per_client):
                if time.monotonic() > deadline:
                    result.lost += per_client - n
                    return
                try:
                    elapsed, code, task_id = client.submit(f"s{index}-{n}")
                except OSError as exc:
                    client.close()
                    result.failed += 1
                    result.errors.append(f"POST: {type(exc).__name__}: {exc}")
                    continue
                result.submit_latency.append(elapsed)
                if task_id is None:
                    result.failed += 1
                    result.errors.append(f"POST answered {code}")
                else:
                    result.task_ids.append(task_id)
        finally:
            client.close()

    return _run_clients(clients, work)


def collect(port: int, task_ids: list[str], clients: int, timeout: float) -> RoundResult:
    """Wait for every task of ``task_ids`` to be final: counts ok, failed and lost."""
    deadline = time.monotonic() + timeout

    def work(index: int, result: RoundResult) -> None:
        client = Client(port)
        try:
            for task_id in task_ids[index::clients]:
                outcome = client.wait_final(task_id, deadline)
                if outcome == "success":
                    result.ok += 1
                elif outcome == "lost":
                    result.lost += 1
                else:
                    result.failed += 1
        finally:
            client.close()

    return _run_clients(clients, work)
