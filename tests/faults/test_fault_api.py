"""The HTTP API (gunicorn, ``nagatha serve``) under load through broker and store outages and
its own SIGTERM, on the session's private RabbitMQ node and the test's private Redis.

While RabbitMQ or Redis is away ``POST /tasks/run`` must answer 503 fast (never 500, never a
hang past the client's timeout) and ``/health`` 503; afterwards the same API processes accept
again by themselves, and every 202 reaches a final status.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_kit import HTTP_TIMEOUT, HttpLoad, is_error_shape, start_api, wait_accepted
from fault_kit import Outcome, RabbitNode, RedisServer, executions, summarize, wait_final

from nagatha.registry import TaskRegistry
from nagatha.testing import HubProcess, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

LOAD = "2 HTTP submitter threads ~20/s, sleep 0.05-0.2 s, API 2x4, worker 1x4"
OUTAGE_SECONDS = 3.0


@pytest.fixture
def api(fault_env: dict[str, str], tmp_path: Path) -> Iterator[HubProcess]:
    """``nagatha serve`` (2 workers x 4 threads) on the private broker and Redis."""
    process = start_api(fault_env, tmp_path)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.stop(timeout=40)
        process.log_path.unlink(missing_ok=True)


def _get(url: str) -> httpx.Response | str:
    try:
        return httpx.get(url, timeout=HTTP_TIMEOUT)
    except httpx.TransportError as exc:
        return type(exc).__name__


def _common_asserts(load: HttpLoad, outcome: Outcome, api: HubProcess) -> None:
    answers = load.snapshot()
    assert not [a for a in answers if a.status is not None and a.status >= 500 and a.status != 503]
    assert not [a for a in answers if a.error is not None and a.status is not None], "shape"
    assert max(a.seconds for a in answers) < HTTP_TIMEOUT
    assert outcome.lost == 0
    assert "Traceback" not in api.log()


@dataclass
class Outage:
    """What the HTTP load saw around one outage of a service the API depends on."""

    up_at: float
    during: list[Any]
    refused: list[Any]
    slowest: float
    first_ok: float
    probes: dict[str, httpx.Response | str]


def _outage_under_load(
    load: HttpLoad,
    stop: Callable[[], None],
    start: Callable[[], None],
    probe: Callable[[], dict[str, httpx.Response | str]],
) -> Outage:
    """Stop a service under load until 503s were answered, probe, restart it, wait for 202s."""
    try:
        wait_accepted(load, 20)
        down_at = time.monotonic()
        try:
            stop()
            wait_until(
                lambda: (
                    time.monotonic() - down_at >= OUTAGE_SECONDS
                    and sum(1 for a in load.between(down_at, time.monotonic()) if a.status == 503)
                    >= 5
                ),
                OUTAGE_SECONDS + 30,
                message="503s during the outage",
            )
            probes = probe()
        finally:
            start()
        up_at = time.monotonic()
        during = load.between(down_at, up_at)
        wait_accepted(load, 20, timeout=45)
        first_ok = min(a.ended for a in load.snapshot() if a.task_id and a.started > up_at)
    finally:
        load.stop()
    refused = [a for a in during if a.status == 503]
    slowest = max((a.seconds for a in refused), default=0.0)
    return Outage(up_at, during, refused, slowest, first_ok, probes)


def test_broker_outage_answers_503_and_the_api_recovers_by_itself(
    rabbit_node: RabbitNode,
    api: HubProcess,
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    base = api.base_url  # type: ignore[attr-defined]
    worker = start_worker(processes=1, threads=4)
    load = HttpLoad(base, interval=0.1).start()
    run = _outage_under_load(
        load,
        rabbit_node.stop_app,
        rabbit_node.start_app,
        lambda: {"health": _get(f"{base}/health")},
    )
    records = wait_final(fault_hub.store, load.ids, timeout=60)
    up_at, during, refused, slowest = run.up_at, run.during, run.refused, run.slowest
    first_ok, health_down = run.first_ok, run.probes["health"]
    outcome = summarize(
        f"API: RabbitMQ stop_app {OUTAGE_SECONDS:g} s + start_app",
        LOAD,
        records,
        executions([worker.log()]),
        up_at,
        f"{len(refused)} POST /tasks/run answered 503 during the outage (slowest "
        f"{slowest:.2f} s), /health {getattr(health_down, 'status_code', health_down)}; "
        f"first 202 {first_ok - up_at:.1f} s after start_app, no API restart",
        statuses={str(k): v for k, v in load.statuses().items()},
        slowest_503_s=round(slowest, 3),
    )
    record_fault(outcome)
    _common_asserts(load, outcome, api)
    assert refused and all(a.error is None for a in refused)
    assert {a.status for a in during} <= {202, 503}, load.statuses()
    assert isinstance(health_down, httpx.Response) and health_down.status_code == 503
    assert all(r is not None and r.status == "success" for r in records.values())
    assert api.process.poll() is None and worker.process.poll() is None


def test_redis_outage_answers_503_for_the_store_and_the_api_recovers(
    redis_private: RedisServer,
    api: HubProcess,
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    base = api.base_url  # type: ignore[attr-defined]
    worker = start_worker(processes=1, threads=4)
    load = HttpLoad(base, interval=0.1).start()
    known: list[str] = []

    def probe() -> dict[str, httpx.Response | str]:
        return {
            "health": _get(f"{base}/health"),
            "status": _get(f"{base}/tasks/{known[0]}"),
            "list": _get(f"{base}/tasks"),
            "ping": _get(f"{base}/ping"),
        }

    def kill() -> None:
        known.append(load.ids[0])
        redis_private.kill()

    run = _outage_under_load(load, kill, redis_private.start, probe)
    records = wait_final(fault_hub.store, load.ids, timeout=60)
    up_at, during, refused, slowest = run.up_at, run.during, run.refused, run.slowest
    first_ok, probes = run.first_ok, run.probes
    codes = {k: getattr(v, "status_code", v) for k, v in probes.items()}
    outcome = summarize(
        f"API: Redis SIGKILL {OUTAGE_SECONDS:g} s + restart (AOF)",
        LOAD,
        records,
        executions([worker.log()]),
        up_at,
        f"{len(refused)} POST /tasks/run answered 503 (slowest {slowest:.2f} s); during the "
        f"outage {codes}; first 202 {first_ok - up_at:.1f} s after the restart",
        statuses={str(k): v for k, v in load.statuses().items()},
        slowest_503_s=round(slowest, 3),
    )
    record_fault(outcome)
    _common_asserts(load, outcome, api)
    assert refused
    assert {a.status for a in during} <= {202, 503}, load.statuses()
    for name in ("health", "status"):
        probe = probes[name]
        assert isinstance(probe, httpx.Response) and probe.status_code == 503, (name, probe)
        if name != "health":
            assert is_error_shape(probe)
    for name in ("ping", "list"):  # the catalog and liveness do not need the store
        probe = probes[name]
        assert isinstance(probe, httpx.Response) and probe.status_code == 200, (name, probe)
    assert all(r is not None and r.status == "success" for r in records.values())
    assert api.process.poll() is None and worker.process.poll() is None


def test_sigterm_to_the_api_finishes_in_flight_requests(
    api: HubProcess,
    fault_hub: TaskRegistry,
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    base = api.base_url  # type: ignore[attr-defined]
    worker = start_worker(processes=1, threads=4)
    load = HttpLoad(base, interval=0.05).start()
    # Long polls that are certainly inside the API when SIGTERM arrives.
    slow = [fault_hub.submit("diagnostics.sleep", kwargs={"seconds": 4.0}) for _ in range(3)]
    polls: list[httpx.Response | str] = []

    def poll(task_id: str) -> None:
        polls.append(_get(f"{base}/tasks/{task_id}?wait=8"))

    threads = [threading.Thread(target=poll, args=(r.task_id,)) for r in slow]
    try:
        for thread in threads:  # started first: connected long before the SIGTERM below
            thread.start()
        wait_accepted(load, 20)
        wait_until(lambda: len(load.ids) >= 25, 30, message="25 accepted")
        term_at = time.monotonic()
        api.signal(signal.SIGTERM)
        code = api.process.wait(40)
        stopped_after = time.monotonic() - term_at
        for thread in threads:
            thread.join(HTTP_TIMEOUT + 5)
    finally:
        load.stop()

    answers = load.snapshot()
    before = [a for a in answers if a.ended < term_at]
    straddling = [a for a in answers if a.started < term_at <= a.ended]
    after = [a for a in answers if a.started >= term_at]
    refused_connect = [a for a in after if a.error == "ConnectError"]
    # A reset the API logged was a request it handled and whose answer was lost: a failure.
    # One it never logged sat in the listen backlog when the socket closed: never accepted.
    api_log = api.log()
    dropped = [a for a in answers if a.status is None and a.error != "ConnectError"]
    resets = [a for a in dropped if a.request_id in api_log]
    backlog = [a for a in dropped if a.request_id not in api_log]
    answered = sum(1 for a in straddling if a.status is not None)
    accepted = sum(1 for a in straddling if a.status == 202)
    records = wait_final(fault_hub.store, load.ids, timeout=60)
    outcome = summarize(
        "API SIGTERM under load (gunicorn graceful stop)",
        LOAD + " + 3 long polls ?wait=8",
        records,
        executions([worker.log()]),
        term_at,
        f"master exited {code} in {stopped_after:.1f} s; {len(straddling)} requests in flight "
        f"at SIGTERM: {answered} answered ({accepted} x 202), "
        f"{sum(1 for a in straddling if a.error == 'ConnectError')} refused at connect; "
        "3 long polls answered "
        f"{[getattr(p, 'status_code', p) for p in polls]}; {len(refused_connect)} later "
        f"requests refused at connect, {len(backlog)} reset in the listen backlog (never "
        f"accepted), {len(resets)} handled requests reset",
        in_flight=len(straddling),
        resets=len(resets),
        backlog_resets=len(backlog),
    )
    record_fault(outcome)
    assert code == 0, api.log()[-3000:]
    # A ConnectError was never accepted; anything else without an answer is a reset.
    assert not [a for a in before if a.status is None and a.error != "ConnectError"], before
    assert resets == [], resets
    assert all(isinstance(p, httpx.Response) and p.status_code == 200 for p in polls), polls
    assert all(p.json()["status"] == "success" for p in polls if isinstance(p, httpx.Response))
    assert outcome.lost == 0
    assert not [a for a in answers if a.status is not None and a.status >= 500]
