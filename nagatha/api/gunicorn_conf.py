"""gunicorn settings and hooks for the API (``nagatha serve`` applies them; so can gunicorn).

Standalone: ``gunicorn -c python:nagatha.api.gunicorn_conf nagatha.api.wsgi:application``
(then ``--bind``, ``--workers``, ``--threads`` on gunicorn's command line). ``nagatha serve``
takes the same module-level settings and adds bind, workers, threads and timeout from the
``api`` config section (:func:`settings`).

Decisions:

* ``gthread`` workers: Dramatiq keeps one pika connection per thread, which threads reuse;
  gevent would make that one connection per greenlet, never closed (dramatiq issue #381).
  The class is gthread's, extended by :class:`nagatha.api.keepalive.KeepAliveWorker`: a
  client's back-to-back requests stay on one thread while no other connection waits for
  one, which halves gunicorn's own CPU per request while few clients are busy at once.
* ``preload_app = False``: the app (hub, modules, broker) is built in each worker after the
  fork, so the master never holds a broker connection a fork could share. ``post_fork`` also
  drops an app inherited by mistake (someone forcing preload) without touching its sockets.
* Graceful stop: on SIGTERM workers stop accepting and finish in-flight requests for up to
  ``graceful_timeout`` seconds; long polls (``?wait=``) are answered by 5 s before it, final
  or not (:meth:`KeepAliveWorker.handle_exit`), and their clients ask again.
  ``worker_exit`` closes each worker's broker and Redis connections.
* SIGHUP restarts the workers gracefully: new workers import the modules afresh.
* Access log: written by the app (:class:`nagatha.api.middleware.AccessLog`) through nagatha's
  logging (text or JSON lines, request id, secrets redacted), so gunicorn's own is off, and
  gunicorn's error log goes through the same handler (:class:`HubLogger`).
* No control socket: one fixed default path per user would be shared by every server on the
  machine; manage the server with signals.
* Requests gunicorn refuses itself (request line or headers over its limits, malformed HTTP)
  are answered with the API's JSON error body, not gunicorn's HTML page (``post_fork``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from gunicorn import util
from gunicorn.glogging import Logger

from nagatha.config import ApiConfig

logger = logging.getLogger("nagatha.api")

#: gunicorn's exit code for a worker that could not boot: the master then stops.
WORKER_BOOT_ERROR = 3

worker_class = "nagatha.api.keepalive.KeepAliveWorker"
preload_app = False
graceful_timeout = 30
keepalive = 5
accesslog = None
control_socket_disable = True
proc_name = "nagatha-api"


class HubLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, sending its error log through the root logger (nagatha's handler)."""

    def setup(self, cfg: Any) -> None:
        """Configure as gunicorn does, then drop its own handler and propagate instead."""
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True


logger_class = HubLogger


def settings(api: ApiConfig) -> dict[str, Any]:
    """All settings for ``api``: this module's, plus bind, workers, threads, timeout."""
    host = f"[{api.host}]" if ":" in api.host else api.host
    return {
        "worker_class": worker_class,
        "preload_app": preload_app,
        "graceful_timeout": graceful_timeout,
        "keepalive": keepalive,
        "accesslog": accesslog,
        "control_socket_disable": control_socket_disable,
        "proc_name": proc_name,
        "logger_class": logger_class,
        "bind": [f"{host}:{api.port}"],
        "workers": api.workers,
        "threads": api.threads,
        "timeout": api.timeout,
        "when_ready": when_ready,
        "post_fork": post_fork,
        "post_worker_init": post_worker_init,
        "worker_abort": worker_abort,
        "worker_exit": worker_exit,
    }


def when_ready(server: Any) -> None:
    """Log where the API listens (in the master, which holds no app)."""
    addresses = ", ".join(str(listener) for listener in server.LISTENERS)
    logger.info(
        "API listening on %s (%d gthread workers x %d threads)",
        addresses,
        server.cfg.workers,
        server.cfg.threads,
    )


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it refuses before the app sees it, as JSON.

    Replaces ``gunicorn.util.write_error`` (an HTML page) in each worker: a request line or
    headers past gunicorn's limits, or a malformed request, get the API's JSON error body
    (``title``, ``description``) like every other error.
    """
    body = json.dumps({"title": reason, "description": mesg or reason}).encode("ascii")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker: gunicorn's own errors in JSON (:func:`write_json_error`); never
    reuse an app (and its connections) built before the fork."""
    util.write_error = write_json_error
    app = getattr(server.app, "callable", None)
    forget = getattr(app, "forget", None)
    if callable(forget) and getattr(app, "loaded", False):
        logger.warning("worker %d: dropping an app built before the fork", os.getpid())
        forget()


def post_worker_init(worker: Any) -> None:
    """Build the app now, in the worker, so the first request is not slowed by module loading.

    A failure stops the worker with gunicorn's boot-error code, which stops the master too.
    """
    load = getattr(worker.wsgi, "load", None)
    if not callable(load):
        return
    try:
        load()
    except Exception:
        logger.exception("worker %d could not build the API app", os.getpid())
        sys.exit(WORKER_BOOT_ERROR)
    logger.debug("worker %d ready", os.getpid())


def worker_abort(worker: Any) -> None:
    """Log a worker killed by the master for missing its timeout."""
    logger.error(
        "worker %d did not answer within %ss and is being stopped", os.getpid(), worker.cfg.timeout
    )


def worker_exit(server: Any, worker: Any) -> None:
    """Close the worker's broker and Redis connections as it exits."""
    close = getattr(getattr(worker, "wsgi", None), "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.warning("worker %d: closing connections failed", os.getpid(), exc_info=True)
