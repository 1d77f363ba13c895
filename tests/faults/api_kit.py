"""The HTTP side of the fault tests: a ``nagatha serve`` (gunicorn) and HTTP submitters.

:func:`start_api` starts the API as a subprocess on a free port with the environment of the
private node and Redis; :class:`HttpLoad` posts ``diagnostics.sleep`` tasks from threads with
httpx (timeouts on every request, a new connection per request so that a server shutdown is
seen per request, not as a stale keep-alive connection) and counts every answer.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fault_kit import Submitters

from nagatha.testing import LOOPBACK, HubProcess, free_port, wait_until

#: Seconds an HTTP request may take before the client gives up (counted as a hang).
HTTP_TIMEOUT = 10.0


def start_api(env: dict[str, str], cwd: Path, workers: int = 2, threads: int = 4) -> HubProcess:
    """``nagatha serve`` on a free loopback port; returns once ``/ping`` answers 200."""
    port = free_port()
    process = HubProcess(
        [
            "serve",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--threads",
            str(threads),
        ],
        env,
        cwd=cwd,
    )
    process.base_url = f"http://{LOOPBACK}:{port}"  # type: ignore[attr-defined]
    process.wait_for_ping(process.base_url, timeout=90)  # type: ignore[attr-defined]
    return process


def is_error_shape(response: httpx.Response) -> bool:
    """True if the answer is the API's one JSON error shape (title, description, request id)."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and bool(body.get("title"))
        and bool(body.get("description"))
        and body.get("request_id") == response.headers.get("x-request-id")
    )


@dataclass
class Answer:
    """One HTTP answer (or transport error) with when it started and ended (monotonic)."""

    status: int | None
    error: str | None
    started: float
    ended: float
    task_id: str | None = None
    request_id: str = ""

    @property
    def seconds(self) -> float:
        """How long the request took."""
        return self.ended - self.started


@dataclass
class HttpLoad(Submitters):
    """Threads that post ``diagnostics.sleep`` to ``/tasks/run`` until stopped or ``limit``."""

    base_url: str
    threads: int = 2
    interval: float = 0.05
    seconds: tuple[float, float] = (0.05, 0.2)
    limit: int = 400
    answers: list[Answer] = field(default_factory=list)

    thread_prefix = "http-load"
    join_timeout = HTTP_TIMEOUT + 5

    def post_one(self) -> Answer:
        """Post one task; record and return the answer."""
        body = {
            "task_name": "diagnostics.sleep",
            "kwargs": {"seconds": round(random.uniform(*self.seconds), 3)},
        }
        request_id = uuid.uuid4().hex  # the API logs it: tells a request it handled
        started = time.monotonic()
        try:
            response = httpx.post(
                f"{self.base_url}/tasks/run",
                json=body,
                timeout=HTTP_TIMEOUT,
                headers={"Connection": "close", "X-Request-ID": request_id},
            )
        except httpx.TransportError as exc:
            answer = Answer(None, type(exc).__name__, started, time.monotonic(), None, request_id)
        else:
            task_id = None
            error = None
            if response.status_code == 202:
                task_id = response.json()["task_id"]
            elif not is_error_shape(response):
                error = f"not the error shape: {response.text[:200]}"
            answer = Answer(
                response.status_code, error, started, time.monotonic(), task_id, request_id
            )
        with self._lock:
            self.answers.append(answer)
        return answer

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if len(self.answers) >= self.limit:
                    return
            self.post_one()
            self._stop.wait(self.interval)

    def snapshot(self) -> list[Answer]:
        """Every answer so far."""
        with self._lock:
            return list(self.answers)

    @property
    def ids(self) -> list[str]:
        """Task ids of every 202."""
        return [a.task_id for a in self.snapshot() if a.task_id is not None]

    def accepted_after(self, moment: float) -> list[str]:
        """Ids of 202s whose request started after ``moment``."""
        return [a.task_id for a in self.snapshot() if a.task_id and a.started > moment]

    def between(self, start: float, end: float) -> list[Answer]:
        """Answers whose request started and ended within ``[start, end]``."""
        return [a for a in self.snapshot() if a.started >= start and a.ended <= end]

    def statuses(self) -> Counter[Any]:
        """How many answers of each status (``None`` for transport errors)."""
        return Counter(a.status for a in self.snapshot())


def wait_accepted(load: HttpLoad, count: int, timeout: float = 30) -> None:
    """Wait until ``load`` has ``count`` more 202s than now."""
    target = len(load.ids) + count
    wait_until(lambda: len(load.ids) >= target, timeout, message=f"{count} more 202s")
