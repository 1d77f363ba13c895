"""Celery workflows run the way a Celery worker runs them: links, chains, errbacks, chords.

CONTRACT (called by the worker-side result middleware, ``bridge/middleware.py``):

* :func:`dispatch_success` is called after a bridged task succeeded and **before** its
  SUCCESS meta is stored (Celery's order: ``children`` must be known). It publishes each
  ``link`` callback (several at once as one group, as Celery does) and the next ``chain``
  step as Celery task messages, completes a chord header member's join, and returns the ids
  of the tasks it published (the ``children``; a group's or chord header's member ids).
* :func:`fail_chain` is called when a bridged task failed for good, **before** its own
  FAILURE is stored: it stores FAILURE for the remaining chain steps (and a chord body in
  them) so that ``get()`` on a chain raises instead of hanging. Celery stores them after
  the task's own failure; a client whose ``get()`` raised because a parent failed could
  then still read the chain's last result as PENDING.
* :func:`dispatch_failure` is called after that failure was stored. It counts a chord
  header member as failed, then publishes the ``link_error`` errbacks with
  ``args = (task_id,) + errback.args`` (they may look the failure up).
* :func:`dispatch_revoked` is called when a bridged task is revoked or expired instead of
  run: a chord header member still counts (REVOKED), or the chord would never complete.

Chord joins live in ``redis_client``, by default the Redis of ``results`` (the result backend).

When a header completes, the member that completes it publishes the chord body with the
header's results in ``group_index`` order; if a member failed the body is stored as FAILURE
``ChordError("Dependency <id> raised ...")``, its errbacks run and its chain fails.

:func:`apply_signature` applies plain tasks, groups of plain tasks and chords of those with
a plain body (what ``chain(a, group(b, c), d)`` becomes). Another shape is logged; where the
client holds result ids for it (a chain step), they are stored as FAILURE
``NotImplementedError`` so that the client's ``get()`` raises. Every function may raise
``BrokerUnavailable`` or ``StoreUnavailable`` (a retry may publish some messages twice, as
Celery may) and TypeError when a result cannot be JSON-encoded for the next step.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from bridge.celery_results import (
    FAILURE,
    REVOKED,
    SUCCESS,
    RedisResultWriter,
    RpcReplyWriter,
    error_info,
    failure_meta,
)
from bridge.chords import ChordJoin, CompletedHeader, apply_chord, exception_repr
from bridge.outgoing import (
    DEFAULT_QUEUE,
    Application,
    Sender,
    UnsupportedCanvas,
    apply_group,
    clean,
    task_message,
    without_none,
)
from bridge.outgoing import group_signature as _group_of
from bridge.task import CeleryTask

__all__ = [
    "TaskPublisher",
    "apply_signature",
    "dispatch_failure",
    "dispatch_revoked",
    "dispatch_success",
]

logger = logging.getLogger("nagatha.bridge.workflows")


class TaskPublisher(Protocol):
    """Publishes one Celery task message with publisher confirms (raises BrokerUnavailable).

    ``declare_queue``: declare the queue ``routing_key`` names if the message finds none.
    """

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        properties: dict[str, Any],
        declare_queue: bool = False,
    ) -> None: ...


def dispatch_success(
    task: CeleryTask,
    result: Any,
    *,
    publisher: TaskPublisher,
    results: RedisResultWriter | None,
    redis_client: redis.Redis | None = None,
    rpc: RpcReplyWriter | None = None,
) -> list[Any]:
    """Publish callbacks and the next chain step; return the ``children`` Celery records for
    the task: one ``as_tuple()`` per applied signature (a group of callbacks is one)."""
    run = _Run(task, publisher, results, redis_client, rpc)
    children: list[Any] = []
    options = {"parent_id": task.task_id, "root_id": run.root_id, "priority": None}
    for sig in _callback_signatures(task.callbacks or []):
        children += run.apply(sig, (result,), options, what="link callback") or []
    if task.chain:
        chain_options = {"chain": task.chain[:-1], **options}
        step = run.apply(task.chain[-1], (result,), chain_options, what="chain step")
        if step is None:
            run.fail_chain(task.chain, _unsupported_info(task.chain[-1]), None, members=True)
        children += step or []
    run.chord_part(task.task_id, task, SUCCESS, result)
    return children


def fail_chain(
    task: CeleryTask,
    error: dict[str, Any],
    *,
    publisher: TaskPublisher,
    results: RedisResultWriter | None,
    redis_client: redis.Redis | None = None,
    traceback: str | None = None,
    rpc: RpcReplyWriter | None = None,
) -> None:
    """Store FAILURE for the rest of the task's chain, before its own (module doc).

    ``error`` is the exception info stored for the task (``{"exc_type", "exc_message",
    "exc_module"}``); ``traceback`` is stored with the chain steps' failures; ``rpc`` also
    sends those failures to the steps' ``reply_to`` (``rpc://`` clients). A step that is a
    chord header member is counted, which may complete its chord.
    """
    _Run(task, publisher, results, redis_client, rpc).fail_chain(task.chain, error, traceback)


def dispatch_failure(
    task: CeleryTask,
    error: dict[str, Any],
    *,
    publisher: TaskPublisher,
    results: RedisResultWriter | None,
    redis_client: redis.Redis | None = None,
    rpc: RpcReplyWriter | None = None,
) -> None:
    """Count the failed chord part, then publish errbacks (module doc); ``error`` and
    ``rpc`` as for :func:`fail_chain` (a chord body failed with ChordError is told too)."""
    run = _Run(task, publisher, results, redis_client, rpc)
    run.chord_part(task.task_id, task, FAILURE, error)
    run.errbacks(task.errbacks, task.task_id, run.root_id)


def dispatch_revoked(
    task: CeleryTask,
    reason: str,
    *,
    publisher: TaskPublisher,
    results: RedisResultWriter | None,
    redis_client: redis.Redis | None = None,
) -> None:
    """Count a revoked or expired chord header member (Celery's ``mark_as_revoked``)."""
    info = error_info("TaskRevokedError", [reason], "celery.exceptions")
    _Run(task, publisher, results, redis_client, None).chord_part(task.task_id, task, REVOKED, info)


def apply_signature(
    sig: Mapping[str, Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    sender: Sender,
) -> Application:
    """Return what ``signature(sig).apply_async(args, kwargs, **options)`` publishes.

    Raises:
        UnsupportedCanvas: a shape other than a plain task, a group of plain tasks or a
            chord of those with a plain body.
        ProtocolError: ``sig`` is not a valid serialized signature.
        TypeError: an argument that kombu's JSON cannot encode.
    """
    sig = clean(sig)
    kind = sig["subtask_type"]
    if kind is None:
        message = task_message(sig, args, kwargs, without_none(options), sender=sender)
        return Application(messages=[message])
    if kind == "group":
        return apply_group(sig, args, kwargs, dict(options or {}), sender=sender)
    if kind == "chord":
        return apply_chord(sig, args, kwargs, dict(options or {}), sender=sender)
    raise UnsupportedCanvas(f"a {kind!r} signature ({sig['task']}) cannot be applied here")


@dataclass(frozen=True)
class _Member:
    """What the chord join needs of a header member (a task, or a failed chain element)."""

    group_id: str | None
    group_index: int | None
    chord: Mapping[str, Any] | None


class _Run:
    """The services and identity of one dispatch, and the steps built on them.

    ``sender`` and ``join`` are built on first use: most tasks have no workflow at all.
    """

    def __init__(
        self,
        task: CeleryTask,
        publisher: TaskPublisher,
        results: RedisResultWriter | None,
        redis_client: redis.Redis | None,
        rpc: RpcReplyWriter | None,
    ) -> None:
        self.task = task
        self.root_id: str = task.root_id or task.task_id
        self.publisher = publisher
        self.results = results
        self.rpc = rpc
        self._client = (
            redis_client if redis_client is not None else getattr(results, "client", None)
        )

    @functools.cached_property
    def sender(self) -> Sender:
        return Sender(
            task_id=self.task.task_id,
            root_id=self.root_id,
            default_queue=self.task.queue or DEFAULT_QUEUE,
        )

    @functools.cached_property
    def join(self) -> ChordJoin | None:
        if self._client is None:
            return None
        results = self.results
        return ChordJoin(
            self._client,
            key_prefix=results.key_prefix if results is not None else "",
            expires_s=results.expires_s if results is not None else 86400,
        )

    def apply(
        self, sig: Mapping[str, Any], args: Sequence[Any], options: dict[str, Any], *, what: str
    ) -> list[Any] | None:
        """Apply ``sig`` and publish it; its ``children`` entries (see
        :attr:`~bridge.outgoing.Application.children`), or None if it is unsupported."""
        try:
            application = apply_signature(sig, args, None, options, sender=self.sender)
        except UnsupportedCanvas as exc:
            logger.error("task %s: %s %s not sent: %s", self.task.task_id, what, sig["task"], exc)
            return None
        return self.publish(application)

    def publish(self, application: Application) -> list[Any]:
        """Record the chord sizes, then publish every message in order."""
        for group_id, size in application.chord_sizes:
            if self.join is None:
                logger.error(
                    "chord %s needs the Redis result backend; it cannot complete", group_id
                )
            else:
                self.join.set_size(group_id, size)
        for message in application.messages:
            self.publisher.publish(
                exchange=message.exchange,
                routing_key=message.routing_key,
                body=message.body,
                headers=message.headers,
                properties=message.properties,
                declare_queue=message.exchange == "",
            )
        return application.children

    def errbacks(
        self, errbacks: Sequence[Mapping[str, Any]] | None, task_id: str, root_id: str
    ) -> None:
        """Publish old-style errbacks as one group, like ``Backend._call_task_errbacks``."""
        if errbacks:
            options = {"parent_id": task_id, "root_id": root_id}
            self.apply(_group_of(errbacks), (task_id,), options, what="errback")

    def store_failure(
        self, options: Mapping[str, Any], info: dict[str, Any], traceback: str | None
    ) -> None:
        """Store FAILURE for a frozen signature's id (and tell its rpc client)."""
        meta = failure_meta(
            options["task_id"],
            info,
            traceback=traceback,
            group_id=options.get("group_id"),
            parent_id=options.get("parent_id"),
        )
        if self.results is not None:
            self.results.write(meta)
        if self.rpc is not None and options.get("reply_to"):
            self.rpc.write(meta, reply_to=options["reply_to"])

    def fail_chain(
        self,
        chain: Sequence[Mapping[str, Any]] | None,
        info: dict[str, Any],
        traceback: str | None,
        *,
        members: bool = False,
    ) -> None:
        """``Backend._fail_chain``: every remaining step with an id fails, chord bodies too.

        With ``members`` (a step the hub cannot run, where a Celery worker would have), the
        ids inside a group or chord step fail too: the client holding them would otherwise
        wait forever because of the hub, not because of its canvas.
        """
        pending = deque(chain or ())
        while pending:
            element = pending.popleft()
            options = element.get("options") or {}
            if options.get("task_id"):
                self.store_failure(options, info, traceback)
                if "chord" in options:
                    member = _Member(
                        options.get("group_id"), options.get("group_index"), options["chord"]
                    )
                    self.chord_part(options["task_id"], member, FAILURE, info)
            for nested in _nested_options(element) if members else ():
                self.store_failure(nested, info, traceback)
            if element.get("subtask_type") == "chord":
                body = (element.get("kwargs") or {}).get("body")
                if isinstance(body, Mapping):
                    pending.append(body)

    def chord_part(
        self, task_id: str, member: CeleryTask | _Member, state: str, value: Any
    ) -> None:
        """Count a chord header member; the one completing the header dispatches the body."""
        if member.chord is None or not member.group_id:
            return
        if self.join is None:
            logger.error(
                "chord %s needs the Redis result backend; it cannot complete", member.group_id
            )
            return
        header = self.join.add_part(
            group_id=member.group_id,
            task_id=task_id,
            group_index=member.group_index,
            state=state,
            result=value,
        )
        if header is not None:
            self._dispatch_body(member.chord, header)

    def _dispatch_body(self, body: Mapping[str, Any], header: CompletedHeader) -> None:
        assert self.join is not None
        if header.failure is not None:
            failed_id, info = header.failure
            try:
                self.chord_error(body, f"Dependency {failed_id} raised {exception_repr(info)}")
            finally:
                self.join.abandon(header)
            return
        try:
            application = apply_signature(body, (header.results,), sender=self.sender)
        except UnsupportedCanvas as exc:
            self.join.finish(header)
            self.chord_error(body, f"Callback error: {exc!r}")
            return
        try:
            self.publish(application)
        except BaseException:
            self.join.release(header)  # a retry of this member may claim and publish it
            raise
        self.join.finish(header)

    def chord_error(self, body: Mapping[str, Any], message: str) -> None:
        """``Backend.chord_error_from_stack``: errbacks, FAILURE ChordError, fail the chain."""
        logger.error("chord body %s failed: %s", body.get("task"), message)
        options = dict(body.get("options") or {})
        body_id = options.get("task_id")
        info = error_info("ChordError", [message], "celery.exceptions")
        if not body_id:
            return
        errbacks = options.get("link_error")
        self.errbacks([errbacks] if isinstance(errbacks, Mapping) else errbacks, body_id, body_id)
        self.store_failure({"task_id": body_id}, info, None)
        self.fail_chain(options.get("chain"), info, None)


def _callback_signatures(callbacks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Celery sends several callbacks as their groups plus one group of the rest."""
    if len(callbacks) <= 1:
        return list(callbacks)
    groups = [sig for sig in callbacks if sig.get("subtask_type") == "group"]
    rest = [sig for sig in callbacks if sig.get("subtask_type") != "group"]
    return groups + ([_group_of(rest)] if rest else [])


def _unsupported_info(sig: Mapping[str, Any]) -> dict[str, Any]:
    kind = sig.get("subtask_type") or "task"
    text = f"the nagatha Celery bridge cannot run this {kind} signature ({sig.get('task')})"
    return error_info("NotImplementedError", [text], "builtins")


def _nested_options(element: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The options of each signature with an id inside ``element`` (group members, chain
    steps, a chord's header, and the body of a chord nested in them), at any depth.
    ``element``'s own chord body is left out: ``fail_chain`` queues it as a step."""
    kwargs = element.get("kwargs")
    if not isinstance(kwargs, Mapping):
        return
    members: list[Any] = []
    for key in ("tasks", "header"):  # a header is a group signature or a list of members
        found = kwargs.get(key)
        if isinstance(found, Mapping):
            members.append(found)
        elif isinstance(found, list | tuple):
            members += found
    for member in members:
        if not isinstance(member, Mapping):
            continue
        member_kwargs = member.get("kwargs")
        body = member_kwargs.get("body") if isinstance(member_kwargs, Mapping) else None
        for nested in (member, body):
            if not isinstance(nested, Mapping):
                continue
            options = nested.get("options")
            if isinstance(options, Mapping) and options.get("task_id"):
                yield options
            yield from _nested_options(nested)
