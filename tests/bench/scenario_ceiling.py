"""Scenario ``ceiling``: the broker's own limit, with raw pika and no task framework.

Publish N Dramatiq-sized messages the way the hub does (persistent, ``mandatory``, publisher
confirms waited for one by one on each channel) from ``P`` processes x ``T`` threads (the hub API's
gunicorn workers x threads), then consume and ack them one by one from ``P`` consumers with the
prefetch of a Dramatiq worker of ``T`` threads (``2T``). The queue is declared like Dramatiq's
(classic, durable, dead-letter arguments). Timed from the moment every process is connected to
the last confirm / ack.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import pika
from harness import amqp_connection
from report import Scenario

QUEUE = "bench_ceiling"
ARGS = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{QUEUE}.XQ"}


@dataclass(frozen=True)
class CeilingParams:
    """Size of the ceiling scenario."""

    rounds: int
    messages: int
    processes: int = 2
    threads: int = 8


def _body() -> bytes:
    message = dramatiq.Message(
        queue_name="default",
        actor_name="echo_bot.echo",
        args=(),
        kwargs={"message": "c0-0"},
        options={},
        message_id=str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000),
    )
    return message.encode()


def _publisher(url: str, count: int, threads: int, barrier: Any, out: Any) -> None:
    body = _body()
    props = pika.BasicProperties(delivery_mode=2)
    channels = []
    for _ in range(threads):
        connection = amqp_connection(url)
        channel = connection.channel()
        channel.confirm_delivery()
        channels.append((connection, channel))

    def publish(channel: Any, n: int) -> None:
        for _ in range(n):
            channel.basic_publish("", QUEUE, body, props, mandatory=True)

    workers = [threading.Thread(target=publish, args=(ch, count // threads)) for _, ch in channels]
    barrier.wait()
    start = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((start, time.monotonic(), count // threads * threads))
    for connection, _ in channels:
        connection.close()


def _consumer(url: str, prefetch: int, barrier: Any, out: Any) -> None:
    connection = amqp_connection(url)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    barrier.wait()
    start = last = time.monotonic()
    got = 0
    for method, _, _ in channel.consume(QUEUE, inactivity_timeout=0.5):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        got += 1
        last = time.monotonic()
    channel.cancel()
    connection.close()
    out.put((start, last, got))


def _run_processes(target: Any, args: tuple[Any, ...], processes: int) -> tuple[float, int]:
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=target, args=(*args, barrier, out)) for _ in range(processes)
    ]
    for child in children:
        child.start()
    reports = [out.get(timeout=300) for _ in children]
    for child in children:
        child.join(30)
    start = min(r[0] for r in reports)
    end = max(r[1] for r in reports)
    return end - start, sum(r[2] for r in reports)


def measure(url: str, messages: int, processes: int, threads: int) -> tuple[float, float]:
    """Publish then consume ``messages``; return (published per s, consumed per s)."""
    connection = amqp_connection(url)
    channel = connection.channel()
    channel.queue_declare(QUEUE, durable=True, arguments=ARGS)
    try:
        channel.queue_purge(QUEUE)
        per_process = messages // processes
        pub_s, published = _run_processes(_publisher, (url, per_process, threads), processes)
        con_s, consumed = _run_processes(_consumer, (url, 2 * threads), processes)
    finally:
        channel.queue_delete(QUEUE)
        connection.close()
    if consumed != published:
        raise RuntimeError(f"ceiling: published {published}, consumed {consumed}")
    return published / pub_s, consumed / con_s


@dataclass(frozen=True)
class InRound:
    """A short ceiling measurement taken in every round of another scenario.

    Recorded as the contender ``ceiling`` with the scenario's own figure name, so that
    "contender / ceiling" is a ratio paired round by round like any other.
    """

    url: str
    messages: int
    processes: int
    threads: int

    def figures(self, kind: str, figure: str = "tasks_per_s") -> dict[str, float]:
        try:
            publish, consume = measure(self.url, self.messages, self.processes, self.threads)
        except Exception as exc:  # a failed probe leaves a gap, never stops the scenario
            print(f"    ceiling probe failed: {type(exc).__name__}: {exc}", flush=True)
            return {figure: float("nan")}
        return {figure: publish if kind == "publish" else consume}


def run(url: str, params: CeilingParams) -> Scenario:
    scenario = Scenario(
        "ceiling",
        "Broker ceiling: raw pika publish (confirms) and consume+ack of the same N messages",
        params={
            "messages": params.messages,
            "rounds": params.rounds,
            "publishers": f"{params.processes} processes x {params.threads} threads",
            "consumers": f"{params.processes} processes, prefetch {2 * params.threads}",
        },
        contenders={"pika": "raw pika BlockingConnection, classic durable queue"},
    )
    for index in range(params.rounds):
        publish, consume = measure(url, params.messages, params.processes, params.threads)
        scenario.add("pika", {"publish_per_s": publish, "consume_per_s": consume})
        print(
            f"  ceiling round {index + 1}/{params.rounds}: publish {publish:.0f}/s,"
            f" consume {consume:.0f}/s",
            flush=True,
        )
    return scenario
