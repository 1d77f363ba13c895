"""``nagatha bridge``: consume Celery queues and hand each task to the hub's Dramatiq workers.

The bridge consumes on ``bridge.concurrency`` pika connections of its own (lanes). On each it
declares

* each Celery queue exactly as a Celery client or worker does
  (:func:`bridge.queues.declare_celery_queue`), so that neither side ever meets
  ``PRECONDITION_FAILED``;
* its dead-letter queue (``bridge.dead_letter_queue``);
* its control queue (:mod:`bridge.pidbox`), for ``ping`` and ``revoke``.

Deliveries go through :class:`bridge.intake.Intake` in batches (what one read from the
socket brought); Celery messages are acked only after everything the intake wrote for them
was confirmed (the Dramatiq messages by RabbitMQ, records by Redis). Killed at any point, the
bridge loses nothing: unacked messages are delivered again (a task may then be enqueued
twice; its Celery result is written once).

When RabbitMQ or Redis goes away the connection is dropped (RabbitMQ requeues what was not
acked) and made again with exponential backoff. SIGTERM/SIGINT stop it gracefully: the batch
in hand is finished, the prefetched rest is handed back.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic

from bridge import amqp_tables
from bridge.answers import build_answers
from bridge.dead_letters import DeadLetters, declare_dead_letter_queue
from bridge.intake import SERVICE_ERRORS, Delivery, Intake, PartlyHandled
from bridge.pidbox import Pidbox, Revoker, default_node_name
from bridge.publisher import ConfirmedPublisher
from bridge.queues import declare_celery_queue
from nagatha.broker import amqp_url
from nagatha.broker_errors import refused_access
from nagatha.config import FrameworkConfig
from nagatha.errors import ConfigError
from nagatha.presence import Announcer, this_process
from nagatha.registry import TaskRegistry
from nagatha.types import WorkerInfo, utcnow

__all__ = ["Bridge", "run_bridge"]

logger = logging.getLogger("nagatha.bridge")

#: Seconds before the first reconnect; doubles up to the cap, back to the first once a
#: connection handled a message or lived longer than the cap.
RECONNECT_FIRST_S, RECONNECT_CAP_S = 0.5, 30.0
#: Longest time (s) the loop waits for deliveries before checking for a stop request.
POLL_S: Final = 1.0


class Bridge:
    """The consumer loop: ``run()`` until ``stop()`` (callable from a signal handler)."""

    def __init__(
        self,
        config: FrameworkConfig,
        registry: TaskRegistry,
        *,
        queues: Sequence[str] | None = None,
        node_name: str | None = None,
    ) -> None:
        amqp_tables.install()  # no header can stall a lane (see bridge/amqp_tables.py)
        self.config = config
        self.queues = list(queues or config.bridge.queues)
        self.url = amqp_url(config.broker)
        self.publisher = ConfirmedPublisher(self.url)
        answers = build_answers(config, registry.store, self.publisher)
        self.intake = Intake(
            registry,
            answers=answers,
            dead_letters=DeadLetters(self.publisher, config.bridge.dead_letter_queue),
            publisher=self.publisher,
            max_body_bytes=config.bridge.max_message_bytes,
        )
        self.pidbox = Pidbox(node_name or default_node_name(), Revoker(answers).revoke)
        self._stop = threading.Event()
        self._handled = 0
        self._count_lock = threading.Lock()
        self._announcer = Announcer(
            registry.store, self._presence(), config.worker.presence_interval
        )

    @property
    def node_name(self) -> str:
        """The Celery node name the bridge answers ``ping`` with."""
        return self.pidbox.node_name

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask the loop to finish the message in hand and return (idempotent)."""
        self._stop.set()

    def _presence(self) -> Callable[[], WorkerInfo]:
        """What the bridge announces of itself (``GET /workers``): its Celery queues, lanes,
        and how many messages it handled."""
        started_at = utcnow()
        return lambda: this_process(
            "bridge",
            queues=self.queues,
            concurrency=self.config.bridge.concurrency,
            started_at=started_at,
            interval=self.config.worker.presence_interval,
            counts={"handled": self._handled},
            stopping=self._stop.is_set(),
        )

    def run(self) -> int:
        """Consume until :meth:`stop` on ``bridge.concurrency`` connections; return 0.

        Each lane is a thread with its own connection, channel and prefetch: handling a
        message is mostly waiting (Redis, publisher confirms), so lanes overlap those waits.
        Only lane 0 consumes the control queue (it is exclusive to one connection).
        """
        lanes = [
            threading.Thread(target=self._lane, args=(index,), name=f"bridge-lane-{index}")
            for index in range(self.config.bridge.concurrency)
        ]
        for lane in lanes:
            lane.start()
        self._announcer.start()
        woken = False
        while any(lane.is_alive() for lane in lanes):
            # Join in short steps: the main thread must stay free to run signal handlers.
            for lane in lanes:
                lane.join(POLL_S)
            if self._stop.is_set() and not woken:  # announced as stopping as the lanes finish
                self._announcer.wake()
                woken = True
        self._announcer.stop()
        self.publisher.close_all()
        logger.info("bridge %s stopped", self.node_name)
        return 0

    def _lane(self, index: int) -> None:
        """One lane: consume, reconnecting with exponential backoff after failures."""
        delay = RECONNECT_FIRST_S
        while not self._stop.is_set():
            started, handled = time.monotonic(), self._handled
            try:
                self._session(control=index == 0)
            except SERVICE_ERRORS as exc:
                if self._stop.is_set():
                    break
                if self._handled > handled or time.monotonic() - started > RECONNECT_CAP_S:
                    delay = RECONNECT_FIRST_S
                logger.error(
                    "bridge connection lost (%s); reconnecting in %gs",
                    refused_access(exc) or f"{type(exc).__name__}: {exc}",
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_CAP_S)
            except Exception:  # a bug of ours must not end the lane for good
                logger.exception("bridge lane %d failed; restarting it", index)
                self._stop.wait(delay)

    def _session(self, *, control: bool) -> None:
        """One connection's life: declare, consume until stopped, close (requeues the rest).

        Deliveries are collected as pika dispatches them and handled together once it returns:
        whatever arrived in one read from the socket is one batch for the intake, acked with
        one ``basic.ack`` (``multiple``) once the intake returned.
        """
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.add_on_cancel_callback(_on_cancelled)
            self._declare(channel)
            channel.basic_qos(prefetch_count=self.config.bridge.prefetch)
            inbox: list[tuple[int, Delivery]] = []
            for queue in self.queues:
                channel.basic_consume(queue, functools.partial(self._on_delivery, inbox, queue))
            if control:
                channel.basic_consume(
                    self.pidbox.declare(channel), self.pidbox.on_message, auto_ack=True
                )
                logger.info(
                    "bridge %s consuming %s (%d lanes, prefetch %d each)",
                    self.node_name,
                    ", ".join(self.queues),
                    self.config.bridge.concurrency,
                    self.config.bridge.prefetch,
                )
            while not self._stop.is_set():
                connection.process_data_events(time_limit=POLL_S)
                if inbox and not self._stop.is_set():
                    # Not acked when stopping: RabbitMQ hands them back when the connection closes.
                    self._handle(channel, inbox[:])
                    inbox.clear()
        finally:
            _close_quietly(connection)

    def _handle(self, channel: BlockingChannel, batch: list[tuple[int, Delivery]]) -> None:
        try:
            outcomes = self.intake.handle([delivery for _, delivery in batch])
        except PartlyHandled as partly:
            try:  # what was handled must not be handled twice when the rest comes back
                for index in partly.done:
                    channel.basic_ack(batch[index][0])
            except SERVICE_ERRORS:
                logger.warning("bridge: %d handled messages could not be acked", len(partly.done))
            raise partly.error from None
        channel.basic_ack(batch[-1][0], multiple=True)
        with self._count_lock:
            self._handled += len(batch)
        if logger.isEnabledFor(logging.DEBUG):
            for (tag, delivery), outcome in zip(batch, outcomes, strict=True):
                logger.debug("message %s from %s: %s", tag, delivery.queue, outcome)

    def _declare(self, channel: BlockingChannel) -> None:
        for queue in self.queues:
            declare_celery_queue(channel, queue)
        declare_dead_letter_queue(channel, self.config.bridge.dead_letter_queue)

    @staticmethod
    def _on_delivery(
        inbox: list[tuple[int, Delivery]],
        queue: str,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        inbox.append((method.delivery_tag, Delivery(queue, body, properties)))


def _on_cancelled(method: Any) -> None:
    """RabbitMQ cancelled a consumer (its queue was deleted): reconnect, which redeclares."""
    raise pika.exceptions.ConsumerCancelled(f"RabbitMQ cancelled a consumer: {method!r}")


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # the connection may already be broken in any way pika knows
        logger.debug("closing the bridge connection failed", exc_info=True)


def run_bridge(config: FrameworkConfig, *, queues: Sequence[str] | None = None) -> int:
    """Build the hub (every enabled module) and run a bridge until SIGTERM/SIGINT.

    Raises:
        ConfigError: a chosen Celery queue is also a hub task queue.
    """
    from nagatha.hub import create_hub

    registry = create_hub(config)
    chosen = list(queues or config.bridge.queues)
    clashes = sorted({task.queue for task in registry.list_tasks()} & set(chosen))
    if clashes:
        raise ConfigError(
            f"queue {', '.join(clashes)} is a hub task queue: Dramatiq declares those with other "
            "arguments than Celery, choose another Celery queue"
        )
    bridge = Bridge(config, registry, queues=chosen)
    signal.signal(signal.SIGTERM, bridge.stop)
    signal.signal(signal.SIGINT, bridge.stop)
    try:
        return bridge.run()
    finally:
        registry.broker.close()
        registry.store.close()
