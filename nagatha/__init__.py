"""nagatha: a shared task hub on Dramatiq, RabbitMQ and Redis.

The public API for code that embeds the hub (tests, tools, other services)::

    from nagatha import create_hub, load_config

    hub = create_hub(load_config().config)
    record = hub.submit("diagnostics.add", kwargs={"x": 1, "y": 2})
    print(hub.wait_for(record.task_id, timeout=10).result)
"""

from __future__ import annotations

__version__ = "0.1.0"

from nagatha.config import FrameworkConfig, load_config
from nagatha.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidArguments,
    NagathaError,
    ServiceUnavailable,
    StoreUnavailable,
    TaskNotFound,
    UnknownTask,
)
from nagatha.hub import create_hub
from nagatha.registry import TaskRegistry
from nagatha.types import ModuleMetadata, TaskInfo, TaskRecord, TaskStatus

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "FrameworkConfig",
    "InvalidArguments",
    "ModuleMetadata",
    "NagathaError",
    "ServiceUnavailable",
    "StoreUnavailable",
    "TaskInfo",
    "TaskNotFound",
    "TaskRecord",
    "TaskRegistry",
    "TaskStatus",
    "UnknownTask",
    "__version__",
    "create_hub",
    "load_config",
]
