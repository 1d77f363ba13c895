"""What every command shares: the config (loaded once) and the hub (built on demand)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import click

from nagatha.config import (
    FrameworkConfig,
    LoadedConfig,
    check_stores,
    load_config,
    secrets_of,
)
from nagatha.log import setup_logging
from nagatha.registry import TaskRegistry


@dataclass
class CliContext:
    """State of one CLI invocation; ``config`` and ``hub`` are built on first use."""

    config_file: str | None = None
    debug: bool = False
    #: Long-running commands (worker, serve, bridge) log at the configured level; one-shot
    #: commands log warnings and errors only, so their output stays readable.
    server: bool = False
    #: ``serve --embedded``: broker and store go to memory whatever the config says.
    embedded: bool = False
    #: Refuse a ``memory://`` store beside RabbitMQ (``nagatha config`` shows it instead).
    store_check: bool = True
    _hub: TaskRegistry | None = field(default=None, repr=False)

    @cached_property
    def loaded(self) -> LoadedConfig:
        """The validated config with the source of each value (raises ConfigError)."""
        loaded = load_config(self.config_file)
        if not self.embedded and self.store_check:
            check_stores(loaded)
        config = loaded.config
        if self.debug:
            config = config.with_overrides(logging={"level": "DEBUG"})
        logging_config = config.logging
        if not self.server and not self.debug and logging_config.level in ("DEBUG", "INFO"):
            logging_config = logging_config.model_copy(update={"level": "WARNING"})
        setup_logging(logging_config, secrets_of(config))
        return LoadedConfig(config=config, sources=loaded.sources)

    @property
    def config(self) -> FrameworkConfig:
        """The validated config."""
        return self.loaded.config

    def hub(self, *, modules: bool = True) -> TaskRegistry:
        """The registry, built by the first call: with every enabled module loaded, unless
        ``modules`` is false (commands that only read or write records: a module that is
        broken, or slow to import, then neither holds them up nor fills their output)."""
        if self._hub is None:
            from nagatha.hub import create_hub

            self._hub = create_hub(self.config, load_modules=modules)
        return self._hub


pass_context = click.make_pass_decorator(CliContext)


class Seconds(click.ParamType):  # type: ignore[type-arg]  # not generic in older click
    """A finite number of seconds from ``low`` to ``high``.

    Not ``click.FloatRange``: it lets ``nan`` through, as every comparison with it is false.
    """

    name = "seconds"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(number) and self.low <= number <= self.high):
            self.fail(f"{number:g} is not from {self.low:g} to {self.high:g} seconds", param, ctx)
        return number
