"""Decode Celery message bodies and encode results the way kombu does.

Supported serializers are the ones kombu registers by content type: JSON (with kombu's
``{"__type__": ..., "__value__": ...}`` envelopes), msgpack and YAML (safe subset only).
Pickle is refused before a single byte of it is looked at. Compressed bodies (the
``compression`` message header) are inflated with a hard bound on the output size.

Every decoding failure raises :class:`~nagatha.errors.ProtocolError`; nothing else escapes
:func:`decode_body`.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import json
import lzma
import uuid
import zlib
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final, Protocol

import msgpack
import yaml

from nagatha.errors import PickleRefused, ProtocolError

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_DEPTH",
    "JSON",
    "MSGPACK",
    "PICKLE",
    "YAML",
    "decode_body",
    "decompress",
    "encode_json",
    "from_jsonable",
    "to_jsonable",
]

JSON: Final = "application/json"
MSGPACK: Final = "application/x-msgpack"
YAML: Final = "application/x-yaml"
PICKLE: Final = "application/x-python-serialize"

#: Largest body, after decompression, that :func:`decode_body` accepts (bytes).
DEFAULT_MAX_DECODED_BYTES: Final = 10 * 1024 * 1024
#: Deepest nesting of lists/maps accepted in a decoded body.
DEFAULT_MAX_DEPTH: Final = 200

# NOTE: the kombu names (and aliases) of the compressions a Celery client can send;
# "application/x-gzip" is kombu's name for a *zlib* stream, we also accept real gzip.
_ZLIB_NAMES: Final = frozenset({"application/x-gzip", "gzip", "zlib"})
_BZ2_NAMES: Final = frozenset({"application/x-bz2", "bzip2", "bzip"})
_LZMA_NAMES: Final = frozenset({"application/x-lzma", "lzma", "xz"})
_LZMA_MEMLIMIT: Final = 64 * 1024 * 1024

_TEXT_ENCODINGS: Final = frozenset({"", "utf-8", "utf8", "ascii", "us-ascii"})

# Tags that yaml.safe_load resolves to plain JSON-like values, bytes or datetimes.
_YAML_TAGS: Final = frozenset(
    "tag:yaml.org,2002:" + name
    for name in ("str", "int", "float", "bool", "null", "binary", "timestamp", "seq", "map")
)


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def decode_body(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    compression: str | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """Return the Python value serialized in ``body``.

    ``content_type`` picks the serializer (parameters such as ``; charset=utf-8`` are
    ignored); ``compression`` is the message's ``compression`` header, if any. JSON and YAML
    bodies must be UTF-8 (``content_encoding`` absent or a UTF-8 name); msgpack ignores it.

    Raises:
        PickleRefused: ``content_type`` is pickle; the body is never inspected.
        ProtocolError: any other problem: unknown content type or compression, corrupt or
            truncated data, output over ``max_decoded_bytes``, nesting over ``max_depth``,
            unsupported kombu envelope types, YAML tags outside the safe set or aliases.
    """
    kind = _media_type(content_type)
    if kind == PICKLE:
        raise PickleRefused(
            "pickle-serialized message refused: unpickling runs arbitrary code; "
            "configure the client with task_serializer='json'"
        )
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unsupported content type {content_type!r}")
    data = bytes(body)
    if compression:
        data = decompress(data, compression, max_decoded_bytes=max_decoded_bytes)
    elif len(data) > max_decoded_bytes:
        raise ProtocolError(f"body of {len(data)} bytes exceeds the {max_decoded_bytes} limit")
    if kind != MSGPACK:
        encoding = (content_encoding or "").strip().lower()
        if encoding not in _TEXT_ENCODINGS:
            raise ProtocolError(f"unsupported content encoding {content_encoding!r} for {kind}")
    try:
        value = decoder(data)
    except ProtocolError:
        raise
    except Exception as exc:  # each library has its own error zoo
        raise ProtocolError(f"cannot decode {kind} body: {_describe(exc)}") from exc
    _check_depth(value, max_depth)
    return value


def decompress(data: bytes, compression: str, *, max_decoded_bytes: int) -> bytes:
    """Inflate ``data`` compressed with kombu's ``compression``, at most ``max_decoded_bytes``.

    Raises:
        ProtocolError: unknown compression, corrupt/truncated/trailing data, or output
            larger than ``max_decoded_bytes`` (decompression bomb).
    """
    name = compression.strip().lower()
    decompressor: _Decompressor
    try:
        if name in _ZLIB_NAMES:
            # NOTE: wbits=47 accepts a zlib *or* a gzip header (non-Python producers).
            decompressor = zlib.decompressobj(wbits=47)
        elif name in _BZ2_NAMES:
            decompressor = bz2.BZ2Decompressor()
        elif name in _LZMA_NAMES:
            decompressor = lzma.LZMADecompressor(memlimit=_LZMA_MEMLIMIT)
        else:
            raise ProtocolError(f"unsupported compression {compression!r}")
        output = decompressor.decompress(data, max_decoded_bytes + 1)
    except ProtocolError:
        raise
    except Exception as exc:  # zlib.error, OSError, LZMAError, EOFError
        raise ProtocolError(f"corrupt {name} body: {_describe(exc)}") from exc
    if len(output) > max_decoded_bytes:
        raise ProtocolError(f"decompressed body exceeds the {max_decoded_bytes} byte limit")
    if not decompressor.eof:
        raise ProtocolError(f"truncated {name} body")
    if decompressor.unused_data:
        raise ProtocolError(f"trailing data after the {name} stream")
    return output


def encode_json(obj: Any) -> str:
    """Serialize ``obj`` exactly as kombu's JSON serializer does (and Celery clients decode).

    datetime, date, time, Decimal, UUID and bytes become kombu envelopes; objects with a
    ``__json__()`` method are encoded through it; tuples become lists.

    Raises:
        TypeError: a value kombu cannot encode either (sets, arbitrary objects).
        ValueError: a circular reference.
    """
    return json.dumps(obj, cls=_KombuEncoder)


def to_jsonable(obj: Any) -> Any:
    """Return ``obj`` with kombu-encodable values replaced by their envelopes (plain JSON data).

    Raises the same errors as :func:`encode_json`.
    """
    return json.loads(encode_json(obj))


def from_jsonable(obj: Any) -> Any:
    """Invert :func:`to_jsonable`: decode kombu envelopes found anywhere in ``obj``.

    Raises:
        ProtocolError: an envelope with an unknown type or a malformed value.
    """
    try:
        return json.loads(json.dumps(obj), object_hook=_object_hook)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"cannot decode JSON data: {_describe(exc)}") from exc


class _KombuEncoder(json.JSONEncoder):
    """``kombu.utils.json.JSONEncoder`` without the kombu dependency."""

    def default(self, o: Any) -> Any:
        reducer = getattr(o, "__json__", None)
        if reducer is not None:
            return reducer()
        if isinstance(o, datetime):
            return _envelope("datetime", o.isoformat())
        if isinstance(o, date):
            return _envelope("date", o.isoformat())
        if isinstance(o, time):
            return _envelope("time", o.isoformat())
        if isinstance(o, Decimal):
            return _envelope("decimal", str(o))
        if isinstance(o, uuid.UUID):
            return _envelope("uuid", {"hex": o.hex})
        if isinstance(o, bytes):
            try:
                return _envelope("bytes", o.decode("utf-8"))
            except UnicodeDecodeError:
                return _envelope("base64", base64.b64encode(o).decode("ascii"))
        return super().default(o)


def _envelope(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _text_value(value: Any, kind: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"kombu {kind!r} envelope needs a string value")
    return value


def _decode_uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, dict) or set(value) != {"hex"} or not isinstance(value["hex"], str):
        raise ProtocolError("kombu 'uuid' envelope needs {'hex': str}")
    return uuid.UUID(hex=value["hex"])


def _decode_base64(value: Any) -> bytes:
    try:
        return base64.b64decode(_text_value(value, "base64"), validate=True)
    except binascii.Error as exc:
        raise ProtocolError("kombu 'base64' envelope is not valid base64") from exc


_ENVELOPE_DECODERS: Final[dict[str, Callable[[Any], Any]]] = {
    "datetime": lambda v: datetime.fromisoformat(_text_value(v, "datetime")),
    "date": lambda v: datetime.fromisoformat(_text_value(v, "date")).date(),
    "time": lambda v: time.fromisoformat(_text_value(v, "time")),
    "decimal": lambda v: Decimal(_text_value(v, "decimal")),
    "uuid": _decode_uuid,
    "bytes": lambda v: _text_value(v, "bytes").encode("utf-8"),
    "base64": _decode_base64,
}


def _object_hook(obj: dict[str, Any]) -> Any:
    """Decode a kombu envelope; like kombu, only dicts with exactly these two keys are ones."""
    if obj.keys() != {"__type__", "__value__"}:
        return obj
    kind = obj["__type__"]
    decoder = _ENVELOPE_DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ProtocolError(f"unsupported kombu envelope type {kind!r}")
    try:
        return decoder(obj["__value__"])
    except ProtocolError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ProtocolError(f"malformed kombu {kind!r} envelope: {_describe(exc)}") from exc


def _loads_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), object_hook=_object_hook)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not supported")


def _loads_msgpack(data: bytes) -> Any:
    size = len(data)
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=True,
        timestamp=3,  # msgpack timestamps become aware UTC datetimes
        ext_hook=_refuse_ext,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size // 2,
        max_ext_len=size,
    )


def _loads_yaml(data: bytes) -> Any:
    # NOTE: a first pass over the events refuses aliases (billion-laughs expansion when the
    # value is later walked or re-serialized) and any tag outside the safe set, before
    # yaml.safe_load builds anything.
    for event in yaml.parse(data, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ProtocolError("YAML aliases are not accepted")
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _YAML_TAGS:
            raise ProtocolError(f"YAML tag {tag!r} is not accepted")
    return yaml.safe_load(data)


_DECODERS: Final[dict[str, Callable[[bytes], Any]]] = {
    JSON: _loads_json,
    MSGPACK: _loads_msgpack,
    YAML: _loads_yaml,
}


def _media_type(content_type: str | None) -> str:
    if not isinstance(content_type, str):
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _check_depth(value: Any, max_depth: int) -> None:
    """Raise ProtocolError when containers nest deeper than ``max_depth`` (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            raise ProtocolError(f"body nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
