"""``nagatha serve``: the HTTP API under gunicorn, or the whole hub in one process."""

from __future__ import annotations

from typing import Any

import click

from nagatha.cli.context import CliContext, pass_context


@click.command("serve")
@click.option(
    "--embedded",
    is_flag=True,
    help="API + worker in one process, in-memory broker and store (no servers needed).",
)
@click.option("--host", default=None, help="Address to listen on (default api.host, 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default api.port, 8000)."
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="gunicorn worker processes (default api.workers).",
)
@click.option(
    "--threads",
    "-t",
    type=click.IntRange(min=1),
    default=None,
    help="Threads per gunicorn worker (default api.threads).",
)
@pass_context
def serve_command(
    obj: CliContext,
    embedded: bool,
    host: str | None,
    port: int | None,
    workers: int | None,
    threads: int | None,
) -> None:
    """Serve the HTTP API until SIGTERM/SIGINT (graceful stop; SIGHUP reloads workers).

    Refuses (exit 2) to listen beyond loopback without api.tokens unless
    api.allow_anonymous is set. With --embedded (or broker.url memory://) one process runs
    the API and a worker, on 127.0.0.1:8000 unless told otherwise.
    """
    from nagatha.api.server import serve

    obj.server = True  # before the config is first read: it sets up logging by them
    obj.embedded = embedded
    if (embedded or obj.config.embedded) and (workers or threads):
        raise click.UsageError(
            "--workers and --threads size gunicorn; the embedded hub is one process (its "
            "worker runs worker.threads threads: set NAGATHA_WORKER_THREADS)"
        )
    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("host", host),
            ("port", port),
            ("workers", workers),
            ("threads", threads),
        )
        if value is not None
    }
    config = obj.config.with_overrides(api=overrides) if overrides else obj.config
    raise SystemExit(serve(config, embedded=embedded))


COMMANDS = [serve_command]
