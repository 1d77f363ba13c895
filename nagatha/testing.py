"""Test helpers shipped with the package: isolated services and hub processes.

Used by nagatha's own suite and usable by module authors:

* :class:`RabbitVhost` - a throwaway RabbitMQ vhost (``rabbitmqctl``), deleted afterwards.
* :class:`RedisPrefix` - a unique key prefix in a Redis DB, whose keys are deleted afterwards.
* :class:`HubProcess` - a ``nagatha ...`` subprocess with its log captured to a file, stopped by
  its own PID.
* :func:`wait_until` - poll a condition with a deadline (never a bare sleep).
* :class:`TcpRelay` - a loopback TCP relay a test can freeze: a connection that goes silent
  without closing, as one to a dead host does.
* :func:`embedded_hub` - a hub in memory with one module written from source and an
  in-process worker: Dramatiq's real hooks, no servers.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import httpx
import pika
import redis
from pika.adapters.blocking_connection import BlockingChannel

if TYPE_CHECKING:
    from nagatha.registry import TaskRegistry

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Return the first truthy value of ``condition()``; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout:g}s")
        time.sleep(interval)


def services_required() -> bool:
    """True in CI (or when asked): a missing service must fail a test run, never skip it."""
    return bool(os.environ.get("CI") or os.environ.get("NAGATHA_REQUIRE_SERVICES"))


def missing_service(message: str) -> None:
    """Fail the test when services are required (CI), else skip it; ``message`` says what."""
    import pytest

    if services_required():
        pytest.fail(f"{message}; integration tests must run in CI", pytrace=False)
    pytest.skip(f"{message} (set CI=1 to make this a failure)")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM end a pytest run as Ctrl-C does, so that fixtures still tear down.

    Call it from ``pytest_configure``. Without it a run stopped by SIGTERM (a CI timeout,
    ``kill PID``) leaves behind what its fixtures started: private RabbitMQ nodes and Redis
    servers, hub subprocesses.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago, outside the ephemeral port range.

    Outside the range the kernel picks client ports from, no outgoing connection can take the
    port meanwhile; nor, while a server on it is stopped by a fault test, can a client that
    reconnects to it be given it as its own port and connect to itself (TCP simultaneous
    open), which keeps the server from listening there again.
    """
    low, high = _ephemeral_range()
    candidates = range(10_000, low) if low - 10_000 >= 1_000 else range(high + 1, 65_536)
    for _ in range(100):
        port = random.choice(candidates)
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    with socket.socket() as sock:  # a crowded machine: any free port will have to do
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rabbitmqctl(*args: str, timeout: float = 60, stdin: str | None = None) -> str:
    """Run ``rabbitmqctl`` and return its output; raise ``RuntimeError`` on failure.

    Each call boots an Erlang VM: about a second of CPU, so callers do in one call what can be
    done in one.
    """
    done = subprocess.run(
        ["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def vhost_definitions(vhost: str, user: str = "guest") -> str:
    """RabbitMQ definitions (JSON) of ``vhost`` with every permission for ``user``.

    ``rabbitmqctl import_definitions`` creates both in one call, where ``add_vhost`` and
    ``set_permissions`` take two; an import only adds, it never removes anything.
    """
    access = dict.fromkeys(("configure", "write", "read"), ".*")
    permissions = [{"user": user, "vhost": vhost, **access}]
    return json.dumps({"vhosts": [{"name": vhost}], "permissions": permissions})


class RabbitVhost:
    """A vhost of its own on the local RabbitMQ, for guest; ``delete()`` removes it."""

    def __init__(self, name: str | None = None, host: str = LOOPBACK, port: int = 5672) -> None:
        self.name = name or f"nagatha-test-{uuid.uuid4().hex[:10]}"
        self.host, self.port = host, port
        rabbitmqctl("import_definitions", "--format", "json", stdin=vhost_definitions(self.name))

    @property
    def url(self) -> str:
        """An AMQP URL for guest on this vhost."""
        return f"amqp://guest:guest@{self.host}:{self.port}/{quote(self.name, safe='')}"

    def delete(self) -> None:
        """Delete the vhost and everything in it."""
        rabbitmqctl("delete_vhost", self.name)

    def __enter__(self) -> RabbitVhost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()


@contextmanager
def amqp_channel(url: str) -> Iterator[BlockingChannel]:
    """A channel on a connection of its own to ``url``, closed on exit."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


class RedisPrefix:
    """A unique key prefix in one Redis DB; ``cleanup()`` deletes every key under it."""

    def __init__(self, url: str = f"redis://{LOOPBACK}:6379/15") -> None:
        self.url = url
        self.prefix = f"nagatha-test-{uuid.uuid4().hex[:10]}:"
        self.client = redis.Redis.from_url(url)

    def cleanup(self) -> None:
        """Delete this prefix's keys."""
        keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()


class HubProcess:
    """A ``python -m nagatha ...`` subprocess whose stdout+stderr go to a log file.

    The log is a new file in ``cwd`` when one is given (tests pass a pytest temporary
    directory, which pytest prunes), else in the system's temporary directory.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.args = list(args)
        handle, path = tempfile.mkstemp(prefix="nagatha-proc-", suffix=".log", dir=cwd)
        os.close(handle)
        self.log_path = Path(path)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nagatha", *self.args],
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        """The subprocess's PID."""
        return self.process.pid

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 30, count: int = 1) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the log; return the last."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.process.poll() is not None and len(regex.findall(self.log())) < count:
                raise RuntimeError(
                    f"nagatha {' '.join(self.args)} exited "
                    f"{self.process.returncode}:\n{self.log()[-3000:]}"
                )
            matches = list(regex.finditer(self.log()))
            return matches[-1] if len(matches) >= count else None

        try:
            return wait_until(found, timeout, interval=0.1, message=f"log line /{pattern}/")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log so far:\n{self.log()[-3000:]}") from None

    def wait_for_ping(self, base_url: str, timeout: float = 60) -> None:
        """Wait until ``GET base_url/ping`` answers 200 (a ``nagatha serve``); fail at once,
        with the log, if the process exits meanwhile."""

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"nagatha {' '.join(self.args)} exited:\n{self.log()[-3000:]}")
            try:
                return httpx.get(f"{base_url}/ping", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout, 0.1, f"{base_url}/ping")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process (if it still runs)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait up to ``timeout``, SIGKILL if needed; return the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait(10)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the process and its children that share its process group, by PID."""
        for pid in _children_of(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def children(self) -> list[int]:
        """PIDs of the direct children of the process (e.g. worker processes)."""
        return _children_of(self.process.pid)


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def run_cli(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 60, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nagatha ARGS`` to completion and return the result (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "nagatha", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
    )


@contextmanager
def embedded_hub(
    root: Path, module: str, source: str, *, threads: int = 2
) -> Iterator[TaskRegistry]:
    """A hub on ``memory://`` with the module ``module`` (its ``__init__.py`` is ``source``,
    dedented, written under ``root``) and a worker of ``threads`` threads in this process,
    stopped on exit."""
    from nagatha.config import FrameworkConfig
    from nagatha.hub import create_hub
    from nagatha.worker import start_worker

    folder = root / module
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(source), encoding="utf-8")
    config = FrameworkConfig.model_validate(
        {
            "broker": {"url": "memory://"},
            "results": {"url": "memory://"},
            "modules": {"paths": [str(root)]},
        }
    )
    registry = create_hub(config)
    worker = start_worker(registry.broker, threads=threads)
    try:
        yield registry
    finally:
        worker.stop(timeout=2000)


class TcpRelay:
    """Relays loopback connections to ``host:port``; :meth:`freeze` stops all traffic.

    While frozen nothing is forwarded and nothing is closed: each side sees a peer that
    went silent (a dead host, a dropped route), which no socket error reports. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server = socket.create_server((LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self._open = True
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()

    def freeze(self) -> None:
        """Stop forwarding in both directions, on every connection (new ones too)."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again."""
        self._flowing.set()

    def close(self) -> None:
        """Close the listener and every relayed connection."""
        self._open = False
        self._flowing.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while self._open:
                self._flowing.wait()
                readable, _, _ = select.select([source], [], [], 0.2)
                if not readable or not self._flowing.is_set():
                    continue  # frozen meanwhile: what arrived stays unread
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket closed meanwhile
            pass
        finally:
            for sock in (source, sink):
                sock.close()
