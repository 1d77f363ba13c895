"""The validated content of one Celery task message, and its trip through Dramatiq options."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from bridge import fields
from bridge.serialization import from_jsonable, to_jsonable
from nagatha.errors import ProtocolError

__all__ = ["OPTIONS_VERSION", "CeleryTask"]

#: Version of the :meth:`CeleryTask.to_options` layout; bumped on incompatible changes.
OPTIONS_VERSION: Final = 1

_Signature = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class CeleryTask:
    """One Celery task request, normalised from protocol 1, 2 or a hybrid message.

    Times are aware UTC datetimes; time limits are seconds (None = not set by the client);
    ``callbacks``/``errbacks``/``chain``/``chord`` are the raw serialized signatures of the
    message's embed (``chain`` keeps Celery's order: the next step is the *last* element).
    None and ``[]`` are kept apart because Celery does (the last chain step carries ``[]``).

    Example::

        options = {"celery": task.to_options()}          # travels in a Dramatiq message
        again = CeleryTask.from_options(options["celery"], args=msg.args, kwargs=msg.kwargs)
    """

    task_id: str
    task_name: str
    args: list[Any] = field(default_factory=list, repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    protocol: int = 2
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    ignore_result: bool | None = None
    shadow: str | None = None
    priority: int | None = None
    origin: str | None = None
    argsrepr: str | None = field(default=None, repr=False)
    kwargsrepr: str | None = field(default=None, repr=False)
    callbacks: list[_Signature] | None = field(default=None, repr=False)
    errbacks: list[_Signature] | None = field(default=None, repr=False)
    chain: list[_Signature] | None = field(default=None, repr=False)
    chord: _Signature | None = field(default=None, repr=False)
    #: The queue the message arrived on: steps it sends without a queue of their own go
    #: there (see :class:`bridge.outgoing.Sender`).
    queue: str | None = None

    @property
    def display_name(self) -> str:
        """The name Celery shows in logs: ``shadow`` when set, else ``task_name``."""
        return self.shadow or self.task_name

    def to_options(self) -> dict[str, Any]:
        """Return every field but ``args``/``kwargs`` as plain JSON data.

        Datetimes become ISO 8601 strings; values inside signatures that JSON cannot hold
        (datetimes, bytes, ...) become kombu envelopes. :meth:`from_options` inverts it.
        """
        return {
            "v": OPTIONS_VERSION,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "protocol": self.protocol,
            "eta": _iso(self.eta),
            "expires": _iso(self.expires),
            "retries": self.retries,
            "time_limit": self.time_limit,
            "soft_time_limit": self.soft_time_limit,
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "group_id": self.group_id,
            "group_index": self.group_index,
            "reply_to": self.reply_to,
            "correlation_id": self.correlation_id,
            "ignore_result": self.ignore_result,
            "shadow": self.shadow,
            "priority": self.priority,
            "origin": self.origin,
            "argsrepr": self.argsrepr,
            "kwargsrepr": self.kwargsrepr,
            "callbacks": to_jsonable(self.callbacks),
            "errbacks": to_jsonable(self.errbacks),
            "chain": to_jsonable(self.chain),
            "chord": to_jsonable(self.chord),
            "queue": self.queue,
        }

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> CeleryTask:
        """Rebuild the task from :meth:`to_options` output plus its arguments.

        Unknown keys are ignored and missing optional ones take their defaults.

        Raises:
            ProtocolError: not a mapping, another layout version, or an invalid field.
        """
        if not isinstance(options, Mapping):
            raise ProtocolError("celery options must be a mapping")
        if options.get("v") != OPTIONS_VERSION:
            raise ProtocolError(f"unsupported celery options version {options.get('v')!r}")
        task_id = fields.identifier(options.get("task_id"), "task_id")
        if task_id is None:
            raise ProtocolError("celery options lack 'task_id'")
        protocol = options.get("protocol")
        if protocol not in (1, 2) or isinstance(protocol, bool):
            raise ProtocolError(f"unsupported protocol version {protocol!r}", task_id=task_id)
        try:
            return cls._from_valid_options(options, task_id, protocol, args, kwargs)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, task_id=task_id) from exc

    @classmethod
    def _from_valid_options(
        cls,
        options: Mapping[str, Any],
        task_id: str,
        protocol: int,
        args: Iterable[Any],
        kwargs: Mapping[str, Any] | None,
    ) -> CeleryTask:
        hard, soft = fields.time_limits([options.get("time_limit"), options.get("soft_time_limit")])
        decoded = from_jsonable(
            {key: options.get(key) for key in ("callbacks", "errbacks", "chain", "chord")}
        )
        return cls(
            task_id=task_id,
            task_name=fields.task_name(options.get("task_name"), "task_name"),
            args=fields.args_list(list(args)),
            kwargs=fields.kwargs_dict({} if kwargs is None else kwargs),
            protocol=protocol,
            eta=fields.moment(options.get("eta"), "eta"),
            expires=fields.moment(options.get("expires"), "expires"),
            retries=fields.integer(options.get("retries"), "retries") or 0,
            time_limit=hard,
            soft_time_limit=soft,
            root_id=fields.identifier(options.get("root_id"), "root_id"),
            parent_id=fields.identifier(options.get("parent_id"), "parent_id"),
            group_id=fields.identifier(options.get("group_id"), "group_id"),
            group_index=fields.integer(options.get("group_index"), "group_index"),
            reply_to=fields.identifier(options.get("reply_to"), "reply_to"),
            correlation_id=fields.identifier(options.get("correlation_id"), "correlation_id"),
            ignore_result=fields.flag(options.get("ignore_result"), "ignore_result"),
            shadow=fields.identifier(options.get("shadow"), "shadow"),
            priority=fields.integer(options.get("priority"), "priority", maximum=255),
            origin=fields.text(options.get("origin"), "origin"),
            argsrepr=fields.text(options.get("argsrepr"), "argsrepr"),
            kwargsrepr=fields.text(options.get("kwargsrepr"), "kwargsrepr"),
            callbacks=fields.signatures(decoded["callbacks"], "callbacks"),
            errbacks=fields.signatures(decoded["errbacks"], "errbacks"),
            chain=fields.signatures(decoded["chain"], "chain"),
            chord=fields.optional_signature(decoded["chord"], "chord"),
            queue=fields.identifier(options.get("queue"), "queue"),
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
