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
``nagatha_up``                     gauge      ``dependency``: broker, store; 1 if it answered
``nagatha_build_info``             gauge      ``version``
=================================  =========  ================================================

A dependency that does not answer leaves its metrics out and sets its ``nagatha_up`` to 0;
the answer is still 200 (a failed scrape would hide the rest). Registered tasks are reported
with zero counts before their first event. Redis and RabbitMQ are read in parallel on daemon
threads with one deadline (``timeout``); one that has not answered by then is reported down
(its thread, if still running, is waited for at the next collection rather than started
again); one collection is shared by the requests of ``cache_seconds``, as for ``/health``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import Any

import pika
import pika.exceptions
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from nagatha import __version__
from nagatha.api.health import DEFAULT_TIMEOUT, probe_parameters
from nagatha.api.reuse import Reused
from nagatha.config import BrokerConfig, FrameworkConfig
from nagatha.daemon import Probes
from nagatha.metrics import EVENTS, RUNTIME_BUCKETS, TaskMetrics
from nagatha.registry import TaskRegistry

logger = logging.getLogger("nagatha.api")

#: ``queue -> (messages ready, consumers or None)``.
QueueDepths = dict[str, tuple[int, int | None]]
QueueProbe = Callable[[Sequence[str]], QueueDepths]

#: Seconds one collection is reused.
DEFAULT_CACHE = 1.0


def rabbitmq_queue_depths(
    config: BrokerConfig, queues: Sequence[str], timeout: float
) -> QueueDepths:
    """Passively declare each of ``queues`` on one fresh connection; a queue that does not
    exist (yet) is left out. Raises the connection's error if RabbitMQ does not answer."""
    depths: QueueDepths = {}
    connection = pika.BlockingConnection(probe_parameters(config, timeout))
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                frame = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:  # 404: RabbitMQ closes the channel
                channel = connection.channel()
                continue
            depths[queue] = (frame.method.message_count, frame.method.consumer_count)
    finally:
        connection.close()
    return depths


def stub_queue_depths(broker: Any, queues: Sequence[str]) -> QueueDepths:
    """The embedded broker's queues (in this process): messages only, consumers unknown."""
    return {
        queue: (broker.queues[queue].qsize(), None) for queue in queues if queue in broker.queues
    }


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
        self.registry = registry
        self.timeout = timeout
        self._probes = Probes("nagatha-metrics")
        self._bridge_queues = [*config.bridge.queues, config.bridge.dead_letter_queue]
        if queue_probe is not None:
            self._queue_probe = queue_probe
        elif config.embedded:
            self._queue_probe = lambda queues: stub_queue_depths(registry.broker, queues)
        else:
            self._queue_probe = lambda queues: rabbitmq_queue_depths(config.broker, queues, timeout)
        self._families = Reused(lambda: list(self._collect()), cache_seconds, clock)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a request's ``Accept`` header: ``(body, content type)``."""
        encode, content_type = choose_encoder(accept or "")
        families = self.families()
        return encode(_Families(families)), content_type

    def families(self) -> list[Metric]:
        """The current metric families (a collection younger than ``cache_seconds`` is reused)."""
        return self._families.get()

    def queues(self) -> list[str]:
        """The queues reported: each task queue with its ``.DQ`` and ``.XQ``, then the
        bridge's queues."""
        hub = sorted({task.queue for task in self.registry.list_tasks()})
        named = [f"{queue}{suffix}" for queue in hub for suffix in ("", ".DQ", ".XQ")]
        return list(dict.fromkeys([*named, *self._bridge_queues]))

    def _collect(self) -> Iterator[Metric]:
        # Both reads on daemon threads, one deadline: a hung Redis or RabbitMQ (connected but
        # silent) costs one thread, not one gunicorn thread per scrape.
        queues = self.queues()
        store = self._probes.start("store", self.registry.store.metrics)
        broker = self._probes.start("broker", lambda: self._queue_probe(queues))
        wait([store, broker], timeout=self.timeout)
        up = GaugeMetricFamily(
            "nagatha_up", "1 if the dependency answered this scrape.", labels=["dependency"]
        )
        metrics = _value_of(store)
        up.add_metric(["store"], 0 if metrics is None else 1)
        if metrics is not None:
            yield from self._task_families(metrics)
        depths = _value_of(broker)
        up.add_metric(["broker"], 0 if depths is None else 1)
        if depths is not None:
            yield from _queue_families(depths)
        yield up
        info = GaugeMetricFamily("nagatha_build_info", "The hub's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _task_families(self, metrics: TaskMetrics) -> Iterable[Metric]:
        events = dict.fromkeys(
            ((task.name, event) for task in self.registry.list_tasks() for event in EVENTS), 0
        )
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


def _value_of(future: Future[tuple[float, Any]]) -> Any:
    """A probe's value; None if it has not answered or it raised (its type logged at DEBUG:
    a message may hold a URL, /health reports it with secrets masked)."""
    if not future.done():
        return None
    error = future.exception()
    if error is not None:
        logger.debug("metrics: a probe failed: %s", type(error).__name__)
        return None
    return future.result()[1]


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
