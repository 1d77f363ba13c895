"""In-process status store for embedded mode (``memory://``) and unit tests."""

from __future__ import annotations

import threading
import time
from typing import Any

from nagatha.metrics import EVENT_OF_STATUS, MetricsFields, TaskMetrics, run_time
from nagatha.stores.base import StatusStore
from nagatha.types import TaskRecord, TaskStatus


class MemoryStatusStore(StatusStore):
    """Records in a dict guarded by a condition variable; expiry checked on read."""

    def __init__(self, ttl: float = 86_400) -> None:
        self.ttl = ttl
        self._records: dict[str, tuple[float, TaskRecord]] = {}
        self._redeliveries: dict[str, int] = {}
        self._cancelled: dict[str, float] = {}  # task id -> when the mark expires
        self._metrics = MetricsFields()
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
                if not (current.cancelled and fields.get("started_at") is not None):
                    return False
                base.update(error=None, completed_at=None)  # a run the cancel missed
            record = TaskRecord.model_validate({**base, **fields, "status": status})
            self._put(record)
            self._count(current, record, fields)
            return True

    def _count(self, before: TaskRecord | None, after: TaskRecord, fields: dict[str, Any]) -> None:
        """Count as the Redis store's script does (:mod:`nagatha.stores.redis`); here every
        started write is a write of its own (nothing absorbs it)."""
        # A cancelled record that a write got past (a run the cancel missed) changes too.
        changes = before is None or before.status is not after.status or before.cancelled
        starts = (
            after.status is TaskStatus.STARTED
            and fields.get("started_at") is not None
            and (before is None or before.started_at != after.started_at)
        )
        name = self.metric_name(after.task_name)
        if starts:
            self._metrics.count("started", name)
        if changes and after.status is not TaskStatus.STARTED:
            self._metrics.count(EVENT_OF_STATUS[after.status], name)
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

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                record = self._live(task_id)
                remaining = deadline - time.monotonic()
                if record is None or record.status.final or remaining <= 0:
                    return record
                self._changed.wait(min(remaining, threading.TIMEOUT_MAX))

    def redeliveries(self, task_id: str) -> int:
        with self._changed:
            return self._redeliveries.get(task_id, 0)

    def count_redelivery(self, task_id: str) -> int:
        with self._changed:
            self._redeliveries[task_id] = self._redeliveries.get(task_id, 0) + 1
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

    def is_cancelled(self, task_id: str) -> bool:
        with self._changed:
            expires = self._cancelled.get(task_id)
            return expires is not None and expires >= time.monotonic()

    def metrics(self) -> TaskMetrics:
        with self._changed:
            return TaskMetrics.from_fields(self._metrics.fields)

    def ping(self) -> None:
        return None
