"""Bearer-token authentication: ``Authorization: Bearer <token>`` against ``api.tokens``.

Every path needs a token when tokens are configured, except ``/ping``, ``/ui`` and, while
``api.health_public`` is true, ``/health``. With no tokens configured the API is open; the
``serve`` command refuses to expose it beyond loopback unless ``api.allow_anonymous`` says so
(:func:`nagatha.api.server.check_exposure`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import falcon

from nagatha.api.errors import unauthorized

#: ``/ui`` is a page without data: its script asks for the token (see
#: :mod:`nagatha.api.resources.dashboard`).
PUBLIC_PATHS = frozenset({"/ping", "/ui"})
HEALTH_PATH = "/health"


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None (scheme any case)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenAuth:
    """Falcon middleware: refuse requests to protected paths without a known token (401)."""

    def __init__(self, tokens: Iterable[str], *, health_public: bool = True) -> None:
        self._tokens = [token.encode("utf-8") for token in tokens if token]
        self.health_public = health_public

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return bool(self._tokens)

    def protects(self, path: str) -> bool:
        """True if a request to ``path`` must carry a valid token."""
        if not self._tokens or path in PUBLIC_PATHS:
            return False
        return not (path == HEALTH_PATH and self.health_public)

    def accepts(self, token: str) -> bool:
        """True if ``token`` is configured; compares with every token in constant time."""
        # WSGI hands header values over as latin-1 decoded text: this restores the raw bytes.
        candidate = token.encode("latin-1", errors="replace")
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(candidate, known)
        return matched

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Raise 401 unless the path is public or the request carries a configured token."""
        if not self.protects(req.path):
            return
        token = bearer_token(req.get_header("Authorization"))
        if token is None:
            raise unauthorized("This endpoint needs an `Authorization: Bearer <token>` header.")
        if not self.accepts(token):
            raise unauthorized("The bearer token is not valid.")
