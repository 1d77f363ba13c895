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

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from nagatha.broker import probe_parameters
from nagatha.config import BrokerConfig, FrameworkConfig
from nagatha.daemon import Probes
from nagatha.metrics import EVENTS, Runtime, TaskMetrics
from nagatha.registry import TaskRegistry

logger = logging.getLogger("nagatha.monitoring")

#: ``queue -> (messages ready, consumers or None when the broker cannot tell)``.
QueueDepths = dict[str, tuple[int, int | None]]
QueueProbe = Callable[[Sequence[str]], QueueDepths]

#: Seconds a read of the store and the broker may take together.
DEFAULT_TIMEOUT = 2.0


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

    def document(self) -> dict[str, Any]:
        """The state as JSON (``nagatha stats --json``): per task its event counts, runs,
        mean and 95th-percentile bound in seconds; per queue its messages and consumers;
        ``store``/``broker`` ``ok`` or ``unavailable`` (then ``tasks``/``queues`` are null)."""
        return {
            "tasks": None if self.tasks is None else _task_rows(self.tasks, self.registered),
            "queues": None
            if self.queues is None
            else [
                {"queue": name, "messages": ready, "consumers": consumers}
                for name, (ready, consumers) in self.queues.items()
            ],
            "store": "unavailable" if self.tasks is None else "ok",
            "broker": "unavailable" if self.queues is None else "ok",
        }


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
        return HubState(
            tasks=_value_of(store),
            queues=_value_of(broker),
            registered=sorted(task.name for task in self.registry.list_tasks()),
        )


def _value_of(future: Future[tuple[float, Any]]) -> Any:
    """A read's value; None if it has not answered or it raised (its type logged at DEBUG:
    a message may hold a URL, ``/health`` reports it with secrets masked)."""
    if not future.done():
        return None
    error = future.exception()
    if error is not None:
        logger.debug("a read of the hub's state failed: %s", type(error).__name__)
        return None
    return future.result()[1]
