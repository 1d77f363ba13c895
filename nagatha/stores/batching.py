"""Group commit of status writes: what a process's threads write meanwhile goes out as one batch.

A worker process runs many threads, and each writes a task's status twice (``started``, then the
outcome). Sent one by one, every write is a round trip to the store on the thread that makes it.
A :class:`WriteBatcher` queues the writes of every thread and one daemon thread hands whatever
has queued up to the store's ``send`` function at once (for Redis: one pipeline). At low load a
batch holds one write and costs what a direct write did; under load N writes share a round trip.

Two kinds of write:

* **waited** (:meth:`WriteBatcher.write`): the caller blocks until its batch was sent and gets
  the store's answer for it, or its error: ``StoreUnavailable``, or ``StoreRejected`` for a
  write the store refused (``send`` sets that on the write alone, its batch goes out). Final
  outcomes are written this way: the message is acked only after its result is stored.
* **deferred** (:meth:`WriteBatcher.defer`): the caller goes on at once. A later write for the
  same task id that finds it still queued *absorbs* it (the deferred write's fields first, the
  later write's over them) and it is never sent on its own: a task that finishes before its
  ``started`` write went out costs one write, not two. A deferred write the store could not
  take (unavailable) is queued again, or absorbed the same way by a later write of its task
  queued by then, and the writer pauses :data:`RETRY_PAUSE` before its next batch: a task
  running through a Redis outage still shows ``started`` once Redis is back (and cannot be
  cancelled as pending). One the store refused for good is logged and dropped.

Writes are sent in the order they were made, batch after batch, by one thread: two writes of
one task from one process never overtake each other.

Not fork-safe by design: a store starts its batcher lazily in the process that writes and
replaces one inherited across ``fork()`` (see :attr:`WriteBatcher.pid`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.types import TaskStatus

logger = logging.getLogger("nagatha.stores")

#: Seconds :meth:`WriteBatcher.close` waits for the writes still queued to go out.
CLOSE_TIMEOUT = 5.0
#: Seconds the writer waits after a batch the store was unavailable for.
RETRY_PAUSE = 0.5
_STOPPED = "status writer stopped: the write was not sent"


@dataclass(eq=False, slots=True)
class Write:
    """One status update; ``send`` fills :attr:`answer` or :attr:`error`."""

    task_id: str
    status: TaskStatus
    fields: dict[str, Any]
    defaults: dict[str, Any] | None = None
    deferred: bool = False
    #: This write was absorbed by a later one (and is not sent) / absorbed an earlier one.
    superseded: bool = False
    absorbed: bool = False
    #: The store's answer (for Redis: 1 written, 0 the record was already final).
    answer: int = 0
    error: StoreUnavailable | StoreRejected | None = None
    #: A deferred write queued again after the store was unavailable (logged once).
    requeued: bool = False


class _Batch:
    __slots__ = ("deferred", "done", "task_ids", "writes")

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.deferred: dict[str, Write] = {}  # task id -> its deferred write still queued
        self.task_ids: set[str] = set()
        self.done = threading.Event()


class WriteBatcher:
    """Queues :class:`Write` objects and sends them in batches on one daemon thread."""

    def __init__(self, send: Callable[[list[Write]], None], name: str) -> None:
        """``send`` writes a batch: it sets ``answer`` or ``error`` on each write, never raises."""
        self.pid = os.getpid()
        self._send = send
        self._cond = threading.Condition(threading.Lock())
        self._batch = _Batch()
        self._closing = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the thread ended (no more writes are taken)."""
        return self._closing

    def write(self, write: Write) -> int:
        """Queue ``write``, wait until it was sent and return its answer.

        Raises ``StoreUnavailable`` if the store could not take it (or the batcher is closed),
        ``StoreRejected`` if it refused this write for good.
        """
        batch = self._enqueue(write)
        batch.done.wait()
        if write.error is not None:
            raise write.error
        return write.answer

    def defer(self, write: Write) -> None:
        """Queue ``write`` and return at once (see the module docstring)."""
        write.deferred = True
        self._enqueue(write)

    def close(self) -> None:
        """Send what is queued (waiting up to :data:`CLOSE_TIMEOUT`), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._closed.wait(CLOSE_TIMEOUT)

    def _enqueue(self, write: Write) -> _Batch:
        with self._cond:
            if self._closing:
                raise StoreUnavailable("status store closed: no more writes are taken")
            batch = self._batch
            earlier = batch.deferred.pop(write.task_id, None)
            if earlier is not None:
                _absorb(earlier, write)
            batch.writes.append(write)
            batch.task_ids.add(write.task_id)
            if write.deferred:
                batch.deferred[write.task_id] = write
            self._cond.notify()
        return batch

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._batch.writes and not self._closing:
                        self._cond.wait()
                    batch, self._batch = self._batch, _Batch()
                if not batch.writes:
                    return  # closing, and nothing is left to send
                if not self._flush(batch):
                    with self._cond:  # the store is down: the next batch would fail as fast
                        self._cond.wait_for(lambda: self._closing, RETRY_PAUSE)
        finally:
            # Also reached if the thread dies: fail what is queued rather than leave its
            # waiters blocked, and count as closed so that the store starts a new batcher.
            with self._cond:
                self._closing = True
                batch, self._batch = self._batch, _Batch()
            for write in batch.writes:
                write.error = StoreUnavailable(_STOPPED)
            batch.done.set()
            self._closed.set()

    def _flush(self, batch: _Batch) -> bool:
        """Send ``batch``; return False if the store was unavailable for any of it."""
        live = [write for write in batch.writes if not write.superseded]
        # A bug in send must not leave a waiter blocked, nor pass for an answer.
        error: StoreUnavailable | None = StoreUnavailable(_STOPPED)
        try:
            self._send(live)
            error = None
        except Exception as exc:
            logger.exception("status batch of %d writes failed", len(live))
            error = StoreUnavailable(f"status write failed: {type(exc).__name__}: {exc}")
        finally:
            if error is not None:
                for write in live:
                    write.error = error
            batch.done.set()
        unavailable = [write for write in live if isinstance(write.error, StoreUnavailable)]
        self._requeue([write for write in unavailable if write.deferred])
        for write in live:
            if write.deferred and isinstance(write.error, StoreRejected):
                logger.error(
                    "task %s: %s could not be recorded: %s",
                    write.task_id,
                    write.status.value,
                    write.error,
                )
        return not unavailable

    def _requeue(self, writes: list[Write]) -> None:
        """Queue deferred writes the store was unavailable for again (see the module
        docstring); one whose task has a later write queued is absorbed into that write."""
        with self._cond:
            if self._closing:
                return
            batch = self._batch
            for write in writes:
                if not write.requeued:
                    logger.warning(
                        "task %s: %s not recorded yet, trying again: %s",
                        write.task_id,
                        write.status.value,
                        write.error,
                    )
                if write.task_id in batch.task_ids:
                    _absorb(write, next(w for w in batch.writes if w.task_id == write.task_id))
                    continue
                write.error, write.requeued = None, True
                batch.writes.append(write)
                batch.task_ids.add(write.task_id)
                batch.deferred[write.task_id] = write


def _absorb(earlier: Write, later: Write) -> None:
    """Make ``later`` carry ``earlier`` (its fields under the later ones); ``earlier`` is
    not sent on its own."""
    earlier.superseded = later.absorbed = True
    later.fields = {**earlier.fields, **later.fields}
    if later.defaults is None:
        later.defaults = earlier.defaults
