"""Status records in Redis: one hash per task id, updated atomically by a Lua script.

Key layout (``prefix`` from ``results.prefix``, default ``nagatha:``):

* ``<prefix>task:<id>`` - hash of the record's fields, each a JSON value; expires ``ttl``
  seconds after its last write.
* ``<prefix>done:<id>`` - pub/sub channel; the final write publishes the status there so that
  waiters wake at once instead of polling.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.exceptions import RedisError

from nagatha.errors import StoreUnavailable
from nagatha.stores.base import StatusStore, decode_fields, encode_fields
from nagatha.types import TaskRecord, TaskStatus

# KEYS[1] record hash, KEYS[2] done channel. ARGV[1] ttl, ARGV[2] new status (JSON),
# ARGV[3] 1 if final, ARGV[4] number of field pairs that follow, then field/value pairs,
# then default field/value pairs used only when the record does not exist yet.
_UPDATE = """
local current = redis.call('HGET', KEYS[1], 'status')
if current == '"success"' or current == '"failure"' then
  return 0
end
local n = tonumber(ARGV[4])
local i = 5
if not current then
  for j = 5 + 2 * n, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
  end
end
while i < 5 + 2 * n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if ARGV[3] == '1' then
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS[1] record hash. ARGV[1] ttl, then field/value pairs.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for j = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class RedisStatusStore(StatusStore):
    """Status records in Redis (see the module docstring for the keys)."""

    def __init__(
        self,
        url: str,
        *,
        ttl: int = 86_400,
        prefix: str = "nagatha:",
        socket_timeout: float = 5.0,
    ) -> None:
        self.ttl = ttl
        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            health_check_interval=30,
            decode_responses=True,
        )
        self._update = self.client.register_script(_UPDATE)
        self._create = self.client.register_script(_CREATE)

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def _channel(self, task_id: str) -> str:
        return f"{self.prefix}done:{task_id}"

    def create(self, record: TaskRecord) -> bool:
        fields = encode_fields(record.model_dump(exclude_none=True))
        try:
            return bool(
                self._create(keys=[self._key(record.task_id)], args=[self.ttl, *_flatten(fields)])
            )
        except RedisError as exc:
            raise _unavailable(exc) from None

    def update(
        self,
        task_id: str,
        status: TaskStatus,
        fields: dict[str, Any],
        defaults: dict[str, Any] | None = None,
    ) -> bool:
        encoded = encode_fields(fields)
        encoded_defaults = encode_fields({"task_id": task_id, **(defaults or {})})
        args = [
            self.ttl,
            encode_fields({"status": status})["status"],
            "1" if status.final else "0",
            len(encoded),
            *_flatten(encoded),
            *_flatten(encoded_defaults),
        ]
        try:
            keys = [self._key(task_id), self._channel(task_id)]
            return bool(self._update(keys=keys, args=args))
        except RedisError as exc:
            raise _unavailable(exc) from None

    def get(self, task_id: str) -> TaskRecord | None:
        try:
            raw = self.client.hgetall(self._key(task_id))
        except RedisError as exc:
            raise _unavailable(exc) from None
        return decode_fields(raw) if raw else None  # type: ignore[arg-type]

    def delete(self, task_id: str) -> None:
        try:
            self.client.delete(self._key(task_id))
        except RedisError as exc:
            raise _unavailable(exc) from None

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + timeout
        try:
            with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call]
                # Subscribe first, then read: a final write between the two cannot be missed.
                pubsub.subscribe(self._channel(task_id))
                record = self.get(task_id)
                while record is not None and not record.status.final:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    if pubsub.get_message(timeout=min(remaining, 5.0)) is not None:
                        record = self.get(task_id)
                    elif time.monotonic() < deadline:
                        # Re-read every few seconds: covers a record that expired meanwhile.
                        record = self.get(task_id)
                return record
        except RedisError as exc:
            raise _unavailable(exc) from None

    def ping(self) -> None:
        try:
            self.client.ping()
        except RedisError as exc:
            raise _unavailable(exc) from None

    def close(self) -> None:
        self.client.close()


def _unavailable(exc: RedisError) -> StoreUnavailable:
    return StoreUnavailable(f"status store (Redis) unavailable: {type(exc).__name__}: {exc}")
