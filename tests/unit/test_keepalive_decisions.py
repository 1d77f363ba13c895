"""The decisions of :class:`nagatha.api.keepalive.KeepAliveWorker`, on real sockets.

Whether a thread serves a connection's next request itself or gives the connection back to
gthread's main thread; the whole worker under gunicorn is
``tests/integration/test_api_keepalive.py``.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from nagatha.api.keepalive import KeepAliveWorker

REQUEST = b"GET /ping HTTP/1.1\r\nHost: hub\r\n\r\n"


def _worker(queued: int = 0) -> Any:
    """A worker with only what the decisions read (gunicorn's own start-up is not needed)."""
    worker: Any = KeepAliveWorker.__new__(KeepAliveWorker)
    worker.alive = True
    worker._queued = queued
    worker._queued_lock = threading.Lock()
    return worker


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def _conn(sock: socket.socket, buffered: bytes = b"", http2: bool = False) -> Any:
    return SimpleNamespace(
        sock=sock,
        is_http2=http2,
        parser=SimpleNamespace(unreader=SimpleNamespace(buf=io.BytesIO(buffered))),
    )


def test_a_request_on_the_socket_is_served_by_the_same_thread(pair: Any) -> None:
    server, client = pair
    client.sendall(REQUEST)
    assert _worker()._next_request_soon(_conn(server)) is True


def test_a_request_already_read_is_served_although_the_socket_is_quiet(pair: Any) -> None:
    assert _worker()._next_request_soon(_conn(pair[0], buffered=REQUEST)) is True


def test_a_quiet_connection_goes_back_to_the_poller_after_the_linger(pair: Any) -> None:
    assert _worker()._next_request_soon(_conn(pair[0])) is False


def test_a_closed_peer_is_handed_to_gthread_which_closes_it(pair: Any) -> None:
    server, client = pair
    client.close()
    assert _worker()._next_request_soon(_conn(server)) is True  # readable: EOF


def test_a_waiting_connection_goes_first_even_before_buffered_requests(pair: Any) -> None:
    server, client = pair
    client.sendall(REQUEST)
    assert _worker(queued=1)._next_request_soon(_conn(server, buffered=REQUEST)) is False


@pytest.mark.parametrize("case", ["stopping", "http2"])
def test_no_linger_when_stopping_or_for_http2(pair: Any, case: str) -> None:
    server, client = pair
    client.sendall(REQUEST)
    worker = _worker()
    worker.alive = case != "stopping"
    assert worker._next_request_soon(_conn(server, http2=case == "http2")) is False


def test_handle_serves_requests_while_they_come_and_counts_the_connection_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[object] = []
    monkeypatch.setattr(ThreadWorker, "handle", lambda self, conn: served.append(conn) or True)
    worker = _worker(queued=1)
    answers = iter([True, True, False])
    monkeypatch.setattr(worker, "_next_request_soon", lambda conn: next(answers))
    conn = object()
    assert worker.handle(conn) is True
    assert served == [conn, conn, conn]
    assert worker._queued == 0
