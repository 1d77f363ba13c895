"""Hold a worker thread until a write that must not be dropped goes through.

Dramatiq logs and swallows what an ``after_*`` hook raises and then *acks* the message, so a
hook that gave up on a write would lose what it was writing. Holding instead keeps the message
unacked: if the process stops meanwhile, RabbitMQ redelivers it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between attempts (doubles, capped).
RETRY_FIRST, RETRY_CAP = 0.2, 5.0


def hold(
    attempt: Callable[[], T],
    retry_on: type[Exception] | tuple[type[Exception], ...],
    report: Callable[[Exception], None],
    *,
    give_up_after: float | None = None,
    permanent: Callable[[Exception], bool] | None = None,
) -> T:
    """Call ``attempt`` until it returns: for as long as this process lives, or, once
    ``give_up_after`` seconds have passed, until an error ``permanent`` says will not clear
    (every error, without ``permanent``), which is raised.

    ``report`` is called with each ``retry_on`` error before the pause; other errors propagate.
    """
    pause = RETRY_FIRST
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            return attempt()
        except retry_on as exc:
            late = deadline is not None and time.monotonic() >= deadline
            if late and (permanent is None or permanent(exc)):
                raise
            report(exc)
            time.sleep(pause)
            pause = min(pause * 2, RETRY_CAP)
