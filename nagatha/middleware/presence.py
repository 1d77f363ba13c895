"""Announce each worker process with what it runs (:mod:`nagatha.presence`).

=========================  ==================================================================
hook                       effect
=========================  ==================================================================
after_worker_boot          announcing starts (queues, threads, start time)
before_process_message     the task joins the process's ``running`` list
after_process_message      it leaves; counted ``succeeded``, ``retried`` or ``failed``
after_skip_message         it leaves (if it had joined); counted ``failed`` if the message
                           failed (``WorkerLost``, past its ``max_age``, a refused countdown
                           hop), else ``skipped`` (cancelled, revoked or expired before it
                           ran, sent on a countdown's next hop)
before_worker_shutdown     announced as ``stopping`` (finishing in its grace period)
after_worker_shutdown      withdrawn
=========================  ==================================================================

Sits after ``Cancellation`` and before ``StatusMiddleware``
(:func:`nagatha.broker.build_middleware`): a task skipped before it ran never shows as
running, and the ``after_*`` hooks run once ``Retries`` and the status hook decided the
outcome. Runs are kept per delivery: a task RabbitMQ redelivered to this process while its
first delivery still runs (a dropped connection) shows twice, and each leaves on its own.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from nagatha.middleware.status import RESULT_REFUSED
from nagatha.presence import Announcer, this_process
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
        # id(message) -> (task id, name, start, retries): a tuple, not a RunningTask, as this
        # is written for every message and read once an interval.
        self._running: dict[int, tuple[str, str, datetime, int]] = {}
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._stopping = False
        self._announcer: Announcer | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Each queue once: Dramatiq's stub broker lists the delay queues beside the others.
        declared = worker.consumer_whitelist or broker.get_declared_queues()
        queues = sorted({q_name(queue) for queue in declared})
        started_at = utcnow()
        with self._lock:
            self._running.clear()
            self._counts = dict.fromkeys(OUTCOMES, 0)
            self._stopping = False

        def snapshot() -> WorkerInfo:
            with self._lock:
                running = sorted(self._running.values(), key=lambda run: run[2])
                counts, stopping = dict(self._counts), self._stopping
            return this_process(
                "worker",
                queues=queues,
                concurrency=worker.worker_threads,
                started_at=started_at,
                interval=self.interval,
                counts=counts,
                stopping=stopping,
                running=(
                    RunningTask(task_id=task_id, task_name=name, started_at=at, retries=retries)
                    for task_id, name, at, retries in running
                ),
            )

        self._announcer = Announcer(self.store, snapshot, self.interval)
        self._announcer.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            self._stopping = True
        if self._announcer is not None:
            self._announcer.wake()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._announcer is not None:
            self._announcer.stop()
            self._announcer = None

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        run = (message.message_id, message.actor_name, utcnow(), message.options.get("retries", 0))
        with self._lock:
            self._running[id(message)] = run

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
        self._done(message, "failed" if message.failed else "skipped")

    def _done(self, message: MessageProxy, outcome: str) -> None:
        with self._lock:
            self._running.pop(id(message), None)
            self._counts[outcome] += 1
