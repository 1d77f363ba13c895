"""Which worker and bridge processes are alive, and what they do (``GET /workers``).

Each worker process (:class:`nagatha.middleware.presence.WorkerPresence`) and each bridge runs
an :class:`Announcer`: a daemon thread that hands the status store a
:class:`~nagatha.types.WorkerInfo` of its process every ``worker.presence_interval`` seconds
and withdraws it when the process stops. A process not heard of for
:data:`~nagatha.types.MISSED_BEATS` intervals (killed, frozen, cut off from Redis) is left out
of reads. The store judges that by its own clock (Redis ``TIME``), so machines whose clocks
disagree still agree on who is alive.

Announcing never holds up the process's work: an announcement the store cannot take is logged
once per outage and made again at the next interval, the announcement of a change of state
(``stopping``) is made by the thread, and a stop waits at most :data:`STOP_WAIT_S` for a store
that does not answer, and makes one store call more to withdraw it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

from nagatha import __version__
from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.stores import StatusStore
from nagatha.types import RunningTask, WorkerInfo, WorkerKind

logger = logging.getLogger("nagatha.presence")

#: Seconds :meth:`Announcer.stop` waits for an announcement in progress (the Redis store gives
#: each presence call a 1 s socket timeout) before it leaves the entry to expire. The withdraw
#: that follows takes one more call at most: a stop takes 2.5 s at worst.
STOP_WAIT_S = 1.5


def this_process(
    kind: WorkerKind,
    *,
    queues: list[str],
    concurrency: int,
    started_at: datetime,
    interval: float,
    counts: dict[str, int],
    stopping: bool = False,
    running: Iterable[RunningTask] = (),
) -> WorkerInfo:
    """A :class:`WorkerInfo` of the calling process: its id (``hostname:pid``), host, pid and
    version filled in (read at each call: a forked child tells its own)."""
    hostname, pid = socket.gethostname(), os.getpid()
    return WorkerInfo(
        id=f"{hostname}:{pid}",
        kind=kind,
        hostname=hostname,
        pid=pid,
        version=__version__,
        queues=queues,
        concurrency=concurrency,
        state="stopping" if stopping else "running",
        started_at=started_at,
        interval=interval,
        running=list(running),
        counts=counts,
    )


class Announcer:
    """Announces ``snapshot()`` to ``store`` every ``interval`` seconds, and when woken, from
    :meth:`start` until :meth:`stop` (which withdraws it)."""

    def __init__(
        self, store: StatusStore, snapshot: Callable[[], WorkerInfo], interval: float
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one store call at a time: the last one wins
        self._failing = False
        self._announced: str | None = None  # the id the store took an announcement of
        self._withdrawn = False
        self._thread = threading.Thread(target=self._run, name="nagatha-presence", daemon=True)

    def start(self) -> None:
        """Announce now, then every ``interval`` seconds, on a daemon thread."""
        self._thread.start()

    def wake(self) -> None:
        """Have the thread announce at once (a change of state); returns without waiting for
        the store (not from a signal handler: ``Event.set`` takes a lock)."""
        self._wake.set()

    def announce(self) -> None:
        """Announce the process as it is now (the thread's turn; callable directly)."""
        with self._lock:
            if self._withdrawn:  # a late turn of the thread must not bring the entry back
                return
            try:
                info = self.snapshot()
                self.store.announce(info)
            except (StoreUnavailable, StoreRejected) as exc:
                self._failed(str(exc))
                return
            except Exception:  # a bug must not end the thread: workers go on announcing
                self._failed(None)
                return
            self._announced = info.id
            if self._failing:
                logger.info("announcing this process again (GET /workers)")
            self._failing = False

    def _failed(self, reason: str | None) -> None:
        if not self._failing:
            if reason is None:
                logger.exception("could not announce this process (GET /workers)")
            else:
                logger.warning("could not announce this process (GET /workers): %s", reason)
        self._failing = True

    def stop(self) -> None:
        """Stop announcing and withdraw the process, so that reads leave it out at once.

        Waits at most :data:`STOP_WAIT_S` for an announcement in progress, then makes one
        store call to withdraw, none if the last announcement failed: if the store does not
        answer, the entry is left to expire (:attr:`~nagatha.types.WorkerInfo.gone_after`).
        """
        self._stop.set()
        self._wake.set()
        locked = self._lock.acquire(timeout=STOP_WAIT_S)
        self._withdrawn = True
        try:
            if not locked or self._failing:
                logger.info("the status store does not answer: this process's entry will expire")
            elif self._announced is not None:
                self.store.withdraw(self._announced)
        except (StoreUnavailable, StoreRejected) as exc:
            logger.info("could not withdraw this process from GET /workers: %s", exc)
        finally:
            if locked:
                self._lock.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.announce()
            self._wake.wait(self.interval)
            self._wake.clear()
