"""Keep-alive connections under ``nagatha serve`` (:mod:`nagatha.api.keepalive`).

The server's worker class serves a connection's next request on the thread that answered the
last one. These tests hold it to what gthread guaranteed and to what it adds: pipelined
requests answered, a connection idle past the linger still served, and a busy connection
never starving another one when every thread is taken.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from test_api import start_api

from nagatha.api.keepalive import LINGER_MS
from nagatha.testing import HubProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIMEOUT = 10.0
PING = b"GET /ping HTTP/1.1\r\nHost: hub\r\n\r\n"


class Connection:
    """One raw HTTP/1.1 connection that reads answers by their Content-Length."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def answer(self) -> tuple[int, dict[str, object]]:
        """Read one response; return its status code and JSON body."""
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), json.loads(body)

    def ping(self) -> int:
        self.sock.sendall(PING)
        return self.answer()[0]

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk


@pytest.fixture
def one_thread(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> Iterator[tuple[HubProcess, str]]:
    """An API with one gunicorn worker of one thread: every connection competes for it."""
    yield start_api(start_process, hub_env, "--workers", "1", "--threads", "1")


def test_pipelined_requests_are_all_answered_at_once(one_thread: tuple[HubProcess, str]) -> None:
    # Read together, they leave the socket not readable for the second and third: they must
    # be served from the parser's buffer.
    connection = Connection(one_thread[1])
    try:
        connection.sock.sendall(PING * 3)
        assert [connection.answer()[0] for _ in range(3)] == [200, 200, 200]
    finally:
        connection.close()


def test_one_connection_serves_back_to_back_and_idle_requests(
    one_thread: tuple[HubProcess, str],
) -> None:
    connection = Connection(one_thread[1])
    try:
        assert [connection.ping() for _ in range(50)] == [200] * 50
        # Idle past the linger: the connection is back in gunicorn's poller, still served.
        time.sleep(5 * LINGER_MS / 1000)
        assert connection.ping() == 200
    finally:
        connection.close()
    assert "Traceback" not in one_thread[0].log()


def test_a_busy_connection_does_not_keep_the_only_thread_from_another(
    one_thread: tuple[HubProcess, str],
) -> None:
    base_url = one_thread[1]
    stop = threading.Event()
    busy_answers: list[int] = []

    def busy() -> None:
        connection = Connection(base_url)
        try:
            while not stop.is_set():
                busy_answers.append(connection.ping())
        finally:
            connection.close()

    runner = threading.Thread(target=busy, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(busy_answers) < 20:  # the busy connection holds the thread by now
            assert time.monotonic() < deadline and runner.is_alive(), busy_answers
            time.sleep(0.01)
        other = Connection(base_url)
        try:
            assert [other.ping() for _ in range(5)] == [200] * 5
        finally:
            other.close()
        assert runner.is_alive(), "the busy client stopped: the test proved nothing"
    finally:
        stop.set()
        runner.join(TIMEOUT)
    assert set(busy_answers) == {200}
