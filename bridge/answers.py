"""Answer Celery clients where they wait, and keep the hub's status record in step.

Shared by the three places that answer a client: the consumer (bad, unknown, expired or
revoked messages), the pidbox (``revoke``) and the worker-side middleware (task outcomes).

* :class:`Answers` writes a result meta to the Redis result backend and, for ``rpc://``
  clients, as a reply on the task message's ``reply_to``; it also records a final hub failure.
* :func:`client_error_info` serializes an exception so that a Celery client rebuilds a class
  it can catch.
* :func:`build_answers` makes them from the hub config.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import redis
import redis.exceptions
from dramatiq.middleware import TimeLimitExceeded

from bridge.celery_results import RedisResultWriter, RpcReplyWriter, error_info, exception_info
from bridge.publisher import ConfirmedPublisher
from nagatha.config import FrameworkConfig
from nagatha.errors import StoreUnavailable
from nagatha.stores import StatusStore
from nagatha.types import TaskStatus, utcnow

__all__ = [
    "CLIENT_MODULE_ROOTS",
    "Answers",
    "build_answers",
    "celery_redis_url",
    "client_error_info",
    "format_traceback",
]

#: Top-level packages whose exception classes a Celery client already has loaded, so it
#: rebuilds the real class (it looks the module up in ``sys.modules``, never imports it).
CLIENT_MODULE_ROOTS: Final = frozenset({"builtins", "celery", "kombu", "billiard"})


def client_error_info(exc: BaseException, *, time_limit_ms: float | None = None) -> dict[str, Any]:
    """Serialize ``exc`` for a Celery client: ``{"exc_type", "exc_message", "exc_module"}``.

    Exceptions from ``builtins``, Celery, kombu or billiard keep their type. Dramatiq's
    ``TimeLimitExceeded`` becomes billiard's (what a Celery worker stores, with the limit in
    seconds). Any other type, which the client cannot have loaded (hub modules, Dramatiq),
    becomes its nearest builtin base class with the same arguments, so that ``except
    ValueError`` still catches a ``ValueError`` subclass; the real type is in the traceback.
    """
    if isinstance(exc, TimeLimitExceeded):
        seconds = [time_limit_ms / 1000] if time_limit_ms else []
        return error_info("TimeLimitExceeded", seconds, "billiard.exceptions")
    info = exception_info(exc)
    if type(exc).__module__.split(".")[0] in CLIENT_MODULE_ROOTS:
        return info
    base = next(cls for cls in type(exc).__mro__ if cls.__module__ == "builtins")
    info["exc_type"], info["exc_module"] = base.__qualname__, "builtins"
    return info


def format_traceback(exc: BaseException) -> str:
    """Return the traceback text Celery stores with a failure (naming the real type)."""
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__, limit=30))


def reply_due(meta: Mapping[str, Any], *, fresh: bool) -> bool:
    """Whether an rpc client is sent ``meta``, stored now (``fresh``) or found stored.

    A ready state found stored was answered before (a redelivered message), and rpc clients
    take only one answer. REVOKED is sent regardless: the bridge that took a revoke broadcast
    stored it without the client's ``reply_to``, so no rpc client was told.
    """
    return fresh or meta.get("status") == "REVOKED"


class Answers:
    """Where the answers for Celery clients go.

    ``results`` is None when no Redis result backend is written; ``replies`` is None when
    ``bridge.rpc_replies`` is off. Every method may raise ``StoreUnavailable`` (Redis) or
    ``BrokerUnavailable`` (RabbitMQ); nothing is retried here.
    """

    def __init__(
        self,
        *,
        results: RedisResultWriter | None,
        replies: RpcReplyWriter | None,
        store: StatusStore,
    ) -> None:
        self.results = results
        self.replies = replies
        self.store = store

    def store_meta(self, meta: Mapping[str, Any]) -> bool:
        """Write ``meta`` to the Redis backend; False if a ready state was already there.

        True when there is no Redis backend (nothing to protect).
        """
        if self.results is None:
            return True
        return self.results.write(meta)

    def reply(
        self, meta: Mapping[str, Any], *, reply_to: str | None, correlation_id: str | None
    ) -> None:
        """Send ``meta`` to an ``rpc://`` client (no-op without ``reply_to`` or rpc replies)."""
        if self.replies is not None and reply_to:
            self.replies.write(meta, reply_to=reply_to, correlation_id=correlation_id)

    def celery(
        self,
        meta: Mapping[str, Any],
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> bool:
        """Store ``meta`` and reply to an rpc client; return False if it was a duplicate.

        The rpc reply is sent as :func:`reply_due` says.
        """
        fresh = self.store_meta(meta)
        if reply_due(meta, fresh=fresh):
            self.reply(meta, reply_to=reply_to, correlation_id=correlation_id)
        return fresh

    def hub_failure(
        self,
        task_id: str,
        *,
        task_name: str,
        error: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Record ``failure`` with ``error`` for ``task_id`` (creating the record if needed).

        Returns False when the record was already final (final records never change).
        """
        moment = now or utcnow()
        defaults = {
            "task_name": task_name,
            "args": args or [],
            "kwargs": kwargs or {},
            "created_at": moment,
        }
        return self.store.update(
            task_id, TaskStatus.FAILURE, {"error": error, "completed_at": moment}, defaults
        )

    def forget(self, task_id: str) -> None:
        """Delete the stored Celery result and the hub record of ``task_id``.

        Used before a dead letter is replayed: its refusal was answered, and the replayed
        message must be able to store its own outcome (ready states are never overwritten).

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        if self.results is not None:
            try:
                self.results.client.delete(self.results.key_for(task_id))
            except redis.exceptions.RedisError as exc:
                raise StoreUnavailable(f"Redis did not delete the Celery result: {exc}") from exc
        self.store.delete(task_id)


def celery_redis_url(config: FrameworkConfig) -> str:
    """Return the Redis URL Celery clients read results from (``bridge.result_backend_url``)."""
    return config.bridge.result_backend_url or config.results.url


def _redis_client(url: str, config: FrameworkConfig) -> redis.Redis:
    timeout = config.results.socket_timeout
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
    )


def build_answers(
    config: FrameworkConfig, store: StatusStore, publisher: ConfirmedPublisher
) -> Answers:
    """Answers for ``config``; opens no connection.

    Results go to the Redis backend at :func:`celery_redis_url`, rpc replies through
    ``publisher`` when ``bridge.rpc_replies``.
    """
    results = RedisResultWriter(
        _redis_client(celery_redis_url(config), config), config.bridge.result_expires
    )
    replies = RpcReplyWriter(publisher) if config.bridge.rpc_replies else None
    return Answers(results=results, replies=replies, store=store)
