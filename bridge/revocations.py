"""Revoked Celery task ids, shared by every bridge and worker through Redis.

A bridge that receives a ``revoke`` broadcast (``celery.pidbox``) records the ids here; the
worker-side middleware checks them before running a task, so a revoked task that is queued or
delayed (possibly already handed to Dramatiq) is never run, whichever process holds it.

Key: ``<prefix>celery-revoked:<task id>`` with a TTL (a revoke outlives the task's results).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from redis.exceptions import RedisError

from nagatha.errors import StoreUnavailable


class RevocationStore:
    """Record and check revoked task ids (``revoke`` is idempotent)."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "nagatha:", ttl_s: int = 86_400
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key_for(self, task_id: str) -> str:
        """The Redis key marking ``task_id`` as revoked."""
        return f"{self.prefix}celery-revoked:{task_id}"

    def revoke(self, task_ids: Iterable[str]) -> None:
        """Mark every id as revoked for ``ttl_s`` seconds."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.set(self.key_for(task_id), "1", ex=self.ttl_s)
                pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not record the revoke: {exc}") from exc

    def is_revoked(self, task_id: str) -> bool:
        """True if ``task_id`` was revoked (and the mark has not expired)."""
        try:
            return bool(self.client.exists(self.key_for(task_id)))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer the revoke check: {exc}") from exc
