"""The Celery contender: the hub's echo and no-op tasks as a Celery app (benchmark only).

Configured like the FastAPI + Celery design the hub replaces: JSON only, Redis result backend,
``task_track_started`` (a ``STARTED`` write per task, as the hub's ``started``), late acks (the
hub acks after processing too) and publisher confirms (a 202 means the broker has the message).

Environment: ``BENCH_BROKER_URL`` (AMQP URL of the run's vhost), ``BENCH_BACKEND_URL`` (Redis).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery(
    "bench_celery",
    broker=os.environ["BENCH_BROKER_URL"],
    backend=os.environ["BENCH_BACKEND_URL"],
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    task_acks_late=True,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="echo_bot.echo")
def echo(message: Any) -> Any:
    """Return ``message`` unchanged (as the hub's ``echo_bot.echo``)."""
    return message


@app.task(name="diagnostics.noop")
def noop() -> None:
    """Do nothing (as the hub's ``diagnostics.noop``)."""
    return None
