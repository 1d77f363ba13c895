"""A daemon thread that holds one Redis subscription and keeps it up.

:class:`Subscriber` subscribes one connection to a channel (or a pattern) and hands each
message to :meth:`Subscriber.on_message`. After a lost connection it reconnects with backoff;
while it is not subscribed, :attr:`Subscriber.ready` is False, since publishes made meanwhile
are missed (Redis keeps none): subclasses catch up in :meth:`Subscriber.on_subscribed`. The
connection is PINGed every few seconds, so one that went silent counts as lost too.

Not fork-safe by design: each process starts its own (see :attr:`Subscriber.pid`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

logger = logging.getLogger("nagatha.stores")

#: Seconds the thread blocks per read; bounds how long :meth:`Subscriber.close` takes.
IDLE_READ = 1.0
#: Seconds between the thread's PINGs on its connection, and how long the answer may take: a
#: connection that went silent without closing (a dead host, a dropped route: nothing
#: raises) is given up at most their sum (plus a read) after it stopped answering.
PING_EVERY, PING_DEADLINE = 2.0, 3.0
#: Reconnect delay after a lost connection (doubles, capped).
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0


class Subscriber:
    """One subscription on a daemon thread; override :meth:`on_message` (and the hooks)."""

    #: Says in logs what the subscription is for.
    purpose = "subscription"

    def __init__(
        self, connect: Callable[[], redis.Redis], channel: str, *, pattern: bool = False
    ) -> None:
        """``connect`` builds the client whose pool gives the subscription its connection,
        with ``decode_responses=False``: redis-py 8 reads the answer to a PING on a
        subscribed connection as a message only from bytes (from text it makes one of its
        letters); ``channel`` is a pattern (``PSUBSCRIBE``) if ``pattern``, else a channel."""
        self.pid = os.getpid()
        self._connect = connect
        self._channel = channel
        self._pattern = pattern
        self._ready = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nagatha-{channel}", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """True while the subscription is confirmed and caught up (no publish can be missed)."""
        return self._ready

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the thread (within :data:`IDLE_READ` s)."""
        self._closed.set()
        self.set_ready(False)

    def on_message(self, channel: str, data: str) -> None:
        """Handle one published message (on the subscription's thread)."""
        raise NotImplementedError

    def on_subscribed(self) -> None:
        """Catch up after (re)subscribing, before :attr:`ready` turns True; may raise
        ``RedisError`` (the thread then reconnects)."""

    def set_ready(self, ready: bool) -> None:
        """Record whether the subscription is up; subclasses may act on the change."""
        self._ready = ready

    def _run(self) -> None:
        kinds = ("pmessage", "psubscribe") if self._pattern else ("message", "subscribe")
        delay = BACKOFF_FIRST
        while not self._closed.is_set():
            client = None
            try:
                client = self._connect()
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                with pubsub:
                    if self._pattern:
                        pubsub.psubscribe(self._channel)
                    else:
                        pubsub.subscribe(self._channel)
                    pinged: float | None = None
                    due = time.monotonic() + PING_EVERY
                    while not self._closed.is_set():
                        now = time.monotonic()
                        if pinged is not None and now - pinged > PING_DEADLINE:
                            raise RedisConnectionError(
                                f"no answer to PING within {PING_DEADLINE:g}s"
                            )
                        if pinged is None and now >= due:
                            pubsub.ping()
                            pinged = now
                        message = pubsub.get_message(timeout=IDLE_READ)
                        if message is None:
                            continue
                        kind = message["type"]
                        if kind == "pong":
                            pinged, due = None, time.monotonic() + PING_EVERY
                            delay = BACKOFF_FIRST  # answering: a later loss starts afresh
                        elif kind == kinds[0]:
                            self.on_message(_text(message["channel"]), _text(message["data"]))
                        elif kind == kinds[1]:
                            # Also seen after redis-py reconnected and subscribed again by itself.
                            self.on_subscribed()
                            self.set_ready(True)
            except (RedisError, OSError) as exc:
                logger.warning("%s lost its connection: %s", self.purpose, exc)
            except Exception:  # the thread must outlive anything; users fall back meanwhile
                logger.exception("%s failed", self.purpose)
            finally:
                self.set_ready(False)
                if client is not None:
                    client.close()
            self._closed.wait(delay)
            delay = min(delay * 2, BACKOFF_CAP)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
