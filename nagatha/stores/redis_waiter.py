"""One pub/sub listener per process that wakes :meth:`RedisStatusStore.wait` callers.

A :class:`DoneListener` holds a single connection with ``PSUBSCRIBE <prefix>done:*`` on a daemon
thread and sets the :class:`threading.Event` of every waiter registered for the task id of each
message. Waiters register *before* they re-read the record, so a final write after that read is
either seen by the listener (their event is set) or falls in a window where the listener was not
subscribed; the listener then sets *every* event once it is subscribed again, and each waiter
re-reads. Waiters also re-read at least every few seconds whatever happens, so a lost connection
delays a wake-up by at most that long and never past the caller's timeout.

Not fork-safe by design: the store starts a listener lazily in the process that waits and
replaces one inherited across ``fork()`` (gunicorn workers), see :attr:`DoneListener.pid`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis

from nagatha.stores.redis_subscriber import Subscriber


class DoneListener(Subscriber):
    """Dispatches ``<prefix>done:<id>`` messages to the waiters registered for ``<id>``."""

    purpose = "status wait listener"

    def __init__(self, connect: Callable[[], redis.Redis], channel_prefix: str) -> None:
        """``connect`` builds the client whose pool gives the listener its connection."""
        self._strip = len(channel_prefix)
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        super().__init__(connect, f"{channel_prefix}*", pattern=True)

    def register(self, task_id: str) -> threading.Event:
        """Return an event set on each final publish for ``task_id`` and on each reconnect."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(event)
        return event

    def unregister(self, task_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiters.get(task_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[task_id]

    def waiting(self, task_id: str) -> int:
        """How many waiters are registered for ``task_id``."""
        with self._lock:
            return len(self._waiters.get(task_id, ()))

    def on_message(self, channel: str, data: str) -> None:
        with self._lock:
            for event in self._waiters.get(channel[self._strip :], ()):
                event.set()

    def set_ready(self, ready: bool) -> None:
        # Either way every waiter re-reads: publishes may have been missed before this point.
        with self._lock:
            super().set_ready(ready)
            self._wake_all()

    def wake_all(self) -> None:
        """Set every waiter's event: each reads its record again."""
        with self._lock:
            self._wake_all()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()
