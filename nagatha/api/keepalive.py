"""gunicorn's gthread worker, serving a keep-alive connection's next request on the same thread.

gunicorn's :class:`~gunicorn.workers.gthread.ThreadWorker` hands every keep-alive connection
back to its main thread after each response: the socket goes back into the main thread's
poller and, when the next request arrives, is submitted to the thread pool again. That round
trip costs about half of gunicorn's CPU per request (a trivial WSGI app on 2 cores: 210 µs per
request with gthread, 110 µs here; in the hub, 51 futex calls per task with gthread, 6 here).
Before gunicorn 27 it also dropped pipelined requests: the bytes already read sat in the
parser's buffer, the socket never turned readable again, and the keep-alive timeout closed
the connection.

:class:`KeepAliveWorker` keeps serving the connection it just answered while the client sends
more, which is what a service's HTTP client pool and a client that long-polls after a submit
do:

* a request already read (pipelined, or pending in TLS) is served at once, whatever the
  gunicorn version;
* otherwise the thread waits up to :data:`LINGER_MS` for the next request (blocked in
  ``poll``, no CPU, no GIL);
* it does not wait when no other thread of the pool is free (a new connection must always
  find a thread; queued work then waits at most :data:`LINGER_MS`), when the worker is
  stopping, or for HTTP/2; the connection then goes back to the poller exactly as in gthread.

Everything else (parsing, keep-alive timeouts, graceful stop, ``max_requests``) is gthread's.
Written against gunicorn 25.1-27: ``ThreadWorker.handle`` returns ``True`` when the
connection stays open.
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: How long a thread waits for the next request of the connection it just served.
LINGER_MS = 5


class KeepAliveWorker(ThreadWorker):  # type: ignore[misc]
    """A gthread worker that serves a connection's back-to-back requests on one thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # connections submitted to the pool that no thread has taken yet
        self._queued_lock = threading.Lock()

    def enqueue_req(self, conn: Any) -> None:
        """Submit ``conn`` to the pool (main thread), counted until a thread takes it."""
        with self._queued_lock:
            self._queued += 1
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve ``conn`` as gthread does, then its next requests while they come promptly."""
        with self._queued_lock:
            self._queued -= 1
        result = super().handle(conn)
        while result is True and self._next_request_soon(conn):
            result = super().handle(conn)
        return result

    def _next_request_soon(self, conn: Any) -> bool:
        """True if ``conn`` has (or gets within the linger) a request this thread may serve."""
        if not self.alive or conn.is_http2:
            return False
        with conn.parser.unreader.buf.getbuffer() as buffered:
            if buffered.nbytes:
                return True  # pipelined: already read, the socket will not turn readable for it
        pending = getattr(conn.sock, "pending", None)
        if pending is not None and pending():
            return True  # TLS: decrypted bytes wait in the SSL object, not in the socket
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        for _ in range(LINGER_MS):
            if self._queued > 0:
                return False  # another connection waits for a thread: give this one back
            if poller.poll(1):
                return True
        return False
