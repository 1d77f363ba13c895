"""Dead letters that RabbitMQ can always take: the headers kept when the original's cannot be."""

from __future__ import annotations

from typing import Any

import pika

from bridge.dead_letters import HEADER_PREFIX, DeadLetters


class Capture:
    """A publisher that keeps what it was asked to publish."""

    def __init__(self) -> None:
        self.sent: list[pika.BasicProperties] = []

    def basic_publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Any, **_: Any
    ):  # type: ignore[no-untyped-def]
        self.sent.append(properties)


def put(headers: dict[str, Any], **names: str) -> pika.BasicProperties:
    capture = Capture()
    letters = DeadLetters(capture, "dead")  # type: ignore[arg-type]
    letters.put(
        body=b"{}",
        properties=pika.BasicProperties(headers=headers, message_id="m-1"),
        reason="refused: " + "r" * 5000,
        source_queue="celery",
        **names,
    )
    (sent,) = capture.sent
    assert sum(map(len, sent.encode())) < 8192  # whatever the original held
    return sent


def test_small_headers_are_kept_with_the_reason() -> None:
    sent = put({"task": "a.b", "id": "t-1"}, task_id="t-1", task_name="a.b")
    assert sent.headers["task"] == "a.b" and sent.headers[f"{HEADER_PREFIX}task-id"] == "t-1"
    assert len(sent.headers[f"{HEADER_PREFIX}reason"]) == 1000
    assert f"{HEADER_PREFIX}headers-dropped" not in sent.headers


def test_headers_too_large_to_keep_are_dropped_even_ones_named_like_ours() -> None:
    sent = put(
        {"pad": "x" * 130_000, f"{HEADER_PREFIX}pad": "y" * 130_000},
        task_id="t" * 1000,
        task_name="n" * 200_000,
    )
    headers = sent.headers
    assert "pad" not in headers and f"{HEADER_PREFIX}pad" not in headers
    assert "too large to keep" in headers[f"{HEADER_PREFIX}headers-dropped"]
    assert headers[f"{HEADER_PREFIX}task-id"] == "t" * 255
    assert headers[f"{HEADER_PREFIX}task-name"] == "n" * 255
    assert headers[f"{HEADER_PREFIX}queue"] == "celery" and sent.message_id == "m-1"


def test_headers_pika_cannot_encode_are_dropped() -> None:
    sent = put({"odd": object()})
    assert "could not be encoded" in sent.headers[f"{HEADER_PREFIX}headers-dropped"]
