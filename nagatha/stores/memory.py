"""In-process status store for embedded mode (``memory://``) and unit tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection
from typing import Any

from nagatha.metrics import (
    EVENT_OF_STATUS,
    MAX_FIELDS,
    OTHER,
    RUNTIME_BUCKET,
    RUNTIME_SUM,
    TaskMetrics,
    bucket_of,
    field_name,
    run_time,
)
from nagatha.stores.base import RECENT_FAILURES, StatusStore, unique_ids, worker_order
from nagatha.types import TaskRecord, TaskStatus, WorkerInfo


class MemoryStatusStore(StatusStore):
    """Records in a dict guarded by a condition variable; expiry checked on read."""

    def __init__(self, ttl: float = 86_400) -> None:
        self.ttl = ttl
        self._records: dict[str, tuple[float, TaskRecord]] = {}
        self._redeliveries: dict[str, int] = {}
        self._cancelled: dict[str, float] = {}  # task id -> when the mark expires
        self._metrics = MetricsFields()
        self._failed: dict[str, None] = {}  # task ids, oldest first (insertion order)
        self._workers: dict[str, tuple[float, WorkerInfo]] = {}  # id -> (when seen, info)
        self._changed = threading.Condition()

    def _live(self, task_id: str) -> TaskRecord | None:
        entry = self._records.get(task_id)
        if entry is None:
            return None
        expires, record = entry
        if expires < time.monotonic():
            del self._records[task_id]
            return None
        return record

    def _put(self, record: TaskRecord) -> None:
        self._records[record.task_id] = (time.monotonic() + self.ttl, record)
        self._changed.notify_all()

    def create(self, record: TaskRecord) -> bool:
        with self._changed:
            if self._live(record.task_id) is not None:
                return False
            self._put(record)
            self._metrics.count("submitted", self.metric_name(record.task_name))
            return True

    def update(
        self,
        task_id: str,
        status: TaskStatus,
        fields: dict[str, Any],
        defaults: dict[str, Any] | None = None,
    ) -> bool:
        with self._changed:
            current = self._live(task_id)
            base = current.model_dump() if current else {"task_id": task_id, **(defaults or {})}
            if current is not None and current.status.final:
                if not (current.stopped_before_run and fields.get("started_at") is not None):
                    return False
                base.update(error=None, completed_at=None)  # a run the cancel or revoke missed
            record = TaskRecord.model_validate({**base, **fields, "status": status})
            self._put(record)
            self._count(current, record, fields, (defaults or {}).get("task_name"))
            return True

    def _count(
        self,
        before: TaskRecord | None,
        after: TaskRecord,
        fields: dict[str, Any],
        named: str | None,
    ) -> None:
        """Count as the Redis store's script does (:mod:`nagatha.stores.redis`), under
        :meth:`metric_name` of the name the write gave, else the record's own; here every
        started write is a write of its own (nothing absorbs it)."""
        # A cancelled record that a write got past (a run the cancel missed) changes too.
        changes = before is None or before.status is not after.status or before.stopped_before_run
        starts = (
            after.status is TaskStatus.STARTED
            and fields.get("started_at") is not None
            and (before is None or before.started_at != after.started_at)
        )
        name = after.task_name if named is None else self.metric_name(named)
        if starts:
            self._metrics.count("started", name)
        if changes and after.status is not TaskStatus.STARTED:
            self._metrics.count(EVENT_OF_STATUS[after.status], name)
        if changes and after.failed:
            self._failed.pop(after.task_id, None)
            self._failed[after.task_id] = None
            if len(self._failed) > RECENT_FAILURES:
                del self._failed[next(iter(self._failed))]
        seconds = run_time(fields) if changes and after.status.final else None
        if seconds is not None:
            self._metrics.observe(name, seconds)

    def get(self, task_id: str) -> TaskRecord | None:
        with self._changed:
            return self._live(task_id)

    def renew(self, task_id: str) -> None:
        with self._changed:
            record = self._live(task_id)
            if record is not None:
                self._records[task_id] = (time.monotonic() + self.ttl, record)

    def delete(self, task_id: str) -> None:
        with self._changed:
            self._records.pop(task_id, None)
            self._failed.pop(task_id, None)

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                record = self._live(task_id)
                remaining = min(deadline, self.waits_end) - time.monotonic()
                if record is None or record.status.final or remaining <= 0:
                    return record
                self._changed.wait(min(remaining, threading.TIMEOUT_MAX))

    def stop_waits(self, within: float = 0.0) -> None:
        with self._changed:
            self.waits_end = min(self.waits_end, time.monotonic() + within)
            self._changed.notify_all()

    def redeliveries(self, task_id: str) -> int:
        with self._changed:
            return self._redeliveries.get(task_id, 0)

    def count_redelivery(self, task_id: str, delta: int = 1) -> int:
        with self._changed:
            self._redeliveries[task_id] = self._redeliveries.get(task_id, 0) + delta
            return self._redeliveries[task_id]

    def cancel(self, task_id: str, fields: dict[str, Any]) -> TaskRecord | None:
        with self._changed:
            record = self._live(task_id)
            if record is None or not record.status.cancellable:
                return record
            record = TaskRecord.model_validate(
                {**record.model_dump(), **fields, "status": TaskStatus.FAILURE}
            )
            self._put(record)
            self._cancelled[task_id] = time.monotonic() + self.ttl
            self._metrics.count("cancelled", record.task_name)
            return record

    def revoke(self, task_ids: Collection[str]) -> None:
        with self._changed:
            expires = time.monotonic() + self.ttl
            self._cancelled.update(dict.fromkeys(unique_ids(task_ids), expires))

    def is_cancelled(self, task_id: str) -> bool:
        with self._changed:
            expires = self._cancelled.get(task_id)
            return expires is not None and expires >= time.monotonic()

    def recent_failures(self, limit: int) -> list[TaskRecord]:
        with self._changed:
            found = (self._live(task_id) for task_id in reversed(self._failed))
            return list(itertools.islice((r for r in found if r and r.failed), limit))

    def metrics(self) -> TaskMetrics:
        with self._changed:
            return TaskMetrics.from_fields(self._metrics.fields)

    def announce(self, worker: WorkerInfo) -> None:
        with self._changed:
            self._workers[worker.id] = (time.monotonic(), worker)

    def withdraw(self, worker_id: str) -> None:
        with self._changed:
            self._workers.pop(worker_id, None)

    def workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        with self._changed:
            for worker_id, (seen, worker) in list(self._workers.items()):
                if now - seen >= worker.gone_after:
                    del self._workers[worker_id]
            live = [
                worker.model_copy(update={"seen_seconds_ago": round(now - seen, 3)})
                for seen, worker in self._workers.values()
            ]
        return sorted(live, key=worker_order)

    def ping(self) -> None:
        return None


class MetricsFields:
    """The metrics fields (:mod:`nagatha.metrics`) kept in memory as the Redis store's script
    keeps them in its hash (not thread-safe: the store calls it under its lock)."""

    def __init__(self) -> None:
        self.fields: dict[str, int] = {}

    def count(self, event: str, task_name: str | None) -> None:
        """Count one ``event`` of ``task_name``."""
        self._add(self._label(event, task_name), event, 1)

    def observe(self, task_name: str | None, seconds: float) -> None:
        """Record one run of ``task_name`` that took ``seconds``."""
        label = self._label(RUNTIME_SUM, task_name)
        self._add(label, RUNTIME_SUM, round(seconds * 1e6))
        self._add(label, f"{RUNTIME_BUCKET}{bucket_of(seconds)}", 1)

    def _label(self, kind: str, task_name: str | None) -> str | None:
        known = field_name(kind, task_name) in self.fields
        return task_name if known or len(self.fields) < MAX_FIELDS else OTHER

    def _add(self, task_name: str | None, kind: str, amount: int) -> None:
        name = field_name(kind, task_name)
        self.fields[name] = self.fields.get(name, 0) + amount
