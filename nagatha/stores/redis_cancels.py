"""Which task ids were cancelled, known in each worker process without a round trip per task.

:meth:`RedisStatusStore.cancel <nagatha.stores.redis.RedisStatusStore.cancel>` (a hub cancel) and
:meth:`~nagatha.stores.redis.RedisStatusStore.revoke` (a Celery client's revoke) add the id to
the sorted set ``<prefix>cancelled`` (score: when the mark expires, in epoch seconds) and
publish it on ``<prefix>cancels`` in the same step. A :class:`CancelWatch` subscribes to
that channel and reloads the set each time it (re)subscribes, so a worker checks a task with a
lookup in its own process. While it is not subscribed the store asks Redis about ids it does
not know of.

A worker learns of a cancel when its publish arrives, normally well under a millisecond after
it: a task that a worker starts in that moment still runs (as with Celery's revoke), and its
writes then replace the cancel in the record (see :class:`~nagatha.stores.StatusStore`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from nagatha.stores.redis_subscriber import Subscriber

#: Expired marks are dropped once the watch holds this many more than after the last sweep.
SWEEP_EVERY = 1024
#: Most marks kept, in Redis and in each process (Celery keeps 50,000 revokes per worker):
#: past it the oldest go, so revokes, which any Celery client may send, cannot make every
#: worker's memory grow without bound. A task whose mark went that way runs when taken.
MAX_MARKS = 100_000


class CancelWatch(Subscriber):
    """The cancelled ids of this process, kept up to date from ``<prefix>cancels``."""

    purpose = "cancel watch"

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        load: Callable[[], dict[str, float]],
        ttl: float,
    ) -> None:
        """``load`` returns every unexpired mark (id -> expiry, epoch seconds) from Redis;
        ``ttl`` is how long a published cancel is kept."""
        self._load = load
        self._ttl = ttl
        self._lock = threading.Lock()
        self._ids: dict[str, float] = {}
        self._swept_size = 0
        super().__init__(connect, channel)

    def cancelled(self, task_id: str) -> bool | None:
        """Whether ``task_id`` is cancelled; None if unknown while the watch is not subscribed
        (an id it knew of before is still known: a cancel is never taken back)."""
        with self._lock:
            expires = self._ids.get(task_id)
        if expires is not None and expires > time.time():
            return True
        return False if self.ready else None

    def on_subscribed(self) -> None:
        # Subscribed first, loaded second: a cancel published in between is in both.
        ids = self._load()
        if len(ids) > MAX_MARKS:  # the newest (latest to expire) stay
            ids = dict(sorted(ids.items(), key=lambda item: item[1])[-MAX_MARKS:])
        with self._lock:
            self._ids = ids
            self._swept_size = len(ids)

    def on_message(self, channel: str, data: str) -> None:
        now = time.time()
        with self._lock:
            self._ids.pop(data, None)  # a mark made again moves to the end (the newest)
            self._ids[data] = now + self._ttl
            if len(self._ids) >= self._swept_size + SWEEP_EVERY:
                self._ids = {key: when for key, when in self._ids.items() if when > now}
                self._swept_size = len(self._ids)
            while len(self._ids) > MAX_MARKS:  # insertion order is the order of expiry
                del self._ids[next(iter(self._ids))]
