"""Worker side of the bridge: answer the Celery client of every task that came through it.

:class:`CeleryResultsMiddleware` acts only on messages whose options carry ``"celery"`` (set
by :mod:`bridge.intake`); every other message passes untouched.

=========================  ==================================================================
hook                       what it does
=========================  ==================================================================
before_process_message     revoked, cancelled (``DELETE /tasks/{id}``) or expired → REVOKED
                           answered, hub record ``failure`` with the reason (a cancelled one
                           keeps its own), :func:`bridge.workflows.dispatch_revoked` (a chord
                           member still counts), ``SkipMessage`` (the task does not run; the
                           message is acked); ``eta`` still ahead → the next hop of a long
                           countdown (below), ``SkipMessage``; else STARTED when
                           ``bridge.track_started``
after_process_message      success → :func:`bridge.workflows.dispatch_success` (its ids are
                           the ``children``), then SUCCESS; a retry to come → RETRY; the final
                           failure → :func:`bridge.workflows.fail_chain`, FAILURE, then
                           :func:`bridge.workflows.dispatch_failure`;
                           a result the status middleware refused (not JSON, not stored) →
                           FAILURE ``TypeError``, as ``/tasks/{id}`` says ``failure``
after_skip_message         a task failed as lost (:class:`~nagatha.middleware.redelivery.
                           WorkerLost`) → FAILURE ``WorkerLostError``
after_nack                 FAILURE for a message no worker thread answered (no such actor on
                           this worker); REVOKED ``expired`` when the task's ``max_age``
                           passed
=========================  ==================================================================

Long countdowns: a worker holds a delayed message unacknowledged until it is due, and RabbitMQ
closes the channel of a consumer that holds one past its ``consumer_timeout`` (30 minutes by
default), delivering everything on it again. So the bridge delays a task by at most
:data:`~nagatha.types.MAX_HOLD_MS` (25 minutes) at a time: a message that comes due before its
Celery ``eta`` is sent back to the delay queue for the rest (25 minutes at most again) and
acked, the expiry of its pending record started again. A revoke or ``expires`` is honoured at
the next hop. Should a hop fail (RabbitMQ refusing it for
:data:`~nagatha.middleware.retries.HOLD_S`), the task fails and its message goes to Dramatiq's
dead-letter queue (``<queue>.XQ``); it never runs early. As with every move through a delay
queue, a worker killed between sending a hop and its ack leaves two copies: the task may run
twice (at least once, never lost).

Answers go to the Redis result backend and, with ``bridge.rpc_replies``, to the message's
``reply_to``; with ``ignore_result`` nothing is stored (workflows still run). Final answers
and workflow steps are held (retried) while Redis or RabbitMQ is unreachable.

It must sit *before* :class:`~nagatha.middleware.status.StatusMiddleware` in the broker's
list (see :func:`nagatha.broker.build_middleware`).

Arguments reach hub tasks as the JSON they travelled as: kombu's ``{"__type__", "__value__"}``
envelopes for datetimes, decimals, UUIDs and bytes are not decoded (hub tasks take JSON), and
a result holding such an envelope reaches the client as the original type.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound, BrokerConnectionError
from dramatiq.middleware import SkipMessage

from bridge import amqp_tables, workflows
from bridge.answers import (
    Answers,
    build_answers,
    client_error_info,
    reply_due,
)
from bridge.answers import format_traceback as traceback_of
from bridge.celery_results import (
    REVOKED_HUB_ERRORS,
    error_info,
    failure_meta,
    retry_meta,
    revoked_meta,
    started_meta,
    success_meta,
)
from bridge.publisher import ConfirmedPublisher
from bridge.task import CeleryTask
from nagatha.broker import amqp_url
from nagatha.config import FrameworkConfig
from nagatha.errors import NagathaError, PublishRefused, ServiceUnavailable
from nagatha.middleware import retries
from nagatha.middleware.holding import hold
from nagatha.middleware.redelivery import WorkerLost
from nagatha.middleware.status import FAILED_BECAUSE, RESULT_REFUSED
from nagatha.stores import StatusStore
from nagatha.types import MAX_HOLD_MS, utcnow

__all__ = ["CeleryResultsMiddleware"]

logger = logging.getLogger("nagatha.bridge")

#: A task due within this many ms of this worker's clock runs now rather than hop again: the
#: hosts' clocks may differ by that much (the bridge's delay was computed on its own).
ETA_SLACK_MS = 1000


class CeleryResultsMiddleware(dramatiq.Middleware):
    """Write Celery states for bridged tasks (see the module docstring)."""

    def __init__(
        self,
        config: FrameworkConfig,
        store: StatusStore,
        *,
        publisher: ConfirmedPublisher | None = None,
    ) -> None:
        amqp_tables.install()  # fractional time limits in the Celery messages it sends
        self.publisher = publisher or ConfirmedPublisher(amqp_url(config.broker))
        self.answers: Answers = build_answers(config, store, self.publisher)
        self.track_started = config.bridge.track_started
        self.hostname = f"nagatha@{socket.gethostname()}"
        # Deliveries whose outcome was answered on a worker thread, by id() of their proxy;
        # after_nack answers the rest. Weak values: an entry goes with its delivery, so a
        # reused id() cannot match (proxies define __eq__ and cannot be hashed themselves).
        self._answered: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._single_attempt = threading.local()  # set while a hook must not hold (see _hold)
        # The task of the delivery this worker thread runs: parsed once, in before_*.
        self._running = threading.local()

    # -- hooks ---------------------------------------------------------------------------

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.publisher.close_all()

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        task = _task_of(message)
        self._running.delivery = (message, task)
        if task is None:
            return
        reason = self._discard_reason(task)
        if reason is not None:
            self._discard(task, reason)
            raise SkipMessage(f"Celery task {reason}")
        if task.eta is not None and not message.options.get("retries"):
            # (A retry comes after an attempt, which came after the eta: it never hops.)
            self._hop_if_early(broker, message, task, task.eta)
        if self.track_started and not task.ignore_result:
            meta = started_meta(
                task.task_id,
                pid=os.getpid(),
                hostname=self.hostname,
                group_id=task.group_id,
                parent_id=task.parent_id,
            )
            self._send(task, meta, final=False)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        delivery = getattr(self._running, "delivery", None)
        self._running.delivery = None
        task = delivery[1] if delivery is not None and delivery[0] is message else _task_of(message)
        if task is None:
            return
        if exception is None:
            refused: str | None = getattr(message, RESULT_REFUSED, None)  # status middleware
            if refused is None:
                self._mark_answered(message)
                self._succeed(task, result)
                return
            exception = _ResultError(refused)
        if not message.failed and not isinstance(exception, _ResultError):
            if not task.ignore_result:
                meta = retry_meta(
                    task.task_id,
                    client_error_info(exception),
                    traceback=traceback_of(exception),
                    group_id=task.group_id,
                    parent_id=task.parent_id,
                )
                self._send(task, meta, final=False)
            return
        self._mark_answered(message)
        info = client_error_info(exception, time_limit_ms=message.options.get("time_limit"))
        self._fail(task, info, traceback_of(exception))

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        exception = getattr(message, "_exception", None)
        task = _task_of(message) if isinstance(exception, WorkerLost) else None
        if task is None:
            return
        # On the worker thread (unlike an unknown task's nack): held until answered.
        self._mark_answered(message)
        info = error_info("WorkerLostError", [str(exception)], "billiard.exceptions")
        self._fail(task, info, None)

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        task = _task_of(message)
        if task is None:
            return
        with self._lock:
            if self._answered.get(id(message)) is message:
                return
        # Runs on the consumer thread, which must not block: one attempt at each write.
        self._single_attempt.active = True
        try:
            exception = getattr(message, "_exception", None)
            if isinstance(exception, SkipMessage):  # the task's max_age passed (AgeLimit)
                self._discard(task, "expired")
                return
            if isinstance(exception, ActorNotFound):
                info = error_info("NotRegistered", [task.task_name], "celery.exceptions")
            elif exception is not None:
                info = client_error_info(exception)
            else:
                info = error_info("RuntimeError", ["the hub rejected the task"])
            self._fail(task, info, None)
        finally:
            self._single_attempt.active = False

    # -- outcomes ------------------------------------------------------------------------

    def _discard_reason(self, task: CeleryTask) -> str | None:
        if task.expires is not None and task.expires <= utcnow():
            return "expired"
        try:
            # Cancelled through the hub (DELETE /tasks/{id}), or revoked by a Celery client.
            if self.answers.store.is_cancelled(task.task_id):
                return "revoked"
        except ServiceUnavailable as exc:
            logger.warning("task %s: revoke check skipped (%s); running it", task.task_id, exc)
        return None

    def _hop_if_early(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        task: CeleryTask,
        eta: datetime,
    ) -> None:
        """Raise ``SkipMessage`` after sending ``message`` on its next hop if ``eta`` is ahead."""
        ahead_ms = (eta - utcnow()).total_seconds() * 1000
        if ahead_ms <= ETA_SLACK_MS:
            return
        delay_ms = min(math.ceil(ahead_ms), MAX_HOLD_MS)
        try:
            retries.enqueue_held(broker, message.copy(), delay_ms, "the next hop of its countdown")
        except Exception as exc:  # refused for good, or a bug: never run the task early
            self._refuse_hop(message, task, exc)
            raise SkipMessage("the next hop of its countdown failed") from None
        try:  # the pending record must outlive the countdown
            self.answers.store.renew(task.task_id)
        except NagathaError as exc:
            logger.warning("task %s: pending record not renewed: %s", task.task_id, exc)
        logger.info(
            "task %s %s: due at %s, %d s from now; waiting up to %d s more",
            task.task_id,
            task.task_name,
            eta.isoformat(),
            int(ahead_ms // 1000),
            delay_ms // 1000,
        )
        raise SkipMessage("early: sent on the next hop of its countdown")

    def _refuse_hop(self, message: dramatiq.MessageProxy, task: CeleryTask, exc: Exception) -> None:
        """Fail a task whose next hop could not be enqueued: answered, then dead-lettered."""
        if isinstance(exc, BrokerConnectionError):
            reason = f"RabbitMQ refused the next hop of its countdown for {retries.HOLD_S:g}s"
        else:
            reason = "the next hop of its countdown could not be enqueued"
        reason = f"EtaRefused: {reason} ({type(exc).__name__}: {exc})"
        self._mark_answered(message)
        self._hold(
            task,
            "hub record",
            lambda: self.answers.hub_failure(task.task_id, task_name=task.task_name, error=reason),
        )
        self._fail(task, error_info("RuntimeError", [reason]), None)
        setattr(message, FAILED_BECAUSE, reason)  # logged by the status middleware
        message.fail()

    def _discard(self, task: CeleryTask, reason: str) -> None:
        """Answer REVOKED, fail the hub record, count a chord member: the task is not run."""
        logger.warning("task %s %s not run: %s", task.task_id, task.task_name, reason)
        self._hold(
            task,
            "hub record",
            lambda: self.answers.hub_failure(
                task.task_id, task_name=task.task_name, error=REVOKED_HUB_ERRORS[reason]
            ),
        )
        if not task.ignore_result:
            meta = revoked_meta(
                task.task_id, reason, group_id=task.group_id, parent_id=task.parent_id
            )
            self._send(task, meta, final=True)
        self._workflow(
            task, lambda: workflows.dispatch_revoked(task, reason, **self._workflow_kwargs())
        )

    def _succeed(self, task: CeleryTask, result: Any) -> None:
        children, error = self._workflow(
            task,
            lambda: workflows.dispatch_success(
                task, result, rpc=self.answers.replies, **self._workflow_kwargs()
            ),
        )
        if error is not None:  # the next steps could not be sent: a failure, as in Celery
            self._fail(task, client_error_info(error), traceback_of(error))
            return
        if not task.ignore_result:
            meta = success_meta(
                task.task_id,
                result,
                children=children or [],
                group_id=task.group_id,
                parent_id=task.parent_id,
            )
            self._send(task, meta, final=True)

    def _fail(self, task: CeleryTask, info: dict[str, Any], traceback: str | None) -> None:
        """Fail the rest of the chain, answer FAILURE, then the chord part and errbacks."""
        self._workflow(
            task,
            lambda: workflows.fail_chain(
                task,
                info,
                traceback=traceback,
                rpc=self.answers.replies,
                **self._workflow_kwargs(),
            ),
        )
        if not task.ignore_result:
            meta = failure_meta(
                task.task_id,
                info,
                traceback=traceback,
                group_id=task.group_id,
                parent_id=task.parent_id,
            )
            self._send(task, meta, final=True)
        self._workflow(
            task,
            lambda: workflows.dispatch_failure(
                task, info, rpc=self.answers.replies, **self._workflow_kwargs()
            ),
        )

    # -- delivery ------------------------------------------------------------------------

    def _workflow_kwargs(self) -> dict[str, Any]:
        # The chord join uses the result backend's Redis (workflows derive it from results).
        return {"publisher": self.publisher, "results": self.answers.results}

    def _workflow(
        self, task: CeleryTask, dispatch: Callable[[], Any]
    ) -> tuple[Any, Exception | None]:
        """Run a workflow dispatch, held while services are down; (its result, its error)."""
        try:
            return self._hold(task, "workflow", dispatch, reraise=True), None
        except Exception as exc:  # a workflow error must not lose the task's own answer
            logger.exception("task %s %s: workflow dispatch failed", task.task_id, task.task_name)
            return None, exc

    def _send(self, task: CeleryTask, meta: dict[str, Any], *, final: bool) -> None:
        """Store ``meta`` and reply to an rpc client as :func:`bridge.answers.reply_due` says;
        final answers are held until written."""
        state = meta["status"]
        if not final:
            try:
                self.answers.celery(
                    meta, reply_to=task.reply_to, correlation_id=task.correlation_id
                )
            except (NagathaError, TypeError, ValueError) as exc:
                logger.warning("task %s: %s not written: %s", task.task_id, state, exc)
            return
        fresh = self._hold(task, state, lambda: self.answers.store_meta(meta))
        if not reply_due(meta, fresh=fresh is not False):
            return  # a duplicate delivery: the client was answered already
        self._hold(
            task,
            f"{state} reply",
            lambda: self.answers.reply(
                meta, reply_to=task.reply_to, correlation_id=task.correlation_id
            ),
        )

    def _hold(
        self, task: CeleryTask, what: str, write: Callable[[], Any], *, reraise: bool = False
    ) -> Any:
        """Call ``write`` until Redis and RabbitMQ take it; return its result.

        Services down: retried with backoff for as long as the process lives, like the hub's
        final status writes (``nagatha/middleware/status.py``): giving up would let Dramatiq
        ack the message with its client never answered; a worker stopped meanwhile exits
        without the ack and the message is delivered again. On the consumer thread
        (``after_nack``) there is one attempt only. Data that cannot be encoded
        (TypeError/ValueError) or that RabbitMQ refuses for good (``PublishRefused``) is
        logged and dropped, or raised with ``reraise``.
        """
        single = getattr(self._single_attempt, "active", False)

        def report(exc: Exception) -> None:
            logger.warning("task %s: holding %s: %s", task.task_id, what, exc)

        try:
            return hold(write, ServiceUnavailable, report, give_up_after=0 if single else None)
        except ServiceUnavailable as exc:
            logger.error("task %s: %s not written: %s", task.task_id, what, exc)
            if reraise:
                raise
            return None
        except (TypeError, ValueError, PublishRefused) as exc:
            if reraise:
                raise
            logger.error("task %s: %s cannot be written: %s", task.task_id, what, exc)
            return None

    def _mark_answered(self, message: dramatiq.MessageProxy) -> None:
        with self._lock:
            self._answered[id(message)] = message


class _ResultError(TypeError):
    """The task returned a value that cannot be stored (not JSON): a final failure."""


def _task_of(message: dramatiq.MessageProxy) -> CeleryTask | None:
    """Return the Celery task a message carries, or None for a message not bridged."""
    options = message.options.get("celery")
    if options is None:
        return None
    try:
        return CeleryTask.from_options(options, args=message.args, kwargs=message.kwargs)
    except NagathaError as exc:
        logger.error("message %s: unreadable Celery options: %s", message.message_id, exc)
        return None
