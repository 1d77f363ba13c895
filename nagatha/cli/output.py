"""Printing for people (rich tables) and for scripts (``--json``, the HTTP body shapes)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

import click
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nagatha.metrics import RUNTIME_BUCKETS
from nagatha.types import ModuleMetadata, TaskInfo, TaskRecord, WorkerInfo, utcnow

_STATUS_STYLE = {
    "success": "green",
    "failure": "red",
    "retrying": "yellow",
    "started": "cyan",
    "pending": "white",
    "loaded": "green",
    "failed": "red",
    "disabled": "dim",
}


def table(*headers: str, **options: Any) -> Table:
    """A table whose cells wrap instead of ending in "...": a cut id could not be pasted
    back (``bridge dlq replay``)."""
    created = Table(**options)
    for header in headers:
        created.add_column(header, overflow="fold")
    return created


#: Width of tables written to a pipe or file (rich's default there is 80 columns, which
#: squeezes a seven-column table into unreadable slivers).
PIPED_WIDTH = 250


def console() -> Console:
    """A console on stdout that degrades to plain text when piped (and is wide then)."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def emit_json(document: Any) -> None:
    """Print a JSON document (pydantic models as their JSON form) on one line."""
    text = json.dumps(_plain(document), ensure_ascii=False)
    if not _encodable(text):  # a lone surrogate in a task's data: as a JSON \u escape
        text = json.dumps(_plain(document))
    click.echo(text)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def cell(text: str) -> str:
    """``text`` for a table cell as it is: never read as rich markup (a task's data, a
    module's error, a Celery message's task name), lone surrogates as ``\\udcff`` escapes."""
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode()
    return escape(text)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _styled(status: str) -> str:
    style = _STATUS_STYLE.get(status, "white")
    return f"[{style}]{status}[/{style}]"


def show_record(record: TaskRecord) -> None:
    """The status record as a two-column table."""
    grid = table("key", "value", show_header=False, box=None)
    data = record.model_dump(mode="json")
    for key, value in data.items():
        if value is None:
            continue
        if key == "status":
            text = _styled(value)
        else:  # the task's data, shown as it is: never read as rich markup
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            text = cell(shown)
        grid.add_row(f"[bold]{key}[/bold]", text)
    console().print(grid)


def show_failures(records: Iterable[TaskRecord]) -> None:
    """Failed tasks, one a row: when, id, task, retries, error (in full)."""
    grid = table("failed at", "task id", "task", "retries", "error")
    for record in records:
        ended = record.completed_at.isoformat(timespec="seconds") if record.completed_at else ""
        grid.add_row(
            cell(ended),
            cell(record.task_id),
            cell(record.task_name),
            str(record.retries),
            cell(record.error or ""),
        )
    console().print(grid)


def show_workers(workers: list[WorkerInfo]) -> None:
    """Worker and bridge processes, one a row, then the tasks they run now (if any)."""
    if not workers:
        click.echo("no worker or bridge process announced itself lately")
        return
    now = utcnow()
    grid = table("process", "kind", "state", "queues", "threads", "running", "counts", "up", "seen")
    for worker in workers:
        grid.add_row(
            cell(worker.id),
            worker.kind,
            worker.state,
            cell(", ".join(worker.queues)),
            str(worker.concurrency),
            str(len(worker.running)),
            " ".join(f"{name}={count}" for name, count in worker.counts.items()),
            _age((now - worker.started_at).total_seconds()),
            f"{_age(worker.seen_seconds_ago or 0.0)} ago",
        )
    console().print(grid)
    running = [(worker, task) for worker in workers for task in worker.running]
    if not running:
        return
    grid = table("task id", "task", "process", "retries", "running for")
    for worker, task in sorted(running, key=lambda pair: pair[1].started_at):
        grid.add_row(
            cell(task.task_id),
            cell(task.task_name),
            cell(worker.id),
            str(task.retries),
            _age((now - task.started_at).total_seconds()),
        )
    console().print(grid)


def _age(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``5 min``, ``3.5 h``, ``2.1 d`` (a negative one, from clocks that
    disagree, is 0)."""
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def show_tasks(tasks: Iterable[TaskInfo]) -> None:
    """Tasks with their parameters and queue."""
    grid = table("task", "parameters", "queue", "description")
    for task in tasks:
        params = ", ".join(
            p.name if p.required else f"{p.name}={p.default!r}" for p in task.parameters
        )
        grid.add_row(cell(task.name), cell(params), cell(task.queue), cell(task.description))
    console().print(grid)


def show_modules(modules: Iterable[ModuleMetadata]) -> None:
    """Modules with version, status, tasks and heartbeat (errors in full)."""
    grid = table("module", "version", "status", "tasks", "heartbeat", "error")
    for module in modules:
        beat = module.heartbeat
        grid.add_row(
            cell(module.name),
            cell(module.version or ""),
            _styled(module.status),
            cell(", ".join(module.tasks)),
            cell(str(beat.get("status", ""))) if beat else "",
            cell(module.error or ""),
        )
    console().print(grid)


def show_stats(document: dict[str, Any]) -> None:
    """``nagatha stats``: a table of tasks (events, runs, times), one of queues."""
    out = console()
    if document["tasks"] is not None:
        grid = table(
            "task",
            "submitted",
            "started",
            "retried",
            "succeeded",
            "failed",
            "cancelled",
            "runs",
            "mean",
            "p95 at most",
        )
        for row in document["tasks"]:
            grid.add_row(
                cell(row["task"]),
                *(str(row[name]) for name in ("submitted", "started", "retried", "succeeded")),
                f"[red]{row['failed']}[/red]" if row["failed"] else "0",
                str(row["cancelled"]),
                str(row["runs"]),
                _duration(row["mean_seconds"]),
                _duration(row["p95_at_most_seconds"], past=row["runs"] > 0),
            )
        out.print(grid)
    if document["queues"] is not None:
        grid = table("queue", "messages ready", "consumers")
        for row in document["queues"]:
            consumers = "" if row["consumers"] is None else str(row["consumers"])
            grid.add_row(cell(row["queue"]), str(row["messages"]), consumers)
        out.print(grid)


def unanswered(document: dict[str, Any]) -> str | None:
    """One line for what ``nagatha stats`` could not read (None: it read everything)."""
    shown = {"store": ("Redis", "task counts"), "broker": ("RabbitMQ", "queue depths")}
    return (
        "; ".join(
            f"{shown[name][0]}: {check['detail']} ({shown[name][1]} not shown)"
            for name, check in document["checks"].items()
            if check["status"] != "ok"
        )
        or None
    )


def _duration(seconds: float | None, *, past: bool = False) -> str:
    """``1.2 ms``, ``3.4 s``, ``30 min``; None is ``-`` (no runs), or more than the last
    bucket's bound with ``past``."""
    if seconds is None:
        return f"> {_duration(RUNTIME_BUCKETS[-1])}" if past else "-"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min"
