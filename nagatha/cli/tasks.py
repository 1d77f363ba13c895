"""``nagatha run``, ``rerun``, ``status``, ``cancel`` and ``failures``: start tasks and follow
them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from nagatha import jsontext
from nagatha.cli.context import CliContext, Seconds, pass_context
from nagatha.cli.errors import EXIT_OK, EXIT_TASK_FAILED
from nagatha.cli.output import emit_json, show_failures, show_record
from nagatha.registry import TaskRegistry
from nagatha.stores.base import DEFAULT_FAILURES, RECENT_FAILURES
from nagatha.types import TaskRecord, TaskStatus

DEFAULT_TIMEOUT = 60.0
#: Longest ``--timeout`` (a day): longer waits overflow the clocks threads wait on.
MAX_TIMEOUT = 86_400.0


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is JSON when it parses as strict JSON, else the string.

    ``NaN`` or ``1e400`` stay strings (they are no JSON numbers). Text that is not valid
    Unicode (a byte of another encoding in the argument) is refused.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="-k/--kwarg")
    try:
        value: Any = jsontext.loads(raw)
    except jsontext.JsonTextError:
        value = raw
    try:
        jsontext.check({key: value})
    except jsontext.JsonTextError as exc:
        raise click.BadParameter(f"{ascii(text)} {exc}", param_hint="-k/--kwarg") from None
    return key, value


def parse_kwargs_json(text: str | None) -> dict[str, Any]:
    """Parse ``--kwargs``: it must be a JSON object (strict, see :mod:`nagatha.jsontext`)."""
    if text is None:
        return {}
    try:
        value = jsontext.loads(text)
    except jsontext.JsonTextError as exc:
        raise click.BadParameter(str(exc), param_hint="--kwargs") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    return value


@contextmanager
def _task_logs_silenced(silenced: bool) -> Iterator[None]:
    """Quiet the in-process worker: the record printed says how the task ended, and the
    worker's own lines (a failed task's traceback) would repeat it (``--debug`` keeps them)."""
    loggers = [logging.getLogger(name) for name in ("dramatiq", "nagatha.tasks")]
    levels = [logger.level for logger in loggers]
    if silenced:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def wait_options(command: Callable[..., None]) -> Callable[..., None]:
    """The ``--wait``, ``--timeout`` and ``--json`` options shared by run and status."""
    for option in reversed(
        (
            click.option("--wait", is_flag=True, help="Wait for the final status."),
            click.option(
                "--timeout",
                type=Seconds(0, MAX_TIMEOUT),
                default=DEFAULT_TIMEOUT,
                show_default=True,
                help="Seconds --wait waits.",
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="Print JSON (the HTTP body shapes)."
            ),
        )
    ):
        command = option(command)
    return command


def _finish(record: TaskRecord, as_json: bool) -> None:
    if as_json:
        emit_json(record)
    else:
        show_record(record)
    raise SystemExit(EXIT_TASK_FAILED if record.status is TaskStatus.FAILURE else EXIT_OK)


def _follow(
    hub: TaskRegistry, record: TaskRecord, wait: bool, timeout: float, as_json: bool
) -> None:
    """After a submit: with ``wait``, the final record (see :func:`_finish`); else the new
    task's id, or its pending record with ``as_json``."""
    if wait:
        _finish(hub.wait_for(record.task_id, timeout, strict=True), as_json)
    if as_json:
        emit_json(record)
    else:
        click.echo(record.task_id)


@click.command("run")
@click.argument("task_name")
@click.option(
    "-k",
    "--kwarg",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="A keyword argument; VALUE is parsed as JSON when it can be (-k x=2 is 2).",
)
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as a JSON object.")
@wait_options
@pass_context
def run_command(
    obj: CliContext,
    task_name: str,
    assignments: tuple[str, ...],
    kwargs_json: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Run TASK_NAME (module.task). Exit 1 if it fails, 2 if the arguments do not fit."""
    kwargs = parse_kwargs_json(kwargs_json)
    kwargs.update(parse_assignment(a) for a in assignments)
    hub = obj.hub()
    if obj.config.embedded:
        from nagatha.worker import start_worker

        hub.get_task(task_name)
        with _task_logs_silenced(not obj.debug):
            worker = start_worker(hub.broker, threads=2)
            try:
                record = hub.submit(task_name, kwargs=kwargs)
                record = hub.wait_for(record.task_id, timeout, strict=True)
            finally:
                worker.stop(timeout=1000)
        _finish(record, as_json)
    _follow(hub, hub.submit(task_name, kwargs=kwargs), wait, timeout, as_json)


@click.command("rerun")
@click.argument("task_id")
@wait_options
@pass_context
def rerun_command(obj: CliContext, task_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Run the ended task TASK_ID again with the same arguments, as a new task.

    Prints the new task's id (its record with --json or --wait; the old record stays as it
    is). Exit 1 if TASK_ID is unknown or has not ended (or, with --wait, the new task fails),
    2 if its task is no longer registered or its arguments no longer fit.
    """
    if obj.config.embedded:
        raise click.UsageError(
            "rerun reads the task's record from Redis (broker.url is memory://: records die "
            "with their process); an embedded hub answers POST /tasks/rerun itself"
        )
    hub = obj.hub()
    _follow(hub, hub.rerun(task_id), wait, timeout, as_json)


@click.command("status")
@click.argument("task_id", required=False)
@click.option("--task-id", "task_id_option", help="The task id (instead of the argument).")
@wait_options
@pass_context
def status_command(
    obj: CliContext,
    task_id: str | None,
    task_id_option: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Show the status record of TASK_ID. Exit 1 if unknown or failed."""
    chosen = task_id_option or task_id
    if not chosen:
        raise click.UsageError("give a task id: nagatha status TASK_ID")
    if task_id and task_id_option and task_id != task_id_option:
        raise click.UsageError("give the task id once, as argument or --task-id")
    hub = obj.hub(modules=False)
    record = hub.wait_for(chosen, timeout, strict=True) if wait else hub.get_task_status(chosen)
    _finish(record, as_json)


@click.command("cancel")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the HTTP body shape).")
@pass_context
def cancel_command(obj: CliContext, task_id: str, as_json: bool) -> None:
    """Cancel TASK_ID if it waits to run (pending, or retrying between attempts).

    Exit 0 when it is cancelled (its record is then failure, "Cancelled: ..."); exit 1 if it
    is unknown, running or ended.
    """
    record = obj.hub(modules=False).cancel(task_id)
    if as_json:
        emit_json(record)
    else:
        show_record(record)


@click.command("failures")
@click.option(
    "--limit",
    type=click.IntRange(1, RECENT_FAILURES),
    default=DEFAULT_FAILURES,
    show_default=True,
    help="How many at most.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the body of GET /failures).")
@pass_context
def failures_command(obj: CliContext, limit: int, as_json: bool) -> None:
    """Show the newest failed tasks, newest first: when, id, task, retries, error."""
    records = obj.hub(modules=False).recent_failures(limit)
    if as_json:
        emit_json({"tasks": records})
    else:
        show_failures(records)


COMMANDS = [run_command, rerun_command, status_command, cancel_command, failures_command]
