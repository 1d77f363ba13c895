"""Which worker and bridge processes are alive, and what they do (``GET /workers``).

Each worker process (:class:`nagatha.middleware.presence.WorkerPresence`) and each bridge runs
an :class:`Announcer`: a daemon thread that hands the status store a
:class:`~nagatha.types.WorkerInfo` of its process every ``worker.presence_interval`` seconds
and withdraws it when the process stops. A process not heard of for
:data:`~nagatha.types.MISSED_BEATS` intervals (killed, frozen, cut off from Redis) is left out
of reads. The store judges that by its own clock (Redis ``TIME``), so machines whose clocks
disagree still agree on who is alive.

An announcement the store cannot take is logged once per outage and tried again at the next
interval; it never stops the process's work.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.stores import StatusStore
from nagatha.types import WorkerInfo

logger = logging.getLogger("nagatha.presence")


def process_identity() -> tuple[str, str, int]:
    """``(id, hostname, pid)`` of this process as :class:`WorkerInfo` names it."""
    hostname, pid = socket.gethostname(), os.getpid()
    return f"{hostname}:{pid}", hostname, pid


class Announcer:
    """Announces ``snapshot()`` to ``store`` every ``interval`` seconds, from :meth:`start`
    until :meth:`stop` (which withdraws it)."""

    def __init__(
        self, store: StatusStore, snapshot: Callable[[], WorkerInfo], interval: float
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one announcement at a time: the last one wins
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="nagatha-presence", daemon=True)
        self._id: str | None = None
        self._withdrawn = False

    def start(self) -> None:
        """Announce now, then every ``interval`` seconds, on a daemon thread."""
        self._thread.start()

    def announce(self) -> None:
        """Announce the process as it is now (also between intervals: a change of state)."""
        with self._lock:
            if self._withdrawn:  # a late turn of the thread must not bring the entry back
                return
            try:
                info = self.snapshot()
                self._id = info.id
                self.store.announce(info)
            except (StoreUnavailable, StoreRejected) as exc:
                if not self._failing:
                    logger.warning("could not announce this process (GET /workers): %s", exc)
                self._failing = True
                return
            except Exception:  # a bug must not end the thread: workers go on announcing
                if not self._failing:
                    logger.exception("could not announce this process (GET /workers)")
                self._failing = True
                return
            if self._failing:
                logger.info("announcing this process again (GET /workers)")
            self._failing = False

    def stop(self) -> None:
        """Stop announcing and withdraw the process (reads leave it out at once; if the store
        is unreachable, they do :attr:`~nagatha.types.WorkerInfo.gone_after` seconds later)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        with self._lock:
            self._withdrawn = True
            if self._id is None:
                return
            try:
                self.store.withdraw(self._id)
            except (StoreUnavailable, StoreRejected) as exc:
                logger.info("could not withdraw this process from GET /workers: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.announce()
            self._stop.wait(self.interval)
