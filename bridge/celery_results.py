"""Build the result documents Celery clients read, and write them where the clients wait.

A *meta* is the dict Celery stores under ``celery-task-meta-<id>`` and sends to ``rpc://``
clients, in Celery's field order::

    {"status", "result", "traceback", "children", "date_done", ["group_id"], ["parent_id"],
     "task_id"}

Failures carry ``{"exc_type", "exc_message": [...], "exc_module"}`` as ``result``; a client
rebuilds the real exception when ``exc_module`` is importable on its side (``builtins``,
``celery.exceptions``) and a same-named synthetic class otherwise. Metas are encoded with
:func:`bridge.serialization.encode_json`, i.e. what a Celery client's JSON decoder expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import pika
import pika.exceptions
import redis
import redis.exceptions

from bridge.serialization import encode_json
from nagatha.errors import BrokerUnavailable, PublishRefused, StoreUnavailable
from nagatha.types import REVOKED_ERROR

__all__ = [
    "FAILURE",
    "READY_STATES",
    "RETRY",
    "REVOKED",
    "REVOKED_HUB_ERRORS",
    "STARTED",
    "SUCCESS",
    "RedisResultWriter",
    "RpcReplyWriter",
    "build_meta",
    "encode_meta",
    "error_info",
    "exception_info",
    "failure_meta",
    "not_registered_meta",
    "retry_meta",
    "revoked_meta",
    "started_meta",
    "success_meta",
]

STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
#: States after which a Celery client stops waiting; never overwritten once stored.
READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})

#: The hub record's ``error`` for a task not run, by Celery's revoke reason.
REVOKED_HUB_ERRORS: Final = {
    "expired": "TaskRevokedError: expired (its expires time had passed before it could run)",
    "revoked": REVOKED_ERROR,
}

#: Celery's default ``result_expires``: one day.
DEFAULT_EXPIRES_S: Final = 86400

_KEY_PREFIX: Final = "celery-task-meta-"


def build_meta(
    task_id: str,
    status: str,
    result: Any,
    *,
    traceback: str | None = None,
    children: Sequence[Any] | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return a meta in Celery's field order; ``date_done`` is set only for ready states.

    ``now`` (aware; default: the current time) is the completion time, written in UTC.
    """
    date_done = None
    if status in READY_STATES:
        date_done = (now or datetime.now(UTC)).astimezone(UTC).isoformat()
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": list(children or []),
        "date_done": date_done,
    }
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    meta["task_id"] = task_id
    return meta


def error_info(
    exc_type: str, exc_message: Sequence[Any] | str, exc_module: str | None = "builtins"
) -> dict[str, Any]:
    """Return Celery's serialized exception; ``exc_message`` items become the exception args.

    A string ``exc_message`` is wrapped in a one-item list. ``exc_module=None`` leaves the
    module out, and the client then builds a synthetic class of that name.
    """
    message = [exc_message] if isinstance(exc_message, str) else list(exc_message)
    info: dict[str, Any] = {"exc_type": exc_type, "exc_message": message}
    if exc_module is not None:
        info["exc_module"] = exc_module
    return info


def exception_info(exc: BaseException) -> dict[str, Any]:
    """Serialize ``exc`` like Celery's ``Backend.prepare_exception`` (JSON serializer).

    Arguments that cannot be JSON-encoded are replaced by their ``repr``.
    """
    cls = type(exc)
    return error_info(cls.__qualname__, [_safe_arg(arg) for arg in exc.args], cls.__module__)


def success_meta(
    task_id: str,
    result: Any,
    *,
    children: Sequence[Any] | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return a SUCCESS meta: ``get()`` returns ``result``."""
    return build_meta(
        task_id, SUCCESS, result, children=children, group_id=group_id, parent_id=parent_id, now=now
    )


def failure_meta(
    task_id: str,
    error: BaseException | Mapping[str, Any],
    *,
    traceback: str | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return a FAILURE meta; ``error`` is an exception or an :func:`error_info` dict."""
    info = exception_info(error) if isinstance(error, BaseException) else dict(error)
    return build_meta(
        task_id, FAILURE, info, traceback=traceback, group_id=group_id, parent_id=parent_id, now=now
    )


def retry_meta(
    task_id: str,
    error: BaseException | Mapping[str, Any],
    *,
    traceback: str | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
) -> dict[str, Any]:
    """Return a RETRY meta (not a ready state: the client keeps waiting)."""
    info = exception_info(error) if isinstance(error, BaseException) else dict(error)
    return build_meta(
        task_id, RETRY, info, traceback=traceback, group_id=group_id, parent_id=parent_id
    )


def started_meta(
    task_id: str,
    *,
    pid: int,
    hostname: str,
    group_id: str | None = None,
    parent_id: str | None = None,
) -> dict[str, Any]:
    """Return a STARTED meta as written with ``task_track_started`` (``result`` = pid, host)."""
    return build_meta(
        task_id,
        STARTED,
        {"pid": pid, "hostname": hostname},
        group_id=group_id,
        parent_id=parent_id,
    )


def revoked_meta(
    task_id: str,
    reason: str = "revoked",
    *,
    group_id: str | None = None,
    parent_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return a REVOKED meta: ``get()`` raises ``TaskRevokedError(reason)``.

    Celery's reasons are ``"revoked"``, ``"expired"`` and ``"terminated"``.
    """
    info = error_info("TaskRevokedError", [reason], "celery.exceptions")
    return build_meta(task_id, REVOKED, info, group_id=group_id, parent_id=parent_id, now=now)


def not_registered_meta(
    task_id: str,
    task_name: str,
    *,
    group_id: str | None = None,
    parent_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return the FAILURE meta of an unknown task: ``get()`` raises ``NotRegistered(name)``."""
    info = error_info("NotRegistered", [task_name], "celery.exceptions")
    return build_meta(task_id, FAILURE, info, group_id=group_id, parent_id=parent_id, now=now)


def encode_meta(meta: Mapping[str, Any]) -> str:
    """Return the JSON text of ``meta`` as a Celery client decodes it.

    Raises:
        ValueError: ``meta`` lacks a string ``task_id`` or ``status`` (a client would crash).
        TypeError: the result holds a value kombu's JSON cannot encode; store a failure
            instead (for instance ``failure_meta(id, error_info("TypeError", [...]))``).
    """
    if not isinstance(meta.get("task_id"), str) or not isinstance(meta.get("status"), str):
        raise ValueError("a result meta needs string 'task_id' and 'status' fields")
    return encode_json(dict(meta))


# KEYS[1] = the meta key (also the channel); ARGV[1] = payload; ARGV[2] = TTL in s (0: none).
_WRITE_UNLESS_READY: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' then
    local status = doc['status']
    if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then
      return 0
    end
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class RedisResultWriter:
    """Store metas where Celery's Redis result backend looks, and wake waiting clients.

    Each write is ``SETEX celery-task-meta-<id> <expires_s> <json>`` plus ``PUBLISH`` of the
    same JSON on the channel of the same name, run as one Lua script: atomic like Celery's
    ``MULTI``/``EXEC``, and able to skip the write when a ready state (SUCCESS, FAILURE,
    REVOKED) is already stored, so a late STARTED or a duplicate never replaces a result.

    ``key_prefix`` mirrors Celery's ``result_backend_transport_options["global_keyprefix"]``.
    ``expires_s`` of 0 or None stores without expiry, as Celery does.
    """

    def __init__(
        self,
        client: redis.Redis,
        expires_s: int | None = DEFAULT_EXPIRES_S,
        *,
        key_prefix: str = "",
    ) -> None:
        if expires_s is not None and (isinstance(expires_s, bool) or expires_s < 0):
            raise ValueError("expires_s must be a non-negative number of seconds or None")
        if key_prefix and key_prefix[-1] not in ":_-.":
            key_prefix += "_"
        self.client = client
        self.expires_s = int(expires_s or 0)
        self.key_prefix = key_prefix
        self._script = client.register_script(_WRITE_UNLESS_READY)

    def key_for(self, task_id: str) -> str:
        """Return the key (and pub/sub channel) of ``task_id``'s meta."""
        return f"{self.key_prefix}{_KEY_PREFIX}{task_id}"

    def write(self, meta: Mapping[str, Any]) -> bool:
        """Store and publish ``meta``; return False when a ready state was already stored.

        Raises:
            ValueError, TypeError: see :func:`encode_meta` (nothing is written).
            StoreUnavailable: Redis did not answer.
        """
        payload = encode_meta(meta)
        try:
            written = self._script(
                keys=[self.key_for(meta["task_id"])], args=[payload, self.expires_s]
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis did not take the Celery result: {exc}") from exc
        return bool(written)


class _Publisher(Protocol):
    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties | None = None,
        mandatory: bool = False,
    ) -> Any: ...


class RpcReplyWriter:
    """Send metas to ``rpc://`` clients, exactly as a Celery worker replies.

    One message per state, to exchange ``""`` with routing key = the task message's
    ``reply_to`` and ``correlation_id`` = the task id; JSON, UTF-8, ``delivery_mode`` 1 (2 with
    ``persistent=True``, Celery's ``result_persistent``), priority 0, empty headers. The reply
    queue belongs to the client and is never declared here: if it is gone, RabbitMQ drops
    the reply, as it does for Celery.
    """

    def __init__(self, channel: _Publisher, *, persistent: bool = False) -> None:
        self.channel = channel
        self.delivery_mode = 2 if persistent else 1

    def write(
        self, meta: Mapping[str, Any], *, reply_to: str, correlation_id: str | None = None
    ) -> None:
        """Publish ``meta`` to ``reply_to``; ``correlation_id`` defaults to the meta's task id.

        Raises:
            ValueError, TypeError: see :func:`encode_meta` (nothing is sent); ValueError
                also for an empty ``reply_to``.
            BrokerUnavailable: the channel or connection is closed or failed.
            PublishRefused: RabbitMQ refused the reply for good (``reply_to`` or the
                correlation id over AMQP's 255 bytes, no such queue's exchange).
        """
        if not reply_to:
            raise ValueError("an rpc reply needs the task message's reply_to")
        payload = encode_meta(meta).encode("utf-8")
        properties = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=correlation_id or meta["task_id"],
            delivery_mode=self.delivery_mode,
            priority=0,
            headers={},
        )
        try:
            self.channel.basic_publish(
                exchange="", routing_key=reply_to, body=payload, properties=properties
            )
        except pika.exceptions.ShortStringTooLong as exc:
            raise PublishRefused(f"the Celery rpc reply cannot be sent: {exc!r}") from None
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"RabbitMQ did not take the Celery rpc reply: {exc!r}") from exc


def _safe_arg(arg: Any) -> Any:
    """Return ``arg`` if it JSON-encodes, else its repr (Celery's ``ensure_serializable``)."""
    try:
        encode_json(arg)
    except Exception:  # __json__ and __repr__ are arbitrary user code
        try:
            return repr(arg)
        except Exception:
            return f"<unrepresentable {type(arg).__name__}>"
    return arg
