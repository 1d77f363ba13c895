"""The bridge's dead-letter queue: Celery messages it could not run, kept for a person.

A dead letter is the original message (body and AMQP properties, headers included) with
these headers added, on a plain durable queue (``bridge.dead_letter_queue``):

=============================  =====================================================
``x-nagatha-dead-letter-id``   id of this dead letter (``nagatha bridge dlq replay ID``)
``x-nagatha-reason``           why the bridge refused it (also logged)
``x-nagatha-queue``            the Celery queue it came from (replay sends it back there)
``x-nagatha-dead-at``          when, ISO 8601 UTC
``x-nagatha-task-id``/``-name``  the task id and name, when they could be read
``x-nagatha-headers-dropped``  set when the original headers could not be kept (too large
                               for RabbitMQ's frame size, or not encodable): why
=============================  =====================================================

:func:`list_dead_letters` browses without removing anything; :func:`replay_dead_letters`
moves chosen messages back to their Celery queue, without the added headers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import pika
from pika.adapters.blocking_connection import BlockingChannel

from bridge.publisher import ConfirmedPublisher
from nagatha.types import utcnow

__all__ = [
    "HEADER_PREFIX",
    "DeadLetter",
    "DeadLetters",
    "declare_dead_letter_queue",
    "list_dead_letters",
    "replay_dead_letters",
]

logger = logging.getLogger("nagatha.bridge")

HEADER_PREFIX: Final = "x-nagatha-"
_ID, _REASON, _QUEUE, _AT = (
    "x-nagatha-dead-letter-id",
    "x-nagatha-reason",
    "x-nagatha-queue",
    "x-nagatha-dead-at",
)
_TASK_ID, _TASK_NAME = "x-nagatha-task-id", "x-nagatha-task-name"
_DROPPED: Final = "x-nagatha-headers-dropped"
_OWN_HEADERS: Final = (_ID, _REASON, _QUEUE, _AT, _TASK_ID, _TASK_NAME)
#: Largest encoded properties (headers included) a dead letter keeps: RabbitMQ's default
#: frame_max (128 KiB) less room for the header frame's own fields.
_MAX_PROPERTIES_BYTES: Final = 131_072 - 1_024
#: Longest reason kept in a header (AMQP long strings could hold more; people read these).
_MAX_REASON: Final = 1000
#: Longest task id or name kept (a protocol 1 body may name anything).
_MAX_NAME: Final = 255
# Properties copied to the dead letter and back. Not ``user_id`` (RabbitMQ checks it against
# the publishing user) nor ``expiration`` (a dead letter must not expire; Celery's own
# ``expires`` header still travels).
_KEPT_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)


def declare_dead_letter_queue(channel: BlockingChannel, name: str) -> None:
    """Declare the dead-letter queue: durable, no arguments (idempotent)."""
    channel.queue_declare(name, durable=True)


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message as listed (the body stays in the queue)."""

    id: str
    reason: str
    queue: str
    dead_at: str | None
    task_id: str | None
    task_name: str | None
    content_type: str | None
    size: int

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape of ``nagatha bridge dlq list --json``."""
        return {
            "id": self.id,
            "reason": self.reason,
            "queue": self.queue,
            "dead_at": self.dead_at,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "content_type": self.content_type,
            "size": self.size,
        }


class DeadLetters:
    """Put refused messages on the dead-letter queue, confirmed by RabbitMQ."""

    def __init__(self, publisher: ConfirmedPublisher, queue: str) -> None:
        self.publisher = publisher
        self.queue = queue

    def put(
        self,
        *,
        body: bytes,
        properties: pika.BasicProperties,
        reason: str,
        source_queue: str,
        task_id: str | None = None,
        task_name: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """Dead-letter one message; return its dead-letter id once RabbitMQ confirmed it.

        Raises:
            BrokerUnavailable: RabbitMQ did not confirm it (the caller must not ack the
                original, so that it is delivered again).
        """
        letter_id = uuid.uuid4().hex
        headers = {str(k): v for k, v in (properties.headers or {}).items()}
        headers.update(
            {
                _ID: letter_id,
                _REASON: reason[:_MAX_REASON],
                _QUEUE: source_queue,
                _AT: (now or utcnow()).isoformat(),
            }
        )
        if task_id:
            headers[_TASK_ID] = task_id[:_MAX_NAME]
        if task_name:
            headers[_TASK_NAME] = task_name[:_MAX_NAME]
        kept = _kept_properties(properties)
        copied = pika.BasicProperties(headers=headers, delivery_mode=2, **kept)
        problem = _unsendable(copied)
        if problem is not None:
            # Only the headers set here (a client may send x-nagatha-* too), each short.
            ours = {k: headers[k] for k in _OWN_HEADERS if k in headers}
            ours[_DROPPED] = problem
            copied = pika.BasicProperties(headers=ours, delivery_mode=2, **kept)
        # mandatory: if the queue was deleted, raise (the message stays unacked, and the
        # bridge's reconnect declares the queue again) rather than have RabbitMQ drop it.
        self.publisher.basic_publish("", self.queue, body, copied, mandatory=True)
        return letter_id


def _unsendable(properties: pika.BasicProperties) -> str | None:
    """Why ``properties`` cannot be published as they are, or None."""
    try:
        size = sum(map(len, properties.encode()))
    except Exception as exc:  # a header value pika cannot encode
        return f"the original headers could not be encoded ({type(exc).__name__})"
    if size > _MAX_PROPERTIES_BYTES:
        # RabbitMQ closes the connection on a header frame over its frame_max: the original
        # fit, the added headers may not.
        return f"{size} bytes of properties, too large to keep"
    return None


def list_dead_letters(channel: BlockingChannel, queue: str) -> list[DeadLetter]:
    """Every message on the dead-letter ``queue``, oldest first; nothing is removed.

    The messages are fetched unacknowledged and handed back (requeued in place) at the end.
    """
    letters: list[DeadLetter] = []
    try:
        for _tag, properties, body in _fetch_all(channel, queue):
            letters.append(_describe(properties, body))
    finally:
        _requeue_rest(channel)
    return letters


def replay_dead_letters(
    channel: BlockingChannel,
    queue: str,
    ids: Collection[str] | None,
    *,
    before_replay: Callable[[DeadLetter], None] | None = None,
) -> list[DeadLetter]:
    """Send dead letters back to their Celery queue; return the ones replayed.

    ``ids`` None replays every message, else only those whose dead-letter id or Celery task
    id is among them (a hub record names the task id). ``before_replay`` is called
    for each one before it is sent (the CLI clears the failure answered when it was
    dead-lettered, so that the new outcome is stored). Each message is published with
    confirms, then removed from the dead-letter queue; the others stay where they were.
    ``channel`` is put in confirm mode.
    """
    channel.confirm_delivery()
    replayed: list[DeadLetter] = []
    try:
        for tag, properties, body in _fetch_all(channel, queue):
            letter = _describe(properties, body)
            if ids is not None and letter.id not in ids and letter.task_id not in ids:
                continue
            if not letter.queue:
                logger.warning("dead letter %s names no source queue; left in place", letter.id)
                continue
            if before_replay is not None:
                before_replay(letter)
            headers = {
                k: v
                for k, v in (properties.headers or {}).items()
                if not str(k).startswith(HEADER_PREFIX)
            }
            original = pika.BasicProperties(
                headers=headers, delivery_mode=2, **_kept_properties(properties)
            )
            # mandatory: a queue that no longer exists raises instead of dropping the message
            channel.basic_publish("", letter.queue, body, original, mandatory=True)
            channel.basic_ack(tag)
            replayed.append(letter)
            logger.info("dead letter %s replayed to %s", letter.id, letter.queue)
    finally:
        _requeue_rest(channel)
    return replayed


def _fetch_all(
    channel: BlockingChannel, queue: str
) -> list[tuple[int, pika.BasicProperties, bytes]]:
    """Get (unacked) as many messages as the queue held when asked."""
    count = channel.queue_declare(queue, passive=True).method.message_count
    fetched = []
    for _ in range(count):
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        fetched.append((method.delivery_tag, properties, body))
    return fetched


def _requeue_rest(channel: BlockingChannel) -> None:
    if channel.is_open:
        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)


def _kept_properties(properties: pika.BasicProperties) -> dict[str, Any]:
    return {
        name: getattr(properties, name)
        for name in _KEPT_PROPERTIES
        if getattr(properties, name, None) is not None
    }


def _describe(properties: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers = properties.headers or {}

    def text(name: str) -> str | None:
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    return DeadLetter(
        id=text(_ID) or "",
        reason=text(_REASON) or "",
        queue=text(_QUEUE) or "",
        dead_at=text(_AT),
        task_id=text(_TASK_ID),
        task_name=text(_TASK_NAME),
        content_type=properties.content_type,
        size=len(body),
    )
