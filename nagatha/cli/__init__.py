"""The ``nagatha`` command line (Click).

Commands live one concern per file (``tasks.py``: run/status/cancel, ``info.py``:
list/modules/stats/config, ``worker.py``); errors become one line and an exit code
(``errors.py``).
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import click

from nagatha import __version__
from nagatha.cli.context import CliContext
from nagatha.cli.errors import EXIT_INTERRUPTED, EXIT_TASK_FAILED, exit_code_for
from nagatha.errors import NagathaError


class HubGroup(click.Group):
    """A group that turns hub errors into one line on stderr and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NagathaError as exc:
            self._traceback_if_debug(ctx)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))
        except KeyboardInterrupt:  # before click makes it "Aborted!", exit 1 ("task failed")
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if not self._traceback_if_debug(ctx):
                logging.getLogger("nagatha.cli").debug("unexpected error", exc_info=True)
            click.echo(
                f"error: unexpected {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_TASK_FAILED)

    @staticmethod
    def _traceback_if_debug(ctx: click.Context) -> bool:
        """With ``--debug``, print the traceback of the error being handled (the exit code
        stays the one the error maps to)."""
        obj = ctx.find_object(CliContext)
        debug = obj is not None and obj.debug
        if debug:
            traceback.print_exc()
        return debug


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default ./nagatha.yaml; also NAGATHA_CONFIG).",
)
@click.option("--debug", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(__version__, prog_name="nagatha")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, debug: bool) -> None:
    """nagatha: run and follow the tasks of plug-in modules."""
    ctx.obj = CliContext(config_file=config_file, debug=debug)


def _register_commands() -> None:
    from nagatha.cli import bridge, info, serve, tasks, worker

    for module in (tasks, info, worker, serve, bridge):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="nagatha", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - while click reads the arguments
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
