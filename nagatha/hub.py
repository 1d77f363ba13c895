"""Assemble a hub from a config: status store, broker, registry, modules."""

from __future__ import annotations

from nagatha.broker import build_broker
from nagatha.config import FrameworkConfig
from nagatha.registry import TaskRegistry
from nagatha.stores import build_store


def create_hub(config: FrameworkConfig, *, load_modules: bool = True) -> TaskRegistry:
    """Return a registry bound to a new broker and store, with every enabled module loaded.

    Opens no connection: RabbitMQ and Redis are reached on first use, so a process can start
    (and report 503) while they are down.
    """
    store = build_store(config.results)
    broker = build_broker(config, store)
    registry = TaskRegistry(broker, store, config)
    if load_modules:
        registry.discover_modules()
    return registry
