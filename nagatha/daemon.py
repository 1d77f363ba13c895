"""Calls that may hang, run where they cannot hold anything up.

:func:`start_daemon` runs one call on a new daemon thread and returns a future of its outcome:
the caller waits as long as it chooses (``concurrent.futures.wait`` with a timeout), and a
call that never returns (a module's ``heartbeat()`` stuck on the network) neither blocks the
caller past that nor keeps the process alive at exit, as a ``ThreadPoolExecutor``'s threads,
joined at exit, would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from threading import Lock, Thread
from typing import Any, TypeVar

from nagatha.log import describe_error
from nagatha.types import CheckResult

T = TypeVar("T")


def start_daemon(call: Callable[[], T], name: str) -> Future[T]:
    """Run ``call`` on a new daemon thread named ``name``; return the future of its outcome
    (its result, or whatever it raised)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - any end is the call's outcome
            future.set_exception(exc)
        else:
            future.set_result(result)

    Thread(target=run, name=name, daemon=True).start()
    return future


class Probes:
    """Named calls on daemon threads (:func:`start_daemon`), at most one running per name.

    Starting a name whose last call still runs returns that call's future instead of a new
    thread: a dependency that hangs costs one thread, however often it is asked about. Each
    future's result is ``(milliseconds the call took, its value)``.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lock = Lock()
        self._running: dict[str, Future[tuple[float, Any]]] = {}

    def start(self, name: str, call: Callable[[], Any]) -> Future[tuple[float, Any]]:
        """The future of ``call`` under ``name``: the one still running, else a new one."""
        with self._lock:
            running = self._running.get(name)
            if running is not None and not running.done():
                return running
            started = time.perf_counter()

            def timed() -> tuple[float, Any]:
                value = call()
                return (time.perf_counter() - started) * 1000, value

            future = start_daemon(timed, f"{self._prefix}-{name}")
            self._running[name] = future
            return future


def check_of(
    future: Future[tuple[float, Any]], timeout: float, secrets: Iterable[str]
) -> tuple[CheckResult, Any]:
    """What became of a :class:`Probes` call by its deadline: a :class:`CheckResult`
    (``timeout``; ``unavailable`` with the error, secrets masked; ``ok`` with the latency, and
    the value as detail if it is text) and the call's value (None unless ``ok``)."""
    if not future.done():
        return CheckResult(status="timeout", detail=f"no answer within {timeout:g}s"), None
    error = future.exception()
    if error is not None:
        return CheckResult(status="unavailable", detail=describe_error(error, secrets)), None
    latency_ms, value = future.result()
    detail = value if isinstance(value, str) else None
    return CheckResult(status="ok", detail=detail, latency_ms=round(latency_ms, 1)), value
