"""The task registry: modules register tasks here; the CLI, API and bridge run them by name.

``register_task(module, name, func, **options)`` declares a Dramatiq actor named
``module.name``. Task options, lowest priority first: the hub's worker defaults, the options
the module passes in code, the module's ``config.yaml`` (``tasks: {name: {...}}``), the hub
config (``modules.settings.<module>.tasks.<name>``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
import sys
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.middleware import TimeLimitExceeded
from pydantic_core import to_jsonable_python

from nagatha import jsontext
from nagatha.broker import broker_address
from nagatha.broker_errors import CONNECTION_ERRORS, broker_error_reason
from nagatha.config import FrameworkConfig
from nagatha.daemon import start_daemon
from nagatha.errors import (
    BrokerUnavailable,
    InvalidArguments,
    ModuleLoadError,
    StoreUnavailable,
    TaskNotCancellable,
    TaskNotFound,
    TaskNotRerunnable,
    TaskWaitTimeout,
    UnknownTask,
)
from nagatha.loader import describe, import_module, iter_module_dirs, read_module_config
from nagatha.stores import StatusStore
from nagatha.types import (
    CANCELLED_ERROR,
    MAX_HOLD_MS,
    ModuleMetadata,
    TaskInfo,
    TaskParameter,
    TaskRecord,
    TaskStatus,
    WorkerInfo,
    utcnow,
)

logger = logging.getLogger("nagatha.registry")

TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: Seconds each module's ``heartbeat()`` gets in ``nagatha modules``.
HEARTBEAT_TIMEOUT = 5.0
#: Seconds a module may take to import and register its tasks before a warning names it.
SLOW_LOAD_S = 10.0


def late_heartbeat(timeout: float) -> dict[str, Any]:
    """The entry of a ``heartbeat()`` that did not answer within ``timeout`` seconds."""
    return {"status": "timeout", "detail": f"no answer within {timeout:g}s"}


#: Queue names: Dramatiq's pattern, never a ``.DQ``/``.XQ`` suffix, never a Celery queue.
QUEUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,127}")
TASK_OPTIONS = frozenset(
    {
        "queue",
        "max_retries",
        "min_backoff",
        "max_backoff",
        "time_limit",
        "priority",
        "max_age",
        "throws",
        "retry_when",
    }
)
DEFAULT_QUEUE = "default"
#: Options that are whole numbers (counts, milliseconds), with their least valid value.
INTEGER_OPTIONS = {
    "max_retries": 0,
    "min_backoff": 0,
    "max_backoff": 0,
    "time_limit": 1,
    "max_age": 1,
    "priority": None,
}


def _check_options(task: str, opts: dict[str, Any]) -> None:
    """Refuse option values Dramatiq would only trip over while running the task.

    Raises ``ModuleLoadError`` naming the option: a ``max_retries: "2"`` from YAML would
    otherwise make ``Retries`` raise on the task's first failure, after the message is gone.
    """
    for name, least in INTEGER_OPTIONS.items():
        if name not in opts:
            continue
        value = opts[name]
        if name == "time_limit" and value == math.inf:
            continue  # Dramatiq's documented "no limit"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModuleLoadError(
                f"task {task!r}: option {name} must be a whole number, got {value!r}"
            )
        if least is not None and value < least:
            raise ModuleLoadError(f"task {task!r}: option {name} must be >= {least}, got {value}")
    if opts.get("max_backoff", 0) > MAX_HOLD_MS:
        # A worker holds a retry's message unacked for its backoff (see MAX_HOLD_MS).
        raise ModuleLoadError(
            f"task {task!r}: option max_backoff must be <= {MAX_HOLD_MS} ms (RabbitMQ's "
            f"consumer_timeout), got {opts['max_backoff']}"
        )
    throws = opts.get("throws")
    classes = throws if isinstance(throws, tuple) else (throws,)
    if throws is not None and not all(
        isinstance(c, type) and issubclass(c, BaseException) for c in classes
    ):
        raise ModuleLoadError(
            f"task {task!r}: option throws must be an exception class or a tuple of them"
        )
    if "retry_when" in opts and not callable(opts["retry_when"]):
        raise ModuleLoadError(f"task {task!r}: option retry_when must be callable")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its function, signature and Dramatiq actor."""

    name: str
    module: str
    func: Callable[..., Any]
    signature: inspect.Signature
    queue: str
    actor: dramatiq.Actor[Any, Any]

    @property
    def description(self) -> str:
        """First line of the function's docstring."""
        doc = (self.func.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def info(self) -> TaskInfo:
        """The task as listed by ``/tasks``."""
        params = []
        for param in self.signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            required = param.default is param.empty
            annotation = None
            if param.annotation is not param.empty:
                ann = param.annotation
                annotation = ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann))
            params.append(
                TaskParameter(
                    name=param.name,
                    required=required,
                    default=None if required else _jsonable(param.default),
                    annotation=annotation,
                )
            )
        return TaskInfo(
            name=self.name,
            module=self.module,
            description=self.description,
            queue=self.queue,
            parameters=params,
        )

    def pending(
        self,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        created_at: datetime,
        options: dict[str, Any] | None = None,
    ) -> tuple[TaskRecord, dramatiq.Message[Any]]:
        """The ``pending`` record of a new task and its Dramatiq message (arguments bound)."""
        record = TaskRecord(
            task_id=task_id,
            task_name=self.name,
            status=TaskStatus.PENDING,
            args=args,
            kwargs=kwargs,
            created_at=created_at,
        )
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.queue,
            actor_name=self.name,
            args=tuple(args),
            kwargs=kwargs,
            options=options or {},
            message_id=task_id,
            message_timestamp=int(created_at.timestamp() * 1000),
        )
        return record, message

    def bind(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`InvalidArguments` unless ``args``/``kwargs`` fit the signature."""
        params = self.signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        unknown = [] if takes_any else [k for k in kwargs if k not in named]
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            positional = [
                n
                for n, p in params.items()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ][: len(args)]
            missing = [
                n
                for n, p in params.items()
                if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and n not in kwargs
                and n not in positional
            ]
            detail = None if (unknown or missing) else str(exc)
            raise InvalidArguments(
                self.name, unknown=unknown, missing=missing, detail=detail
            ) from None
        if unknown:
            raise InvalidArguments(self.name, unknown=unknown)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


class TaskRegistry:
    """Modules and their tasks, bound to a broker and a status store."""

    def __init__(
        self, broker: dramatiq.Broker, store: StatusStore, config: FrameworkConfig
    ) -> None:
        self.broker = broker
        self.store = store
        self.config = config
        self._tasks: dict[str, TaskSpec] = {}
        store.count_names(self._tasks.keys())  # metrics: other names count as unregistered
        self._modules: dict[str, ModuleMetadata] = {}
        self._module_objects: dict[str, types.ModuleType] = {}
        self._module_configs: dict[str, dict[str, Any]] = {}
        self._loading: str | None = None

    # -- modules -------------------------------------------------------------------------

    def discover_modules(self, paths: list[str] | None = None) -> list[ModuleMetadata]:
        """Load every module folder under ``paths`` (default: ``modules.paths``).

        A module that fails is logged and listed as ``failed``; the others still load.
        """
        for name, folder in iter_module_dirs(
            paths if paths is not None else self.config.modules.paths
        ):
            self.load_module(str(folder), name)
        return self.list_modules()

    def load_module(self, path: str, name: str) -> ModuleMetadata:
        """Import the module folder ``path`` as ``name`` and let it register its tasks."""
        folder = Path(path)
        meta = ModuleMetadata(name=name, path=str(folder), status="loaded")
        if name in self._modules:
            meta.status, meta.error = "failed", f"a module named {name!r} is already loaded"
            logger.error("module %s skipped: %s", name, meta.error)
            return meta
        try:
            own_config = read_module_config(folder)
            settings = self.config.modules.settings.get(name, {})
            merged = {**own_config, **settings}
            merged["tasks"] = _merge_task_options(own_config.get("tasks"), settings.get("tasks"))
            self._module_configs[name] = merged
            enabled = merged.get("enabled", True)
            if not isinstance(enabled, bool):
                raise ModuleLoadError(
                    f"its setting 'enabled' must be true or false, not {enabled!r:.60}"
                )
            if name in self.config.modules.disabled or not enabled:
                meta.status = "disabled"
                self._modules[name] = meta
                return meta
            with _loading(name):
                module = import_module(name, folder)
                meta.version, meta.description = describe(module)
                register = getattr(module, "register_tasks", None)
                if not callable(register):
                    raise ModuleLoadError("it has no register_tasks(registry) function")
                self._loading = name
                try:
                    register(self)
                except ModuleLoadError:
                    raise
                except (Exception, SystemExit) as exc:
                    raise ModuleLoadError(
                        f"register_tasks raised {type(exc).__name__}: {exc}"
                    ) from exc
                finally:
                    self._loading = None
        except ModuleLoadError as exc:
            self._forget_tasks(name)
            meta.status, meta.error, meta.tasks = "failed", str(exc), []
            logger.error("module %s failed to load: %s", name, exc)
        else:
            meta.tasks = sorted(t.name for t in self._tasks.values() if t.module == name)
            self._module_objects[name] = module
            unused = sorted(set(merged["tasks"]) - {task.split(".", 1)[1] for task in meta.tasks})
            if unused:
                logger.warning(
                    "module %s: settings for tasks it does not register: %s (a typo?); it "
                    "registers %s",
                    name,
                    ", ".join(unused),
                    ", ".join(meta.tasks) or "none",
                )
            logger.debug("module %s %s loaded: %s", name, meta.version or "", ", ".join(meta.tasks))
        self._modules[name] = meta
        return meta

    def module_config(self, module: str) -> dict[str, Any]:
        """Settings of ``module``: its ``config.yaml`` overlaid with the hub config's."""
        return dict(self._module_configs.get(module, {}))

    def list_modules(self, *, heartbeats: bool = False) -> list[ModuleMetadata]:
        """Every discovered module, loaded or not, by name (with ``heartbeat()`` results, each
        given :data:`HEARTBEAT_TIMEOUT` seconds)."""
        beats = self.heartbeats(HEARTBEAT_TIMEOUT) if heartbeats else {}
        return [
            self._modules[name].model_copy(update={"heartbeat": beats.get(name)})
            for name in sorted(self._modules)
        ]

    def heartbeat_modules(self) -> list[str]:
        """The loaded modules that have a ``heartbeat()``, by name."""
        return [
            name
            for name, module in sorted(self._module_objects.items())
            if callable(getattr(module, "heartbeat", None))
        ]

    def heartbeat(self, name: str) -> dict[str, Any]:
        """Call module ``name``'s ``heartbeat()``; an exception becomes an ``error`` entry.

        So does an answer the API could not encode (an arbitrary object, NaN); what pydantic
        encodes (datetimes, UUIDs, Decimals) is kept, as text.
        """
        try:
            result = self._module_objects[name].heartbeat()
            answer = result if isinstance(result, dict) else {"status": "ok", "detail": result}
            # As the API would answer it: datetimes and UUIDs as text, NaN refused.
            answer = to_jsonable_python(answer)
            jsontext.check(answer)
            return answer  # type: ignore[no-any-return]
        except (Exception, SystemExit) as exc:
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}

    def heartbeats(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Every :meth:`heartbeat`, run side by side; one not back within ``timeout`` seconds
        is ``{"status": "timeout"}`` (its thread is left to finish on its own)."""
        beats = {
            name: start_daemon(partial(self.heartbeat, name), f"nagatha-heartbeat-{name}")
            for name in self.heartbeat_modules()
        }
        wait(beats.values(), timeout=timeout)
        return {
            name: beat.result() if beat.done() and not beat.exception() else late_heartbeat(timeout)
            for name, beat in beats.items()
        }

    # -- tasks ---------------------------------------------------------------------------

    def register_task(
        self, module: str, name: str, func: Callable[..., Any], **options: Any
    ) -> dramatiq.Actor[Any, Any]:
        """Declare ``func`` as the Dramatiq actor ``module.name``.

        ``options``: queue, max_retries, min_backoff, max_backoff (ms), time_limit (ms),
        priority, max_age (ms), throws, retry_when. Config overrides them (see module doc).
        """
        if self._loading is not None and module != self._loading:
            raise ModuleLoadError(f"module {self._loading!r} registered a task under {module!r}")
        for part in (module, name):
            if not TASK_NAME.fullmatch(part):
                raise ModuleLoadError(f"invalid task name part {part!r}: use letters, digits, _")
        full = f"{module}.{name}"
        if full in self._tasks:
            raise ModuleLoadError(f"task {full!r} is registered twice")
        if not callable(func):
            raise ModuleLoadError(f"task {full!r}: {func!r} is not callable")
        configured = self._module_configs.get(module, {})
        overrides = configured.get("tasks", {}).get(name, {})
        opts = {**options, **overrides}
        unknown = set(opts) - TASK_OPTIONS
        if unknown:
            raise ModuleLoadError(
                f"task {full!r}: unknown options {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(sorted(TASK_OPTIONS))}"
            )
        queue = str(opts.pop("queue", configured.get("queue", DEFAULT_QUEUE)))
        if (
            not QUEUE_NAME.fullmatch(queue)
            or queue.endswith((".DQ", ".XQ"))
            or queue in self.config.bridge.queues
            or queue == self.config.bridge.dead_letter_queue
        ):
            raise ModuleLoadError(f"task {full!r}: invalid queue name {queue!r}")
        _check_options(full, opts)
        # A time limit is final: retrying a task that ran out of time would only run out again.
        given = opts.get("throws") or ()
        opts["throws"] = (TimeLimitExceeded, *(given if isinstance(given, tuple) else (given,)))
        priority = opts.pop("priority", 0)
        try:
            actor: dramatiq.Actor[Any, Any] = dramatiq.actor(  # type: ignore[call-overload]
                func,
                actor_name=full,
                queue_name=queue,
                priority=priority,
                broker=self.broker,
                **opts,
            )
        except ValueError as exc:
            raise ModuleLoadError(f"task {full!r}: {exc}") from None
        self._tasks[full] = TaskSpec(
            name=full,
            module=module,
            func=func,
            signature=inspect.signature(func),
            queue=queue,
            actor=actor,
        )
        return actor

    def _forget_tasks(self, module: str) -> None:
        for full in [n for n, t in self._tasks.items() if t.module == module]:
            del self._tasks[full]
            self.broker.actors.pop(full, None)

    def get_task(self, task_name: str, *, hint: str | None = None) -> TaskSpec:
        """Return the task registered as ``task_name`` or raise :class:`UnknownTask` (with
        ``hint`` as what to do, unless its module failed to load)."""
        try:
            return self._tasks[task_name]
        except (KeyError, TypeError):
            module = self._modules.get(str(task_name).split(".", 1)[0])
            error = module.error if module is not None and module.status == "failed" else None
            raise UnknownTask(str(task_name)[:200], module_error=error, hint=hint) from None

    def list_tasks(self) -> list[TaskInfo]:
        """Every registered task, by name."""
        return [self._tasks[name].info() for name in sorted(self._tasks)]

    def submit(
        self,
        task_name: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        delay_ms: int | None = None,
        task_id: str | None = None,
    ) -> TaskRecord:
        """Check the arguments, record ``pending``, enqueue; return the pending record.

        The record is written before the message is published, so an id handed out is always
        found. If RabbitMQ does not confirm the message, the record is removed and
        :class:`BrokerUnavailable` is raised: the task was not accepted, and its id is not
        handed out. (A message whose confirm was lost with its connection may still be in
        the queue; it then runs once, and its record is made again from the message.)
        """
        spec = self.get_task(task_name)
        args, kwargs = list(args or []), dict(kwargs or {})
        spec.bind(args, kwargs)
        record, message = spec.pending(task_id or str(uuid.uuid4()), args, kwargs, utcnow())
        self.store.create(record)
        try:
            self.broker.enqueue(message, delay=delay_ms)
        except CONNECTION_ERRORS as exc:
            try:
                self.store.delete(record.task_id)
            except StoreUnavailable:
                logger.error(
                    "task %s: pending record left behind after a failed enqueue", record.task_id
                )
            raise BrokerUnavailable(
                f"broker (RabbitMQ at {broker_address(self.config.broker)}) unavailable, "
                f"the task was not accepted: {broker_error_reason(exc)}"
            ) from None
        logger.info("task %s %s enqueued", record.task_id, spec.name)
        return record

    def run_task(self, task_name: str, /, **kwargs: Any) -> str:
        """Enqueue ``task_name`` with ``kwargs``; return its task id (see :meth:`submit`)."""
        return self.submit(task_name, kwargs=kwargs).task_id

    def get_task_status(self, task_id: str) -> TaskRecord:
        """Return the status record of ``task_id`` or raise :class:`TaskNotFound`."""
        record = self.store.get(task_id)
        if record is None:
            raise TaskNotFound(task_id)
        return record

    def recent_failures(self, limit: int) -> list[TaskRecord]:
        """The newest failed tasks' records, newest first (see
        :meth:`StatusStore.recent_failures`)."""
        return self.store.recent_failures(limit)

    def rerun(self, task_id: str) -> TaskRecord:
        """Run the task of ``task_id``'s record again, with the arguments it holds, as a new
        task with the task's own settings; return the new task's pending record (see
        :meth:`submit`). The old record stays as it is (a success, or a failure).

        Raises :class:`TaskNotFound`; :class:`TaskNotRerunnable` for a task that has not
        ended, or whose Celery message the bridge refused unread (its record holds no
        arguments: the message waits in the bridge's dead-letter queue); :class:`UnknownTask`
        if no module registers its name now; :class:`InvalidArguments` if its arguments no
        longer fit the task; and what :meth:`submit` raises.
        """
        old = self.get_task_status(task_id)
        if not old.status.final or old.arguments_unread:
            raise TaskNotRerunnable(
                task_id, old.status.value, arguments_unread=old.arguments_unread
            )
        self.get_task(
            old.task_name, hint=f"it ran task {task_id!r}, and no module registers it now"
        )
        record = self.submit(old.task_name, old.args, old.kwargs)
        logger.info("task %s is a rerun of %s", record.task_id, task_id)
        return record

    def workers(self) -> list[WorkerInfo]:
        """The worker and bridge processes heard of lately, with what they run (see
        :mod:`nagatha.presence`)."""
        return self.store.workers()

    def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task that waits to run (``pending``, or ``retrying`` between attempts).

        Its record becomes ``failure`` with the error :data:`~nagatha.types.CANCELLED_ERROR`
        at once (waiters wake), and no worker runs it afterwards (see
        :mod:`nagatha.middleware.cancellation`). Cancelling it again answers the same record.
        Raises :class:`TaskNotFound`, or :class:`TaskNotCancellable` for a task that is
        running or has ended.
        """
        record = self.store.cancel(task_id, {"error": CANCELLED_ERROR, "completed_at": utcnow()})
        if record is None:
            raise TaskNotFound(task_id)
        if not record.cancelled:
            raise TaskNotCancellable(task_id, record.status.value)
        logger.info("task %s %s cancelled", task_id, record.task_name)
        return record

    def wait_for(self, task_id: str, timeout: float, *, strict: bool = False) -> TaskRecord:
        """Wait up to ``timeout`` seconds for a final status; return the record then.

        With ``strict``, a record still not final raises :class:`TaskWaitTimeout`.
        """
        record = self.store.wait(task_id, timeout)
        if record is None:
            raise TaskNotFound(task_id)
        if strict and not record.status.final:
            raise TaskWaitTimeout(task_id, timeout, record.status.value)
        return record


@contextlib.contextmanager
def _loading(name: str) -> Iterator[None]:
    """While module ``name`` loads: what it prints goes to stderr (stdout carries the CLI's
    ``--json`` documents), and a load past :data:`SLOW_LOAD_S` is logged once, naming the
    module (an import that blocks cannot be stopped, but then the log says whose it is)."""
    slow = threading.Timer(
        SLOW_LOAD_S,
        logger.warning,
        ("module %s: still loading after %gs (an import or register_tasks that blocks?)",
         name, SLOW_LOAD_S),
    )  # fmt: skip
    slow.daemon = True
    slow.start()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        slow.cancel()


def _merge_task_options(*layers: Any) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, dict) or not all(isinstance(v, dict) for v in layer.values()):
            raise ModuleLoadError("'tasks' must map task names to option mappings")
        for name, opts in layer.items():
            merged.setdefault(name, {}).update(opts)
    return merged
