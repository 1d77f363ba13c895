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

import logging
import os
import threading
from collections.abc import Callable

import redis
from redis.exceptions import RedisError

logger = logging.getLogger("nagatha.stores")

#: Seconds the listener blocks per read; bounds how long :meth:`DoneListener.close` takes.
IDLE_READ = 1.0
#: Reconnect delay after a lost connection (doubles, capped).
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0


class DoneListener:
    """Dispatches ``<prefix>done:<id>`` messages to the waiters registered for ``<id>``."""

    def __init__(self, connect: Callable[[], redis.Redis], channel_prefix: str) -> None:
        """``connect`` builds the client whose pool gives the listener its connection."""
        self.pid = os.getpid()
        self._connect = connect
        self._channel_prefix = channel_prefix
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._ready = False
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"nagatha-wait-{channel_prefix}", daemon=True
        )
        self._thread.start()

    @property
    def ready(self) -> bool:
        """True while the pattern subscription is confirmed (no publish can be missed)."""
        return self._ready

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

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

    def close(self) -> None:
        """Stop the thread (within :data:`IDLE_READ` s); registered waiters fall back to polls."""
        self._closed.set()
        self._set_ready(False)

    def _wake(self, task_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(task_id, ()):
                event.set()

    def _set_ready(self, ready: bool) -> None:
        # Either way every waiter re-reads: publishes may have been missed before this point.
        with self._lock:
            self._ready = ready
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def _run(self) -> None:
        pattern = f"{self._channel_prefix}*"
        strip = len(self._channel_prefix)
        delay = BACKOFF_FIRST
        while not self._closed.is_set():
            client = None
            try:
                client = self._connect()
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                with pubsub:
                    pubsub.psubscribe(pattern)
                    while not self._closed.is_set():
                        message = pubsub.get_message(timeout=IDLE_READ)
                        if message is None:
                            continue
                        kind = message["type"]
                        if kind == "pmessage":
                            self._wake(message["channel"][strip:])
                        elif kind == "psubscribe":
                            # Also seen after redis-py reconnected and re-subscribed by itself.
                            self._set_ready(True)
                            delay = BACKOFF_FIRST
            except (RedisError, OSError) as exc:
                logger.warning("status wait listener lost its connection: %s", exc)
            except Exception:  # the thread must outlive anything; waiters poll meanwhile
                logger.exception("status wait listener failed")
            finally:
                self._set_ready(False)
                if client is not None:
                    client.close()
            self._closed.wait(delay)
            delay = min(delay * 2, BACKOFF_CAP)
