"""The WSGI entry point for any WSGI server: ``nagatha.api.wsgi:application``.

This is the only module of the API that reads the environment (``NAGATHA_*``, the config
files): it does so when the app is first needed, inside the server's worker process, never at
import. Served by gunicorn without ``preload_app`` (the default in
:mod:`nagatha.api.gunicorn_conf`), every worker therefore builds its own hub and opens its own
broker connections after the fork::

    gunicorn -c python:nagatha.api.gunicorn_conf nagatha.api.wsgi:application

``nagatha serve`` serves the same :class:`LazyApp`, built from the config the command loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from nagatha.api.app import HubApp

logger = logging.getLogger("nagatha.api")

StartResponse = Callable[..., Any]


class LazyApp:
    """A WSGI callable that builds the real app on first use (or :meth:`load`), once.

    Building is deferred so that a process that imports this module (a gunicorn master)
    holds no hub, no module code and no connection; each process that serves builds its own.
    """

    def __init__(self, factory: Callable[[], HubApp]) -> None:
        self._factory = factory
        self._app: HubApp | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """True once the app is built in this process."""
        return self._app is not None

    def load(self) -> HubApp:
        """Build the app if it is not built yet; return it."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        return self._app

    def forget(self) -> None:
        """Drop an app inherited across a fork without closing it (its sockets are the parent's).

        The next request builds a new app with connections of this process's own.
        """
        self._app = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the app's connections if it was built here."""
        if self._app is not None:
            self._app.close()
            self._app = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request."""
        return self.load()(environ, start_response)


def _from_environment() -> HubApp:
    from nagatha.api.app import create_app
    from nagatha.config import load_config, secrets_of
    from nagatha.log import setup_logging

    config = load_config().config
    setup_logging(config.logging, secrets_of(config))
    return create_app(config)


#: The app for WSGI servers, configured from the environment when first used.
application = LazyApp(_from_environment)
