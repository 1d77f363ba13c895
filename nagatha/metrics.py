"""Task metrics: what happened to each task name, counted by the status store for every worker.

The store counts an *event* each time a record changes status (``submitted`` when it is
created, then ``started``, ``retried``, ``succeeded``, ``failed``) or is cancelled
(``cancelled``), and observes the *run time* (``completed_at - started_at``) of each run that
ended. Counting happens in the same step as the write (one Lua script in Redis), so the counts
are those of all workers, API replicas and bridges together, and a write that changes nothing
(a duplicate delivery, a record already final) counts nothing. They are events, not tasks: a
task that was retried twice counts three ``started``.

Counts are kept as ``field -> number`` pairs (a Redis hash; a dict in memory), fields named
``<kind>\\t<task name as JSON>``: the six events, ``runtime_us`` (the run times' sum in
microseconds: an integer, added exactly) and
``runtime:<i>`` (runs whose time fell in bucket ``i`` of :data:`RUNTIME_BUCKETS`, the last
one past every bound). A Celery client or a stray message may name any task: names the
process's registry does not know are counted as :data:`UNREGISTERED`
(:meth:`~nagatha.stores.base.StatusStore.metric_name`), and past :data:`MAX_FIELDS` fields new
names are counted under :data:`OTHER`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nagatha.types import TaskStatus

EVENTS = ("submitted", "started", "retried", "succeeded", "failed", "cancelled")
#: The event a record's move to each status counts.
EVENT_OF_STATUS = {
    TaskStatus.PENDING: "submitted",
    TaskStatus.STARTED: "started",
    TaskStatus.RETRYING: "retried",
    TaskStatus.SUCCESS: "succeeded",
    TaskStatus.FAILURE: "failed",
}
#: Upper bounds in seconds of the run-time histogram's buckets (``le``); +Inf follows.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30, 60, 300, 1800)
#: Most fields kept; a task name first seen past it is counted as :data:`OTHER`.
MAX_FIELDS = 10_000
OTHER = "(other)"
#: What a task name no module registered is counted as (a Celery client may send any name).
UNREGISTERED = "(unregistered)"
#: Field kinds of the run times: their sum in microseconds, and runs per bucket (``<kind><i>``).
RUNTIME_SUM, RUNTIME_BUCKET = "runtime_us", "runtime:"


def run_time(fields: Mapping[str, Any]) -> float | None:
    """Seconds from ``started_at`` to ``completed_at`` in an outcome's fields (a worker's
    writes carry both); None if one is missing or the clocks disagree (negative)."""
    started, completed = fields.get("started_at"), fields.get("completed_at")
    if not isinstance(started, datetime) or not isinstance(completed, datetime):
        return None
    seconds = (completed - started).total_seconds()
    return seconds if seconds >= 0 else None


def field_name(kind: str, task_name: str | None) -> str:
    """The field counting ``kind`` for ``task_name`` (the name as the store encodes it)."""
    return f"{kind}\t{json.dumps(task_name)}"


def bucket_of(seconds: float) -> int:
    """Index of the run-time bucket of ``seconds`` (``len(RUNTIME_BUCKETS)``: past all)."""
    for index, bound in enumerate(RUNTIME_BUCKETS):
        if seconds <= bound:
            return index
    return len(RUNTIME_BUCKETS)


@dataclass
class Runtime:
    """Run times of one task name: runs per bucket (not cumulative) and their sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(RUNTIME_BUCKETS) + 1))
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    @property
    def mean(self) -> float | None:
        """Mean seconds per run (None without runs)."""
        return self.total / self.count if self.count else None

    def at_most(self, fraction: float) -> float | None:
        """The smallest bucket bound that ``fraction`` of the runs took at most (seconds);
        None without runs or when that is past the last bound."""
        if not self.count:
            return None
        wanted, seen = fraction * self.count, 0
        for bound, count in zip(RUNTIME_BUCKETS, self.buckets, strict=False):
            seen += count
            if seen >= wanted:
                return bound
        return None


@dataclass
class TaskMetrics:
    """A snapshot of the counts: ``events[(task, event)]`` and ``runtimes[task]``."""

    events: dict[tuple[str, str], int] = field(default_factory=dict)
    runtimes: dict[str, Runtime] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, fields: Mapping[str, str | float]) -> TaskMetrics:
        """Decode the stored fields; a field that does not decode is left out."""
        metrics = cls()
        for name, value in fields.items():
            kind, _, encoded = name.partition("\t")
            try:
                task = json.loads(encoded)
                number = float(value)
            except ValueError:
                continue
            if not isinstance(task, str) or not math.isfinite(number):
                continue
            if kind in EVENTS:
                metrics.events[(task, kind)] = int(number)
            elif kind == RUNTIME_SUM:
                metrics.runtimes.setdefault(task, Runtime()).total = number / 1e6
            elif kind.startswith(RUNTIME_BUCKET) and kind[len(RUNTIME_BUCKET) :].isdigit():
                index = int(kind[len(RUNTIME_BUCKET) :])
                if index <= len(RUNTIME_BUCKETS):
                    metrics.runtimes.setdefault(task, Runtime()).buckets[index] = int(number)
        return metrics
