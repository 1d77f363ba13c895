"""Status records in Redis: one hash per task id, updated atomically by a Lua script.

Key layout (``prefix`` from ``results.prefix``, default ``nagatha:``):

* ``<prefix>task:<id>`` - hash of the record's fields, each a JSON value; expires ``ttl``
  seconds after its last write.
* ``<prefix>redelivered:<id>`` - how many times RabbitMQ redelivered the task to a worker
  (:meth:`RedisStatusStore.count_redelivery`); same expiry as records.
* ``<prefix>done:<id>`` - pub/sub channel; the final write publishes the status there so that
  waiters wake at once instead of polling. Each process listens with one ``PSUBSCRIBE
  <prefix>done:*`` connection (see :mod:`nagatha.stores.redis_waiter`).
* ``<prefix>failed`` - sorted set of the record keys of the newest failures (by when they
  failed; at most ``RECENT_FAILURES``; cancels are not failures here).
* ``<prefix>metrics`` - hash of task metrics (event counts, run times), written by the same
  scripts as the records (see :mod:`nagatha.stores.redis_metrics`).
* ``<prefix>workers`` and ``<prefix>workers:until`` - the processes' announcements (see
  :mod:`nagatha.stores.redis_presence`).
* ``<prefix>cancelled`` - sorted set of the task ids no worker may run (cancelled through the
  hub, or revoked by a Celery client), scored by when the mark expires (epoch seconds);
  ``<prefix>cancels`` - pub/sub channel each id is published on as it joins. Workers keep the
  ids in the process (see :mod:`nagatha.stores.redis_cancels`).

Updates from all threads of a process go out together, one pipeline per turn of a
:class:`~nagatha.stores.batching.WriteBatcher` (group commit; each script call is atomic on its
own, no ``MULTI``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from nagatha.errors import StoreRejected, StoreUnavailable
from nagatha.metrics import TaskMetrics, bucket_of, run_time
from nagatha.stores.base import (
    RECENT_FAILURES,
    StatusStore,
    decode_fields,
    encode_fields,
    unique_ids,
)
from nagatha.stores.batching import Write, WriteBatcher
from nagatha.stores.redis_cancels import MAX_MARKS, CancelWatch
from nagatha.stores.redis_metrics import LUA
from nagatha.stores.redis_presence import TIMEOUT_S as PRESENCE_TIMEOUT_S
from nagatha.stores.redis_presence import RedisPresence
from nagatha.stores.redis_waiter import DoneListener
from nagatha.types import CANCELLED_ERROR, REVOKED_ERROR, TaskRecord, TaskStatus, WorkerInfo

# KEYS[1] record hash, KEYS[2] done channel, KEYS[3] the metrics hash, KEYS[4] the recent
# failures (record keys by when they failed, the newest RECENT_FAILURES). ARGV[1] ttl, ARGV[2]
# new status (JSON), ARGV[3] 1 if final, ARGV[4] JSON object field -> JSON text, ARGV[5] and
# ARGV[6] the run time in microseconds and its bucket (empty: none), ARGV[7] 1 if the write
# carries a start (a started write, or one that absorbed it), ARGV[8] the name to count under
# (JSON; empty: the record's), optional ARGV[9] JSON object field -> JSON text for the
# defaults. The values are kept as the strings they decode to (never re-encoded by cjson,
# which would make an empty list and an empty object alike). Returns 1 written, 0 already
# final, -1 no record and no defaults sent (nothing written). A final record is never
# rewritten, except one a cancel or a Celery revoke made final, by a write that carries
# started_at (see StatusStore's rules). Metrics: a write carrying a start counts `started`
# unless the record has that start already (the same started_at: a write sent again); a
# change of status (or of such a record) counts its event and, for an outcome, the run time.
_UPDATE = (
    LUA
    + "local CANCELLED, REVOKED = [["
    + json.dumps(CANCELLED_ERROR)
    + "]], [["
    + json.dumps(REVOKED_ERROR)
    + """]]
local before = redis.call('HMGET', KEYS[1], 'status', 'started_at', 'task_name')
local current = before[1]
local fields = cjson.decode(ARGV[4])
local pairs_ = {}
local n = 0
local changes = current ~= ARGV[2]
if current == '"success"' or current == '"failure"' then
  -- A record a cancel or a Celery revoke made final gives way to a run that missed it (its
  -- writes carry started_at).
  local err = current == '"failure"' and redis.call('HGET', KEYS[1], 'error')
  if (err ~= CANCELLED and err ~= REVOKED)
      or not fields['started_at'] or fields['started_at'] == 'null' then
    return 0
  end
  pairs_ = {'error', 'null', 'completed_at', 'null'}
  n = 4
  changes = true
end
if not current then
  if not ARGV[9] then
    return -1
  end
  for field, value in pairs(cjson.decode(ARGV[9])) do
    pairs_[n + 1] = field
    pairs_[n + 2] = value
    n = n + 2
  end
end
for field, value in pairs(fields) do
  pairs_[n + 1] = field
  pairs_[n + 2] = value
  n = n + 2
end
pairs_[n + 1] = 'status'
pairs_[n + 2] = ARGV[2]
redis.call('HSET', KEYS[1], unpack(pairs_))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if ARGV[3] == '1' then
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
local starts = ARGV[7] == '1' and fields['started_at'] and fields['started_at'] ~= 'null'
  and fields['started_at'] ~= before[2]
if starts or changes then
  local name = ARGV[8]
  if name == '' then
    name = before[3] or redis.call('HGET', KEYS[1], 'task_name') or 'null'
  end
  if starts then
    count(KEYS[3], 'started', name)
  end
  if changes and ARGV[2] ~= '"started"' then
    count(KEYS[3], EVENT_OF_STATUS[ARGV[2]], name)
  end
  if changes and ARGV[5] ~= '' then
    observe(KEYS[3], name, ARGV[5], ARGV[6])
  end
end
-- A failure (not a cancel a worker wrote) joins the recent ones, scored by the server's
-- clock in microseconds, kept strictly increasing: newest first must not depend on the
-- order of equal scores.
local now = changes and ARGV[2] == '"failure"' and fields['error'] ~= CANCELLED
  and redis.pcall('TIME')
if type(now) == 'table' and now[2] then
  local score = now[1] * 1000000 + now[2]
  local last = redis.pcall('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if type(last) == 'table' and last[2] and tonumber(last[2]) >= score then
    score = tonumber(last[2]) + 1
  end
  redis.pcall('ZADD', KEYS[4], score, KEYS[1])
  redis.pcall('ZREMRANGEBYRANK', KEYS[4], 0, -"""
    + str(RECENT_FAILURES + 1)
    + """)
end
return 1
"""
)

# Makes ids marks no worker runs (see nagatha.stores.redis_cancels): into the set, scored by
# when they expire (expired ones and past `cap` the oldest go), each published on the channel.
_MARK = """
local function mark(set, channel, now, ttl, cap, ids)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
  for _, id in ipairs(ids) do
    redis.call('ZADD', set, now + ttl, id)
  end
  redis.call('ZREMRANGEBYRANK', set, 0, -cap - 1)
  redis.call('EXPIRE', set, ttl)
  for _, id in ipairs(ids) do
    redis.call('PUBLISH', channel, id)
  end
end
"""

# KEYS[1] record hash, KEYS[2] its done channel, KEYS[3] the cancelled set, KEYS[4] the
# cancels channel, KEYS[5] the metrics hash. ARGV[1] ttl, ARGV[2] JSON object field -> JSON
# text, ARGV[3] now (epoch s), ARGV[4] the task id, ARGV[5] how many marks the set keeps.
# Only a record waiting to run is cancelled (counted as the event `cancelled`); returns the
# record's fields as they are afterwards (none: no record).
_CANCEL = (
    LUA
    + _MARK
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then
  return {}
end
if current == '"pending"' or current == '"retrying"' then
  local pairs_ = {'status', '"failure"'}
  for field, value in pairs(cjson.decode(ARGV[2])) do
    pairs_[#pairs_ + 1] = field
    pairs_[#pairs_ + 1] = value
  end
  local ttl = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], unpack(pairs_))
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('PUBLISH', KEYS[2], '"failure"')
  mark(KEYS[3], KEYS[4], tonumber(ARGV[3]), ttl, tonumber(ARGV[5]), {ARGV[4]})
  count(KEYS[5], 'cancelled', redis.call('HGET', KEYS[1], 'task_name') or 'null')
end
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS[1] the cancelled set, KEYS[2] the cancels channel. ARGV[1] ttl, ARGV[2] now (epoch s),
# ARGV[3] how many marks the set keeps, then the task ids.
_REVOKE = (
    _MARK
    + """
local ids = {}
for i = 4, #ARGV do  -- not unpack(): Lua's stack holds about 8,000 values, a revoke may hold more
  ids[#ids + 1] = ARGV[i]
end
mark(KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[1]), tonumber(ARGV[3]), ids)
"""
)

# KEYS[1] record hash, KEYS[2] the metrics hash. ARGV[1] ttl, ARGV[2] the name to count
# `submitted` under (JSON; empty: the record's), then field/value pairs.
_CREATE = (
    LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local name = ARGV[2]
for j = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
  if ARGV[j] == 'task_name' and name == '' then
    name = ARGV[j + 1]
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
count(KEYS[2], 'submitted', name == '' and 'null' or name)
return 1
"""
)


#: Longest script argument sent (a record's fields as JSON): Redis refuses a bulk string over
#: ``proto-max-bulk-len`` (512 MiB by default) and drops the connection, which would fail
#: every write of the pipeline, again and again.
MAX_ARGUMENT_CHARS = 500 * 1024 * 1024
#: Error answers that pass (a replica promoted, a script ended, memory freed, an ACL fixed).
_TRANSIENT_ERRORS = (ReadOnlyError, OutOfMemoryError, NoPermissionError)
_TRANSIENT_CODES = ("BUSY ", "MASTERDOWN ", "TRYAGAIN ", "CLUSTERDOWN ")

#: Seconds between re-reads of a waited record while the listener is subscribed (covers a
#: record that expired meanwhile), and while it is not (a publish may be missed then).
POLL_SUBSCRIBED, POLL_UNSUBSCRIBED = 5.0, 1.0


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


_Helper = TypeVar("_Helper", DoneListener, CancelWatch, WriteBatcher)


def _usable(helper: _Helper | None) -> _Helper | None:
    """``helper`` if this process started it and it is not closed, else None."""
    if helper is None or helper.pid != os.getpid() or helper.closed:
        return None
    return helper


def _reset_lock() -> None:
    global _START_LOCK
    _START_LOCK = threading.Lock()


# Guards the start of listeners and batchers; replaced in a forked child, where a copy could be
# held forever.
_START_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_reset_lock)


class RedisStatusStore(StatusStore):
    """Status records in Redis (see the module docstring for the keys).

    :meth:`wait` shares one pub/sub connection per process and store (a
    :class:`~nagatha.stores.redis_waiter.DoneListener`, started by the first wait that has to
    block, named :attr:`waiter_client_name` in ``CLIENT LIST``). :meth:`update` and
    :meth:`update_soon` share one :class:`~nagatha.stores.batching.WriteBatcher` per process
    and store, started by the first update.
    """

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
        self._url = url
        self._socket_timeout = socket_timeout
        self._token = uuid.uuid4().hex[:8]
        self._listener: DoneListener | None = None
        self._batcher: WriteBatcher | None = None
        self._cancels: CancelWatch | None = None
        self.client = self._new_client()
        self._update = self.client.register_script(_UPDATE)
        self._create = self.client.register_script(_CREATE)
        self._cancel = self.client.register_script(_CANCEL)
        self._revoke = self.client.register_script(_REVOKE)
        self._presence = RedisPresence(
            self._new_client(decode=False, socket_timeout=PRESENCE_TIMEOUT_S),
            self._new_client(decode=False),
            prefix,
        )

    def _new_client(
        self,
        client_name: str | None = None,
        *,
        decode: bool = True,
        socket_timeout: float | None = None,
    ) -> redis.Redis:
        timeout = self._socket_timeout if socket_timeout is None else socket_timeout
        return redis.Redis.from_url(
            self._url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            decode_responses=decode,
            client_name=client_name,
        )

    @property
    def waiter_client_name(self) -> str:
        """``CLIENT SETNAME`` of this process's wait listener connection."""
        return f"nagatha-wait-{self._token}-{os.getpid()}"

    def _waiter(self) -> DoneListener:
        """The listener of this process, started on first use (never one inherited by fork)."""
        name = self.waiter_client_name
        return self._own(
            "_listener",
            lambda: DoneListener(
                lambda: self._new_client(name, decode=False), f"{self.prefix}done:"
            ),
        )

    def _writer(self) -> WriteBatcher:
        """The batcher of this process, started on first use (never one inherited by fork)."""
        return self._own(
            "_batcher", lambda: WriteBatcher(self._send, f"nagatha-writes-{self.prefix}")
        )

    def _cancel_watch(self) -> CancelWatch:
        """The cancel watch of this process, started on first use (never one inherited)."""
        return self._own(
            "_cancels",
            lambda: CancelWatch(
                lambda: self._new_client(decode=False),
                self._cancels_channel,
                self._load_cancelled,
                self.ttl,
            ),
        )

    def _own(self, attribute: str, start: Callable[[], _Helper]) -> _Helper:
        """The helper thread held in ``attribute`` if it is this process's; else a new one."""
        helper: _Helper | None = _usable(getattr(self, attribute))
        if helper is None:
            with _START_LOCK:
                helper = _usable(getattr(self, attribute))
                if helper is None:
                    helper = start()
                    setattr(self, attribute, helper)
        return helper

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def _redelivered_key(self, task_id: str) -> str:
        return f"{self.prefix}redelivered:{task_id}"

    def _channel(self, task_id: str) -> str:
        return f"{self.prefix}done:{task_id}"

    @property
    def _cancelled_key(self) -> str:
        return f"{self.prefix}cancelled"

    @property
    def _cancels_channel(self) -> str:
        return f"{self.prefix}cancels"

    @property
    def _metrics_key(self) -> str:
        return f"{self.prefix}metrics"

    @property
    def _failures_key(self) -> str:
        return f"{self.prefix}failed"

    def create(self, record: TaskRecord) -> bool:
        return self._create_all([record])[0]

    def create_many(self, records: Sequence[TaskRecord]) -> None:
        """See :meth:`StatusStore.create_many`: one pipeline for all of ``records``."""
        self._create_all(records)

    def _create_all(self, records: Sequence[TaskRecord]) -> list[bool]:
        calls: list[list[str | int]] = [
            [
                self._key(record.task_id),
                self._metrics_key,
                self.ttl,
                self._label(record.task_name),
                *_flatten(encode_fields(record.model_dump(exclude_none=True))),
            ]
            for record in records
        ]
        try:
            answers = self._run(self._create, calls, keys=2)
        except RedisError as exc:
            raise _unavailable(exc) from None
        for answer in answers:
            if isinstance(answer, Exception):
                raise _unavailable(answer)
        return [bool(answer) for answer in answers]

    def update(
        self,
        task_id: str,
        status: TaskStatus,
        fields: dict[str, Any],
        defaults: dict[str, Any] | None = None,
    ) -> bool:
        """See :meth:`StatusStore.update`; sent in this process's next pipeline."""
        return bool(self._writer().write(Write(task_id, status, fields, defaults)))

    def update_soon(
        self,
        task_id: str,
        status: TaskStatus,
        fields: dict[str, Any],
        defaults: dict[str, Any] | None = None,
    ) -> None:
        """See :meth:`StatusStore.update_soon`; a failure is logged by the batcher."""
        self._writer().defer(Write(task_id, status, fields, defaults))

    def _send(self, writes: list[Write]) -> None:
        """Run ``writes`` as one pipeline (the batcher's ``send``).

        ``defaults`` are encoded and sent with a ``started`` write (the one that normally
        creates a record the hub's producer did not) and with a write that absorbed one; for
        the others only when the record turns out to be missing, at the cost of a second
        pipeline for those writes then.
        """
        try:
            self._pipeline(
                writes,
                with_defaults=lambda write: write.absorbed or write.status is TaskStatus.STARTED,
            )
            missing = [write for write in writes if write.answer == -1]
            if missing:
                self._pipeline(missing, with_defaults=lambda write: True)
        except RedisError as exc:
            error = _unavailable(exc)
            for write in writes:
                write.error = error

    def _pipeline(self, writes: list[Write], *, with_defaults: Callable[[Write], bool]) -> None:
        """Send ``writes``; one the store cannot take fails alone (``StoreRejected``)."""
        sendable, calls = [], []
        for write in writes:
            try:
                calls.append(self._update_args(write, with_defaults(write)))
            except StoreRejected as exc:
                write.error = exc
            else:
                sendable.append(write)
        for write, answer in zip(sendable, self._run(self._update, calls, keys=4), strict=True):
            if isinstance(answer, Exception):
                write.error = _error_of(answer)
            else:
                write.answer, write.error = int(answer), None

    def _run(self, script: Script, calls: list[list[str | int]], *, keys: int) -> list[Any]:
        """Run ``script`` once per argument list (``keys`` keys first) in one pipeline.

        Returns each call's answer or its error. Only if Redis lost its script cache
        (``SCRIPT FLUSH``, a restart) does it load the script and run those calls again.
        """
        answers: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            pipe = self.client.pipeline(transaction=False)
            for index in todo:
                pipe.evalsha(script.sha, keys, *calls[index])
            for index, answer in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                answers[index] = answer
            todo = [index for index in todo if isinstance(answers[index], NoScriptError)]
            if not todo:
                break
            self.client.script_load(script.script)
        return answers

    def _update_args(self, write: Write, with_defaults: bool) -> list[str | int]:
        """The script's arguments; ``StoreRejected`` for fields JSON or Redis cannot hold."""
        try:
            encoded = [json.dumps(encode_fields(write.fields))]
            if with_defaults:
                encoded.append(self._defaults(write.task_id, write.defaults))
        except (TypeError, ValueError, RecursionError) as exc:
            raise StoreRejected(f"the record cannot be stored as JSON: {exc}") from None
        if max(map(len, encoded)) > MAX_ARGUMENT_CHARS:
            raise StoreRejected(
                f"the record is too large for Redis (over {MAX_ARGUMENT_CHARS >> 20} MiB as JSON)"
            )
        seconds = run_time(write.fields) if write.status.final else None
        starts = write.status is TaskStatus.STARTED or write.absorbed
        return [
            self._key(write.task_id),
            self._channel(write.task_id),
            self._metrics_key,
            self._failures_key,
            self.ttl,
            f'"{write.status.value}"',
            "1" if write.status.final else "0",
            encoded[0],
            "" if seconds is None else round(seconds * 1e6),
            "" if seconds is None else bucket_of(seconds),
            "1" if starts else "0",
            self._label((write.defaults or {}).get("task_name")),
            *encoded[1:],
        ]

    def _label(self, task_name: str | None) -> str:
        """The name (JSON) a write counts under if not its record's: see
        :meth:`StatusStore.metric_name`; empty when it is the record's own."""
        counted = self.metric_name(task_name)
        return "" if task_name is None or counted == task_name else json.dumps(counted)

    @staticmethod
    def _defaults(task_id: str, defaults: dict[str, Any] | None) -> str:
        return json.dumps(encode_fields({"task_id": task_id, **(defaults or {})}))

    def get(self, task_id: str) -> TaskRecord | None:
        try:
            raw = self.client.hgetall(self._key(task_id))
        except RedisError as exc:
            raise _unavailable(exc) from None
        return decode_fields(raw) if raw else None  # type: ignore[arg-type]

    def renew(self, task_id: str) -> None:
        try:
            self.client.expire(self._key(task_id), self.ttl)
        except RedisError as exc:
            raise _unavailable(exc) from None

    def delete(self, task_id: str) -> None:
        key = self._key(task_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(key)
            pipe.zrem(self._failures_key, key)  # an id made again must not list as failed
            pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from None

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        """See :meth:`StatusStore.wait`.

        Until this process has a listener, a final or missing record returns after one read,
        without subscribing. Once it has one, the waiter registers first and reads once: a
        pending record then costs one read before the wait instead of two.
        """
        deadline = time.monotonic() + timeout
        listener = _usable(self._listener)
        if listener is None or timeout <= 0:
            record = self.get(task_id)
            if record is None or record.status.final or timeout <= 0:
                return record
            listener = self._waiter()
        # Registered before the (re-)read: a final write after it sets the event (see
        # DoneListener).
        event = listener.register(task_id)
        try:
            while True:
                record = self.get(task_id)
                remaining = min(deadline, self.waits_end) - time.monotonic()
                if record is None or record.status.final or remaining <= 0:
                    return record
                poll = POLL_SUBSCRIBED if listener.ready else POLL_UNSUBSCRIBED
                event.wait(min(remaining, poll))
                event.clear()
        finally:
            listener.unregister(task_id, event)

    def stop_waits(self, within: float = 0.0) -> None:
        self.waits_end = min(self.waits_end, time.monotonic() + within)
        listener = _usable(self._listener)
        if listener is not None:
            listener.wake_all()

    def cancel(self, task_id: str, fields: dict[str, Any]) -> TaskRecord | None:
        """See :meth:`StatusStore.cancel`: one script, so no worker write falls in between."""
        keys = [
            self._key(task_id),
            self._channel(task_id),
            self._cancelled_key,
            self._cancels_channel,
            self._metrics_key,
        ]
        args: list[str | int] = [
            self.ttl,
            json.dumps(encode_fields(fields)),
            repr(time.time()),
            task_id,
            MAX_MARKS,
        ]
        try:
            raw = self._cancel(keys=keys, args=args)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return decode_fields(dict(zip(raw[::2], raw[1::2], strict=True))) if raw else None

    def recent_failures(self, limit: int) -> list[TaskRecord]:
        """See :meth:`StatusStore.recent_failures`: the sorted set ``<prefix>failed`` read
        newest first, its records in one pipeline per ``limit`` keys, until ``limit`` of them
        are still failures (an id may have expired, or been made again since)."""
        records: list[TaskRecord] = []
        start = 0
        try:
            while len(records) < limit:
                keys: list[str] = self.client.zrevrange(  # type: ignore[assignment]
                    self._failures_key, start, start + limit - 1
                )
                if not keys:
                    break
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.hgetall(key)
                found = (decode_fields(raw) for raw in pipe.execute() if raw)
                records += [record for record in found if record.failed]
                start += limit
        except RedisError as exc:
            raise _unavailable(exc) from None
        return records[:limit]

    def metrics(self) -> TaskMetrics:
        """See :meth:`StatusStore.metrics`: one read of ``<prefix>metrics``."""
        try:
            fields = self.client.hgetall(self._metrics_key)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return TaskMetrics.from_fields(fields)  # type: ignore[arg-type]

    def revoke(self, task_ids: Collection[str]) -> None:
        """See :meth:`StatusStore.revoke`: the ids join ``<prefix>cancelled`` and are published
        on ``<prefix>cancels`` by the step a cancel makes its mark with, in one script; past
        :data:`~nagatha.stores.redis_cancels.MAX_MARKS` marks the oldest go."""
        ids = unique_ids(task_ids)
        if not ids:
            return
        keys = [self._cancelled_key, self._cancels_channel]
        try:
            self._revoke(keys=keys, args=[self.ttl, repr(time.time()), MAX_MARKS, *ids])
        except RedisError as exc:
            raise _unavailable(exc) from None

    def is_cancelled(self, task_id: str) -> bool:
        """See :meth:`StatusStore.is_cancelled`: a lookup in this process once its watch is
        subscribed (:mod:`nagatha.stores.redis_cancels`), a read from Redis until then."""
        known = self._cancel_watch().cancelled(task_id)
        if known is not None:
            return known
        try:
            expires = self.client.zscore(self._cancelled_key, task_id)
        except RedisError as exc:
            raise _unavailable(exc) from None
        return expires is not None and expires > time.time()

    def _load_cancelled(self) -> dict[str, float]:
        marks: list[tuple[str, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            self._cancelled_key, time.time(), "+inf", withscores=True
        )
        return dict(marks)

    def redeliveries(self, task_id: str) -> int:
        try:
            return int(self.client.get(self._redelivered_key(task_id)) or 0)
        except RedisError as exc:
            raise _unavailable(exc) from None

    def count_redelivery(self, task_id: str, delta: int = 1) -> int:
        """See :meth:`StatusStore.count_redelivery` (key ``<prefix>redelivered:<id>``)."""
        key = self._redelivered_key(task_id)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.incrby(key, delta)
                pipe.expire(key, self.ttl)
                count, _ = pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from None
        return int(count)

    def announce(self, worker: WorkerInfo) -> None:
        try:
            self._presence.announce(worker)
        except RedisError as exc:
            raise _unavailable(exc) from None

    def withdraw(self, worker_id: str) -> None:
        try:
            self._presence.withdraw(worker_id)
        except RedisError as exc:
            raise _unavailable(exc) from None

    def workers(self) -> list[WorkerInfo]:
        try:
            return self._presence.workers()
        except RedisError as exc:
            raise _unavailable(exc) from None

    def ping(self) -> None:
        try:
            self.client.ping()
        except RedisError as exc:
            raise _unavailable(exc) from None

    def close(self) -> None:
        """Send the writes still queued, stop this process's threads, drop the connections."""
        for helper in (_usable(self._batcher), _usable(self._listener), _usable(self._cancels)):
            if helper is not None:
                helper.close()
        self.client.close()
        self._presence.writer.close()
        self._presence.reader.close()


def _error_of(answer: Exception) -> StoreUnavailable | StoreRejected:
    """The error of one command's error answer: refused for good, or unavailable."""
    transient = isinstance(answer, _TRANSIENT_ERRORS) or str(answer).startswith(_TRANSIENT_CODES)
    if isinstance(answer, ResponseError) and not transient:
        return StoreRejected(f"status store (Redis) refused the write: {answer}")
    return _unavailable(answer)


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"status store (Redis) unavailable: {type(exc).__name__}: {exc}")
