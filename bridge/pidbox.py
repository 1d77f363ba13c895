"""The bridge's Celery control mailbox: answers ``ping`` and carries out ``revoke``.

Celery clients broadcast control commands (``app.control.ping()``, ``AsyncResult.revoke()``,
``celery inspect ping``) to the fanout exchange ``celery.pidbox``. Like a Celery worker (kombu
``Mailbox``/``Node``), the bridge binds its own queue ``<node>.celery.pidbox`` to it
(exclusive, auto-delete, ``x-expires`` 10 s, ``x-message-ttl`` 300 s) and replies, when the
command asks for it, to the ``reply_to`` exchange with ``{node: reply}`` and the ``ticket``
header.

``revoke`` marks the ids in the hub's status store (:meth:`~nagatha.stores.StatusStore.revoke`,
the set a hub cancel joins: every worker knows them without a round trip and does not run
them, best effort as a cancel is) and answers REVOKED at once for tasks that have not
started: no hub record yet, ``pending`` or ``retrying``. A task already running is not
interrupted (``terminate=True`` is not supported) and ends as it would have.
Every other command is ignored, with an ``error`` reply when one is expected.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic

from bridge import fields
from bridge.answers import Answers
from bridge.celery_results import revoked_meta
from bridge.serialization import decode_body
from nagatha.errors import NagathaError, ProtocolError
from nagatha.types import REVOKED_ERROR, TaskStatus

__all__ = ["EXCHANGE", "Pidbox", "Revoker", "default_node_name"]

logger = logging.getLogger("nagatha.bridge.pidbox")

EXCHANGE: Final = "celery.pidbox"
#: Celery's ``control_queue_expires`` and ``control_queue_ttl``, in milliseconds.
QUEUE_EXPIRES_MS: Final = 10_000
MESSAGE_TTL_MS: Final = 300_000
#: Largest control message accepted (they are a few hundred bytes).
MAX_COMMAND_BYTES: Final = 1_048_576
_REVOCABLE: Final = frozenset({TaskStatus.PENDING, TaskStatus.RETRYING})


def default_node_name() -> str:
    """Return a node name unique per process: ``nagatha-bridge-<pid>@<host>``."""
    return f"nagatha-bridge-{os.getpid()}@{socket.gethostname()}"


class Revoker:
    """Carry out a ``revoke``: remember the ids, answer those that have not started."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def revoke(self, task_ids: list[str]) -> None:
        """Revoke ``task_ids``.

        Raises:
            StoreUnavailable: Redis did not record the revoke (nothing is answered then).
        """
        self.answers.store.revoke(task_ids)
        for task_id in task_ids:
            record = self.answers.store.get(task_id)
            if record is not None and record.status not in _REVOCABLE:
                continue
            self.answers.celery(revoked_meta(task_id, "revoked"))
            if record is not None:
                self.answers.hub_failure(
                    task_id,
                    task_name=record.task_name,
                    error=REVOKED_ERROR,
                )
            logger.info("task %s revoked", task_id)


class Pidbox:
    """Declare the node's control queue and handle the commands it receives."""

    def __init__(self, node_name: str, revoke: Callable[[list[str]], None]) -> None:
        self.node_name = node_name
        self.queue = f"{node_name}.celery.pidbox"
        self._revoke = revoke
        self._clock = 0

    def declare(self, channel: BlockingChannel) -> str:
        """Declare exchange and queue exactly as kombu does; return the queue name."""
        channel.exchange_declare(EXCHANGE, exchange_type="fanout", durable=False)
        channel.queue_declare(
            self.queue,
            durable=False,
            exclusive=True,
            auto_delete=True,
            arguments={"x-expires": QUEUE_EXPIRES_MS, "x-message-ttl": MESSAGE_TTL_MS},
        )
        channel.queue_bind(self.queue, EXCHANGE, routing_key="")
        return self.queue

    def on_message(
        self,
        channel: BlockingChannel,
        method: Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        """Handle one control message (consumed with auto-ack); never raises for bad input.

        Raises:
            ServiceUnavailable: Redis or RabbitMQ failed while carrying out a revoke.
        """
        headers = properties.headers or {}
        self._clock = max(self._clock, int(_number(headers.get("clock")))) + 1
        expires = _number(headers.get("expires"))
        if expires and time.time() > expires:
            return
        command = self._decode(properties, body)
        if command is None or not self._addressed_to_me(command):
            return
        method_name = command.get("method")
        arguments = command.get("arguments") or {}
        reply = self._dispatch(method_name, arguments if isinstance(arguments, Mapping) else {})
        reply_to = command.get("reply_to")
        if reply is not None and isinstance(reply_to, Mapping):
            self._reply(channel, reply_to, command.get("ticket"), reply)

    def _decode(self, properties: pika.BasicProperties, body: bytes) -> dict[str, Any] | None:
        if len(body) > MAX_COMMAND_BYTES:
            logger.warning("control message of %d bytes ignored", len(body))
            return None
        try:
            command = decode_body(
                body,
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
            )
        except NagathaError as exc:
            logger.warning("undecodable control message ignored: %s", exc)
            return None
        if not isinstance(command, dict):
            logger.warning("control message that is not a mapping ignored")
            return None
        return command

    def _addressed_to_me(self, command: Mapping[str, Any]) -> bool:
        destination = command.get("destination")
        if destination:
            return isinstance(destination, list | tuple) and self.node_name in destination
        # NOTE: pattern/matcher addressing (``celery control --pattern``) is not supported;
        # such commands are ignored rather than run on every node.
        return not command.get("pattern")

    def _dispatch(self, method: Any, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
        if method == "ping":
            return {"ok": "pong"}
        if method == "revoke":
            ids = arguments.get("task_id")
            task_ids = [ids] if isinstance(ids, str) else ids if isinstance(ids, list) else []
            task_ids = list(
                dict.fromkeys(t for t in task_ids if isinstance(t, str) and _is_task_id(t))
            )
            if arguments.get("terminate"):
                logger.warning("revoke with terminate=True: running tasks are not interrupted")
            if not task_ids:
                return {"error": "revoke needs task_id"}
            self._revoke(task_ids)
            return {"ok": f"tasks {', '.join(task_ids)} flagged as revoked"}
        logger.debug("control command %r ignored", method)
        return {"error": f"nagatha bridge does not support the command {method!r}"}

    def _reply(
        self,
        channel: BlockingChannel,
        reply_to: Mapping[str, Any],
        ticket: Any,
        reply: dict[str, Any],
    ) -> None:
        exchange, routing_key = reply_to.get("exchange"), reply_to.get("routing_key")
        if not isinstance(exchange, str) or not exchange or not isinstance(routing_key, str):
            return
        self._clock += 1
        properties = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=1,
            headers={"ticket": ticket if isinstance(ticket, str) else None, "clock": self._clock},
        )
        # A channel of its own: a reply RabbitMQ refuses (an exchange declared otherwise, a
        # name too long) closes that channel, never the one the bridge consumes on.
        replies = channel.connection.channel()
        try:
            # Publishing to a missing exchange would close the channel; declare it the way
            # the client does (kombu Mailbox: direct, not durable).
            replies.exchange_declare(exchange, exchange_type="direct", durable=False)
            body = json.dumps({self.node_name: reply}).encode("utf-8")
            replies.basic_publish(exchange, routing_key, body, properties)
        except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ShortStringTooLong) as exc:
            logger.warning("control reply to exchange %r not sent: %s", exchange[:100], exc)
        finally:
            if replies.is_open:
                replies.close()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _is_task_id(value: str) -> bool:
    """True for an id a task message may carry (the intake refuses others: none can run)."""
    try:
        return fields.identifier(value, "task_id") is not None
    except ProtocolError:
        return False
