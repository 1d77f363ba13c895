"""The status store interface: one record per task id, monotonic, with expiry.

Implementations: :class:`~nagatha.stores.redis.RedisStatusStore` (production) and
:class:`~nagatha.stores.memory.MemoryStatusStore` (embedded mode and unit tests).

Rules every implementation keeps:

* :meth:`StatusStore.create` writes a ``pending`` record only if none exists for the id.
* :meth:`StatusStore.update` never moves a record out of a final status (``success`` or
  ``failure``): a duplicate delivery that runs again cannot undo a result. One exception: a
  record a cancel or a Celery revoke made final (:attr:`TaskRecord.stopped_before_run`) gives
  way to a write that carries ``started_at`` (a worker started the task as the cancel or
  revoke came in, or before its ``started`` write could be recorded, or while its notice had
  not reached that worker): the record then tells what happened.
* An update for an id without a record creates one from ``defaults`` (a message that reached a
  worker without passing through the hub's producer still gets a record).
* Records expire ``ttl`` seconds after their last write or :meth:`StatusStore.renew`.
* A write that changes a record's status, and a cancel, count the event in
  :meth:`StatusStore.metrics` in the same step; a final one also the run time.
* :meth:`StatusStore.workers` lists what :meth:`StatusStore.announce` was told less than
  :attr:`~nagatha.types.WorkerInfo.gone_after` seconds ago (by the store's own clock).
* :meth:`StatusStore.cancel` makes only a record that waits to run (``pending`` or
  ``retrying``) final, and :meth:`StatusStore.is_cancelled` knows its id from then on; so it
  does an id :meth:`StatusStore.revoke` marked (a Celery client's revoke), record or not.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Collection, Sequence
from typing import Any

from pydantic_core import to_jsonable_python

from nagatha.metrics import UNREGISTERED, TaskMetrics
from nagatha.types import TaskRecord, TaskStatus, WorkerInfo

#: How many of the newest failures a store keeps for :meth:`StatusStore.recent_failures`,
#: and how many ``GET /failures`` and ``nagatha failures`` show unless told.
RECENT_FAILURES, DEFAULT_FAILURES = 1000, 50


def unique_ids(task_ids: Collection[str]) -> list[str]:
    """``task_ids`` without repeats, in order (for :meth:`StatusStore.revoke`)."""
    if isinstance(task_ids, str):
        raise TypeError("task_ids must be a collection of task ids, not one string")
    return list(dict.fromkeys(task_ids))


def encode_fields(values: dict[str, Any]) -> dict[str, str]:
    """Encode each field value as JSON text (datetimes as ISO 8601)."""
    return {key: json.dumps(to_jsonable_python(value)) for key, value in values.items()}


def decode_fields(raw: dict[str, str]) -> TaskRecord:
    """Rebuild a record from its JSON-encoded fields."""
    return TaskRecord.model_validate({key: json.loads(value) for key, value in raw.items()})


class StatusStore(abc.ABC):
    """Where status records live. Every method may raise ``StoreUnavailable``."""

    #: The task names :meth:`metrics` counts under their own name (:meth:`count_names`).
    #: None (no registry): every name.
    counted_names: Collection[str] | None = None

    def count_names(self, names: Collection[str]) -> None:
        """Count writes for ``names`` under their own name and any other as unregistered;
        :class:`~nagatha.registry.TaskRegistry` passes a live view of its task names."""
        self.counted_names = names

    def metric_name(self, task_name: str | None) -> str | None:
        """The name a write for ``task_name`` is counted under: itself if counted, else
        :data:`~nagatha.metrics.UNREGISTERED`. Writes that name their task (a create, an
        update with ``defaults``) are counted so; an update without ``defaults`` and a
        cancel count under the record's stored name (the hub's own writers always pass
        ``defaults``; a cancellable record was made by a submit of a registered task)."""
        if self.counted_names is None or task_name in self.counted_names:
            return task_name
        return UNREGISTERED

    @abc.abstractmethod
    def create(self, record: TaskRecord) -> bool:
        """Write ``record`` unless a record with its id exists; return whether it was written."""

    def create_many(self, records: Sequence[TaskRecord]) -> None:
        """:meth:`create` each of ``records`` (in one round trip where the store can)."""
        for record in records:
            self.create(record)

    @abc.abstractmethod
    def update(
        self,
        task_id: str,
        status: TaskStatus,
        fields: dict[str, Any],
        defaults: dict[str, Any] | None = None,
    ) -> bool:
        """Move a record to ``status`` and set ``fields``; return False if it was already final.

        ``defaults`` fill a new record when none exists for ``task_id``.
        """

    def update_soon(
        self,
        task_id: str,
        status: TaskStatus,
        fields: dict[str, Any],
        defaults: dict[str, Any] | None = None,
    ) -> None:
        """Like :meth:`update` for a write whose loss is harmless (``started``), maybe later.

        May return before the write is made; a later :meth:`update` of the same id from this
        process may then absorb it (its fields first, the later ones over them), and a failure
        is logged rather than raised. This default writes at once and may raise.
        """
        self.update(task_id, status, fields, defaults)

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """Return the record of ``task_id``, or None if there is none (or it expired)."""

    @abc.abstractmethod
    def renew(self, task_id: str) -> None:
        """Start the expiry of ``task_id``'s record again, unchanged; nothing if there is none."""

    @abc.abstractmethod
    def delete(self, task_id: str) -> None:
        """Remove the record of ``task_id`` (used when an enqueue fails after ``create``)."""

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        """Block until the record is final or ``timeout`` seconds pass; return the record then.

        Implementations are woken by the write of the final status (no busy polling).
        """

    #: Monotonic time by which every :meth:`wait` returns (set by :meth:`stop_waits`).
    waits_end: float = math.inf

    @abc.abstractmethod
    def stop_waits(self, within: float = 0.0) -> None:
        """Make every :meth:`wait` in progress, and every later one, return within ``within``
        seconds with the record as it is then (or sooner, as the record turns final): a server
        that stops answers its long polls before it closes, instead of dropping them.
        """

    @abc.abstractmethod
    def redeliveries(self, task_id: str) -> int:
        """How many times :meth:`count_redelivery` counted ``task_id`` (0 if never)."""

    @abc.abstractmethod
    def count_redelivery(self, task_id: str, delta: int = 1) -> int:
        """Count one more start of ``task_id`` after RabbitMQ redelivered it; return the count.

        ``delta=-1`` gives one back: a worker that stopped gracefully left the task unfinished
        (it outlasted the grace period), so its next start, which RabbitMQ marks redelivered,
        is not blamed on it. The count is kept as long as a record (``ttl``), across retries.
        """

    @abc.abstractmethod
    def cancel(self, task_id: str, fields: dict[str, Any]) -> TaskRecord | None:
        """Make the record ``failure`` with ``fields`` if it is ``pending`` or ``retrying``.

        In one atomic step: the record goes final (waiters wake), and the id is kept as
        cancelled for ``ttl`` seconds, for :meth:`is_cancelled`. Returns the record as it is
        afterwards (unchanged if it was started or final), None if there is none.
        """

    @abc.abstractmethod
    def revoke(self, task_ids: Collection[str]) -> None:
        """Keep ``task_ids`` for :meth:`is_cancelled` for ``ttl`` seconds, records untouched.

        A Celery client's ``revoke`` (the bridge's pidbox): the id may have no record yet, or
        one that already ended. As with a cancel, a worker that takes a task with that id
        from then on does not run it; one that starts it as the revoke comes in (or while its
        notice of it is delayed) runs it.

        Raises:
            TypeError: ``task_ids`` is one string, not a collection of ids.
        """

    @abc.abstractmethod
    def is_cancelled(self, task_id: str) -> bool:
        """True if :meth:`cancel` made ``task_id`` final or :meth:`revoke` marked it: no
        worker runs it (called by workers for each task).

        Meant to be cheap: implementations keep the ids in the process where they can.
        """

    @abc.abstractmethod
    def recent_failures(self, limit: int) -> list[TaskRecord]:
        """The newest records that turned ``failure`` (a run's or a refusal's, not a cancel's),
        newest first, at most ``limit`` (of the last :data:`RECENT_FAILURES`); records that
        expired, were deleted or are no failure now (an id made again) are left out."""

    @abc.abstractmethod
    def metrics(self) -> TaskMetrics:
        """The task metrics counted so far (:mod:`nagatha.metrics`), for every process that
        writes to this store."""

    @abc.abstractmethod
    def announce(self, worker: WorkerInfo) -> None:
        """Keep ``worker`` as what its process last told about itself (:mod:`nagatha.presence`),
        until :meth:`withdraw` or :attr:`~nagatha.types.WorkerInfo.gone_after` seconds pass
        without another announcement of its ``id``."""

    @abc.abstractmethod
    def withdraw(self, worker_id: str) -> None:
        """Forget the announcement of ``worker_id`` (its process stopped); nothing if none."""

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """The processes announced and not gone, by kind, hostname and pid, each with
        ``seen_seconds_ago`` set (by the store's clock)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Return if the store answers, else raise ``StoreUnavailable``."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections."""


def worker_order(worker: WorkerInfo) -> tuple[str, str, int]:
    """How :meth:`StatusStore.workers` sorts: by kind, hostname and pid."""
    return worker.kind, worker.hostname, worker.pid
