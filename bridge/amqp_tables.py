"""Message headers that no value can break: pika's field-table decoder and encoder, made safe.

pika decodes a message's headers (AMQP field tables) while it reads the frame, before the
bridge sees the message. Whatever it raises there closes the connection, and RabbitMQ delivers
the same message to the next connection: one hostile message would stall every lane of every
bridge for as long as it stays in the queue, and could never be dead-lettered. pika 1.4 also
turns float and double values into ints (a Celery ``time_limit`` of 0.5 s arrives as 0, which
Celery reads as "no limit").

:func:`install` replaces ``pika.data.decode_value`` and ``encode_value`` (which pika's table
functions, and they themselves, call through the module) with versions that differ in these
cases and defer to pika's for every other type:

* ``f``/``d`` (float, double) are decoded as floats, and a float is encoded as a double
  (pika refuses to encode one: a chain step with a fractional ``time_limit`` could not be
  sent, nor a message holding one dead-lettered);
* a ``T`` (timestamp) no ``datetime`` can hold decodes as :class:`RawTimestamp`, an ``int``
  that encodes back to the same field;
* ``A``/``F`` (array, table) nested deeper than :data:`MAX_DEPTH` are skipped by their length
  and decode as None (pika's recursion would overflow the stack).

The bridge then sees such a message and refuses or runs it like any other. Every process that
reads or sends Celery messages installs them (bridge, dead-letter commands, the workers'
Celery results middleware).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pika.data

#: Arrays and tables nested deeper than this decode as None.
MAX_DEPTH = 32

_pika_decode_value: Callable[[bytes, int], tuple[Any, int]] = pika.data.decode_value
_pika_encode_value: Callable[[list[bytes], Any], int] = pika.data.encode_value
_depth = threading.local()


class RawTimestamp(int):
    """Seconds of an AMQP timestamp out of ``datetime``'s range, kept as sent."""


def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    """Decode the field value at ``offset``; return it and the offset after it."""
    kind = encoded[offset : offset + 1]
    if kind == b"f":
        return struct.unpack_from(">f", encoded, offset + 1)[0], offset + 5
    if kind == b"d":
        return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
    if kind == b"T":
        seconds = struct.unpack_from(">Q", encoded, offset + 1)[0]
        try:
            return datetime.fromtimestamp(seconds, UTC), offset + 9
        except (OverflowError, OSError, ValueError):
            return RawTimestamp(seconds), offset + 9
    if kind in (b"A", b"F"):
        depth = getattr(_depth, "value", 0)
        if depth >= MAX_DEPTH:
            length = struct.unpack_from(">I", encoded, offset + 1)[0]
            return None, offset + 5 + length
        _depth.value = depth + 1
        try:
            return _pika_decode_value(encoded, offset)
        finally:
            _depth.value = depth
    return _pika_decode_value(encoded, offset)


def encode_value(pieces: list[bytes], value: Any) -> int:
    """Append the field encoding of ``value`` to ``pieces``; return its size."""
    if isinstance(value, float):
        pieces.append(struct.pack(">cd", b"d", value))
        return 9
    if isinstance(value, RawTimestamp):
        pieces.append(struct.pack(">cQ", b"T", value))
        return 9
    return _pika_encode_value(pieces, value)


def install() -> None:
    """Make pika decode and encode every field table with this module's functions."""
    pika.data.decode_value = decode_value
    pika.data.encode_value = encode_value
