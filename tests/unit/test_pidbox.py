"""The bridge's control mailbox: which ids a ``revoke`` carries on to the store."""

from __future__ import annotations

from bridge.pidbox import Pidbox


def test_a_revoke_keeps_each_valid_task_id_once() -> None:
    revoked: list[list[str]] = []
    pidbox = Pidbox("node@host", revoked.append)
    ids = ["a", "a", "\ud800", "x" * 300, "", 5, "b"]  # a lone surrogate, too long, not text
    reply = pidbox._dispatch("revoke", {"task_id": ids})
    assert revoked == [["a", "b"]]
    assert reply == {"ok": "tasks a, b flagged as revoked"}
    assert pidbox._dispatch("revoke", {"task_id": ["\ud800"]}) == {"error": "revoke needs task_id"}
    assert revoked == [["a", "b"]]
