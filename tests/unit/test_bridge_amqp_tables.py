"""Message headers no value can break: bridge.amqp_tables over pika's field tables."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pika
import pika.data
import pytest

from bridge import amqp_tables
from bridge.amqp_tables import MAX_DEPTH, RawTimestamp


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(pika.data, "decode_value", pika.data.decode_value)
    monkeypatch.setattr(pika.data, "encode_value", pika.data.encode_value)
    amqp_tables.install()
    yield


def round_trip(headers: dict[str, Any]) -> dict[str, Any]:
    encoded = b"".join(pika.BasicProperties(headers=headers).encode())
    decoded = pika.BasicProperties()
    decoded.decode(encoded)
    return decoded.headers  # type: ignore[no-any-return]


def table_with(key: bytes, raw_value: bytes) -> bytes:
    """Encoded properties holding only headers = {key: <raw field bytes>}."""
    table = struct.pack(">B", len(key)) + key + raw_value
    flags = pika.spec.BasicProperties.FLAG_HEADERS
    return struct.pack(">H", flags) + struct.pack(">I", len(table)) + table


def decode(encoded: bytes) -> dict[str, Any]:
    properties = pika.BasicProperties()
    properties.decode(encoded)
    return properties.headers  # type: ignore[no-any-return]


def test_floats_travel_as_doubles_both_ways() -> None:
    headers = {"timelimit": [0.5, 1.9], "x": -2.25, "n": 3, "s": "é", "none": None}
    assert round_trip(headers) == headers


def test_a_timestamp_out_of_range_decodes_as_its_seconds_and_encodes_back() -> None:
    hostile = b"T" + struct.pack(">Q", 2**64 - 1)
    value = decode(table_with(b"x-when", hostile))["x-when"]
    assert isinstance(value, RawTimestamp) and value == 2**64 - 1
    assert round_trip({"x-when": value}) == {"x-when": 2**64 - 1}
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert round_trip({"at": moment}) == {"at": moment}


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5_000])
def test_arrays_nested_too_deep_decode_as_none_past_the_limit(levels: int) -> None:
    nested = b"A" + struct.pack(">I", 0)
    for _ in range(levels - 1):
        nested = b"A" + struct.pack(">I", len(nested)) + nested
    headers = decode(table_with(b"x-deep", nested))
    value, depth = headers["x-deep"], 0
    while isinstance(value, list):
        (value,), depth = value, depth + 1
    assert value is None and depth == MAX_DEPTH


def test_what_pika_decodes_itself_is_unchanged() -> None:
    headers = {"task": "a.b", "id": "x", "retries": 0, "flag": True, "t": {"k": [1, "v"]}}
    assert round_trip(headers) == headers
