"""Serve the API: gunicorn for production, one process for the embedded hub.

``nagatha serve`` calls :func:`serve`. Two shapes:

* **gunicorn** (:class:`GunicornServer`): a master that never builds the app (so never holds a
  broker connection) and ``api.workers`` gthread workers that each build theirs after the fork
  (:mod:`nagatha.api.gunicorn_conf` has the settings and hooks).
* **embedded** (:func:`run_embedded`): the API *and* a Dramatiq worker in one process, on the
  in-memory broker and status store. This uses the standard library's threaded WSGI server,
  not gunicorn: the stub broker and the memory store exist only inside the process that
  created them, so the HTTP threads and the Dramatiq worker must share one process, and
  gunicorn always serves from forked workers (even one worker is a second process beside its
  master). A thread per request is plenty for a development hub; production uses gunicorn.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import socketserver
import threading
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from gunicorn.app.base import BaseApplication

from nagatha.api import gunicorn_conf
from nagatha.api.wsgi import LazyApp
from nagatha.config import MEMORY_URL, FrameworkConfig
from nagatha.errors import ConfigError

logger = logging.getLogger("nagatha.api")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: FrameworkConfig) -> None:
    """Raise :class:`ConfigError` if the API would listen beyond loopback with no token.

    ``api.allow_anonymous: true`` accepts that explicitly.
    """
    api = config.api
    if api.tokens or api.allow_anonymous or is_loopback(api.host):
        return
    raise ConfigError(
        f"refusing to serve on {api.host} without tokens: set NAGATHA_API_TOKENS "
        "(api.tokens), or api.allow_anonymous: true to serve anyone on the network"
    )


def embedded_config(config: FrameworkConfig, *, forced: bool) -> FrameworkConfig | None:
    """The config to serve embedded, or None when the config asks for gunicorn.

    ``forced`` (``--embedded``) puts broker and store in memory. Without it, a ``memory://``
    broker means embedded (the store may stay in Redis). A ``memory://`` store with RabbitMQ
    never gets here: the CLI refuses it first (:func:`nagatha.config.check_stores`).
    """
    if forced:
        return config.with_overrides(broker={"url": MEMORY_URL}, results={"url": MEMORY_URL})
    return config if config.embedded else None


def serve(config: FrameworkConfig, *, embedded: bool = False) -> int:
    """Serve the API as ``config`` says until SIGTERM/SIGINT; return the exit code.

    Raises :class:`ConfigError` before anything starts if the API would be exposed without
    tokens (:func:`check_exposure`).
    """
    check_exposure(config)
    chosen = embedded_config(config, forced=embedded)
    if chosen is not None:
        return run_embedded(chosen)
    return run_gunicorn(config)


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with the settings of :mod:`nagatha.api.gunicorn_conf` for ``config``."""

    def __init__(self, config: FrameworkConfig) -> None:
        self.hub_config = config
        super().__init__(prog="nagatha serve")

    def load_config(self) -> None:
        """Apply :func:`nagatha.api.gunicorn_conf.settings` (no gunicorn command line)."""
        for key, value in gunicorn_conf.settings(self.hub_config.api).items():
            self.cfg.set(key, value)

    def load(self) -> LazyApp:
        """The WSGI app, called in each worker; built by ``post_worker_init``, after the fork."""
        from nagatha.api.app import create_app

        config = self.hub_config
        return LazyApp(lambda: create_app(config))


def check_listen(host: str, port: int) -> None:
    """Raise :class:`ConfigError` if ``host:port`` cannot be listened on (in use, no such
    address), as the embedded server does; gunicorn would retry for 5 s, then exit 1."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # gunicorn binds "::" for both IPv6 and IPv4: so must the check, or a port taken on
        # IPv4 passes.
        dual = family == socket.AF_INET6 and socket.has_dualstack_ipv6()
        with socket.create_server((host, port), family=family, dualstack_ipv6=dual):
            pass
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None


def _cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):  # its errno is no errno: os.strerror misreads it
        return ConfigError(f"cannot listen on {address}: {exc.strerror} (check --host)")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(
        f"cannot listen on {address}: {reason} (choose another with --port or NAGATHA_API_PORT)"
    )


def run_gunicorn(config: FrameworkConfig) -> int:
    """Run the gunicorn master until it stops; return its exit code."""
    check_listen(config.api.host, config.api.port)
    try:
        GunicornServer(config).run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without its own access log (the app writes one)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Drop wsgiref's per-request line."""


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server with a thread per request; binds without a reverse DNS lookup."""

    daemon_threads = True
    allow_reuse_address = True
    #: listen() backlog: socketserver's default of 5 reset connections under a modest burst.
    request_queue_size = 128

    def server_bind(self) -> None:
        """Bind, then set the WSGI environ base (wsgiref would resolve the host name)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


def run_embedded(config: FrameworkConfig) -> int:
    """Serve the API and run a Dramatiq worker in this process until SIGTERM/SIGINT."""
    from nagatha.api.app import create_app
    from nagatha.hub import create_hub
    from nagatha.worker import start_worker

    api = config.api
    try:  # first: a port in use is one line, before anything else starts
        httpd = ThreadingWSGIServer((api.host, api.port), _QuietHandler)
    except OSError as exc:
        raise _cannot_listen(api.host, api.port, exc) from None
    registry = create_hub(config)
    app = create_app(config, registry)
    worker = start_worker(registry.broker, threads=config.worker.threads)
    httpd.set_app(app)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=httpd.serve_forever, name="nagatha-http", daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    logger.info(
        "embedded hub serving on http://%s:%d (in-process broker %s, store %s, %d worker threads)",
        host,
        port,
        config.broker.url,
        "memory://" if config.results.url == MEMORY_URL else "Redis",
        config.worker.threads,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        logger.info("embedded hub stopping")
        app.drain()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
        worker.stop(timeout=int(config.worker.shutdown_grace * 1000))
        app.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
