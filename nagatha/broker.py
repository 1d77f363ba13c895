"""Build the Dramatiq broker the config names, with the hub's middleware in the right order."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from nagatha.config import MEMORY_URL, BrokerConfig, FrameworkConfig
from nagatha.middleware.cancellation import Cancellation
from nagatha.middleware.presence import WorkerPresence
from nagatha.middleware.redelivery import RedeliveryLimit
from nagatha.middleware.retries import HeldRetries
from nagatha.middleware.status import StatusMiddleware
from nagatha.stores import StatusStore

#: Milliseconds between two checks of the running tasks' time limits (Dramatiq: 1000, which
#: let a task overrun its limit by up to a second and succeed; the check is one dict scan).
TIME_LIMIT_CHECK_MS = 100


def amqp_url(config: BrokerConfig) -> str:
    """The broker URL with the hub's connection defaults added as pika query parameters.

    Parameters already in the URL win. ``connection_attempts=1`` and short timeouts make an
    unreachable RabbitMQ fail fast (the API answers 503 rather than hanging); the heartbeat
    keeps idle publisher connections from being reaped silently for long.
    """
    parts = urlsplit(config.url)
    query = dict(parse_qsl(parts.query))
    defaults = {
        "heartbeat": str(config.heartbeat),
        "connection_attempts": "1",
        "socket_timeout": str(config.connect_timeout),
        "blocked_connection_timeout": str(max(config.connect_timeout, 30.0)),
        "stack_timeout": str(config.connect_timeout * 2),
    }
    for key, value in defaults.items():
        query.setdefault(key, value)
    # kombu spells the default vhost "//"; pika reads that as the empty vhost.
    path = "/%2F" if parts.path == "//" else parts.path
    return urlunsplit(parts._replace(path=path, query=urlencode(query)))


def broker_address(config: BrokerConfig) -> str:
    """``host:port`` of the broker (no user, no password), for messages."""
    parts = urlsplit(config.url)
    host = parts.hostname or "localhost"
    return f"[{host}]:{parts.port or 5672}" if ":" in host else f"{host}:{parts.port or 5672}"


def build_middleware(config: FrameworkConfig, store: StatusStore) -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware with hub defaults, plus status tracking.

    ``StatusMiddleware`` sits *before* ``Retries``: Dramatiq calls ``after_*`` hooks in reverse
    order, so the status hook runs after ``Retries`` has decided whether the attempt was the
    last one (``message.failed``) and can write ``retrying`` or ``failure`` accordingly.

    ``CeleryResultsMiddleware`` (Celery bridge; only when results live in Redis, not
    ``memory://``) sits just *before* ``StatusMiddleware``: ``before_*`` hooks run in list
    order, so its check for a revoked or expired Celery task raises ``SkipMessage`` before the
    status hook records ``started`` (a task that never runs never looks started); its
    ``after_*`` hooks run last, after ``Retries`` decided and after the hub record is final, so
    a Celery client is answered only once ``/tasks/{id}`` shows the same outcome.
    ``Cancellation`` comes after it (a cancelled bridged task is answered REVOKED there) and
    before ``StatusMiddleware`` (a cancelled task never looks started), and so does
    ``WorkerPresence`` (``GET /workers``: a cancelled task never shows as running; its
    ``after_*`` hooks see the outcome the status hook recorded).

    ``TimeLimit`` comes *last*, unlike in Dramatiq's default list: its ``after_*`` hooks, which
    disarm the task's time limit, then run first. Otherwise the limit stays armed while the
    hooks after it hold a write through an outage, and fires in them: a task that succeeded
    would be recorded as timed out and dead-lettered. ``HeldRetries`` is Dramatiq's
    ``Retries`` holding a retry it cannot enqueue instead of dropping it.
    """
    worker = config.worker
    celery: list[dramatiq.Middleware] = []
    if config.results.url != MEMORY_URL:
        from bridge.middleware import CeleryResultsMiddleware

        celery.append(CeleryResultsMiddleware(config, store))
    return [
        AgeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        RedeliveryLimit(store, worker.max_redeliveries),
        *celery,
        Cancellation(store),
        WorkerPresence(store, worker.presence_interval),
        StatusMiddleware(store, time_limit=worker.time_limit),
        HeldRetries(
            max_retries=worker.max_retries,
            min_backoff=worker.min_backoff,
            max_backoff=worker.max_backoff,
        ),
        TimeLimit(time_limit=worker.time_limit, interval=TIME_LIMIT_CHECK_MS),
    ]


def build_broker(config: FrameworkConfig, store: StatusStore) -> dramatiq.Broker:
    """Return a broker for ``config.broker.url``; opens no connection until first use.

    ``amqp://`` gives a RabbitMQ broker with publisher confirms (an enqueue returns only once
    RabbitMQ has the message); ``memory://`` gives Dramatiq's in-process stub broker.
    """
    middleware = build_middleware(config, store)
    if config.embedded:
        return StubBroker(middleware=middleware)
    return RabbitmqBroker(url=amqp_url(config.broker), confirm_delivery=True, middleware=middleware)
