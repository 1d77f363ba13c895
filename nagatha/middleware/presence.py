"""Announce each worker process with what it runs (:mod:`nagatha.presence`).

=========================  ==================================================================
hook                       effect
=========================  ==================================================================
after_worker_boot          announcing starts (queues, threads, start time)
before_process_message     the task joins the process's ``running`` list
after_process_message      it leaves; counted ``succeeded``, ``retried`` or ``failed``
after_skip_message         it leaves (if it had joined); counted ``skipped`` (cancelled,
                           revoked, expired)
before_worker_shutdown     announced at once as ``stopping`` (finishing in its grace period)
after_worker_shutdown      withdrawn
=========================  ==================================================================

Sits after ``Cancellation`` and before ``StatusMiddleware``
(:func:`nagatha.broker.build_middleware`): a task skipped before it ran never shows as
running, and the ``after_*`` hooks run once ``Retries`` and the status hook decided the
outcome.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Literal

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from nagatha import __version__
from nagatha.middleware.status import RESULT_REFUSED
from nagatha.presence import Announcer, process_identity
from nagatha.stores import StatusStore
from nagatha.types import RunningTask, WorkerInfo, utcnow

#: What :attr:`WorkerInfo.counts` of a worker holds, each from 0.
OUTCOMES = ("succeeded", "failed", "retried", "skipped")


class WorkerPresence(dramatiq.Middleware):
    """Keeps this process's running tasks and outcome counts, and announces them."""

    def __init__(self, store: StatusStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._running: dict[str, tuple[str, datetime, int]] = {}  # id -> name, start, retries
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._state: Literal["running", "stopping"] = "running"
        self._announcer: Announcer | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Each queue once: Dramatiq's stub broker lists the delay queues beside the others.
        queues = sorted(
            {q_name(queue) for queue in worker.consumer_whitelist or broker.get_declared_queues()}
        )
        worker_id, hostname, pid = process_identity()
        started_at = utcnow()
        with self._lock:
            self._running.clear()
            self._counts = dict.fromkeys(OUTCOMES, 0)
            self._state = "running"

        def snapshot() -> WorkerInfo:
            with self._lock:
                return WorkerInfo(
                    id=worker_id,
                    kind="worker",
                    hostname=hostname,
                    pid=pid,
                    version=__version__,
                    queues=queues,
                    concurrency=worker.worker_threads,
                    state=self._state,
                    started_at=started_at,
                    interval=self.interval,
                    running=[
                        RunningTask(task_id=task_id, task_name=name, started_at=at, retries=n)
                        for task_id, (name, at, n) in sorted(
                            self._running.items(), key=lambda item: item[1][1]
                        )
                    ],
                    counts=dict(self._counts),
                )

        self._announcer = Announcer(self.store, snapshot, self.interval)
        self._announcer.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            self._state = "stopping"
        if self._announcer is not None:
            self._announcer.announce()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._announcer is not None:
            self._announcer.stop()
            self._announcer = None

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        # A tuple, not a RunningTask: this runs for every message, snapshots every interval.
        task = (message.actor_name, utcnow(), message.options.get("retries", 0))
        with self._lock:
            self._running[message.message_id] = task

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.failed or getattr(message, RESULT_REFUSED, None):
            self._done(message, "failed")
        else:
            self._done(message, "succeeded" if exception is None else "retried")

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._done(message, "skipped")

    def _done(self, message: MessageProxy, outcome: str) -> None:
        with self._lock:
            self._running.pop(message.message_id, None)
            self._counts[outcome] += 1
