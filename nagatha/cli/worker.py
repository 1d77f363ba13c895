"""``nagatha worker``: run supervised Dramatiq worker processes."""

from __future__ import annotations

import click

from nagatha.cli.context import CliContext, pass_context


@click.command("worker")
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes (default worker.processes).",
)
@click.option(
    "--threads",
    "-t",
    type=click.IntRange(min=1),
    default=None,
    help="Threads per process (default worker.threads).",
)
@click.option(
    "--queues",
    "-Q",
    "queues",
    multiple=True,
    metavar="QUEUE",
    help="Consume only these queues (repeatable; default all task queues).",
)
@pass_context
def worker_command(
    obj: CliContext, processes: int | None, threads: int | None, queues: tuple[str, ...]
) -> None:
    """Run workers for every enabled module until SIGTERM/SIGINT (graceful stop)."""
    from nagatha.worker import run_workers

    obj.server = True
    config = obj.config
    if config.embedded:
        raise click.UsageError(
            "the worker needs RabbitMQ (broker.url is memory://); "
            "for one process with no servers run `nagatha serve --embedded`"
        )
    raise SystemExit(
        run_workers(
            config,
            processes=processes or config.worker.processes,
            threads=threads or config.worker.threads,
            queues=list(queues) or config.worker.queues,
        )
    )


COMMANDS = [worker_command]
