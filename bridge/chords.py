"""Chords as a Celery worker runs them: applying one, and the Redis native join.

:func:`apply_chord` is ``chord.apply_async`` for a chord the bridge itself applies (the next
step of a chain such as ``chain(a, group(b, c), d)``): the body is frozen with the options
the chord was applied with, and the header is applied as a group whose members carry the
body and whose size is recorded before anything is published. Headers must be groups (or
lists) of plain signatures and bodies plain signatures; anything else raises
:class:`~bridge.outgoing.UnsupportedCanvas`.

The join uses the keys Celery 5.3-5.7 clients and workers use:

Keys (``<p>`` = the result key prefix + ``celery-taskset-meta-<group id>``):

* ``<p>.s`` - header size, written by the **client** when it applies the chord (5.1+), or
  by :meth:`ChordJoin.set_size` when the bridge applies one (a chord inside a chain).
* ``<p>.j`` - sorted set of the finished header members, scored by ``group_index``; each
  entry is the JSON ``[1, task_id, state, result]`` (a failure's result is its exception
  info), exactly as Celery's Redis backend writes it.
* ``<p>.t`` - members added at run time (Celery's ``add_to_chord``); read, never written.
* ``<p>.d`` - set of ``"<task_id>:<group_index>"`` already counted, so a redelivered header
  task counts once (Celery 5.7).
* ``<p>.c`` - claim of the body dispatch (``SET NX``); ``"done"`` afterwards, so a late
  duplicate cannot fire the body again (Celery 5.7; 5.7 clients delete it on apply).

:meth:`ChordJoin.add_part` records one member atomically (one Lua script) and returns the
complete header to exactly one caller; that caller publishes the body and then calls
:meth:`ChordJoin.finish` (or :meth:`ChordJoin.release` when the publish failed, so that a
retry of the member can claim it again, or :meth:`ChordJoin.abandon` after a chord error).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import redis
import redis.exceptions

from bridge.celery_results import DEFAULT_EXPIRES_S, FAILURE, REVOKED
from bridge.outgoing import (
    Application,
    Sender,
    UnsupportedCanvas,
    apply_group,
    clone,
    freeze,
    group_signature,
    maybe_list,
    task_message,
)
from bridge.serialization import encode_json
from nagatha.errors import StoreUnavailable

__all__ = ["ChordJoin", "CompletedHeader", "apply_chord", "exception_repr"]

Signature = dict[str, Any]

_GROUP_PREFIX: Final = "celery-taskset-meta-"
#: How long a claim protects the body dispatch (Celery: 2 x the 5 s join timeout).
CLAIM_EXPIRES_S: Final = 10
#: How long the ``done`` marker refuses late duplicates (Celery: 300 s).
DONE_EXPIRES_S: Final = 300

# KEYS: .j .t .s .d <group> .c   ARGV: member, entry, score, expires, group_expires,
# claim_expires, token. Returns {ready, claimed}, or {-1, 0} once the chord is done.
_PART_RETURN: Final = """
if redis.call('GET', KEYS[6]) == 'done' then
  return {-1, 0}
end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
local ready = redis.call('ZCARD', KEYS[1])
local expires, group_expires = tonumber(ARGV[4]), tonumber(ARGV[5])
if expires > 0 then
  for i = 1, 4 do
    redis.call('EXPIRE', KEYS[i], expires)
  end
  if group_expires > 0 then
    redis.call('EXPIRE', KEYS[5], group_expires)
  end
end
local diff = tonumber(redis.call('GET', KEYS[2]) or '0')
local size = redis.call('GET', KEYS[3])
local claimed = 0
if size and ready == tonumber(size) + diff then
  if redis.call('SET', KEYS[6], ARGV[7], 'NX', 'EX', tonumber(ARGV[6])) then
    claimed = 1
  end
end
return {ready, claimed}
"""

# KEYS: .c .j .t .s .d   ARGV: token, done_expires. Cleans up only under our claim.
_FINISH: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

# KEYS: .c   ARGV: token. Gives the claim up (the body was not published).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class CompletedHeader:
    """A chord header whose members all finished; this caller owns the body dispatch.

    ``results`` are the members' results in ``group_index`` order, as JSON values (kombu
    envelopes kept as they were stored). ``failure`` is ``(task_id, exception info)`` of the
    first member, in that order, that ended in FAILURE or REVOKED; the body must then fail
    with a ``ChordError`` instead of running.
    """

    group_id: str
    claim: str
    results: list[Any]
    failure: tuple[str, dict[str, Any]] | None


class ChordJoin:
    """Count chord header members in Redis and hand the complete header out exactly once.

    ``key_prefix`` is the clients' ``global_keyprefix`` (with its separator, as
    :attr:`bridge.celery_results.RedisResultWriter.key_prefix` holds it); ``expires_s`` is
    their ``result_chord_expires`` (default: ``result_expires``, one day; 0: no expiry).
    """

    def __init__(
        self, client: redis.Redis, *, key_prefix: str = "", expires_s: int = DEFAULT_EXPIRES_S
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.expires_s = int(expires_s or 0)
        self._part_return = client.register_script(_PART_RETURN)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def key_for(self, group_id: str, suffix: str = "") -> str:
        """Return ``<prefix>celery-taskset-meta-<group_id><suffix>``."""
        return f"{self.key_prefix}{_GROUP_PREFIX}{group_id}{suffix}"

    def set_size(self, group_id: str, size: int) -> None:
        """Record the header size, as a client does before publishing the header's last task.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        with self._errors("record the chord size"):
            pipe = self.client.pipeline()
            pipe.delete(self.key_for(group_id, ".c"))
            pipe.set(self.key_for(group_id, ".s"), size, ex=self.expires_s or None)
            pipe.execute()

    def add_part(
        self, *, group_id: str, task_id: str, group_index: int | None, state: str, result: Any
    ) -> CompletedHeader | None:
        """Record one member's final state; return the header to the one caller completing it.

        ``result`` is the return value (SUCCESS) or the exception info (FAILURE, REVOKED).
        A member counted before (same id and index) is not counted again.

        Raises:
            StoreUnavailable: Redis did not answer.
            TypeError: ``result`` cannot be JSON-encoded.
        """
        score = "+inf" if group_index is None else str(group_index)
        entry = encode_json([1, task_id, state, result])
        claim = uuid.uuid4().hex
        keys = [self.key_for(group_id, s) for s in (".j", ".t", ".s", ".d", "", ".c")]
        group_expires = max(self.expires_s, DEFAULT_EXPIRES_S) if self.expires_s else 0
        with self._errors("record the chord member"):
            ready, claimed = self._part_return(
                keys=keys,
                args=[
                    f"{task_id}:{score}",
                    entry,
                    score,
                    self.expires_s,
                    group_expires,
                    CLAIM_EXPIRES_S,
                    claim,
                ],
            )
            if ready == -1 or not claimed:
                return None
            entries = self.client.zrange(self.key_for(group_id, ".j"), 0, -1)
        return _completed(group_id, claim, entries)  # type: ignore[arg-type]  # bytes client

    def finish(self, header: CompletedHeader) -> None:
        """The body was published: delete the join keys and mark the chord done."""
        keys = [self.key_for(header.group_id, s) for s in (".c", ".j", ".t", ".s", ".d")]
        with self._errors("clean up the chord"):
            self._finish(keys=keys, args=[header.claim, DONE_EXPIRES_S])

    def release(self, header: CompletedHeader) -> None:
        """The body could not be published: give the claim up so a retry can take it."""
        with self._errors("release the chord claim"):
            self._release(keys=[self.key_for(header.group_id, ".c")], args=[header.claim])

    def abandon(self, header: CompletedHeader) -> None:
        """The chord failed: drop its size so a late copy of a member cannot fail it again.

        The recorded results stay until they expire, as with Celery.
        """
        with self._errors("drop the chord size"):
            self.client.delete(self.key_for(header.group_id, ".s"))

    @staticmethod
    @contextmanager
    def _errors(action: str) -> Iterator[None]:
        """Turn Redis connection failures into StoreUnavailable."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis did not answer ({action}): {exc}") from exc


def _completed(group_id: str, claim: str, entries: list[bytes]) -> CompletedHeader:
    """Decode the ``.j`` entries (already in group_index order) into a completed header."""
    results: list[Any] = []
    failure: tuple[str, dict[str, Any]] | None = None
    for raw in entries:
        _, task_id, state, value = json.loads(raw)
        if state in (FAILURE, REVOKED) and failure is None:
            failure = (task_id, value if isinstance(value, dict) else {"exc_type": str(value)})
        results.append(value)
    return CompletedHeader(group_id, claim, results, failure)


def exception_repr(info: dict[str, Any]) -> str:
    """Return ``repr()`` of the exception a Celery client rebuilds from ``info``.

    Used for Celery's chord error text ``"Dependency <id> raised ValueError('x')"``.
    """
    message = info.get("exc_message", [])
    args = message if isinstance(message, list) else [message]
    return f"{info.get('exc_type', 'Exception')}({', '.join(repr(arg) for arg in args)})"


# --- applying a chord ------------------------------------------------------------------------


def apply_chord(
    sig: Signature,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    options: dict[str, Any],
    *,
    sender: Sender,
) -> Application:
    """``_chord.apply_async`` + ``run``: freeze the body, then apply the header as a group.

    The body keeps the options the chord was applied with (``chain``, ``root_id``...) except
    ``parent_id``; the header tasks carry it as their ``chord`` and record the chord size.
    """
    own = sig["options"]
    parts = sig["kwargs"]
    if not isinstance(parts.get("body"), Mapping):
        raise UnsupportedCanvas("a chord without a body signature is not supported")
    if args and not sig["immutable"]:
        args = tuple(args) + tuple(sig["args"])
    else:
        args = sig["args"]
    chord_kwargs = dict(parts.get("kwargs") or {}, **(kwargs or {}))
    delay = {k: options.pop(k) for k in ("countdown", "eta") if options.get(k) is not None}
    links = {k: options.pop(k) for k in ("link", "link_error") if k in options}
    body = clone(parts["body"], {k: v for k, v in options.items() if k != "parent_id"})
    kind = body["subtask_type"]
    if kind == "group" and (links or options.get("chain")):
        raise UnsupportedCanvas("a chord with a group body cannot take links or continue a chain")
    if kind not in (None, "group"):
        raise UnsupportedCanvas(f"a chord body of type {kind!r} is not supported")
    header = _header_group(parts.get("header"), own)
    run = {**own, **options, **links}
    task_id = run.pop("task_id", None)
    for key in ("countdown", "eta", "interval", "max_retries", "eager", "app"):
        run.pop(key, None)
    group_id = header["options"].get("task_id") or str(uuid.uuid4())
    root_id = body["options"].get("root_id")
    for key in ("countdown", "eta"):
        if key not in delay and own.get(key) is not None:
            delay[key] = own[key]
    if run:
        _add_body_links(body, run)
        body["options"].update({k: v for k, v in run.items() if k != "parent_id"})
    if kind == "group":  # group.freeze: its own id (not task_id), members get the header's
        _freeze_group(body, group_id=group_id, root_id=root_id, sender=sender)
    else:
        freeze(body, sender=sender, task_id=task_id, group_id=group_id, root_id=root_id)
    for key in ("chain", "chord", "task_id"):
        run.pop(key, None)
    header["options"]["task_id"] = group_id
    _freeze_group(header, group_id=group_id, chord=body, root_id=root_id, sender=sender)
    if not header["kwargs"]["tasks"]:  # Celery: body.delay([])
        if kind == "group":
            return apply_group(body, ([],), None, {}, sender=sender)
        return Application(messages=[task_message(body, ([],), None, {}, sender=sender)])
    return apply_group(
        header, args, chord_kwargs, {**run, **delay, "task_id": group_id}, sender=sender
    )


def _header_group(header: Any, chord_options: Mapping[str, Any]) -> Signature:
    """The chord header as a group signature (a plain list becomes one, as Celery does)."""
    if isinstance(header, Mapping) and header.get("subtask_type") == "group":
        return clone(header)
    if isinstance(header, list | tuple):
        group = group_signature(header)
        group["options"]["task_id"] = chord_options.get("task_id") or str(uuid.uuid4())
        return group
    raise UnsupportedCanvas("a chord header must be a group or a list of signatures")


def _add_body_links(body: Signature, options: dict[str, Any]) -> None:
    """``_chord._add_body_callbacks`` for a plain body: move link/link_error onto it."""
    for key in ("link", "link_error"):
        extra = maybe_list(options.pop(key, None)) or []
        if extra:
            body["options"][key] = (maybe_list(body["options"].get(key)) or []) + extra


def _freeze_group(
    group: Signature,
    *,
    group_id: str,
    root_id: str | None,
    sender: Sender,
    chord: Signature | None = None,
) -> None:
    """``group._freeze_group_tasks``: the group's id (kept if it has one), then its members
    (nested groups flattened) frozen with ``group_id`` and, for a header, the ``chord`` body."""
    opts = group["options"]
    if not opts.get("task_id"):
        opts["task_id"] = str(uuid.uuid4())
    opts["group_id"] = group_id
    if chord is not None:
        opts["chord"] = chord
    root_id = opts.setdefault("root_id", root_id)
    parent_id = opts.setdefault("parent_id", None)
    members: list[Signature] = []
    stack = [clone(task) for task in group["kwargs"].get("tasks") or ()]
    while stack:
        member = stack.pop(0)
        if member["subtask_type"] == "group":
            stack[:0] = [clone(task) for task in member["kwargs"].get("tasks") or ()]
            continue
        if member["subtask_type"] is not None:
            kind = member["subtask_type"]
            raise UnsupportedCanvas(f"a {kind!r} inside a chord's group is not supported")
        freeze(
            member,
            sender=sender,
            group_id=group_id,
            chord=chord,
            root_id=root_id,
            parent_id=parent_id,
            group_index=len(members),
        )
        members.append(member)
    group["kwargs"]["tasks"] = members
