"""``GET /metrics`` under gunicorn with a ``nagatha worker``, against real RabbitMQ and Redis.

What the API reports comes from other processes: the worker's status writes (counted in
Redis) and RabbitMQ's queues. The same endpoint with a dependency down is in
``tests/integration/test_api.py`` (closed ports).
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nagatha.testing import HubProcess, RabbitVhost, amqp_channel, free_port, run_cli

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def event(task: str, name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("nagatha_task_events_total", (("event", name), ("task", task)))


def queue(metric: str, name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (metric, (("queue", name),))


def test_one_api_reports_the_work_of_the_workers_and_the_queues(
    hub_env: dict[str, str], vhost: RabbitVhost, start_process: type[HubProcess]
) -> None:
    celery_queue, absent = f"metrics-celery-{uuid.uuid4().hex[:8]}", "metrics-absent"
    env = {**hub_env, "NAGATHA_API_TOKENS": TOKEN}
    env["NAGATHA_BRIDGE_QUEUES"] = f"{absent},{celery_queue}"  # no bridge runs: nobody consumes
    with amqp_channel(vhost.url) as channel:
        channel.queue_declare(celery_queue, durable=True)
        for _ in range(2):
            channel.basic_publish("", celery_queue, b"{}")
    try:
        worker = start_process(["worker", "--processes", "1", "--threads", "2"], env)
        worker.wait_for_log(r"worker process \d+ consuming", timeout=60)
        port = free_port()
        start_process(["serve", "--host", "127.0.0.1", "--port", str(port)], env).wait_for_ping(
            f"http://127.0.0.1:{port}"
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60) as api:
            assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
            runs = [("diagnostics.add", {"x": 1, "y": 2})] * 2 + [("diagnostics.fail", {})]
            for name, kwargs in runs:
                accepted = api.post("/tasks/run", json={"task_name": name, "kwargs": kwargs})
                record = api.get(accepted.json()["status_url"], params={"wait": 30}).json()
                assert record["status"] in ("success", "failure")
            later = api.post(
                "/tasks/run", json={"task_name": "diagnostics.noop", "delay_ms": 60_000}
            )
            assert api.delete(later.json()["status_url"]).status_code == 200
            found = scrape(api)
            stats = run_cli(["stats", "--json"], env)  # the same state, for a shell
            failures = api.get("/failures").json()["tasks"]
            listed = run_cli(["failures", "--json"], env)
    finally:
        with amqp_channel(vhost.url) as channel:
            channel.queue_delete(celery_queue)
    assert found[event("diagnostics.add", "submitted")] == 2
    assert found[event("diagnostics.add", "started")] == 2
    assert found[event("diagnostics.add", "succeeded")] == 2
    assert found[event("diagnostics.fail", "failed")] == 1
    assert found[event("diagnostics.noop", "cancelled")] == 1
    assert found[event("diagnostics.sleep", "submitted")] == 0
    add = (("task", "diagnostics.add"),)
    assert found[("nagatha_task_runtime_seconds_bucket", (("le", "+Inf"), *add))] == 2
    assert found[queue("nagatha_queue_consumers", "default")] >= 1
    assert found[queue("nagatha_queue_messages", celery_queue)] == 2
    assert found[queue("nagatha_queue_consumers", celery_queue)] == 0
    assert queue("nagatha_queue_messages", absent) not in found
    assert found[("nagatha_up", (("dependency", "broker"),))] == 1
    assert found[("nagatha_up", (("dependency", "store"),))] == 1
    assert stats.returncode == 0, stats.stderr
    document = json.loads(stats.stdout)
    rows = {row["task"]: row for row in document["tasks"]}
    assert (rows["diagnostics.add"]["succeeded"], rows["diagnostics.add"]["runs"]) == (2, 2)
    assert rows["diagnostics.noop"]["cancelled"] == 1
    assert rows["diagnostics.add"]["p95_at_most_seconds"] is not None
    depths = {row["queue"]: row for row in document["queues"]}
    assert depths[celery_queue] == {"queue": celery_queue, "messages": 2, "consumers": 0}
    assert {name: check["status"] for name, check in document["checks"].items()} == {
        "store": "ok",
        "broker": "ok",
    }
    # The failure the worker wrote, newest first; the cancel is no failure here.
    assert [(r["task_name"], r["status"]) for r in failures] == [("diagnostics.fail", "failure")]
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"tasks": failures}


def test_stats_prints_what_it_can_read_and_exits_3_without_rabbitmq(
    hub_env: dict[str, str],
) -> None:
    env = {**hub_env, "NAGATHA_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/x"}
    done = run_cli(["stats", "--json"], env)
    assert done.returncode == 3
    assert re.fullmatch(r"error: RabbitMQ: .+ \(queue depths not shown\)\n", done.stderr)
    document = json.loads(done.stdout)
    assert document["queues"] is None
    assert document["checks"]["store"]["status"] == "ok"
    assert document["checks"]["broker"]["status"] == "unavailable"
    assert {row["task"] for row in document["tasks"]} >= {"diagnostics.add", "echo_bot.echo"}
    table = run_cli(["stats"], env)
    assert table.returncode == 3 and "diagnostics.add" in table.stdout
    embedded = {**hub_env, "NAGATHA_BROKER_URL": "memory://", "NAGATHA_RESULTS_URL": "memory://"}
    refused = run_cli(["stats"], embedded)
    assert refused.returncode == 2 and "GET /stats and /metrics" in refused.stderr
