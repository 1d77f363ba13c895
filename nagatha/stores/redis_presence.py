"""Worker and bridge announcements in Redis (``GET /workers``, :mod:`nagatha.presence`).

Keys (``prefix`` from ``results.prefix``):

* ``<prefix>workers`` - hash: process id (``hostname:pid``) -> its last
  :class:`~nagatha.types.WorkerInfo` as JSON;
* ``<prefix>workers:until`` - sorted set: process id scored by when its entry is gone (Redis
  ``TIME`` plus :attr:`~nagatha.types.WorkerInfo.gone_after`, epoch seconds).

Both scripts read Redis's clock, never the caller's: staleness means the same on every
machine. An announcement drops the entries already gone, so a killed process's entry does not
outlive it by more than the next announcement of any process; both keys expire a day after the
last one (a hub whose processes all stopped leaves nothing behind).
"""

from __future__ import annotations

import logging

import redis
from pydantic import ValidationError

from nagatha.stores.base import worker_order
from nagatha.types import WorkerInfo

logger = logging.getLogger("nagatha.presence")

#: Seconds both keys live after the last announcement.
KEYS_TTL = 86_400
#: Socket timeout (s) of the connection processes announce on: a Redis that does not answer
#: must not hold a worker's shutdown for the store's usual timeout.
TIMEOUT_S = 1.0

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# KEYS[1] the `until` set, KEYS[2] the entries. ARGV[1] id, ARGV[2] entry JSON, ARGV[3] seconds
# until gone, ARGV[4] keys' ttl.
_ANNOUNCE = (
    _NOW
    + """
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[2], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
"""
)

# KEYS as above. Answers now (as text: Redis cuts a Lua number to an integer; tostring keeps
# 14 digits, 0.1 ms), then for each entry not gone: when it is gone, its JSON.
_WORKERS = (
    _NOW
    + """
local answer = {tostring(now)}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. tostring(now), '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  local entry = redis.call('HGET', KEYS[2], live[i])
  if entry then
    answer[#answer + 1] = live[i + 1]
    answer[#answer + 1] = entry
  end
end
return answer
"""
)


class RedisPresence:
    """The two keys above for one store's prefix; methods raise ``RedisError``.

    ``writer`` (announce, withdraw) should time out soon: a worker announces on its way out.
    ``reader`` must not decode answers: an entry that is no UTF-8 is left out, not an error
    for the whole read.
    """

    def __init__(self, writer: redis.Redis, reader: redis.Redis, prefix: str) -> None:
        self.writer, self.reader = writer, reader
        self.keys = [f"{prefix}workers:until", f"{prefix}workers"]
        self._announce = writer.register_script(_ANNOUNCE)
        self._workers = reader.register_script(_WORKERS)

    def announce(self, worker: WorkerInfo) -> None:
        entry = worker.model_dump_json(exclude={"seen_seconds_ago"})
        self._announce(keys=self.keys, args=[worker.id, entry, repr(worker.gone_after), KEYS_TTL])

    def withdraw(self, worker_id: str) -> None:
        with self.writer.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys[0], worker_id)
            pipe.hdel(self.keys[1], worker_id)
            pipe.execute()

    def workers(self) -> list[WorkerInfo]:
        now, *pairs = self._workers(keys=self.keys)
        live = []
        for until, entry in zip(pairs[::2], pairs[1::2], strict=True):
            try:
                worker = WorkerInfo.model_validate_json(entry)
            except ValidationError:  # another version's, or not the hub's at all
                logger.debug("left out an announcement this version cannot read: %.200r", entry)
                continue
            seen = float(now) - (float(until) - worker.gone_after)
            live.append(worker.model_copy(update={"seen_seconds_ago": round(max(seen, 0.0), 3)}))
        return sorted(live, key=worker_order)
