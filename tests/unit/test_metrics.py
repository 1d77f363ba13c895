"""Task metrics (``nagatha/metrics.py``) and ``GET /metrics`` in process (memory hub).

The Redis store's counting (the same fields, in Lua) is ``tests/integration/test_store_metrics.py``;
``/metrics`` under gunicorn against RabbitMQ is ``tests/integration/test_metrics_api.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from falcon.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from nagatha.api import create_app
from nagatha.api.metrics import MetricsCollector
from nagatha.broker_probes import QueueDepths
from nagatha.config import FrameworkConfig
from nagatha.errors import StoreUnavailable
from nagatha.hub import create_hub
from nagatha.metrics import (
    MAX_FIELDS,
    OTHER,
    RUNTIME_BUCKETS,
    RUNTIME_SUM,
    UNREGISTERED,
    Runtime,
    TaskMetrics,
    bucket_of,
    field_name,
)
from nagatha.registry import TaskRegistry
from nagatha.stores.memory import MetricsFields
from nagatha.types import TaskStatus, utcnow
from nagatha.worker import start_worker

TOKEN = "unit-token-1"


def memory_config(**api: Any) -> FrameworkConfig:
    return FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}, "api": api}
    )


@pytest.fixture
def hub() -> Iterator[TaskRegistry]:
    registry = create_hub(memory_config())
    worker = start_worker(registry.broker, threads=2)
    yield registry
    worker.stop(timeout=1000)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of an exposition, parsed by prometheus_client."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def event(task: str, name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("nagatha_task_events_total", (("event", name), ("task", task)))


# -- the counts ------------------------------------------------------------------------------


def test_a_run_time_on_a_bound_falls_in_that_bucket() -> None:
    assert bucket_of(0) == 0
    assert bucket_of(RUNTIME_BUCKETS[0]) == 0
    assert bucket_of(RUNTIME_BUCKETS[3] + 1e-9) == 4
    assert bucket_of(RUNTIME_BUCKETS[-1] * 2) == len(RUNTIME_BUCKETS)


def test_stored_fields_decode_and_what_does_not_decode_is_left_out() -> None:
    fields: dict[str, str | float] = {
        field_name("started", "m.t"): "3",
        field_name(RUNTIME_SUM, "m.t"): "750000",  # microseconds
        field_name(f"runtime:{len(RUNTIME_BUCKETS)}", "m.t"): "2",
        field_name("started", 'we"ird\n'): "1",
        "started\tnot json": "1",
        field_name("started", None): "1",  # a record without a task name
        field_name("bogus", "m.t"): "1",
        field_name(f"runtime:{len(RUNTIME_BUCKETS) + 1}", "m.t"): "1",
        field_name("failed", "m.t"): "nan",
        field_name("failed", "m.u"): "many",
    }
    metrics = TaskMetrics.from_fields(fields)
    assert metrics.events == {("m.t", "started"): 3, ('we"ird\n', "started"): 1}
    runtime = metrics.runtimes["m.t"]
    assert (runtime.total, runtime.count, runtime.buckets[-1]) == (0.75, 2, 2)


def test_past_the_field_limit_new_names_are_counted_as_other() -> None:
    counts = MetricsFields()
    counts.count("started", "known.task")
    counts.fields.update({f"filler\t{index}": 1 for index in range(MAX_FIELDS)})
    counts.count("started", "known.task")
    counts.count("started", "new.task")
    counts.observe("new.task", 0.2)
    metrics = TaskMetrics.from_fields(counts.fields)
    assert metrics.events == {("known.task", "started"): 2, (OTHER, "started"): 1}
    assert list(metrics.runtimes) == [OTHER]


# -- GET /metrics ----------------------------------------------------------------------------


def test_metrics_count_the_events_and_run_times_of_the_tasks_run(hub: TaskRegistry) -> None:
    client = TestClient(create_app(memory_config(), hub))
    ids = [hub.run_task("diagnostics.add", x=1, y=index) for index in range(3)]
    ids.append(hub.run_task("diagnostics.fail"))
    for task_id in ids:
        assert hub.wait_for(task_id, 10).status.final
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(result.text)
    assert found[event("diagnostics.add", "submitted")] == 3
    assert found[event("diagnostics.add", "started")] == 3
    assert found[event("diagnostics.add", "succeeded")] == 3
    assert found[event("diagnostics.add", "failed")] == 0
    assert found[event("diagnostics.fail", "failed")] == 1
    assert found[event("diagnostics.noop", "submitted")] == 0, "registered tasks start at 0"
    add = (("task", "diagnostics.add"),)
    assert found[("nagatha_task_runtime_seconds_count", add)] == 3
    assert found[("nagatha_task_runtime_seconds_bucket", (("le", "+Inf"), *add))] == 3
    assert 0 <= found[("nagatha_task_runtime_seconds_sum", add)] < 10
    assert found[("nagatha_queue_messages", (("queue", "default"),))] == 0
    assert found[("nagatha_up", (("dependency", "broker"),))] == 1
    assert found[("nagatha_up", (("dependency", "store"),))] == 1


def test_a_cancelled_task_counts_as_cancelled(hub: TaskRegistry) -> None:
    client = TestClient(create_app(memory_config(), hub))
    task_id = hub.submit("diagnostics.noop", delay_ms=600_000).task_id
    hub.cancel(task_id)
    found = samples(client.simulate_get("/metrics").text)
    assert found[event("diagnostics.noop", "cancelled")] == 1
    assert found[event("diagnostics.noop", "failed")] == 0


def test_an_unavailable_store_is_reported_in_a_200_with_the_queues(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down() -> TaskMetrics:
        raise StoreUnavailable("Redis at redis://127.0.0.1:1 is unreachable")

    monkeypatch.setattr(hub.store, "metrics", down)
    result = TestClient(create_app(memory_config(), hub)).simulate_get("/metrics")
    assert result.status_code == 200
    found = samples(result.text)
    assert found[("nagatha_up", (("dependency", "store"),))] == 0
    assert ("nagatha_queue_messages", (("queue", "default"),)) in found
    assert not any(name.startswith("nagatha_task_") for name, _ in found)


def test_names_no_module_registered_count_as_one_label(hub: TaskRegistry) -> None:
    odd = 'a"b\\c\nd'  # a Celery client or a stray message may name anything
    defaults = {"task_name": odd, "created_at": utcnow()}
    hub.store.update("odd", TaskStatus.FAILURE, {"error": "NotRegistered: x"}, defaults)
    found = samples(TestClient(create_app(memory_config(), hub)).simulate_get("/metrics").text)
    assert found[event(UNREGISTERED, "failed")] == 1
    assert not [labels for _, labels in found if ("task", odd) in labels]


def test_openmetrics_is_answered_when_asked_for(hub: TaskRegistry) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    result = TestClient(create_app(memory_config(), hub)).simulate_get(
        "/metrics", headers={"Accept": accept}
    )
    assert result.headers["content-type"].startswith("application/openmetrics-text")
    assert result.text.endswith("# EOF\n")


def test_metrics_need_a_token_when_tokens_are_set(hub: TaskRegistry) -> None:
    client = TestClient(create_app(memory_config(tokens=[TOKEN]), hub))
    assert client.simulate_get("/metrics").status_code == 401
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert client.simulate_get("/metrics", headers=authorized).status_code == 200


def test_one_collection_serves_the_requests_of_the_cache_period(hub: TaskRegistry) -> None:
    probed: list[Sequence[str]] = []
    now = [0.0]

    def probe(queues: Sequence[str]) -> QueueDepths:
        probed.append(queues)
        return {queue: (7, 2) for queue in queues}

    collector = MetricsCollector(
        hub, memory_config(), cache_seconds=1.0, queue_probe=probe, clock=lambda: now[0]
    )
    first, _ = collector.render(None)
    now[0] = 0.9
    assert collector.render(None)[0] == first
    now[0] = 1.1
    collector.render(None)
    assert len(probed) == 2
    assert probed[0] == ["default", "default.DQ", "default.XQ", "celery", "nagatha.bridge.dead"]
    found = samples(first.decode())
    assert found[("nagatha_queue_consumers", (("queue", "celery"),))] == 2
    assert found[("nagatha_queue_messages", (("queue", "default"),))] == 7


def test_a_dependency_that_hangs_is_down_at_the_deadline_and_not_asked_twice(
    hub: TaskRegistry,
) -> None:
    release, calls, now = threading.Event(), [], [0.0]

    def hangs(queues: Sequence[str]) -> QueueDepths:  # RabbitMQ connected but silent
        calls.append(queues)
        release.wait(30)
        return {}

    collector = MetricsCollector(
        hub, memory_config(), timeout=2, queue_probe=hangs, clock=lambda: now[0]
    )
    try:
        found = samples(collector.render(None)[0].decode())
        assert found[("nagatha_up", (("dependency", "broker"),))] == 0
        assert found[("nagatha_up", (("dependency", "store"),))] == 1
        now[0] += 10  # past the cache: the hung probe is awaited again, not started again
        collector.render(None)
        assert len(calls) == 1
    finally:
        release.set()


def test_the_95th_percentile_is_bounded_by_the_bucket_it_falls_in() -> None:
    runtime = Runtime(total=0.276)
    runtime.buckets[bucket_of(0.004)] += 19
    runtime.buckets[bucket_of(0.2)] += 1
    assert runtime.mean == pytest.approx(0.0138)
    assert runtime.at_most(0.95) == 0.005
    assert runtime.at_most(1.0) == 0.25
    runtime.buckets[-1] += 100  # past the last bound
    assert runtime.at_most(0.95) is None
    assert Runtime().mean is None and Runtime().at_most(0.95) is None
