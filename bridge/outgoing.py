"""Build the Celery task messages a Celery worker publishes when it applies a signature.

Pure (no I/O). :func:`task_message` is ``signature(sig).apply_async(args, kwargs,
**options)`` of a plain task signature, following Celery 5.7's ``Signature.apply_async`` →
``Celery.send_task`` → ``AMQP.as_task_v2`` → ``send_task_message`` with the defaults of a
worker that has none of the tasks registered locally: JSON, persistent delivery, default
queue ``celery``, a queue named in the options reached through the default exchange with its
name as routing key. :func:`apply_group` does the same for a group of plain signatures
(nested groups flattened, as Celery does) and returns an :class:`Application`: the messages
and any chord size to record first. Chords are applied by :mod:`bridge.chords`; the
dispatch by canvas type is :func:`bridge.workflows.apply_signature`. A shape that cannot be
applied as Celery would raises :class:`UnsupportedCanvas` before anything is built.

Example::

    sender = Sender(task_id=task.task_id, root_id=task.root_id)
    message = task_message(clean(task.chain[-1]), (retval,), None,
                           {"chain": task.chain[:-1], "parent_id": task.task_id}, sender=sender)
    publisher.publish(exchange=message.exchange, routing_key=message.routing_key,
                      body=message.body, headers=message.headers, properties=message.properties)
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from bridge import fields
from bridge.serialization import JSON, encode_json
from nagatha.errors import BridgeError, ProtocolError

__all__ = [
    "DEFAULT_QUEUE",
    "Application",
    "OutgoingMessage",
    "Sender",
    "UnsupportedCanvas",
    "apply_group",
    "clean",
    "clone",
    "freeze",
    "group_signature",
    "maybe_list",
    "saferepr",
    "task_message",
    "without_none",
]

#: Celery's ``task_default_queue``.
DEFAULT_QUEUE: Final = "celery"
#: Options a partial application never overrides once set (``Signature._IMMUTABLE_OPTIONS``).
_IMMUTABLE_OPTIONS: Final = frozenset({"group_id", "stamped_headers"})
#: Options ``send_task`` consumes itself; the rest are AMQP publish options or ignored.
_CALL_OPTIONS: Final = frozenset(
    "producer connection router result_cls publisher add_to_parent route_name task_type".split()
)
_DELIVERY_MODES: Final = {"persistent": 2, "transient": 1, 1: 1, 2: 2}
_REPR_MAXLEN: Final = 1024
_REPR_MAXLEVELS: Final = 3

_Sig = dict[str, Any]


class UnsupportedCanvas(BridgeError):
    """A canvas shape the bridge cannot apply the way Celery would (see the module doc)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def anon_nodename() -> str:
    """Return Celery's ``origin`` for this process: ``gen<pid>@<hostname>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def thread_oid() -> str:
    """Return a UUID naming this process and thread, as kombu's ``oid_from`` does."""
    seed = f"{uuid.getnode():x}-{os.getpid():x}-{threading.get_ident():x}-nagatha-bridge"
    return str(uuid.uuid3(uuid.NAMESPACE_OID, seed))


@dataclass(frozen=True, kw_only=True)
class Sender:
    """Who publishes: the running task (source of missing parent/root ids) and this process.

    ``reply_to`` is used for signatures that were not frozen with the client's own (a worker
    puts its own oid there, so an ``rpc://`` client never sees those results either).
    """

    task_id: str | None = None
    root_id: str | None = None
    origin: str = field(default_factory=anon_nodename)
    reply_to: str = field(default_factory=thread_oid)
    default_queue: str = DEFAULT_QUEUE
    now: Callable[[], datetime] = _utcnow


@dataclass(frozen=True)
class OutgoingMessage:
    """One protocol-2 task message: publish ``body`` with ``headers`` and ``properties``."""

    task_id: str
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    properties: dict[str, Any]


@dataclass
class Application:
    """What applying a signature means: record ``chord_sizes`` first, then publish in order.

    ``chord_sizes`` holds ``(group_id, size)`` pairs for the chord join (``.s`` keys).
    """

    messages: list[OutgoingMessage] = field(default_factory=list)
    chord_sizes: list[tuple[str, int]] = field(default_factory=list)
    #: The group the messages belong to, when a group (or a chord's header) was applied.
    group_id: str | None = None

    @property
    def children(self) -> list[Any]:
        """What Celery records in the applying task's ``children``: ``as_tuple()`` of the
        result ``apply_async`` returned, ``[[id, None], None]`` for a task and
        ``[[group id, None], [member tuples]]`` for a group."""
        tasks = [[[message.task_id, None], None] for message in self.messages]
        return [[[self.group_id, None], tasks]] if self.group_id is not None else tasks


def group_signature(tasks: Sequence[Mapping[str, Any]]) -> _Sig:
    """Return the serialized ``group(tasks)`` (no options), as a worker builds for callbacks."""
    return _signature("celery.group", kwargs={"tasks": list(tasks)}, subtask_type="group")


def freeze(
    sig: _Sig,
    *,
    sender: Sender,
    task_id: str | None = None,
    group_id: str | None = None,
    chord: Mapping[str, Any] | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    group_index: int | None = None,
) -> str:
    """Give ``sig`` (in place) its task id and ids like ``Signature.freeze``; return the id."""
    opts = sig["options"]
    if not opts.get("task_id"):
        opts["task_id"] = task_id or str(uuid.uuid4())
    if root_id:
        opts["root_id"] = root_id
    if parent_id:
        opts["parent_id"] = parent_id
    if "reply_to" not in opts:
        opts["reply_to"] = sender.reply_to
    if group_id and "group_id" not in opts:
        opts["group_id"] = group_id
    if chord:
        opts["chord"] = chord
    if group_index is not None:
        opts["group_index"] = group_index
    return str(opts["task_id"])


# --- plain tasks -------------------------------------------------------------------------


def task_message(
    sig: _Sig,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    options: dict[str, Any],
    *,
    sender: Sender,
) -> OutgoingMessage:
    """``Signature.apply_async`` of a plain signature whose task is not registered here."""
    args, kwargs, merged = _merge(sig, args, kwargs, options)
    return _send(sig["task"], args, kwargs, merged, sender=sender)


def _merge(
    sig: _Sig, args: Sequence[Any], kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]
) -> tuple[Sequence[Any], dict[str, Any], dict[str, Any]]:
    """``Signature._merge``: prepend args and merge kwargs unless immutable, merge options."""
    own = sig["options"]
    if not (args or kwargs or options):
        return sig["args"], sig["kwargs"], dict(own)
    frozen = _IMMUTABLE_OPTIONS | set(own.get("stamped_headers") or ())
    merged = {**own, **{k: v for k, v in options.items() if k not in frozen or k not in own}}
    if sig["immutable"]:
        return sig["args"], sig["kwargs"], merged
    new_args = tuple(args) + tuple(sig["args"]) if args else sig["args"]
    new_kwargs = dict(sig["kwargs"], **kwargs) if kwargs else sig["kwargs"]
    return new_args, new_kwargs, merged


def _send(
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: dict[str, Any],
    *,
    sender: Sender,
) -> OutgoingMessage:
    """``send_task`` + ``as_task_v2`` + ``send_task_message`` with a worker's defaults."""
    opts = {k: v for k, v in options.items() if k not in _CALL_OPTIONS}
    now = sender.now()
    task_id = opts.pop("task_id", None) or str(uuid.uuid4())
    root_id = opts.pop("root_id", None) or sender.root_id or sender.task_id or task_id
    parent_id = opts.pop("parent_id", None) or sender.task_id
    expires = opts.pop("expires", None)
    countdown = opts.pop("countdown", None)
    eta = opts.pop("eta", None)
    if countdown:
        eta = now + timedelta(seconds=float(countdown))
    stamped = opts.get("stamped_headers")
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": opts.pop("shadow", None),
        "eta": _iso(eta),
        "expires": _iso(
            now + timedelta(seconds=float(expires)) if _is_number(expires) else expires
        ),
        "group": opts.pop("group_id", None),
        "group_index": opts.pop("group_index", None),
        "retries": opts.pop("retries", None) or 0,
        "timelimit": [opts.pop("time_limit", None), opts.pop("soft_time_limit", None)],
        "root_id": root_id,
        "parent_id": parent_id,
        "argsrepr": opts.pop("argsrepr", None) or saferepr(args),
        "kwargsrepr": opts.pop("kwargsrepr", None) or saferepr(kwargs),
        "origin": sender.origin,
        "ignore_result": opts.pop("ignore_result", None),
        "replaced_task_nesting": opts.pop("replaced_task_nesting", None) or 0,
        "stamped_headers": stamped,
        "stamps": {key: opts.get(key) for key in stamped or ()},
    }
    if isinstance(opts.get("headers"), Mapping):
        headers.update(opts["headers"])
    embed = {
        "callbacks": maybe_list(opts.pop("link", None)),
        "errbacks": maybe_list(opts.pop("link_error", None)),
        "chain": opts.pop("chain", None),
        "chord": opts.pop("chord", None),
    }
    body = encode_json([list(args), kwargs, embed]).encode("utf-8")
    exchange, routing_key = _route(opts, sender.default_queue)
    properties: dict[str, Any] = {
        "content_type": JSON,
        "content_encoding": "utf-8",
        "correlation_id": task_id,
        "reply_to": opts.pop("reply_to", None) or sender.reply_to,
        "delivery_mode": _DELIVERY_MODES.get(opts.get("delivery_mode"), 2),
        "priority": opts.get("priority") or 0,
    }
    expiration = _expiration_ms(expires, now)
    if expiration is not None:
        properties["expiration"] = expiration
    return OutgoingMessage(task_id, exchange, routing_key, headers, body, properties)


def _route(options: Mapping[str, Any], default_queue: str) -> tuple[str, str]:
    """Return (exchange, routing key): queues are direct exchanges reached through ``""``."""
    queue = _name(options.get("queue")) or default_queue
    exchange = _name(options.get("exchange"))
    routing_key = (
        options.get("routing_key") if isinstance(options.get("routing_key"), str) else None
    )
    exchange_type = options.get("exchange_type") or "direct"
    if (not exchange or not routing_key) and exchange_type == "direct":
        return "", queue
    return exchange or queue, routing_key or queue


def _expiration_ms(expires: Any, now: datetime) -> str | None:
    """The AMQP ``expiration`` property (ms, never negative) Celery 5.2+ derives from expires."""
    if expires is None:
        return None
    if _is_number(expires):
        seconds = float(expires)
    else:
        try:
            moment = expires if isinstance(expires, datetime) else fields.moment(expires, "expires")
        except ProtocolError:
            return None
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()
    return str(int(max(seconds, 0) * 1000))


# --- groups --------------------------------------------------------------------------------


def apply_group(
    sig: _Sig,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    options: dict[str, Any],
    *,
    sender: Sender,
) -> Application:
    """``group.apply_async``: members get the group id, their index and the chord body."""
    for key in ("link", "link_error"):
        if options.get(key) is not None:
            raise UnsupportedCanvas(f"a group cannot take {key!r}: use a chord")
    own = sig["options"]
    opts = {
        **own,
        **{k: v for k, v in options.items() if k not in _IMMUTABLE_OPTIONS or k not in own},
    }
    group_id = opts.pop("task_id", None) or str(uuid.uuid4())
    opts["group_id"] = group_id
    members = list(_prepared(sig, group_id, opts.get("root_id"), sender=sender))
    chord = opts.pop("chord", None)
    for key in ("group_index", "add_to_parent"):
        opts.pop(key, None)
    application = Application(group_id=group_id)
    for index, member in enumerate(members):
        body = chord if chord is not None else member["options"].get("chord")
        if body is not None and index == len(members) - 1:
            application.chord_sizes.append((group_id, len(members)))
        extra = {"chord": body} if body is not None else {}
        member_options = without_none({**extra, **opts})
        application.messages.append(
            task_message(member, args, kwargs, member_options, sender=sender)
        )
    return application


def _prepared(sig: _Sig, group_id: str, root_id: str | None, *, sender: Sender) -> Iterator[_Sig]:
    """``group._prepared``: clone and freeze each member, flattening nested groups."""
    for index, raw in enumerate(sig["kwargs"].get("tasks") or ()):
        member = clone(raw)
        kind = member["subtask_type"]
        if kind == "group":
            yield from _prepared(member, group_id, root_id, sender=sender)
        elif kind == "chain" and not member["kwargs"].get("tasks"):
            continue
        elif kind is not None:
            raise UnsupportedCanvas(f"a {kind!r} inside a group or chord header is not supported")
        else:
            freeze(member, sender=sender, group_id=group_id, root_id=root_id, group_index=index)
            yield member


# --- helpers --------------------------------------------------------------------------------


def _signature(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    subtask_type: str | None = None,
    immutable: bool = False,
) -> _Sig:
    """A serialized signature with Celery's key order."""
    return {
        "task": task,
        "args": args,
        "kwargs": dict(kwargs or {}),
        "options": dict(options or {}),
        "subtask_type": subtask_type,
        "immutable": immutable,
    }


def clean(sig: Mapping[str, Any]) -> _Sig:
    """Validate a serialized signature and return a working copy (options copied)."""
    checked = fields.signature(sig, "signature")
    return _signature(
        checked["task"],
        checked.get("args") or [],
        checked.get("kwargs"),
        copy.deepcopy(checked.get("options") or {}),
        checked.get("subtask_type"),
        bool(checked.get("immutable")),
    )


def clone(sig: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> _Sig:
    """``Signature.clone(**options)``: args become a tuple, options merged (None kept)."""
    copy_ = clean(sig)
    if options:
        own = copy_["options"]
        keep = _IMMUTABLE_OPTIONS | set(own.get("stamped_headers") or ())
        copy_["options"] = {
            **own,
            **{k: copy.deepcopy(v) for k, v in options.items() if k not in keep or k not in own},
        }
    copy_["args"] = tuple(copy_["args"])
    return copy_


def without_none(options: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (options or {}).items() if v is not None}


def maybe_list(value: Any) -> list[Any] | None:
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return [value]


def _name(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("name")
    return value if isinstance(value, str) and value else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def saferepr(value: Any, maxlen: int = _REPR_MAXLEN, maxlevels: int = _REPR_MAXLEVELS) -> str:
    """Celery's ``saferepr`` for ``argsrepr``/``kwargsrepr``: nesting and length bounded.

    Strings are always single-quoted (only ``'`` escaped), numbers as ``str()``; containers
    deeper than ``maxlevels`` show as ``[...]``/``(...)``/``{...}``. Text longer than
    ``maxlen`` is cut and ends in ``...`` (Celery cuts inside items; only logs differ).
    """
    text = _repr(value, 1, maxlevels)
    return text if len(text) <= maxlen else text[:maxlen] + "..."


def _repr(value: Any, level: int, maxlevels: int) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, int | float) and not isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        if level > maxlevels:
            return "{...}"
        items = (
            f"{_repr(k, 1, maxlevels)}: {_repr(v, level + 1, maxlevels)}" for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        if isinstance(value, tuple) and len(value) == 1:
            closing = ",)"
        if level > maxlevels:
            return f"{opening}...{closing}"
        return opening + ", ".join(_repr(item, level + 1, maxlevels) for item in value) + closing
    return repr(value)
