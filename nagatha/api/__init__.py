"""The HTTP API: a Falcon WSGI app built by :func:`create_app`, served by ``nagatha serve``.

Layout: ``app.py`` builds it from ``routes.py`` (the table of paths, methods and statuses);
``resources/`` answer; ``errors.py`` maps hub errors to status codes; ``auth.py``,
``middleware.py`` and ``body.py`` guard the requests; ``health.py`` probes RabbitMQ and Redis;
``openapi.py`` describes it all; ``server.py``, ``gunicorn_conf.py`` and ``wsgi.py`` serve it.
"""

from __future__ import annotations

from nagatha.api.app import HubApp, create_app

__all__ = ["HubApp", "create_app"]
