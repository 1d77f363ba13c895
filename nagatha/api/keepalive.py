"""gunicorn's gthread worker, serving a keep-alive connection's next request on the same thread.

gunicorn's :class:`~gunicorn.workers.gthread.ThreadWorker` hands every keep-alive connection
back to its main thread after each response: the socket goes back into the main thread's
poller and, when the next request arrives, is submitted to the thread pool again. That round
trip costs about half of gunicorn's CPU per request while a process has a few busy clients (a
trivial WSGI app on 2 cores: about 215 µs per request with gthread, 100-135 µs here with 1-4
clients; in the hub, 51 futex calls per task with gthread, 6 here). With 8 busy clients per
process the GIL's handoffs dominate and both cost about 240 µs.

:class:`KeepAliveWorker` keeps serving the connection it just answered while the client sends
more, which is what a service's HTTP client pool and a client that long-polls after a submit
do. After each response, in this order:

* another connection waits for a thread: this one goes back to gthread's main thread (which
  serves what it holds buffered, pipelined requests included, after the others), so no
  client keeps a thread while another waits for one;
* a request already read (pipelined, or pending in TLS) is served at once;
* otherwise the thread waits up to :data:`LINGER_MS` for the next request, in ``poll`` (no
  CPU, no GIL) and in 1 ms slices, giving the connection back as soon as another one waits
  for a thread; nothing comes: back to the main thread's poller, as in gthread.

Not when the worker is stopping, nor for HTTP/2. Everything else (parsing, keep-alive
timeouts, graceful stop, ``max_requests``) is gthread's, from gunicorn 27 on:
``ThreadWorker.handle`` returns ``True`` when the connection stays open, and
``finish_request`` queues a connection whose next request is already buffered.
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from nagatha.api.wsgi import LazyApp

#: How long a thread waits for the next request of the connection it just served.
LINGER_MS = 5
#: Seconds before gunicorn's graceful timeout by which a stopping worker answers its long
#: polls: enough to write the answers before it closes their connections.
DRAIN_MARGIN_S = 5.0


class KeepAliveWorker(ThreadWorker):  # type: ignore[misc]
    """A gthread worker that serves a connection's back-to-back requests on one thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # connections submitted to the pool that no thread has taken yet
        self._queued_lock = threading.Lock()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop as gthread does, and have the long polls answered
        :data:`DRAIN_MARGIN_S` before the graceful timeout, final or not (set on the main
        thread, not in the signal handler): they used to wait on until it cut their
        connections, and their clients got no answer at all."""
        super().handle_exit(sig, frame)
        if isinstance(self.wsgi, LazyApp) and self.wsgi.loaded:
            within = max(0.0, self.cfg.graceful_timeout - DRAIN_MARGIN_S)
            self.method_queue.defer(self.wsgi.load().drain, within)

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
        """True if this thread should serve ``conn``'s next request (see the module docstring)."""
        if not self.alive or conn.is_http2 or self._others_wait():
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
            if poller.poll(1):
                return not self._others_wait()
            if self._others_wait():
                return False
        return False

    def _others_wait(self) -> bool:
        """True while another connection waits for a thread of the pool."""
        return self._queued > 0
