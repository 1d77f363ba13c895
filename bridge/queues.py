"""Celery queues, declared exactly as the bridge's consumer declares the ones it consumes.

A Celery queue is durable, has no arguments and is bound to Celery's default exchange
``celery`` (direct, durable) with its name as routing key: what a Celery client or worker
declares for it, so that neither side ever meets ``PRECONDITION_FAILED``.
"""

from __future__ import annotations

from typing import Final

from pika.adapters.blocking_connection import BlockingChannel

__all__ = ["CELERY_EXCHANGE", "declare_celery_queue"]

#: Celery's default exchange (``task_default_exchange``), direct and durable.
CELERY_EXCHANGE: Final = "celery"


def declare_celery_queue(channel: BlockingChannel, queue: str) -> None:
    """Declare ``queue`` (and Celery's exchange) as a Celery worker would; idempotent."""
    channel.exchange_declare(CELERY_EXCHANGE, exchange_type="direct", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, CELERY_EXCHANGE, routing_key=queue)
