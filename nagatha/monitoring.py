"""The hub as its operators see it: what its tasks did, and what waits in its queues.

:class:`StateReader` reads both halves in parallel with one deadline: the task metrics every
process counted in the status store (:mod:`nagatha.metrics`) and the depth and consumers of
each queue from the broker. A half that does not answer in time is None in the
:class:`HubState` (its read, still running on a daemon thread, is waited for by the next read
rather than started again). ``GET /metrics`` renders the state for Prometheus
(:mod:`nagatha.api.metrics`); ``nagatha stats`` prints it as tables.

A third read, of the store too, says which worker and bridge processes are alive and what
they run (:mod:`nagatha.presence`); its failure leaves them out and nothing else.

Queue depths are what a passive ``queue.declare`` tells: messages *ready* (not those workers
hold unacknowledged, such as delayed tasks a worker took from ``.DQ``) and consumers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

from dramatiq.brokers.stub import StubBroker

from nagatha.broker_probes import QueueDepths, rabbitmq_queue_depths, stub_queue_depths
from nagatha.config import FrameworkConfig, secrets_of
from nagatha.daemon import Probes, check_of
from nagatha.metrics import EVENTS, Runtime, TaskMetrics
from nagatha.registry import TaskRegistry
from nagatha.types import CheckResult, QueueStats, StatsReport, TaskStats, WorkerInfo

logger = logging.getLogger("nagatha.monitoring")

QueueProbe = Callable[[Sequence[str]], QueueDepths]

#: Seconds a read of the store and the broker may take together (RabbitMQ: a connection and
#: one passive declare per queue).
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class HubState:
    """One read: ``tasks`` None if the store, ``queues`` None if the broker did not answer."""

    tasks: TaskMetrics | None
    queues: QueueDepths | None
    #: The worker and bridge processes alive (:mod:`nagatha.presence`); None if not read.
    workers: list[WorkerInfo] | None
    #: Every registered task name, for reports that list tasks before their first event.
    registered: list[str]
    #: ``store`` and ``broker`` as probed (``ok``, ``timeout``, ``unavailable`` and why).
    checks: dict[str, CheckResult] = field(default_factory=dict)

    def report(self) -> StatsReport:
        """The state as ``GET /stats`` and ``nagatha stats --json`` answer it: per task its
        event counts, runs, mean and 95th-percentile bound in seconds (null: no runs, or past
        the last bound when ``runs`` > 0); per queue its messages and consumers; ``checks``
        of ``store`` and ``broker`` as ``GET /health`` has them (``tasks``/``queues`` are
        null for one not ``ok``)."""
        return StatsReport(
            tasks=None if self.tasks is None else _task_rows(self.tasks, self.registered),
            queues=None
            if self.queues is None
            else [
                QueueStats(queue=name, messages=ready, consumers=consumers)
                for name, (ready, consumers) in self.queues.items()
            ],
            checks=self.checks,
        )

    def document(self) -> dict[str, Any]:
        """:meth:`report` as JSON."""
        return self.report().model_dump(mode="json")


def _task_rows(metrics: TaskMetrics, registered: list[str]) -> list[TaskStats]:
    names = sorted({*registered, *(task for task, _ in metrics.events), *metrics.runtimes})
    rows = []
    for name in names:
        runtime = metrics.runtimes.get(name, Runtime())
        row = {event: metrics.events.get((name, event), 0) for event in EVENTS}
        rows.append(
            TaskStats.model_validate(
                {
                    "task": name,
                    **row,
                    "runs": runtime.count,
                    "mean_seconds": runtime.mean,
                    "p95_at_most_seconds": runtime.at_most(0.95),
                }
            )
        )
    return rows


class StateReader:
    """Reads :class:`HubState` for a registry (its store, its broker, its task queues)."""

    def __init__(
        self,
        registry: TaskRegistry,
        config: FrameworkConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        queue_probe: QueueProbe | None = None,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self._secrets = secrets_of(config)
        self._probes = Probes("nagatha-state")
        self._workers_failing = False  # logged once per run of failed reads
        self._bridge_queues = [*config.bridge.queues, config.bridge.dead_letter_queue]
        broker = registry.broker
        if queue_probe is not None:
            self._queue_probe = queue_probe
        elif isinstance(broker, StubBroker):  # the embedded hub's, in this process
            self._queue_probe = lambda queues: stub_queue_depths(broker, queues)
        else:
            self._queue_probe = lambda queues: rabbitmq_queue_depths(config.broker, queues, timeout)

    def read(self) -> HubState:
        """Read the store and the broker in parallel, each at most ``timeout`` seconds."""
        registered = self.registry.list_tasks()
        # Each task queue with its .DQ and .XQ, then the bridge's queues.
        hub = sorted({task.queue for task in registered})
        named = [f"{queue}{suffix}" for queue in hub for suffix in ("", ".DQ", ".XQ")]
        queues = list(dict.fromkeys([*named, *self._bridge_queues]))
        store = self._probes.start("store", self.registry.store.metrics)
        workers = self._probes.start("workers", self.registry.store.workers)
        broker = self._probes.start("broker", lambda: self._queue_probe(queues))
        wait([store, workers, broker], timeout=self.timeout)
        checks, values = {}, {}
        for name, future in (("store", store), ("broker", broker)):
            checks[name], values[name] = check_of(future, self.timeout, self._secrets)
        # Its own read: however it fails, the task counts and the store's check stand.
        read, listed = check_of(workers, self.timeout, self._secrets)
        if read.status != "ok" and not self._workers_failing:
            logger.warning("could not read the workers for the metrics: %s", read.detail)
        self._workers_failing = read.status != "ok"
        return HubState(
            tasks=values["store"],
            queues=values["broker"],
            workers=listed,
            registered=sorted(task.name for task in registered),
            checks=checks,
        )
