"""Servers the fault tests may break, load generators and counters.

The fault tests never touch the shared RabbitMQ (5672) and Redis (6379): each session starts a
RabbitMQ node of its own (:class:`RabbitNode`) and each test a Redis of its own
(:class:`RedisServer`), on free ports, in temporary directories. Everything here stops only the
processes it started, by PID.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import redis

from nagatha.errors import ServiceUnavailable
from nagatha.registry import TaskRegistry
from nagatha.stores import StatusStore
from nagatha.testing import (
    LOOPBACK,
    HubProcess,
    free_port,
    port_open,
    vhost_definitions,
    wait_until,
)
from nagatha.types import TaskRecord

STARTED_LINE = re.compile(r"task ([0-9a-f-]{36}) \S+ started")
SUCCEEDED_LINE = re.compile(r"task ([0-9a-f-]{36}) \S+ succeeded")


class ServerError(RuntimeError):
    """A private server could not be started or controlled."""


# -- RabbitMQ ---------------------------------------------------------------------------------


def _rabbitmq_server() -> str:
    """The server script: the Debian wrapper as root (it switches to ``rabbitmq``), else the
    real script, which runs as the calling user (the wrapper refuses other users)."""
    real = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if os.geteuid() != 0 and real.is_file():
        return str(real)
    return "rabbitmq-server"


class RabbitNode:
    """A RabbitMQ node of our own (name, ports, data and logs under ``base``).

    Started with the system's ``rabbitmq-server -detached`` and controlled with
    ``rabbitmqctl -n <node>``. Run as root, the Debian wrapper switches to the ``rabbitmq``
    user, so ``base`` is handed to that user. The node's own config file replaces
    ``/etc/rabbitmq/rabbitmq.conf``, which would otherwise make it listen on 5672.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = f"nagatha-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.pid: int | None = None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            {
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),
            }
        )
        return env

    @property
    def log_file(self) -> Path:
        """The node's main log."""
        return self.base / "log" / f"{self.name}.log"

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 120) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        (self.base / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = {LOOPBACK}:{self.port}\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("rabbitmq")
                for path in [self.base, *self.base.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
        done = subprocess.run(
            [_rabbitmq_server(), "-detached"],
            env=self._env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerError(f"rabbitmq-server -detached failed: {done.stderr.strip()[-500:]}")

        def up() -> bool:
            if "BOOT FAILED" in self._log_tail():
                raise ServerError(f"node {self.name} failed to boot:\n{self._log_tail()}")
            return port_open(LOOPBACK, self.port, timeout=0.5)

        try:
            wait_until(up, timeout, interval=0.25, message=f"node {self.name} listening")
        except TimeoutError:
            raise ServerError(f"node {self.name} did not start:\n{self._log_tail()}") from None
        self.ctl("await_startup", "--timeout", "60", timeout=90)
        pid_file = self.base / "mnesia" / f"{self.name}.pid"
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(pid_file.read_text().strip())

    def ctl(self, *args: str, timeout: float = 60, stdin: str | None = None) -> str:
        """Run ``rabbitmqctl -n <node> -q ARGS``; return stdout, raise on failure."""
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.name, "-q", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise ServerError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def add_vhost(self, user: str = "guest", password: str = "guest") -> str:
        """Create a vhost for ``user`` (created if not guest); return its AMQP URL."""
        vhost = f"faults-{uuid.uuid4().hex[:8]}"
        if user != "guest":
            self.ctl("add_user", user, password)
        self.ctl("import_definitions", "--format", "json", stdin=vhost_definitions(vhost, user))
        return f"amqp://{user}:{password}@{LOOPBACK}:{self.port}/{quote(vhost, safe='')}"

    def queue_depths(self, vhost: str) -> dict[str, int]:
        """Ready + unacked messages per queue of ``vhost``."""
        text = self.ctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers")
        depths = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                depths[parts[0]] = int(parts[1])
        return depths

    def close_all_connections(self) -> None:
        """Close every client connection of the node (a connection loss for all clients)."""
        self.ctl("close_all_connections", "--global", "nagatha fault test")

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (listeners closed, the Erlang node keeps running)."""
        self.ctl("stop_app", timeout=120)

    def start_app(self) -> None:
        """Start the RabbitMQ application again and wait until it accepts connections."""
        self.ctl("start_app", timeout=120)
        wait_until(lambda: port_open(LOOPBACK, self.port, 0.5), 60, 0.1, "node listening")

    def stop(self) -> None:
        """Halt the node; SIGKILL its PID if it does not go; remove its files."""
        try:
            if self.pid is not None or port_open(LOOPBACK, self.dist_port, 0.5):
                with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                    self.ctl("stop", timeout=60)
            if self.pid is not None and _alive(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# -- Redis ------------------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of our own: free port, append-only file in ``base``, a password.

    ``kill()`` SIGKILLs it; ``start()`` again brings it back on the same port and directory
    with its data (``appendfsync always``: every acknowledged write is in the file).
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """URL of DB 0 with the password."""
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new client (the caller closes it)."""
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.base / "redis.log").read_text(errors="replace")[-1500:]
            raise ServerError(f"redis-server exited {self.process.returncode}:\n{log}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 30) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--dir",
                str(self.base),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--requirepass",
                self.password,
                "--daemonize",
                "no",
                "--logfile",
                str(self.base / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout, 0.05, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop the server if it runs (SIGTERM, then SIGKILL) and remove its files."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# -- processes --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _is_ours(pid: int) -> bool:
    """True if ``pid`` still is a ``python -m nagatha`` process (guards against PID reuse)."""
    try:
        return b"nagatha" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def kill_tree(process: HubProcess, children: Iterable[int] | None = None) -> None:
    """SIGKILL a hub process and its worker processes, by PID, nothing gracefully.

    The children are listed first, the supervisor is killed next (so it cannot start new
    ones), then each child that is still one of ours.
    """
    pids = list(children) if children is not None else process.children()
    process.signal(signal.SIGKILL)
    process.process.wait(10)
    for pid in pids:
        if _alive(pid) and _is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(_alive(p) for p in pids), 10, 0.05, "worker processes gone")


# -- load -------------------------------------------------------------------------------------


@dataclass
class Refusal:
    """A submit the hub refused: which id, why, how long the call took, when it ended."""

    task_id: str
    error: str
    seconds: float
    at: float


class Submitters:
    """Submitter threads that run ``_run`` until :meth:`stop` (base of the load generators)."""

    #: Thread names are ``<thread_prefix>-<n>``; ``stop`` waits this long for each thread.
    thread_prefix = "load"
    join_timeout = 60.0
    threads: int

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the submitter threads."""
        for index in range(self.threads):
            name = f"{self.thread_prefix}-{index}"
            thread = threading.Thread(target=self._run, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop the submitters and wait for them (each is at most one request away)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_timeout)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise AssertionError(f"submitter threads hang: {stuck}")


@dataclass
class Load(Submitters):
    """Threads that submit ``diagnostics.sleep`` tasks through the registry at a steady pace.

    Every id is chosen here (``submit(task_id=...)``), so a refused submit is known by id and
    can be checked for leftovers. ``ServiceUnavailable`` is the expected refusal; anything else
    lands in ``unexpected``.
    """

    registry: TaskRegistry
    threads: int = 2
    interval: float = 0.05
    seconds: tuple[float, float] = (0.05, 0.2)
    accepted: list[tuple[str, float]] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.submit_one()
            self._stop.wait(self.interval)

    def submit_one(self, seconds: float | None = None) -> str | None:
        """Submit one task; return its id if accepted."""
        task_id = str(uuid.uuid4())
        value = seconds if seconds is not None else round(random.uniform(*self.seconds), 3)
        begun = time.monotonic()
        try:
            self.registry.submit("diagnostics.sleep", kwargs={"seconds": value}, task_id=task_id)
        except ServiceUnavailable as exc:
            ended = time.monotonic()
            with self._lock:
                self.refused.append(Refusal(task_id, type(exc).__name__, ended - begun, ended))
            return None
        except Exception as exc:  # noqa: BLE001 - every other error is a finding
            with self._lock:
                self.unexpected.append(f"{type(exc).__name__}: {exc}")
            return None
        with self._lock:
            self.accepted.append((task_id, time.monotonic()))
        return task_id

    @property
    def ids(self) -> list[str]:
        """Ids of every accepted task."""
        with self._lock:
            return [task_id for task_id, _ in self.accepted]

    def accepted_after(self, moment: float) -> list[str]:
        """Ids accepted after ``moment`` (monotonic)."""
        with self._lock:
            return [task_id for task_id, at in self.accepted if at > moment]

    def refused_between(self, start: float, end: float) -> list[Refusal]:
        """Refusals that ended between ``start`` and ``end`` (monotonic)."""
        with self._lock:
            return [r for r in self.refused if start <= r.at <= end]


def wait_submitted(load: Load, count: int, timeout: float = 30) -> None:
    """Wait until ``load`` has ``count`` more accepted tasks than now."""
    target = len(load.ids) + count
    wait_until(lambda: len(load.ids) >= target, timeout, message=f"{count} more submits")


# -- outcomes ---------------------------------------------------------------------------------


def records_of(store: StatusStore, ids: Iterable[str]) -> dict[str, TaskRecord | None]:
    """The current record of each id."""
    return {task_id: store.get(task_id) for task_id in ids}


def count_status(store: StatusStore, ids: Iterable[str], status: str) -> int:
    """How many of ``ids`` have ``status`` now."""
    return sum(1 for r in records_of(store, ids).values() if r is not None and r.status == status)


def wait_final(
    store: StatusStore, ids: Iterable[str], timeout: float
) -> dict[str, TaskRecord | None]:
    """Wait up to ``timeout`` s until every id has a final record; return the last records."""
    records: dict[str, TaskRecord | None] = {task_id: None for task_id in ids}

    def all_final() -> bool:
        for task_id, record in records.items():
            if record is None or not record.status.final:
                records[task_id] = store.get(task_id)
        return all(r is not None and r.status.final for r in records.values())

    with contextlib.suppress(TimeoutError):
        wait_until(all_final, timeout, interval=0.2, message="every task final")
    return records


def executions(logs: Iterable[str]) -> Counter[str]:
    """How often each task id was started, from the workers' ``task <id> <name> started``."""
    counts: Counter[str] = Counter()
    for text in logs:
        counts.update(STARTED_LINE.findall(text))
    return counts


def wall(moment: float) -> datetime:
    """The wall-clock time of a ``time.monotonic()`` reading (to compare with records)."""
    return datetime.fromtimestamp(time.time() - (time.monotonic() - moment), UTC)


def last_completion(records: Iterable[TaskRecord | None]) -> datetime | None:
    """The latest ``completed_at`` among ``records``."""
    times = [r.completed_at for r in records if r is not None and r.completed_at is not None]
    return max(times) if times else None


@dataclass
class Outcome:
    """The figures of one fault test, as the README table shows them."""

    fault: str
    load: str
    accepted: int
    finished: int
    lost: int
    executed_twice: int
    recovery_s: float | None
    observed: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "fault": self.fault,
            "load": self.load,
            "accepted": self.accepted,
            "finished": self.finished,
            "lost": self.lost,
            "executed_twice": self.executed_twice,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "observed": self.observed,
            **self.extra,
        }


def summarize(
    fault: str,
    load: str,
    records: dict[str, TaskRecord | None],
    starts: Counter[str],
    recovered_from: float | None,
    observed: str,
    **extra: Any,
) -> Outcome:
    """Build an :class:`Outcome`; recovery = fault end → last accepted task final (seconds)."""
    finished = [r for r in records.values() if r is not None and r.status.final]
    recovery = None
    if recovered_from is not None and len(finished) == len(records):
        last = last_completion(finished)
        if last is not None:
            recovery = max(0.0, (last - wall(recovered_from)).total_seconds())
    return Outcome(
        fault=fault,
        load=load,
        accepted=len(records),
        finished=len(finished),
        lost=len(records) - len(finished),
        executed_twice=sum(1 for task_id in records if starts[task_id] >= 2),
        recovery_s=recovery,
        observed=observed,
        extra=extra,
    )
