"""One value shared for a moment by every request that asks (``/health``; ``/metrics`` and
``/stats``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Reused(Generic[T]):
    """``make()``'s value, made again only once ``seconds`` have passed since it was made.

    Callers that ask while it is being made wait for that one result instead of making their
    own: however many probes or scrapers call at once, the dependencies see one check.
    """

    def __init__(
        self, make: Callable[[], T], seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._make = make
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._made: tuple[float, T] | None = None

    def get(self) -> T:
        """The current value (made now if the last one is ``seconds`` old or there is none)."""
        with self._lock:
            if self._made is None or self._clock() >= self._made[0]:
                value = self._make()
                self._made = (self._clock() + self.seconds, value)
            return self._made[1]
