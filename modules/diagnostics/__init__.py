"""Diagnostic tasks for checking a hub end to end: no-op, add, sleep, fail."""

from __future__ import annotations

import time
from typing import Any

__version__ = "1.0.0"


class DiagnosticFailure(Exception):
    """Raised by ``diagnostics.fail`` on purpose."""


def noop() -> None:
    """Do nothing (measures the hub's own overhead)."""
    return None


def add(x: float, y: float) -> float:
    """Return ``x + y``."""
    return x + y


def sleep(seconds: float) -> float:
    """Sleep ``seconds`` (in short steps, so time limits and shutdown can interrupt it)."""
    deadline = time.monotonic() + float(seconds)
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.1))
    return float(seconds)


def fail(message: str = "diagnostics.fail was asked to fail") -> None:
    """Raise an error whose text is ``message``."""
    raise DiagnosticFailure(message)


def register_tasks(registry: Any) -> None:
    """Register the diagnostic tasks (no retries: their outcome is the point)."""
    registry.register_task("diagnostics", "noop", noop, max_retries=0)
    registry.register_task("diagnostics", "add", add, max_retries=0)
    registry.register_task("diagnostics", "sleep", sleep, max_retries=0)
    registry.register_task("diagnostics", "fail", fail, max_retries=0)


def heartbeat() -> dict[str, str]:
    """Always ok."""
    return {"status": "ok"}
