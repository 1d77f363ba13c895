"""``nagatha list``, ``modules``, ``stats``, ``workers`` and ``config``: what the hub knows."""

from __future__ import annotations

import json

import click

from nagatha.cli.context import CliContext, Seconds, pass_context
from nagatha.cli.output import (
    cell,
    console,
    emit_json,
    show_modules,
    show_stats,
    show_tasks,
    show_workers,
    table,
    unanswered,
)
from nagatha.config import check_stores, mask_value
from nagatha.errors import ConfigError, ServiceUnavailable
from nagatha.monitoring import DEFAULT_TIMEOUT, StateReader
from nagatha.types import MISSED_BEATS


@click.command("list")
@click.argument("what", type=click.Choice(["tasks", "modules"]), default="tasks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the HTTP body shapes).")
@pass_context
def list_command(obj: CliContext, what: str, as_json: bool) -> None:
    """List registered tasks (default) or discovered modules."""
    if what == "modules":
        _modules(obj, as_json)
        return
    tasks = obj.hub().list_tasks()
    if as_json:
        emit_json({"tasks": tasks})
    else:
        show_tasks(tasks)


@click.command("modules")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the body of GET /modules).")
@pass_context
def modules_command(obj: CliContext, as_json: bool) -> None:
    """Show every module: version, status (loaded/failed/disabled), error, tasks, heartbeat."""
    _modules(obj, as_json)


def _modules(obj: CliContext, as_json: bool) -> None:
    modules = obj.hub().list_modules(heartbeats=True)
    if as_json:
        emit_json({"modules": modules})
    else:
        show_modules(modules)


@click.command("stats")
@click.option(
    "--timeout",
    type=Seconds(0.1, 600),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for Redis and RabbitMQ.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def stats_command(obj: CliContext, timeout: float, as_json: bool) -> None:
    """Show what every task did (events, runs, times) and what waits in each queue.

    Counts are the whole hub's (every worker, API and bridge, from Redis), as
    GET /metrics reports them; queue depths come from RabbitMQ (messages ready, consumers).
    Exits 3 after printing what it could read if Redis or RabbitMQ did not answer.
    """
    if obj.config.embedded:
        raise click.UsageError(
            "stats reads RabbitMQ and Redis (broker.url is memory://); "
            "an embedded hub (`nagatha serve --embedded`) answers GET /stats and /metrics itself"
        )
    state = StateReader(obj.hub(), obj.config, timeout=timeout).read()
    document = state.document()
    if as_json:
        emit_json(document)
    else:
        show_stats(document)
    problems = unanswered(document)
    if problems:
        raise ServiceUnavailable(problems)


@click.command(
    "workers",
    help="Show the worker and bridge processes alive: where, their queues, what they run now."
    "\n\nEach process announces itself every worker.presence_interval seconds; one unheard of "
    f"for {MISSED_BEATS} intervals (killed, frozen, cut off from Redis) is not shown.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the body of GET /workers).")
@pass_context
def workers_command(obj: CliContext, as_json: bool) -> None:
    """``nagatha workers`` (help above: it names :data:`~nagatha.types.MISSED_BEATS`)."""
    if obj.config.embedded:
        raise click.UsageError(
            "workers reads Redis (broker.url is memory://); an embedded hub "
            "(`nagatha serve --embedded`) answers GET /workers itself"
        )
    workers = obj.hub(modules=False).workers()
    if as_json:
        emit_json({"workers": workers})
    else:
        show_workers(workers)


@click.command("config")
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def config_command(obj: CliContext, key: str | None, as_json: bool) -> None:
    """Show the effective config (or one KEY such as broker.url) and where each value came from.

    Secrets are masked: tokens entirely, passwords inside URLs. A store that every other
    command refuses (memory:// beside RabbitMQ) is shown, with a warning on stderr.
    """
    obj.store_check = False
    loaded = obj.loaded
    try:
        check_stores(loaded)
    except ConfigError as exc:
        click.echo(f"warning: {exc}", err=True)
    data = loaded.config.model_dump(mode="json")
    values = {
        f"{section}.{name}": mask_value(f"{section}.{name}", value)
        for section, fields in data.items()
        for name, value in fields.items()
    }
    if key is not None:
        if key not in values:
            raise click.BadParameter(
                f"unknown key {key!r}; keys look like broker.url (see `nagatha config`)",
                param_hint="KEY",
            )
        if as_json:
            emit_json({"key": key, "value": values[key], "source": loaded.sources[key]})
        else:
            value = values[key]
            click.echo(value if isinstance(value, str) else json.dumps(value))
        return
    if as_json:
        emit_json({"config": values, "sources": dict(loaded.sources)})
        return
    grid = table("key", "value", "source")
    for name, value in values.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        grid.add_row(cell(name), cell(shown), cell(loaded.sources[name]))
    console().print(grid)


COMMANDS = [list_command, modules_command, stats_command, workers_command, config_command]
