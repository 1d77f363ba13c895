"""Status stores (see :mod:`nagatha.stores.base` for the contract)."""

from __future__ import annotations

from nagatha.config import MEMORY_URL, ResultsConfig
from nagatha.stores.base import StatusStore
from nagatha.stores.memory import MemoryStatusStore
from nagatha.stores.redis import RedisStatusStore

__all__ = ["MemoryStatusStore", "RedisStatusStore", "StatusStore", "build_store"]


def build_store(config: ResultsConfig) -> StatusStore:
    """Return the store ``config.url`` names; connects lazily, so this never blocks."""
    if config.url == MEMORY_URL:
        return MemoryStatusStore(ttl=config.ttl)
    return RedisStatusStore(
        config.url, ttl=config.ttl, prefix=config.prefix, socket_timeout=config.socket_timeout
    )
