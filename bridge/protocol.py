"""Parse a Celery task message (protocol 1, 2 or the hybrid of both) into a :class:`CeleryTask`.

Recognition follows the Celery worker (``celery/worker/consumer/consumer.py`` and
``celery/worker/strategy.py``):

1. a ``task`` header means protocol 2: the body is ``[args, kwargs, embed]``;
2. a ``task`` header *and* a mapping body with ``args`` is a hybrid: fields come from the
   body, overridden by the headers;
3. no ``task`` header and a mapping body with ``task`` is protocol 1 (AMQP headers ignored
   apart from ``compression``);
4. anything else is not a task message.

:func:`parse_message` raises :class:`~nagatha.errors.ProtocolError` (or its subclass
``PickleRefused``) for every bad input and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge import fields
from bridge.serialization import DEFAULT_MAX_DEPTH, decode_body
from bridge.task import CeleryTask
from nagatha.errors import ProtocolError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "CeleryTask", "parse_message"]

#: Largest raw (possibly compressed) message body accepted, in bytes.
DEFAULT_MAX_BODY_BYTES: Final = 10 * 1024 * 1024

# Fields a hybrid message may carry in its body (celery.worker.strategy.hybrid_to_proto2).
_HYBRID_BODY_FIELDS: Final = (
    "task",
    "id",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "shadow",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "origin",
)


@dataclass(frozen=True)
class _Properties:
    """The validated AMQP properties the task keeps."""

    correlation_id: str | None
    reply_to: str | None
    priority: int | None


@dataclass
class _Identity:
    """What is known of the task so far, for the ProtocolError raised on failure."""

    task_id: str | None = None
    task_name: str | None = None


def parse_message(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[Any, Any] | None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    priority: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_decoded_bytes: int | None = None,
) -> CeleryTask:
    """Return the task carried by one Celery message, as delivered by pika.

    ``headers`` keys and values may be ``bytes``. ``max_body_bytes`` bounds the raw body and
    ``max_decoded_bytes`` (default: ``max_body_bytes``) the body after decompression.

    Raises:
        ProtocolError: the message is not a valid Celery task; ``task_id``/``task_name`` are
            set when they could be read (``task_id`` falls back to ``correlation_id``).
        PickleRefused: the body is pickle; it is never deserialized.
    """
    identity = _Identity()
    try:
        return _parse(
            body,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            correlation_id=correlation_id,
            reply_to=reply_to,
            priority=priority,
            max_body_bytes=max_body_bytes,
            max_decoded_bytes=max_body_bytes if max_decoded_bytes is None else max_decoded_bytes,
            identity=identity,
        )
    except ProtocolError as exc:
        if exc.task_id is None and exc.task_name is None:
            exc.task_id, exc.task_name = identity.task_id, identity.task_name
        raise
    except Exception as exc:  # the contract: ProtocolError and nothing else
        raise ProtocolError(
            f"malformed Celery message ({type(exc).__name__})",
            task_id=identity.task_id,
            task_name=identity.task_name,
        ) from exc


def _parse(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[Any, Any] | None,
    correlation_id: str | None,
    reply_to: str | None,
    priority: int | None,
    max_body_bytes: int,
    max_decoded_bytes: int,
    identity: _Identity,
) -> CeleryTask:
    header_map = _normalize_headers(headers)
    is_v2 = "task" in header_map
    _peek_identity(header_map if is_v2 else {}, correlation_id, identity)
    if not isinstance(body, bytes | bytearray | memoryview):
        raise ProtocolError(f"message body must be bytes, got {type(body).__name__}")
    if len(body) > max_body_bytes:
        raise ProtocolError(f"message body of {len(body)} bytes exceeds {max_body_bytes}")
    value = decode_body(
        bytes(body),
        content_type=fields.text(content_type, "content_type"),
        content_encoding=fields.text(content_encoding, "content_encoding"),
        compression=fields.text(header_map.get("compression"), "compression"),
        max_decoded_bytes=max_decoded_bytes,
        max_depth=DEFAULT_MAX_DEPTH,
    )
    properties = _Properties(
        correlation_id=fields.identifier(correlation_id, "correlation_id"),
        reply_to=fields.identifier(reply_to, "reply_to"),
        priority=fields.integer(priority, "priority", maximum=255),
    )
    if is_v2 and isinstance(value, Mapping) and "args" in value:
        merged = {key: value[key] for key in _HYBRID_BODY_FIELDS if key in value}
        merged.update(header_map)
        _peek_identity(merged, correlation_id, identity)
        fields.flag(value.get("utc", True), "utc")  # checked; naive times are UTC regardless
        embed = {key: value.get(key) for key in ("callbacks", "errbacks", "chord")}
        return _build(
            merged,
            value.get("args", []),
            value.get("kwargs", {}),
            embed,
            protocol=2,
            properties=properties,
        )
    if is_v2:
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise ProtocolError("protocol 2 body must be a [args, kwargs, embed] array")
        args, kwargs, embed = value
        if not isinstance(embed, Mapping):
            raise ProtocolError("protocol 2 embed (3rd body element) must be a mapping")
        return _build(header_map, args, kwargs, embed, protocol=2, properties=properties)
    if isinstance(value, Mapping) and "task" in value:
        _peek_identity(value, correlation_id, identity)
        v1 = dict(value)
        if v1.get("taskset") is not None:
            v1["group"] = v1["taskset"]
        # Checked; naive times are UTC whatever it says, as a Celery 5 worker reads them.
        fields.flag(v1.get("utc", True), "utc")
        embed = {key: v1.get(key) for key in ("callbacks", "errbacks", "chord")}
        return _build(
            v1,
            v1.get("args", []),
            v1.get("kwargs", {}),
            embed,
            protocol=1,
            properties=properties,
        )
    raise ProtocolError(
        "not a Celery task message: no 'task' header and the body is not a protocol 1 mapping"
    )


def _build(
    source: Mapping[str, Any],
    args: Any,
    kwargs: Any,
    embed: Mapping[str, Any],
    *,
    protocol: int,
    properties: _Properties,
) -> CeleryTask:
    """Validate every field of the normalised message and build the task."""
    task_id = fields.identifier(source.get("id"), "id") or properties.correlation_id
    if task_id is None:
        raise ProtocolError("message has no task id ('id' or correlation_id)")
    hard, soft = fields.time_limits(source.get("timelimit"))
    return CeleryTask(
        task_id=task_id,
        task_name=fields.task_name(source.get("task")),
        args=fields.args_list(args),
        kwargs=fields.kwargs_dict(kwargs),
        protocol=protocol,
        eta=fields.moment(source.get("eta"), "eta"),
        expires=fields.moment(source.get("expires"), "expires"),
        retries=fields.integer(source.get("retries", 0), "retries") or 0,
        time_limit=hard,
        soft_time_limit=soft,
        root_id=fields.identifier(source.get("root_id"), "root_id"),
        parent_id=fields.identifier(source.get("parent_id"), "parent_id"),
        group_id=fields.identifier(source.get("group"), "group"),
        group_index=fields.integer(source.get("group_index"), "group_index"),
        reply_to=properties.reply_to,
        correlation_id=properties.correlation_id,
        ignore_result=fields.flag(source.get("ignore_result"), "ignore_result"),
        shadow=fields.identifier(source.get("shadow"), "shadow"),
        priority=properties.priority,
        origin=fields.text(source.get("origin"), "origin"),
        argsrepr=fields.text(source.get("argsrepr"), "argsrepr"),
        kwargsrepr=fields.text(source.get("kwargsrepr"), "kwargsrepr"),
        callbacks=fields.signatures(embed.get("callbacks"), "callbacks"),
        errbacks=fields.signatures(embed.get("errbacks"), "errbacks"),
        chain=fields.signatures(embed.get("chain"), "chain"),
        chord=fields.optional_signature(embed.get("chord"), "chord"),
    )


def _normalize_headers(headers: Any) -> dict[str, Any]:
    """Return the AMQP header table with ``str`` keys (pika may hand out ``bytes``)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ProtocolError(f"message headers must be a table, got {type(headers).__name__}")
    normalized: dict[str, Any] = {}
    for key, value in headers.items():
        name = fields.text(key, "header name")
        if name is None or name in normalized:
            raise ProtocolError(f"invalid or duplicate header name {key!r:.80}")
        normalized[name] = value
    return normalized


def _peek_identity(source: Mapping[str, Any], correlation_id: Any, identity: _Identity) -> None:
    """Record the task id and name for error reports, if they are valid; never raises."""
    for candidate in (source.get("id"), correlation_id):
        try:
            task_id = fields.identifier(candidate, "id")
        except ProtocolError:
            continue
        if task_id:
            identity.task_id = task_id
            break
    try:
        identity.task_name = fields.task_name(source.get("task"))
    except ProtocolError:
        pass
