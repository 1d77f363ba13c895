"""The hub as its operators see it: what its tasks did, and what waits in its queues.

:class:`StateReader` reads both halves in parallel with one deadline: the task metrics every
process counted in the status store (:mod:`nagatha.metrics`) and the depth and consumers of
each queue from the broker. A half that does not answer in time is None in the
:class:`HubState` (its read, still running on a daemon thread, is waited for by the next read
rather than started again). ``GET /metrics`` renders the state for Prometheus
(:mod:`nagatha.api.metrics`); ``nagatha stats`` prints it as tables.

Queue depths are what a passive ``queue.declare`` tells: messages *ready* (not those workers
hold unacknowledged, such as delayed tasks a worker took from ``.DQ``) and consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from nagatha.broker import probe_parameters
from nagatha.config import BrokerConfig, FrameworkConfig, secrets_of
from nagatha.daemon import Probes
from nagatha.log import describe_error
from nagatha.metrics import EVENTS, Runtime, TaskMetrics
from nagatha.registry import TaskRegistry

#: ``queue -> (messages ready, consumers or None when the broker cannot tell)``.
QueueDepths = dict[str, tuple[int, int | None]]
QueueProbe = Callable[[Sequence[str]], QueueDepths]

#: Seconds a read of the store and the broker may take together (RabbitMQ: a connection and
#: one passive declare per queue).
DEFAULT_TIMEOUT = 5.0


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


@dataclass(frozen=True)
class HubState:
    """One read: ``tasks`` None if the store, ``queues`` None if the broker did not answer."""

    tasks: TaskMetrics | None
    queues: QueueDepths | None
    #: Every registered task name, for reports that list tasks before their first event.
    registered: list[str]
    #: Why a half is missing, by ``store``/``broker``: ``(status, detail)`` as ``/health``
    #: says it (``timeout`` or ``unavailable``; the detail with secrets masked).
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The state as JSON (``nagatha stats --json``): per task its event counts, runs,
        mean and 95th-percentile bound in seconds; per queue its messages and consumers;
        ``checks`` of ``store`` and ``broker`` as ``GET /health`` has them (``status`` ``ok``,
        ``timeout`` or ``unavailable`` with a ``detail``; then ``tasks``/``queues`` are null)."""
        return {
            "tasks": None if self.tasks is None else _task_rows(self.tasks, self.registered),
            "queues": None
            if self.queues is None
            else [
                {"queue": name, "messages": ready, "consumers": consumers}
                for name, (ready, consumers) in self.queues.items()
            ],
            "checks": {name: self._check(name) for name in ("store", "broker")},
        }

    def _check(self, name: str) -> dict[str, str]:
        if name not in self.problems:
            return {"status": "ok"}
        status, detail = self.problems[name]
        return {"status": status, "detail": detail}


def _task_rows(metrics: TaskMetrics, registered: list[str]) -> list[dict[str, Any]]:
    names = sorted({*registered, *(task for task, _ in metrics.events), *metrics.runtimes})
    rows = []
    for name in names:
        runtime = metrics.runtimes.get(name, Runtime())
        rows.append(
            {
                "task": name,
                **{event: metrics.events.get((name, event), 0) for event in EVENTS},
                "runs": runtime.count,
                "mean_seconds": runtime.mean,
                "p95_at_most_seconds": runtime.at_most(0.95),
            }
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
        self._bridge_queues = [*config.bridge.queues, config.bridge.dead_letter_queue]
        if queue_probe is not None:
            self._queue_probe = queue_probe
        elif config.embedded:
            self._queue_probe = lambda queues: stub_queue_depths(registry.broker, queues)
        else:
            self._queue_probe = lambda queues: rabbitmq_queue_depths(config.broker, queues, timeout)

    def queues(self) -> list[str]:
        """The queues reported: each task queue with its ``.DQ`` and ``.XQ``, then the
        bridge's queues."""
        hub = sorted({task.queue for task in self.registry.list_tasks()})
        named = [f"{queue}{suffix}" for queue in hub for suffix in ("", ".DQ", ".XQ")]
        return list(dict.fromkeys([*named, *self._bridge_queues]))

    def read(self) -> HubState:
        """Read the store and the broker in parallel, each at most ``timeout`` seconds."""
        queues = self.queues()
        store = self._probes.start("store", self.registry.store.metrics)
        broker = self._probes.start("broker", lambda: self._queue_probe(queues))
        wait([store, broker], timeout=self.timeout)
        problems = {}
        for name, future in (("store", store), ("broker", broker)):
            problem = self._problem_of(future)
            if problem is not None:
                problems[name] = problem
        return HubState(
            tasks=None if "store" in problems else store.result()[1],
            queues=None if "broker" in problems else broker.result()[1],
            registered=sorted(task.name for task in self.registry.list_tasks()),
            problems=problems,
        )

    def _problem_of(self, future: Future[tuple[float, Any]]) -> tuple[str, str] | None:
        """Why a read gave nothing, as ``(status, detail)``; None if it answered."""
        if not future.done():
            return "timeout", f"no answer within {self.timeout:g}s"
        error = future.exception()
        return None if error is None else ("unavailable", describe_error(error, self._secrets))
