"""What ``GET /metrics`` reports: the hub as Prometheus metrics, for all its processes at once.

Any API replica answers for the whole hub, as Flower does for a Celery cluster: task events
and run times come from the status store (:mod:`nagatha.metrics`, counted by every worker,
API process and bridge), queue depths and consumers from RabbitMQ. So one scrape target is
enough; scraping several replicas gives the same series (add a ``replica`` label there, or
aggregate with ``max``).

=================================  =========  ================================================
metric                             type       labels and meaning
=================================  =========  ================================================
``nagatha_task_events_total``      counter    ``task``, ``event``: submitted, started,
                                              retried, succeeded, failed, cancelled
``nagatha_task_runtime_seconds``   histogram  ``task``: started to success/failure, per run
``nagatha_queue_messages``         gauge      ``queue``: messages ready, not those workers
                                              hold (a hub queue, its ``.DQ`` and ``.XQ``, the
                                              bridge's Celery and dead-letter queues)
``nagatha_queue_consumers``        gauge      ``queue``: consumers (worker processes, bridge
                                              connections); RabbitMQ only
``nagatha_workers``                gauge      ``kind``: worker, bridge; processes alive
                                              (``GET /workers``)
``nagatha_worker_threads``         gauge      worker threads of those worker processes
``nagatha_tasks_running``          gauge      ``task``: runs in progress now
``nagatha_up``                     gauge      ``dependency``: broker, store; 1 if it answered
``nagatha_build_info``             gauge      ``version``
=================================  =========  ================================================

The state comes from :class:`nagatha.monitoring.StateReader` (Redis and RabbitMQ read in
parallel, one deadline). A dependency that does not answer in time leaves its metrics out and
sets its ``nagatha_up`` to 0; the answer is still 200 (a failed scrape would hide the rest).
Registered tasks are reported with zero counts before their first event. One read of the
state is shared by the requests of ``cache_seconds`` (``/metrics`` and ``/stats``), as for
``/health``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import get_args

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from nagatha import __version__
from nagatha.api.reuse import Reused
from nagatha.broker_probes import QueueDepths
from nagatha.config import FrameworkConfig
from nagatha.metrics import EVENTS, RUNTIME_BUCKETS, TaskMetrics
from nagatha.monitoring import DEFAULT_TIMEOUT, HubState, QueueProbe, StateReader
from nagatha.registry import TaskRegistry
from nagatha.types import WorkerInfo, WorkerKind

#: Seconds one collection is reused.
DEFAULT_CACHE = 1.0


class MetricsCollector:
    """Collects the metrics of the module docstring; :meth:`render` answers a scrape."""

    def __init__(
        self,
        registry: TaskRegistry,
        config: FrameworkConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_seconds: float = DEFAULT_CACHE,
        queue_probe: QueueProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = StateReader(registry, config, timeout=timeout, queue_probe=queue_probe)
        self._state = Reused(self.reader.read, cache_seconds, clock)

    def state(self) -> HubState:
        """The hub's state (a read younger than ``cache_seconds`` is reused; ``GET /stats``
        shares it)."""
        return self._state.get()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a request's ``Accept`` header: ``(body, content type)``."""
        encode, content_type = choose_encoder(accept or "")
        return encode(_Families(self.families())), content_type

    def families(self) -> list[Metric]:
        """The current metric families, from :meth:`state`."""
        return list(_families(self.state()))


def _families(state: HubState) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "nagatha_up", "1 if the dependency answered this scrape.", labels=["dependency"]
    )
    up.add_metric(["store"], 0 if state.tasks is None else 1)
    if state.tasks is not None:
        yield from _task_families(state.tasks, state.registered)
    if state.workers is not None:
        yield from _worker_families(state.workers, state.registered)
    up.add_metric(["broker"], 0 if state.queues is None else 1)
    if state.queues is not None:
        yield from _queue_families(state.queues)
    yield up
    info = GaugeMetricFamily("nagatha_build_info", "The hub's version.", labels=["version"])
    info.add_metric([__version__], 1)
    yield info


def _task_families(metrics: TaskMetrics, registered: list[str]) -> Iterable[Metric]:
    events = dict.fromkeys(((task, event) for task in registered for event in EVENTS), 0)
    events.update(metrics.events)
    counter = CounterMetricFamily(
        "nagatha_task_events",
        "Task events, all processes together: submitted, started, retried, succeeded, "
        "failed, cancelled.",
        labels=["task", "event"],
    )
    for (task, event), value in sorted(events.items()):
        counter.add_metric([task, event], value)
    histogram = HistogramMetricFamily(
        "nagatha_task_runtime_seconds",
        "Run time of each run that ended (started to success or failure).",
        labels=["task"],
    )
    bounds = [*map(floatToGoString, RUNTIME_BUCKETS), "+Inf"]
    for task, runtime in sorted(metrics.runtimes.items()):
        cumulative, total = [], 0
        for bound, count in zip(bounds, runtime.buckets, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        histogram.add_metric([task], cumulative, runtime.total)
    return counter, histogram


def _worker_families(workers: list[WorkerInfo], registered: list[str]) -> Iterable[Metric]:
    processes = GaugeMetricFamily(
        "nagatha_workers", "Worker and bridge processes alive (GET /workers).", labels=["kind"]
    )
    kinds = Counter(worker.kind for worker in workers)
    for kind in get_args(WorkerKind):
        processes.add_metric([kind], kinds[kind])
    threads = GaugeMetricFamily(
        "nagatha_worker_threads", "Worker threads of the worker processes alive, together."
    )
    threads.add_metric([], sum(worker.concurrency for worker in workers if worker.kind == "worker"))
    running = Counter(task.task_name for worker in workers for task in worker.running)
    tasks = GaugeMetricFamily(
        "nagatha_tasks_running", "Tasks running now, by name.", labels=["task"]
    )
    for task in sorted({*registered, *running}):
        tasks.add_metric([task], running[task])
    return processes, threads, tasks


def _queue_families(depths: QueueDepths) -> Iterable[Metric]:
    messages = GaugeMetricFamily(
        "nagatha_queue_messages", "Messages ready in the queue.", labels=["queue"]
    )
    consumers = GaugeMetricFamily(
        "nagatha_queue_consumers", "Consumers of the queue.", labels=["queue"]
    )
    for queue, (ready, consuming) in depths.items():
        messages.add_metric([queue], ready)
        if consuming is not None:
            consumers.add_metric([queue], consuming)
    return messages, consumers


class _Families:
    """A prometheus_client collector over families already collected."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
