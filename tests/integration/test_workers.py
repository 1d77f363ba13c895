"""``GET /workers`` and ``nagatha workers`` against real RabbitMQ, Redis and processes.

Worker processes and bridges announce themselves in Redis (:mod:`nagatha.presence`); the API
under gunicorn and the CLI read what they announced. Staleness is judged by Redis's clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from nagatha.config import FrameworkConfig
from nagatha.stores import RedisStatusStore
from nagatha.testing import (
    LOOPBACK,
    HubProcess,
    RabbitVhost,
    RedisPrefix,
    TcpRelay,
    free_port,
    run_cli,
    wait_until,
)
from nagatha.types import WorkerInfo, utcnow

pytestmark = pytest.mark.integration

TOKEN = "workers-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def announcement(worker_id: str, interval: float) -> WorkerInfo:
    hostname, pid = worker_id.rsplit(":", 1)
    return WorkerInfo(
        id=worker_id,
        kind="worker",
        hostname=hostname,
        pid=int(pid),
        version="test",
        queues=["default"],
        concurrency=2,
        started_at=utcnow(),
        interval=interval,
    )


def test_redis_store_lists_what_was_announced_by_its_own_clock(
    hub_config: FrameworkConfig, redis_prefix: RedisPrefix
) -> None:
    store = RedisStatusStore(hub_config.results.url, prefix=hub_config.results.prefix)
    raw = redis.Redis.from_url(hub_config.results.url, decode_responses=True)
    entries, until = f"{redis_prefix.prefix}workers", f"{redis_prefix.prefix}workers:until"
    try:
        store.announce(announcement("short:1", 0.1))  # gone 0.3 s after its announcement
        store.announce(announcement("long:2", 60))
        # Another version's entries, or garbage: left out, the others still listed.
        good = announcement("odd:0", 60).model_dump(mode="json")
        odd = {
            "odd:3": b'{"id": "odd:3"}',
            "odd:4": b"\xff\xfe not UTF-8",
            "odd:5": json.dumps({**good, "started_at": "2026-01-01T00:00:00"}).encode(),
            "odd:6": json.dumps({**good, "interval": "NaN"}).encode(),
            "odd:7": json.dumps({**good, "interval": -1}).encode(),
            # Past what /metrics could sum as a float: the whole scrape would be lost.
            "odd:8": json.dumps({**good, "concurrency": 10**400}).encode(),
        }
        binary = redis.Redis.from_url(hub_config.results.url)
        for worker_id, entry in odd.items():
            binary.hset(entries, worker_id, entry)
            binary.zadd(until, {worker_id: 4_000_000_000})
        binary.close()
        first = {worker.id: worker for worker in store.workers()}
        assert set(first) == {"short:1", "long:2"}
        assert 0 <= (first["long:2"].seen_seconds_ago or 0) < 5
        assert 0 < raw.ttl(entries) <= 86_400 and 0 < raw.ttl(until) <= 86_400

        for worker_id in odd:
            store.withdraw(worker_id)
        wait_until(
            lambda: [w.id for w in store.workers()] == ["long:2"],
            timeout=10,
            message="the short-lived entry gone by Redis's clock",
        )
        assert raw.hexists(entries, "short:1")  # read-only: dropped by the next announcement
        store.announce(announcement("long:2", 60))
        assert not raw.hexists(entries, "short:1") and raw.zscore(until, "short:1") is None

        store.withdraw("long:2")
        store.withdraw("never:4")
        assert not raw.hexists(entries, "long:2") and raw.zscore(until, "long:2") is None
        assert store.workers() == []
    finally:
        raw.close()
        store.close()


def get_workers(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/workers")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    workers: list[dict[str, Any]] = response.json()["workers"]
    return workers


def by_kind(workers: list[dict[str, Any]], kind: str) -> dict[int, dict[str, Any]]:
    return {worker["pid"]: worker for worker in workers if worker["kind"] == kind}


@pytest.fixture
def own_vhost(rabbitmq: None) -> Iterator[RabbitVhost]:
    """A vhost of the test's own, deleted after its processes stopped (request it before
    ``start_process``): the test leaves a long task running, which the session's vhost would
    hand to the next test's worker."""
    with RabbitVhost() as vhost:
        yield vhost


def test_workers_and_bridges_are_listed_with_what_they_run(
    own_vhost: RabbitVhost, hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    celery_queue = f"workers-celery-{uuid.uuid4().hex[:8]}"
    env = {
        **hub_env,
        "NAGATHA_BROKER_URL": own_vhost.url,
        "NAGATHA_API_TOKENS": TOKEN,
        "NAGATHA_WORKER_PRESENCE_INTERVAL": "0.5",  # a killed process is gone 1.5 s later
        "NAGATHA_BRIDGE_QUEUES": celery_queue,
        "NAGATHA_WORKER_SHUTDOWN_GRACE": "1",  # the sleep still runs when the test ends
    }
    worker = start_process(["worker", "--processes", "2", "--threads", "3"], env)
    worker.wait_for_log(r"worker process \d+ consuming", timeout=60, count=2)
    bridge = start_process(["bridge"], env)
    bridge.wait_for_log(r"bridge (\S+) consuming", timeout=60)
    port = free_port()
    api = start_process(["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    api.wait_for_ping(f"http://127.0.0.1:{port}")

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=10) as client:
        assert client.get("/workers", headers={"Authorization": ""}).status_code == 401
        children = set(worker.children())
        workers = wait_until(
            lambda: (
                (listed := get_workers(client))
                and set(by_kind(listed, "worker")) == children
                and set(by_kind(listed, "bridge")) == {bridge.pid}
                and listed
            ),
            timeout=30,
            message="both worker processes and the bridge listed",
        )
        hostname = socket.gethostname()
        for entry in workers:
            assert entry["id"] == f"{hostname}:{entry['pid']}"
            assert entry["state"] == "running" and entry["interval"] == 0.5
            assert 0 <= entry["seen_seconds_ago"] < 30
        the_bridge = by_kind(workers, "bridge")[bridge.pid]
        assert the_bridge["queues"] == [celery_queue] and the_bridge["counts"] == {"handled": 0}
        for entry in by_kind(workers, "worker").values():
            assert entry["concurrency"] == 3 and entry["queues"] == ["default"]

        submitted = client.post(
            "/tasks/run", json={"task_name": "diagnostics.sleep", "kwargs": {"seconds": 60}}
        )
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]

        def running_on() -> int | None:
            for pid, entry in by_kind(get_workers(client), "worker").items():
                if [task["task_id"] for task in entry["running"]] == [task_id]:
                    assert entry["running"][0]["task_name"] == "diagnostics.sleep"
                    return pid
            return None

        first = wait_until(running_on, timeout=30, message="the sleep shown running")

        shown = run_cli(["workers"], env)
        assert shown.returncode == 0, shown.stderr
        for text in (f"{hostname}:{first}", f"{hostname}:{bridge.pid}", task_id, "bridge"):
            assert text in shown.stdout
        as_json = run_cli(["workers", "--json"], env)
        assert as_json.returncode == 0, as_json.stderr
        ids = {entry["id"] for entry in json.loads(as_json.stdout)["workers"]}
        assert ids == {entry["id"] for entry in workers}

        # A killed process leaves the list on its own; RabbitMQ hands its task to the other
        # process, and the supervisor starts a new one.
        os.kill(first, signal.SIGKILL)
        second = wait_until(
            lambda: (pid := running_on()) and pid != first and pid,
            timeout=60,
            message="the task redelivered to the other worker process",
        )
        wait_until(
            lambda: (
                (pids := set(by_kind(get_workers(client), "worker")))
                and first not in pids
                and second in pids
                and len(pids) == 2
            ),
            timeout=60,
            message="the killed process gone, its replacement listed",
        )


def test_a_stopped_worker_or_bridge_leaves_the_list_at_once(
    hub_env: dict[str, str], hub_config: FrameworkConfig, start_process: type[HubProcess]
) -> None:
    # Gone by expiry only after 3 x 60 s: leaving at once means the process withdrew itself.
    env = {
        **hub_env,
        "NAGATHA_WORKER_PRESENCE_INTERVAL": "60",
        "NAGATHA_BRIDGE_QUEUES": f"workers-celery-{uuid.uuid4().hex[:8]}",
    }
    store = RedisStatusStore(hub_config.results.url, prefix=hub_config.results.prefix)
    try:
        worker = start_process(["worker", "--processes", "1", "--threads", "1"], env)
        worker.wait_for_log(r"worker process \d+ consuming", timeout=60)
        bridge = start_process(["bridge"], env)
        bridge.wait_for_log(r"bridge (\S+) consuming", timeout=60)
        wait_until(
            lambda: {w.kind for w in store.workers()} == {"worker", "bridge"},
            timeout=30,
            message="both announced",
        )
        assert worker.stop(timeout=30) == 0
        assert [w.kind for w in store.workers()] == ["bridge"]
        assert bridge.stop(timeout=30) == 0
        assert store.workers() == []
    finally:
        store.close()


def test_a_worker_stops_within_its_grace_while_redis_does_not_answer(
    hub_env: dict[str, str], hub_config: FrameworkConfig, start_process: type[HubProcess]
) -> None:
    # Its last announcements must not hold the stop: the supervisor kills a worker process
    # that outlives the grace period (5 s here) by 10 s.
    store = RedisStatusStore(hub_config.results.url, prefix=hub_config.results.prefix)
    with TcpRelay(LOOPBACK, 6379) as relay:
        env = {
            **hub_env,
            "NAGATHA_RESULTS_URL": f"redis://{LOOPBACK}:{relay.port}/15",
            "NAGATHA_WORKER_PRESENCE_INTERVAL": "0.5",
        }
        worker = start_process(["worker", "--processes", "1", "--threads", "1"], env)
        worker.wait_for_log(r"worker process \d+ consuming", timeout=60)
        try:
            wait_until(store.workers, timeout=30, message="the worker announced")
            relay.freeze()
            assert worker.stop(timeout=60) == 0
        finally:
            store.close()
    log = worker.log()
    assert "did not stop in time" not in log
    assert re.search(r"worker process \d+ stopping", log) and "supervisor" in log
