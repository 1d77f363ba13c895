"""Run Dramatiq workers for every enabled module: supervised processes or one embedded worker.

``run_workers`` is what ``nagatha worker`` runs: a supervisor (opens no connection itself)
that forks worker processes, each building its own hub and broker connections. A worker
process that dies unexpectedly is reported with its exit code and started again, unlike
Dramatiq's own CLI, which stops every process when one dies. SIGTERM or SIGINT stops all
processes gracefully: in-flight tasks get ``worker.shutdown_grace`` seconds to finish, and what
is not finished is redelivered by RabbitMQ to another worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from types import FrameType

import dramatiq

from nagatha.config import FrameworkConfig, secrets_of
from nagatha.hub import create_hub
from nagatha.log import setup_logging

logger = logging.getLogger("nagatha.worker")

#: Seconds between restarts of a worker process that keeps dying (doubles up to the cap).
RESTART_FIRST, RESTART_CAP = 1.0, 30.0
#: A process that ran this many seconds before it died was healthy: restart it at once again.
STABLE_S = 60.0
#: Milliseconds an idle Dramatiq consumer waits for a message before it looks at its delayed
#: ones: a countdown, a retry's backoff or a Celery eta ends this late at most (Dramatiq's
#: default of 1000 rounded every delay up to the next second).
POLL_MS = 100


def restart_delay(previous: float | None, lived_s: float) -> float:
    """Seconds to wait before replacing a process that died after ``lived_s`` seconds.

    ``previous`` is the wait before the last restart (None if there was none): a process
    that keeps dying waits twice as long each time, up to the cap; one that lived
    :data:`STABLE_S` starts the count again.
    """
    if previous is None or lived_s >= STABLE_S:
        return RESTART_FIRST
    return min(previous * 2, RESTART_CAP)


def start_worker(
    broker: dramatiq.Broker, *, threads: int = 4, queues: Sequence[str] | None = None
) -> dramatiq.Worker:
    """Start a Dramatiq worker inside this process and return it (call ``stop()`` later).

    ``process_boot`` is emitted first: without it Dramatiq's TimeLimit middleware never starts
    its timer thread and time limits would not be enforced.
    """
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(
        broker,
        queues=set(queues) if queues else None,
        worker_threads=threads,
        worker_timeout=POLL_MS,
    )
    worker.start()
    return worker


def _worker_process(config: FrameworkConfig, threads: int, queues: Sequence[str]) -> None:
    """Body of one worker process: build the hub here (after fork), consume until signalled."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    setup_logging(config.logging, secrets_of(config))
    registry = create_hub(config)
    broker = registry.broker
    worker = start_worker(broker, threads=threads, queues=queues)
    used = {task.queue for task in registry.list_tasks()}
    for queue in sorted(set(queues) - used):
        logger.warning("queue %s: no loaded task uses it (a typo in --queues?)", queue)
    logger.info(
        "worker process %d consuming %s with %d threads",
        os.getpid(),
        ", ".join(sorted(queues or broker.get_declared_queues())),
        threads,
    )
    stop.wait()
    logger.info("worker process %d stopping (grace %gs)", os.getpid(), config.worker.shutdown_grace)
    worker.stop(timeout=int(config.worker.shutdown_grace * 1000))
    broker.close()
    registry.store.close()


class Supervisor:
    """Keeps ``processes`` worker processes running until told to stop."""

    def __init__(
        self, config: FrameworkConfig, processes: int, threads: int, queues: Sequence[str]
    ) -> None:
        self.config = config
        self.processes = processes
        self.threads = threads
        self.queues = list(queues)
        self._context = multiprocessing.get_context("fork")
        self._children: list[BaseProcess] = []
        self._stopping = threading.Event()
        self._pid = os.getpid()

    def _spawn(self) -> BaseProcess:
        child = self._context.Process(
            target=_worker_process,
            args=(self.config, self.threads, self.queues),
            name="nagatha-worker",
            daemon=False,
        )
        child.start()
        return child

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask every worker process to finish (idempotent; safe from a signal handler)."""
        if os.getpid() != self._pid:
            # A worker process signalled before it installed its own handlers: it has
            # nothing to finish yet.
            raise SystemExit(0)
        self._stopping.set()

    def run(self) -> int:
        """Start the processes, restart any that die, stop them all on request; return 0."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self._children = [self._spawn() for _ in range(self.processes)]
        started = [time.monotonic()] * self.processes
        logger.info("supervisor %d started %d worker processes", os.getpid(), self.processes)
        delays: list[float | None] = [None] * self.processes
        # When each dead process is due to start again: every one waits its own delay, none
        # waits behind another's.
        due: list[float | None] = [None] * self.processes

        def schedule(index: int, ran: float) -> float:
            delay = restart_delay(delays[index], ran)
            delays[index], due[index] = delay, time.monotonic() + delay
            return delay

        while not self._stopping.wait(0.5):
            now = time.monotonic()
            for index, child in enumerate(self._children):
                if child.is_alive() or self._stopping.is_set():
                    continue
                when = due[index]
                if when is None:
                    delay = schedule(index, now - started[index])
                    logger.error(
                        "worker process %s died with exit code %s; starting a new one in %gs",
                        child.pid,
                        child.exitcode,
                        delay,
                    )
                elif now >= when:
                    try:
                        self._children[index] = self._spawn()
                    except OSError as exc:  # fork failed (memory, process limit)
                        delay = schedule(index, 0.0)
                        logger.error(
                            "could not start a worker process (%s); trying again in %gs",
                            exc,
                            delay,
                        )
                        continue
                    started[index], due[index] = time.monotonic(), None
        return self._shutdown()

    def _shutdown(self) -> int:
        for child in self._children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.worker.shutdown_grace + 10
        for child in self._children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive() and child.pid is not None:
                logger.error("worker process %d did not stop in time; killing it", child.pid)
                os.kill(child.pid, signal.SIGKILL)
                child.join(5)
        logger.info("supervisor %d stopped", os.getpid())
        return 0


def run_workers(
    config: FrameworkConfig, *, processes: int, threads: int, queues: Sequence[str]
) -> int:
    """Run ``processes`` supervised worker processes until SIGTERM/SIGINT; return an exit code."""
    return Supervisor(config, processes, threads, queues).run()
