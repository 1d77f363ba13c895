"""Echo a message back unchanged (a smoke test for the whole path)."""

from __future__ import annotations

from typing import Any

__version__ = "1.0.0"


def echo(message: Any) -> Any:
    """Return ``message`` unchanged."""
    return message


def register_tasks(registry: Any) -> None:
    """Register ``echo_bot.echo``."""
    registry.register_task("echo_bot", "echo", echo, max_retries=0)


def heartbeat() -> dict[str, str]:
    """Always ok: the module has no dependencies."""
    return {"status": "ok"}
