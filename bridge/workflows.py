"""Celery workflows run the way a Celery worker runs them: links, chains, errbacks, chords.

CONTRACT (called by the worker-side result middleware, ``bridge/middleware.py``):

* :func:`dispatch_success` is called after a bridged task succeeded and **before** its
  SUCCESS meta is stored (Celery's order: ``children`` must be known). It publishes each
  ``link`` callback and the next ``chain`` step as Celery task messages, completes a chord
  header member's join, and returns the ids of the messages it published (the ``children``).
* :func:`dispatch_failure` is called after a bridged task's final failure was stored. It
  publishes the ``link_error`` errbacks and stores FAILURE for the remaining chain steps (and a
  chord's body) so that ``get()`` on a chain raises instead of hanging.

This file holds the signatures; the implementation is being written (issue 4).
"""

from __future__ import annotations

from typing import Any, Protocol

import redis

from bridge.celery_results import RedisResultWriter
from bridge.task import CeleryTask


class TaskPublisher(Protocol):
    """Publishes one Celery task message with publisher confirms (raises BrokerUnavailable)."""

    def publish(
        self, *, exchange: str, routing_key: str, body: bytes, headers: dict[str, Any],
        properties: dict[str, Any],
    ) -> None: ...


def dispatch_success(
    task: CeleryTask,
    result: Any,
    *,
    publisher: TaskPublisher,
    results: RedisResultWriter | None,
    redis_client: redis.Redis | None,
) -> list[str]:
    """Publish callbacks and the next chain step; return the child task ids (see module doc)."""
    return []


def dispatch_failure(
    task: CeleryTask,
    error: dict[str, Any],
    *,
    publisher: TaskPublisher,
    results: RedisResultWriter | None,
    redis_client: redis.Redis | None,
) -> None:
    """Publish errbacks and fail the rest of the chain (``error`` as in failure metas)."""
    return None
