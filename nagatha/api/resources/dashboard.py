"""``GET /ui``: a read-mostly dashboard of the hub in one HTML page (``dashboard.html``).

The page holds no data: its script reads ``/ping``, ``/health``, ``/workers``, ``/stats``
and ``/failures`` every few seconds (one refresh at a time, marked with
:data:`~nagatha.api.middleware.POLL_HEADER` so that the access log keeps them at DEBUG)
with the token the user typed (kept in the tab's ``sessionStorage``), and offers a rerun of
each failure (``POST /tasks/rerun``). So the page itself needs no token. Its inline script
and style are allowed by hash in a ``Content-Security-Policy`` that allows nothing else but
requests to its own origin (no other script, no frames, no forms), and every value it shows
is set as text, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import falcon


def _hashes(page: str, tag: str) -> str:
    """The CSP source list allowing each inline ``<tag>`` block of ``page`` by its SHA-256.

    Raises:
        RuntimeError: a ``<tag`` with attributes (``<script type=...>``), which this would
            not hash and the browser would then refuse: the page is the project's own.
    """
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    if len(blocks) != page.count(f"<{tag}"):
        raise RuntimeError(f"dashboard.html: every <{tag}> must be inline, without attributes")
    digests = (hashlib.sha256(block.encode("utf-8")).digest() for block in blocks)
    return " ".join(f"'sha256-{base64.b64encode(digest).decode()}'" for digest in digests)


class DashboardResource:
    """Serve the dashboard page, read once at startup."""

    def __init__(self) -> None:
        page = resources.files("nagatha.api").joinpath("dashboard.html").read_text("utf-8")
        self._body = page.encode("utf-8")
        self.policy = (
            f"default-src 'none'; script-src {_hashes(page, 'script')}; "
            f"style-src {_hashes(page, 'style')}; connect-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        )

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer the page with a policy that allows only its own script and style."""
        resp.content_type = "text/html; charset=utf-8"
        resp.data = self._body
        resp.set_header("Content-Security-Policy", self.policy)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("X-Frame-Options", "DENY")  # frame-ancestors, for older browsers
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.cache_control = ["no-cache"]

    on_head = on_get  # uptime checks that send HEAD (Falcon sends no body for HEAD)
