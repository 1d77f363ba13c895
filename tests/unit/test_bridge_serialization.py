"""Unit tests of bridge.serialization: decoding Celery bodies and encoding results like kombu."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import pickle
import uuid
import zlib
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kombu import compression as kombu_compression
from kombu import serialization as kombu_serialization
from kombu.utils import json as kombu_json

from bridge.serialization import (
    JSON,
    MSGPACK,
    PICKLE,
    YAML,
    decode_body,
    decompress,
    encode_json,
    from_jsonable,
    to_jsonable,
)
from nagatha.errors import PickleRefused, ProtocolError

RICH_VALUES: dict[str, Any] = {
    "dt": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
    "dt_offset": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
    "naive": datetime(2030, 1, 2, 3, 4, 5),
    "d": date(2030, 1, 2),
    "t": time(1, 2, 3),
    "u": uuid.UUID(int=1),
    "dec": Decimal("1.5"),
    "b": b"ab",
    "bb": b"\xff\x00",
    "nested": [{"x": Decimal("-0.001")}, (1, 2)],
    "text": "h\u00e9llo \u2603",
}


def kombu_dumps(value: Any, serializer: str) -> tuple[str, str, bytes]:
    """Serialize like a Celery client does: (content_type, content_encoding, body bytes)."""
    content_type, content_encoding, data = kombu_serialization.dumps(value, serializer=serializer)
    return content_type, content_encoding, data if isinstance(data, bytes) else data.encode()


def decode(
    data: bytes, content_type: str, content_encoding: str | None = "utf-8", **kw: Any
) -> Any:
    return decode_body(data, content_type=content_type, content_encoding=content_encoding, **kw)


class Evil:
    """Pickles into a call that creates a file: proof of execution if it ever appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


# --- JSON and kombu envelopes -------------------------------------------------------------


def test_json_bodies_from_kombu_decode_to_the_same_python_values() -> None:
    # Given a body serialized by kombu's JSON serializer (envelopes included)
    content_type, encoding, data = kombu_dumps(RICH_VALUES, "json")
    # When it is decoded
    value = decode(data, content_type, encoding)
    # Then every envelope is turned back into the original Python object
    expected = dict(RICH_VALUES, nested=[{"x": Decimal("-0.001")}, [1, 2]])
    assert value == expected
    assert value["dt"].tzinfo is not None and value["naive"].tzinfo is None


@pytest.mark.parametrize(
    "envelope",
    [
        {"__type__": "nope", "__value__": 1},
        {"__type__": 3, "__value__": 1},
        {"__type__": "datetime", "__value__": "not a date"},
        {"__type__": "datetime", "__value__": 5},
        {"__type__": "date", "__value__": "2030-13-01"},
        {"__type__": "time", "__value__": "25:00"},
        {"__type__": "decimal", "__value__": "abc"},
        {"__type__": "decimal", "__value__": 1.5},
        {"__type__": "uuid", "__value__": {"hex": "xyz"}},
        {"__type__": "uuid", "__value__": {"int": 1}},
        {"__type__": "uuid", "__value__": "00000000000000000000000000000001"},
        {"__type__": "bytes", "__value__": ["a"]},
        {"__type__": "base64", "__value__": "!!!"},
    ],
)
def test_unsupported_or_malformed_kombu_envelopes_are_protocol_errors(
    envelope: dict[str, Any],
) -> None:
    body = json.dumps([[envelope], {}, {}]).encode()
    with pytest.raises(ProtocolError, match="envelope"):
        decode(body, JSON)


def test_dicts_with_extra_keys_are_not_envelopes() -> None:
    body = json.dumps({"__type__": "nope", "__value__": 1, "other": 2}).encode()
    assert decode(body, JSON) == {"__type__": "nope", "__value__": 1, "other": 2}


def test_content_type_parameters_and_case_are_ignored() -> None:
    assert decode(b"[1]", "Application/JSON; charset=utf-8") == [1]


@pytest.mark.parametrize("encoding", [None, "", "utf-8", "UTF8", "ascii"])
def test_json_accepts_utf8_family_content_encodings(encoding: str | None) -> None:
    assert decode('["\u00e9"]'.encode(), JSON, encoding) == ["\u00e9"]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "binary", "rot13"])
def test_json_with_other_content_encodings_is_refused(encoding: str) -> None:
    with pytest.raises(ProtocolError, match="content encoding"):
        decode(b"[1]", JSON, encoding)


@pytest.mark.parametrize(
    "data",
    [b"", b"[1,", b"\xff\xfe[1]", b"\xef\xbb\xbf[1]", b"[1] [2]", b"{'a': 1}", b"1" * 5000],
)
def test_invalid_json_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="cannot decode"):
        decode(data, JSON)


def test_deeply_nested_json_is_a_protocol_error_not_a_recursion_error() -> None:
    for depth in (201, 100_000):
        with pytest.raises(ProtocolError):
            decode(b"[" * depth + b"]" * depth, JSON)
    assert decode(b"[" * 200 + b"]" * 200, JSON) is not None


# --- encode_json / to_jsonable ------------------------------------------------------------


def test_encode_json_produces_exactly_what_kombu_produces() -> None:
    assert encode_json(RICH_VALUES) == kombu_json.dumps(RICH_VALUES)


def test_kombu_decodes_encode_json_output_back_to_the_original_values() -> None:
    decoded = kombu_json.loads(encode_json(RICH_VALUES))
    assert decoded == dict(RICH_VALUES, nested=[{"x": Decimal("-0.001")}, [1, 2]])


def test_encode_json_uses_dunder_json_and_refuses_sets() -> None:
    class Point:
        def __json__(self) -> list[int]:
            return [1, 2]

    assert encode_json({"p": Point()}) == '{"p": [1, 2]}'
    with pytest.raises(TypeError):
        encode_json({1, 2})


def test_to_jsonable_and_from_jsonable_round_trip() -> None:
    plain = to_jsonable(RICH_VALUES)
    assert json.loads(json.dumps(plain)) == plain
    assert from_jsonable(plain) == dict(RICH_VALUES, nested=[{"x": Decimal("-0.001")}, [1, 2]])


def test_from_jsonable_refuses_unknown_envelopes_and_non_json_data() -> None:
    with pytest.raises(ProtocolError):
        from_jsonable({"__type__": "pickle", "__value__": "x"})
    with pytest.raises(ProtocolError):
        from_jsonable({1, 2})


# --- msgpack ------------------------------------------------------------------------------


def test_msgpack_bodies_from_kombu_decode() -> None:
    value = [[1, "h\u00e9llo", b"\x00\xff", None, 1.5], {"k": {"n": [True]}}, {"chain": None}]
    content_type, encoding, data = kombu_dumps(value, "msgpack")
    assert (content_type, encoding) == (MSGPACK, "binary")
    assert decode(data, content_type, encoding) == value


def test_msgpack_ignores_the_content_encoding() -> None:
    assert decode(msgpack.packb([1]), MSGPACK, "anything") == [1]


def test_msgpack_timestamps_become_aware_datetimes() -> None:
    moment = datetime(2030, 1, 2, tzinfo=UTC)
    assert decode(msgpack.packb([moment], datetime=True), MSGPACK, "binary") == [moment]


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb([[1, 2], {"a": "b" * 100}, {}])[:-10],  # truncated
        msgpack.packb([1]) + b"\x01",  # trailing data
        msgpack.packb(msgpack.ExtType(42, b"xyz")),  # extension type
        b"\xdd\xff\xff\xff\xff",  # array announcing 4G items
        b"\xdb\x7f\xff\xff\xff",  # str announcing 2G bytes
        msgpack.packb({1: "int key"}),  # strict_map_key
        b"\xc1",  # never-used byte
        b"",
    ],
)
def test_malformed_msgpack_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data, MSGPACK, "binary")


def test_deeply_nested_msgpack_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x91" * 5000 + b"\xc0", MSGPACK, "binary")


# --- YAML ---------------------------------------------------------------------------------


def test_yaml_bodies_from_kombu_decode() -> None:
    value = [[2, 3], {"s": "h\u00e9llo", "b": None, "when": datetime(2030, 1, 2, 3, 4, 5)}, {}]
    content_type, encoding, data = kombu_dumps(value, "yaml")
    assert content_type == YAML
    assert decode(data, content_type, encoding) == value


def test_yaml_safe_tags_binary_and_timestamps_are_accepted() -> None:
    data = b"- !!binary aGk=\n- !!str 12\n- 2030-01-02\n- !!int '7'\n"
    assert decode(data, YAML) == [b"hi", "12", date(2030, 1, 2), 7]


@pytest.mark.parametrize(
    "document",
    [
        '!!python/object/apply:pathlib.Path.touch ["{marker}"]',
        '- !!python/object/apply:os.system ["touch {marker}"]',
        "!!python/name:os.system",
        "!!set {a: null}",
        "!!omap [a: 1]",
        "!custom 3",
        "! 3",
        "!<tag:example.com,2000:app/foo> 3",
    ],
)
def test_yaml_tags_outside_the_safe_set_are_refused_and_never_executed(
    document: str, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    with pytest.raises(ProtocolError, match="tag"):
        decode(document.replace("{marker}", str(marker)).encode(), YAML)
    assert not marker.exists()


def test_yaml_aliases_are_refused_billion_laughs() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}] " for i in range(8)]
    with pytest.raises(ProtocolError, match="alias"):
        decode("\n".join(lines).encode(), YAML)


@pytest.mark.parametrize(
    "data", [b"[1, 2", b"a: 1\n---\nb: 2\n", b"? [1]\n: x\n", b"\t- x", b"@foo", b"- 2030-13-40"]
)
def test_invalid_yaml_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data, YAML)


# --- pickle and unknown types -------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "application/x-gzip", "bogus"])
def test_pickle_is_refused_and_never_executed(
    compression: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pickle that creates a file when loaded, and pickle loaders that record calls
    marker = tmp_path / "pwned"
    data = pickle.dumps([[Evil(marker)], {}, {}])
    if compression == "application/x-gzip":
        data = zlib.compress(data)
    calls: list[str] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("loads"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("load"))
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: calls.append("Unpickler"))
    # When it is decoded, Then it is refused without touching any unpickler
    with pytest.raises(PickleRefused, match="pickle"):
        decode(data, PICKLE, "binary", compression=compression)
    assert calls == [] and not marker.exists()


@pytest.mark.parametrize(
    "content_type", [None, "", "text/plain", "application/data", "application/x-bson", "json", 3]
)
def test_unknown_content_types_are_protocol_errors(content_type: Any) -> None:
    with pytest.raises(ProtocolError, match="content type"):
        decode(b"[1]", content_type)


def test_pickle_refused_is_a_protocol_error() -> None:
    assert issubclass(PickleRefused, ProtocolError)


# --- compression --------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["gzip", "zlib", "bzip2", "lzma", "xz"])
def test_every_kombu_compression_is_inflated(alias: str) -> None:
    # Given a JSON body compressed the way kombu's Producer does, with its header value
    compressed, header = kombu_compression.compress(b'[[1], {"a": "b"}, {}]', alias)
    # When decoded with the header
    value = decode(compressed, JSON, compression=header)
    # Then the body comes back
    assert value == [[1], {"a": "b"}, {}]


def test_a_real_gzip_stream_is_accepted_as_x_gzip() -> None:
    assert decode(gzip.compress(b"[1]"), JSON, compression="application/x-gzip") == [1]


@pytest.mark.parametrize(
    ("data", "compression"),
    [
        (b"[1]", "application/x-gzip"),  # header says compressed, body is not
        (zlib.compress(b"[1]"), "application/x-bz2"),  # wrong algorithm
        (bz2.compress(b"[1]"), "application/x-lzma"),
        (zlib.compress(b"[1]" * 100)[:-5], "application/x-gzip"),  # truncated
        (bz2.compress(b"[1]" * 100)[:-5], "application/x-bz2"),
        (lzma.compress(b"[1]" * 100)[:-5], "application/x-lzma"),
        (zlib.compress(b"[1]") + b"junk", "application/x-gzip"),  # trailing data
        (b"", "application/x-gzip"),
        (zlib.compress(b"[1]"), "application/x-brotli"),  # not supported
        (zlib.compress(b"[1]"), "application/zstd"),
    ],
)
def test_compression_lies_are_protocol_errors(data: bytes, compression: str) -> None:
    with pytest.raises(ProtocolError):
        decode(data, JSON, compression=compression)


def test_a_compressed_body_without_the_header_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="cannot decode"):
        decode(zlib.compress(b"[1]"), JSON)


@pytest.mark.parametrize(
    ("compress", "name"),
    [(zlib.compress, "application/x-gzip"), (bz2.compress, "bzip2"), (lzma.compress, "xz")],
)
def test_decompression_bombs_stop_at_the_output_limit(compress: Any, name: str) -> None:
    # Given 8 MiB of zeros compressed to a few kilobytes
    bomb = compress(b"0" * (8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    # When inflated with a 1 MiB limit, Then it stops at the limit
    with pytest.raises(ProtocolError, match="limit"):
        decompress(bomb, name, max_decoded_bytes=1024 * 1024)


def test_uncompressed_bodies_over_the_limit_are_refused() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        decode(b"[" + b"1," * 600 + b"1]", JSON, max_decoded_bytes=1000)
