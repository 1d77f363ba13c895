"""What every benchmark scenario shares: isolated services, processes, broker probes, statistics.

* :class:`Services` - one RabbitMQ vhost and one Redis key prefix for the whole run, removed at
  the end; the environment every hub or contender process gets.
* :class:`Proc` - a subprocess started by the benchmark, with its process tree (CPU time, peak
  RSS), paused and resumed or stopped by PID only.
* :func:`queue_state` - ready messages and consumers of a queue (AMQP passive declare).
* :func:`summary`, :func:`percentile` - the statistics the report shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import redis

from nagatha.testing import LOOPBACK, RabbitVhost, wait_until

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent.parent
CONTENDERS = BENCH_DIR / "contenders"
MODULES = ROOT / "modules"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Every process this run started, so that a last-resort cleanup can stop them by PID.
STARTED: list[Proc] = []


class Skip(Exception):
    """A contender or scenario cannot run here; the message says why (shown as "skipped")."""


# -- services -------------------------------------------------------------------------------

#: The servers every contender shares, by the loopback port they listen on.
SERVER_PORTS: dict[str, int] = {"broker": 5672, "redis": 6379}


def listening_pids(port: int) -> list[int]:
    """PIDs of the processes listening on TCP ``port`` (empty where ``/proc`` hides them)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not inodes:
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return pids


@dataclass
class ServerCpu:
    """CPU of RabbitMQ and Redis, to charge each contender with what it made them do.

    It includes what the load generator makes them do, the same for every contender.
    """

    pids: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def find(cls) -> ServerCpu:
        return cls({name: listening_pids(port) for name, port in SERVER_PORTS.items()})

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pids) for name, pids in self.pids.items() if pids}

    def figures(self, before: dict[str, float], tasks: int) -> dict[str, float]:
        """``<server>_cpu_ms_per_task`` since ``before`` (servers whose PIDs were found)."""
        now = self.snapshot()
        return {
            f"{name}_cpu_ms_per_task": 1000 * (now[name] - before[name]) / max(1, tasks)
            for name in before
            if name in now
        }


@dataclass
class Services:
    """A vhost and a Redis key space of this run; :meth:`close` removes both."""

    redis_db: int
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    vhost: RabbitVhost | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nagatha-bench-")))
    servers: ServerCpu = field(default_factory=ServerCpu)

    def open(self) -> Services:
        self.vhost = RabbitVhost(name=f"nagatha-bench-{self.run_id}")
        self.redis().ping()
        self.servers = ServerCpu.find()
        (self.workdir / "home").mkdir(exist_ok=True)
        return self

    @property
    def amqp_url(self) -> str:
        assert self.vhost is not None
        return self.vhost.url

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:6379/{self.redis_db}"

    @property
    def hub_prefix(self) -> str:
        """Prefix of every key the hub writes in this run."""
        return f"nagatha-bench-{self.run_id}:"

    def task_id(self) -> str:
        """A UUID-shaped Celery/hub task id whose first group is this run's id (for cleanup)."""
        return f"{self.run_id}{str(uuid.uuid4())[8:]}"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def hub_env(self, **extra: str) -> dict[str, str]:
        """Environment of a ``nagatha`` process: this run's broker, store and modules only."""
        env = base_env(self.workdir)
        env.update(
            NAGATHA_BROKER_URL=self.amqp_url,
            NAGATHA_RESULTS_URL=self.redis_url,
            NAGATHA_RESULTS_PREFIX=self.hub_prefix,
            NAGATHA_MODULES_PATHS=str(MODULES),
            NAGATHA_LOGGING_LEVEL="WARNING",
            NAGATHA_BRIDGE_RESULT_BACKEND_URL=self.redis_url,
        )
        env.update(extra)
        return env

    def contender_env(self, **extra: str) -> dict[str, str]:
        """Environment of a contender process (Celery, FastAPI, bare Dramatiq)."""
        env = base_env(self.workdir)
        env.update(
            BENCH_BROKER_URL=self.amqp_url,
            BENCH_BACKEND_URL=self.redis_url,
            BENCH_ID_PREFIX=self.run_id,
            PYTHONPATH=str(CONTENDERS),
        )
        env.update(extra)
        return env

    def close(self) -> None:
        """Delete the vhost, every Redis key of this run (hub prefix, Celery results) and
        the work directory."""
        errors = []
        try:
            client = self.redis()
            for pattern in (f"{self.hub_prefix}*", f"celery-task-meta-{self.run_id}*"):
                batch = list(client.scan_iter(match=pattern, count=2000))
                for start in range(0, len(batch), 1000):
                    client.delete(*batch[start : start + 1000])
            client.close()
        except redis.RedisError as exc:
            errors.append(f"redis cleanup: {exc}")
        if self.vhost is not None:
            try:
                self.vhost.delete()
            except (RuntimeError, subprocess.SubprocessError) as exc:
                errors.append(f"vhost cleanup: {exc}")
        # The processes' logs go with it: a failure is reported with its log's tail.
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            print("warning: " + "; ".join(errors), file=sys.stderr)


def base_env(workdir: Path) -> dict[str, str]:
    """The inherited environment without hub settings, with an empty HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NAGATHA_", "BENCH_"))}
    env["HOME"] = str(workdir / "home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- processes ------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if _start_time(current) is None:
            continue
        tree.append(current)
        todo += _children(current)
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def peak_rss_mb(pids: Iterable[int]) -> tuple[float, float]:
    """Sum and max of ``VmHWM`` (peak resident set) over ``pids``, in MiB."""
    values = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    values.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return (round(sum(values), 1), round(max(values), 1)) if values else (0.0, 0.0)


class Proc:
    """A subprocess of the benchmark; its log goes to a file; stopped or signalled by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        workdir: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=str(cwd or workdir),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.process.pid
        # (pid, start time) of every process seen in the tree: only those are ever signalled.
        self._known: dict[int, int | None] = {}
        STARTED.append(self)

    def tree(self) -> list[int]:
        pids = process_tree(self.pid) if self.alive() else []
        for pid in pids:
            self._known.setdefault(pid, _start_time(pid))
        return pids

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far by the processes of this tree."""
        return cpu_seconds(self.tree())

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check(self) -> None:
        """Raise :class:`Skip` with the log tail if the process has exited."""
        if not self.alive():
            tail = self.log_tail().strip().splitlines()[-6:]
            raise Skip(f"{self.name} exited with {self.process.returncode}: " + " | ".join(tail))

    def signal_tree(self, signum: int) -> None:
        """Send ``signum`` to every process of the tree (SIGSTOP/SIGCONT to pause a contender)."""
        for pid in self.tree():
            _kill_known(pid, self._known.get(pid), signum)

    def terminate(self) -> None:
        """Ask the process to stop: SIGCONT (in case it is paused), then SIGTERM to the root."""
        self.tree()
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the root (a graceful stop of its children), then SIGKILL what is left."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        for pid, started in self._known.items():
            _kill_known(pid, started, signal.SIGKILL)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def stop_all() -> None:
    """Stop every process of this run that still runs (after an error or an interrupt)."""
    stop_procs([proc for proc in STARTED if proc.alive()])


def stop_procs(procs: Sequence[Proc], timeout: float = 20.0) -> None:
    """Stop ``procs`` together: all are asked first, then each is waited for (or killed)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.stop(timeout)


def _kill_known(pid: int, started: int | None, signum: int) -> None:
    """Signal ``pid`` only if it is still the process we saw (same start time)."""
    if started is None or _start_time(pid) != started:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


@dataclass
class Stack:
    """The processes of one contender, measured together (CPU, peak RSS)."""

    name: str
    procs: list[Proc] = field(default_factory=list)
    description: str = ""

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in proc.tree()]

    def check(self) -> None:
        for proc in self.procs:
            proc.check()

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def memory(self) -> dict[str, Any]:
        pids = self.pids()
        total, largest = peak_rss_mb(pids)
        return {"peak_rss_mb_sum": total, "peak_rss_mb_max": largest, "processes": len(pids)}

    def pause(self) -> None:
        for proc in self.procs:
            proc.signal_tree(signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.procs:
            proc.signal_tree(signal.SIGCONT)

    def stop(self) -> None:
        stop_procs(self.procs)


# -- broker probes --------------------------------------------------------------------------


def amqp_connection(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def queue_state(channel_holder: list[Any], url: str, queue: str) -> tuple[int, int] | None:
    """``(ready messages, consumers)`` of ``queue``; ``None`` while it does not exist.

    ``channel_holder`` keeps ``[connection, channel]`` between calls (a passive declare of a
    missing queue closes the channel, so it is reopened here).
    """
    if not channel_holder or channel_holder[0].is_closed:
        channel_holder[:] = [amqp_connection(url), None]
    connection = channel_holder[0]
    if channel_holder[1] is None or channel_holder[1].is_closed:
        channel_holder[1] = connection.channel()
    try:
        ok = channel_holder[1].queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        channel_holder[1] = None
        return None
    return ok.method.message_count, ok.method.consumer_count


class QueueProbe:
    """Polls one queue's ready count and consumers over a connection of its own."""

    def __init__(self, url: str, queue: str) -> None:
        self.url, self.queue = url, queue
        self._holder: list[Any] = []

    def state(self) -> tuple[int, int] | None:
        return queue_state(self._holder, self.url, self.queue)

    def wait_consumers(self, count: int, timeout: float, stack: Stack | None = None) -> None:
        def ready() -> bool:
            if stack is not None:
                stack.check()
            state = self.state()
            return state is not None and state[1] >= count

        wait_until(ready, timeout, interval=0.1, message=f"{count} consumers on {self.queue}")

    def close(self) -> None:
        if self._holder and not self._holder[0].is_closed:
            self._holder[0].close()


def unacked(vhost: str) -> dict[str, int]:
    """Messages delivered but not yet acknowledged, by queue of ``vhost`` (``rabbitmqctl``)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of one figure over the rounds, and the rounds themselves."""
    clean = [v for v in values if v == v]
    if not clean:
        return {"median": None, "min": None, "max": None, "runs": list(values)}
    return {
        "median": round(statistics.median(clean), 3),
        "min": round(min(clean), 3),
        "max": round(max(clean), 3),
        "runs": [round(v, 3) for v in values],
    }


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value
