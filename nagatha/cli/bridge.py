"""``nagatha bridge``: run the Celery bridge, and look after its dead-letter queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from nagatha.broker_errors import CONNECTION_ERRORS, broker_error_reason
from nagatha.cli.context import CliContext, pass_context
from nagatha.cli.output import cell, console, emit_json, table
from nagatha.config import MEMORY_URL, FrameworkConfig, check_queue_name
from nagatha.errors import BrokerUnavailable


def _require_services(config: FrameworkConfig) -> None:
    if config.embedded:
        raise click.UsageError(
            "the bridge needs RabbitMQ (broker.url is memory://): Celery clients reach it there"
        )
    if config.results.url == MEMORY_URL:
        raise click.UsageError(
            "the bridge needs Redis (results.url is memory://): hub workers answer Celery "
            "clients through it"
        )


@click.group("bridge", invoke_without_command=True)
@click.option(
    "--queue",
    "-Q",
    "queues",
    multiple=True,
    metavar="QUEUE",
    help="Celery queue to consume (repeatable; default bridge.queues, i.e. celery).",
)
@click.pass_context
def bridge_command(ctx: click.Context, queues: tuple[str, ...]) -> None:
    """Run the Celery bridge until SIGTERM/SIGINT: Celery clients call hub tasks."""
    if ctx.invoked_subcommand is not None:
        return
    obj = ctx.find_object(CliContext)
    assert obj is not None
    obj.server = True
    config = obj.config
    _require_services(config)
    chosen = list(queues) or config.bridge.queues
    for queue in queues:
        try:
            check_queue_name(queue)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--queue") from None
    if config.bridge.dead_letter_queue in chosen:
        raise click.BadParameter(
            f"{config.bridge.dead_letter_queue!r} is the bridge's dead-letter queue",
            param_hint="--queue",
        )
    from bridge.consumer import run_bridge

    raise SystemExit(run_bridge(config, queues=chosen))


@bridge_command.group("dlq")
def dlq_group() -> None:
    """List or replay what the bridge dead-lettered (queue bridge.dead_letter_queue)."""


@contextmanager
def _channel(config: FrameworkConfig) -> Iterator[BlockingChannel]:
    from bridge import amqp_tables
    from bridge.dead_letters import declare_dead_letter_queue
    from nagatha.broker import amqp_url, broker_address

    def unavailable(exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"RabbitMQ ({broker_address(config.broker)}) unavailable: {broker_error_reason(exc)}"
        )

    amqp_tables.install()  # dead letters may hold any header a client sent
    try:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url(config.broker)))
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc) from None
    try:
        channel = connection.channel()
        declare_dead_letter_queue(channel, config.bridge.dead_letter_queue)
        yield channel
    except (pika.exceptions.AMQPError, AMQPConnectorException) as exc:  # not OSError: `| head`
        raise unavailable(exc) from None
    finally:
        if connection.is_open:
            connection.close()


@dlq_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {'dead_letters': [...]}.")
@pass_context
def dlq_list(obj: CliContext, as_json: bool) -> None:
    """List dead-lettered messages, oldest first, with the reason of each."""
    from bridge.dead_letters import list_dead_letters

    config = obj.config
    _require_services(config)
    with _channel(config) as channel:
        letters = list_dead_letters(channel, config.bridge.dead_letter_queue)
    if as_json:
        emit_json({"dead_letters": [letter.as_dict() for letter in letters]})
        return
    if not letters:
        click.echo("no dead-lettered messages")
        return
    grid = table("id", "queue", "task", "task id", "dead at", "bytes", "reason")
    for letter in letters:
        texts = (
            letter.id,
            letter.queue,
            letter.task_name or "",
            letter.task_id or "",
            letter.dead_at or "",
            str(letter.size),
            letter.reason,
        )
        grid.add_row(*map(cell, texts))
    console().print(grid)


@dlq_group.command("replay")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead-lettered message.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {'replayed': [...]}.")
@pass_context
def dlq_replay(obj: CliContext, ids: tuple[str, ...], replay_all: bool, as_json: bool) -> None:
    """Send dead-lettered messages back to their Celery queue (IDs from `dlq list`: the
    dead-letter id, or the task id).

    A replayed task's earlier refusal (the FAILURE its client got, the hub record) is
    deleted first, so that the outcome of the replay is stored. Exit 1 if an ID was not found.
    """
    from bridge.answers import build_answers
    from bridge.dead_letters import DeadLetter, replay_dead_letters
    from bridge.publisher import ConfirmedPublisher
    from nagatha.broker import amqp_url
    from nagatha.stores import build_store

    if replay_all == bool(ids):
        raise click.UsageError("give dead-letter IDs or --all (not both)")
    config = obj.config
    _require_services(config)
    store = build_store(config.results)
    answers = build_answers(config, store, ConfirmedPublisher(amqp_url(config.broker)))

    def forget_refusal(letter: DeadLetter) -> None:
        if letter.task_id:
            answers.forget(letter.task_id)

    try:
        with _channel(config) as channel:
            replayed = replay_dead_letters(
                channel,
                config.bridge.dead_letter_queue,
                None if replay_all else set(ids),
                before_replay=forget_refusal,
            )
    finally:
        store.close()
    if as_json:
        emit_json({"replayed": [letter.as_dict() for letter in replayed]})
    else:
        for letter in replayed:
            click.echo(f"replayed {letter.id} to {letter.queue}")
        if replay_all and not replayed:
            click.echo("no dead-lettered messages")
    found = {name for letter in replayed for name in (letter.id, letter.task_id)}
    missing = sorted(set(ids) - found)
    if missing:
        click.echo(f"error: no dead letter with id {', '.join(missing)}", err=True)
        raise SystemExit(1)


COMMANDS = [bridge_command]
