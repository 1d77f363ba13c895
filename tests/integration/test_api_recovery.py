"""The API starts while RabbitMQ and Redis are unreachable, answers 503, and recovers.

The services are made unreachable by pointing the API at ports where a small TCP forwarder of
the test's own later starts listening (the real services are never touched).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from nagatha.testing import LOOPBACK, HubProcess, free_port, run_cli, wait_until

pytestmark = pytest.mark.integration

TOKEN = "recovery-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class SilentListener:
    """Accept on ``LOOPBACK:port`` (0: a free one) and never answer: a port that is not
    RabbitMQ, or a hung one."""

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.create_server((LOOPBACK, port))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._take(client)

    def _take(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)

    def close(self) -> None:
        """Stop listening and cut every connection."""
        with self._lock:
            for sock in self._sockets:
                sock.close()


class Forwarder(SilentListener):
    """Accept on ``LOOPBACK:port`` and pipe each connection to ``LOOPBACK:target``."""

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        super().__init__(port)

    def _take(self, client: socket.socket) -> None:
        upstream = socket.create_connection((LOOPBACK, self.target), timeout=5)
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def via_port(url: str, port: int) -> str:
    """``url`` with its port replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}{LOOPBACK}:{port}"))


@pytest.fixture
def forwarders() -> Iterator[list[Forwarder]]:
    started: list[Forwarder] = []
    yield started
    for forwarder in started:
        forwarder.close()


def test_api_starts_with_both_services_down_and_recovers_when_they_return(
    hub_env: dict[str, str], start_process: type[HubProcess], forwarders: list[Forwarder]
) -> None:
    broker_port, redis_port, api_port = free_port(), free_port(), free_port()
    env = {
        **hub_env,
        "NAGATHA_API_TOKENS": TOKEN,
        "NAGATHA_BROKER_URL": via_port(hub_env["NAGATHA_BROKER_URL"], broker_port),
        "NAGATHA_RESULTS_URL": via_port(hub_env["NAGATHA_RESULTS_URL"], redis_port),
    }
    process = start_process(
        ["serve", "--port", str(api_port), "--workers", "1", "--threads", "4"], env
    )
    base_url = f"http://{LOOPBACK}:{api_port}"
    process.wait_for_ping(base_url)  # while the services are down
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client:
        assert client.get("/health").status_code == 503
        assert client.post("/tasks/run", json={"task_name": "diagnostics.noop"}).status_code == 503

        forwarders.append(Forwarder(broker_port, 5672))
        forwarders.append(Forwarder(redis_port, 6379))

        wait_until(lambda: client.get("/health").status_code == 200, 30, 0.2, "/health 200")
        response = client.post("/tasks/run", json={"task_name": "diagnostics.noop"})
        assert response.status_code == 202, response.text
        record = client.get(response.json()["status_url"]).json()
        assert record["status"] == "pending"


def test_a_broker_that_never_answers_the_handshake_is_unavailable_and_leaves_no_record(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    silent = SilentListener()
    api_port = free_port()
    env = {
        **hub_env,
        "NAGATHA_BROKER_URL": via_port(hub_env["NAGATHA_BROKER_URL"], silent.port),
        "NAGATHA_BROKER_CONNECT_TIMEOUT": "0.5",
    }
    records = redis.Redis.from_url(hub_env["NAGATHA_RESULTS_URL"])
    pattern = f"{hub_env['NAGATHA_RESULTS_PREFIX']}task:*"
    try:
        process = start_process(
            ["serve", "--port", str(api_port), "--workers", "1", "--threads", "2"], env
        )
        base_url = f"http://{LOOPBACK}:{api_port}"
        process.wait_for_ping(base_url)
        response = httpx.post(
            f"{base_url}/tasks/run", json={"task_name": "diagnostics.noop"}, timeout=30
        )
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert "no AMQP handshake in time" in response.json()["description"]

        cli = run_cli(["run", "diagnostics.noop"], env)
        assert cli.returncode == 3, cli.stderr
        assert cli.stderr.count("\n") == 1 and "no AMQP handshake in time" in cli.stderr

        assert list(records.scan_iter(pattern)) == []  # neither id was handed out
        assert "Traceback" not in process.log()
    finally:
        silent.close()
        records.close()
