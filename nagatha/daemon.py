"""Calls that may hang, run where they cannot hold anything up.

:func:`start_daemon` runs one call on a new daemon thread and returns a future of its outcome:
the caller waits as long as it chooses (``concurrent.futures.wait`` with a timeout), and a
call that never returns (a module's ``heartbeat()`` stuck on the network) neither blocks the
caller past that nor keeps the process alive at exit, as a ``ThreadPoolExecutor``'s threads,
joined at exit, would.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from threading import Thread
from typing import TypeVar

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
