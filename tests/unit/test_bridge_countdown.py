"""Long Celery countdowns go in hops of at most 25 minutes (``bridge/middleware.py``).

The decisions of :class:`CeleryResultsMiddleware` before a bridged task runs, with a broker
that records what it is asked to enqueue; the real RabbitMQ round trip of a hop is
``tests/integration/test_bridge.py``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from bridge.middleware import ETA_SLACK_MS, CeleryResultsMiddleware
from bridge.task import CeleryTask
from nagatha.config import FrameworkConfig
from nagatha.stores import MemoryStatusStore
from nagatha.types import MAX_HOLD_MS, TaskRecord, TaskStatus


class RecordingBroker:
    """Takes every ``enqueue`` (the hop) and remembers it."""

    def __init__(self) -> None:
        self.sent: list[tuple[dramatiq.Message[Any], int | None]] = []

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> None:
        self.sent.append((message, delay))


class RenewCountingStore(MemoryStatusStore):
    def __init__(self) -> None:
        super().__init__()
        self.renewed: list[str] = []

    def renew(self, task_id: str) -> None:
        self.renewed.append(task_id)
        super().renew(task_id)


def _middleware(store: MemoryStatusStore) -> CeleryResultsMiddleware:
    # Redis and RabbitMQ are named but never contacted (the revoke check asks the store).
    config = FrameworkConfig.model_validate({"results": {"url": "redis://127.0.0.1:6379/15"}})
    return CeleryResultsMiddleware(config, store)


def _delivery(ahead: timedelta, retries: int = 0) -> MessageProxy:
    task_id = f"countdown-{time.monotonic_ns()}"
    eta = datetime.now(UTC) + ahead
    task = CeleryTask(task_id=task_id, task_name="echo_bot.echo", eta=eta)
    options: dict[str, Any] = {"celery": task.to_options()}
    if retries:
        options["retries"] = retries
    message = dramatiq.Message(
        queue_name="default",
        actor_name="echo_bot.echo",
        args=(),
        kwargs={"message": "later"},
        options=options,
        message_id=task_id,
        message_timestamp=int(time.time() * 1000),
    )
    return MessageProxy(message)


@pytest.fixture
def store() -> RenewCountingStore:
    return RenewCountingStore()


def test_two_hours_ahead_goes_on_a_25_minute_hop_and_is_not_run(store: RenewCountingStore) -> None:
    broker, delivery = RecordingBroker(), _delivery(timedelta(hours=2))
    store.create(
        TaskRecord(
            task_id=delivery.message_id,
            task_name="echo_bot.echo",
            status=TaskStatus.PENDING,
            created_at=datetime.now(UTC),
        )
    )
    with pytest.raises(SkipMessage):
        _middleware(store).before_process_message(broker, delivery)  # type: ignore[arg-type]
    [(sent, delay)] = broker.sent
    assert delay == MAX_HOLD_MS
    assert sent.message_id == delivery.message_id and sent.options["celery"]["eta"]
    assert store.renewed == [delivery.message_id]
    assert not delivery.failed


def test_the_last_hop_is_the_time_left(store: RenewCountingStore) -> None:
    broker = RecordingBroker()
    with pytest.raises(SkipMessage):
        _middleware(store).before_process_message(broker, _delivery(timedelta(seconds=10)))  # type: ignore[arg-type]
    [(_, delay)] = broker.sent
    assert delay is not None and 1_000 < delay <= 10_000  # what is left, not a full hop


@pytest.mark.parametrize(
    ("ahead", "retries"),
    [
        (timedelta(milliseconds=ETA_SLACK_MS // 2), 0),  # within the clocks' slack: runs now
        (timedelta(hours=2), 1),  # a retry: its first attempt ran at the eta already
        (timedelta(seconds=-5), 0),  # due: runs now
    ],
)
def test_no_hop_when_due_or_a_retry(
    store: RenewCountingStore, ahead: timedelta, retries: int
) -> None:
    broker = RecordingBroker()
    _middleware(store).before_process_message(broker, _delivery(ahead, retries))  # type: ignore[arg-type]
    assert broker.sent == [] and store.renewed == []
