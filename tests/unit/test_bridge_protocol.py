"""Unit tests of bridge.protocol.parse_message against genuine Celery 5 messages.

Messages are produced by the real ``celery`` client over kombu's in-memory transport and read
back raw (compressed body, headers and properties exactly as a broker would deliver them),
so no server is needed.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from celery import Celery, chain, group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.utils import json as kombu_json

from bridge.fields import identifier
from bridge.protocol import CeleryTask, parse_message
from bridge.serialization import JSON, MSGPACK, PICKLE, YAML
from nagatha.errors import PickleRefused, ProtocolError

NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class Wire:
    """One message as the bridge's pika consumer would receive it."""

    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: Any
    correlation_id: Any = None
    reply_to: Any = None
    priority: Any = None

    def parse(self, **overrides: Any) -> CeleryTask:
        arguments = {
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "headers": self.headers,
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "priority": self.priority,
        }
        arguments.update(overrides)
        body = arguments.pop("body", self.body)
        return parse_message(body, **arguments)


class Client:
    """A real Celery client whose messages are captured from kombu's memory transport."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def fetch(self, queue: str) -> Wire:
        with self.app.connection_for_read() as connection:
            # NOTE: the virtual channel's raw payload still holds the compressed body;
            # kombu's Message would already have inflated it.
            raw = connection.default_channel._get(queue)
        properties = raw["properties"]
        return Wire(
            body=base64.b64decode(raw["body"]),
            content_type=raw["content-type"],
            content_encoding=raw["content-encoding"],
            headers=raw["headers"],
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to"),
            priority=properties.get("priority"),
        )

    def send(self, name: str = "echo_bot.echo", **options: Any) -> Wire:
        queue = f"nagatha-test-{uuid.uuid4().hex}"
        self.app.send_task(name, queue=queue, **options)
        return self.fetch(queue)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    app = Celery("nagatha-test", broker="memory://", set_as_current=False)
    yield Client(app)
    app.close()


@pytest.fixture(scope="module")
def client_v1() -> Iterator[Client]:
    app = Celery("nagatha-test-v1", broker="memory://", set_as_current=False)
    app.conf.task_protocol = 1
    yield Client(app)
    app.close()


def v2_wire(body: Any, **headers: Any) -> Wire:
    """A hand-made protocol 2 message with a JSON body."""
    base = {"lang": "py", "task": "echo_bot.echo", "id": "t-1", "root_id": "t-1", "retries": 0}
    base.update(headers)
    return Wire(
        body=json.dumps(body).encode(),
        content_type=JSON,
        content_encoding="utf-8",
        headers=base,
        correlation_id="t-1",
        reply_to="reply-q",
    )


def v1_wire(**fields: Any) -> Wire:
    body = {"task": "echo_bot.echo", "id": "t-1", "args": [], "kwargs": {}, "utc": True}
    body.update(fields)
    return Wire(json.dumps(body).encode(), JSON, "utf-8", {}, "t-1", "reply-q")


def roundtrip(task: CeleryTask) -> CeleryTask:
    """Pass a task through its options, as JSON text (the way Dramatiq carries them)."""
    options = json.loads(json.dumps(task.to_options()))
    return CeleryTask.from_options(options, args=task.args, kwargs=task.kwargs)


# --- genuine protocol 2 ---------------------------------------------------------------------


def test_a_plain_send_task_message_is_parsed_completely(client: Client) -> None:
    # Given a default send_task message
    wire = client.send("echo_bot.echo", kwargs={"text": "h\u00e9llo", "n": 1}, task_id="1111")
    # When it is parsed
    task = wire.parse()
    # Then every field the bridge needs is there
    assert task.protocol == 2
    assert (task.task_id, task.task_name, task.root_id) == ("1111", "echo_bot.echo", "1111")
    assert (task.args, task.kwargs) == ([], {"text": "h\u00e9llo", "n": 1})
    assert task.reply_to == wire.reply_to and task.correlation_id == "1111"
    assert (task.eta, task.expires, task.time_limit, task.soft_time_limit) == (None,) * 4
    assert (task.retries, task.priority, task.ignore_result, task.parent_id) == (0, 0, None, None)
    assert (task.callbacks, task.errbacks, task.chain, task.chord) == (None,) * 4
    assert task.kwargsrepr == "{'text': 'h\u00e9llo', 'n': 1}"
    assert task.display_name == "echo_bot.echo"


def test_scheduling_limits_and_options_are_read_from_the_headers(client: Client) -> None:
    before = datetime.now(UTC)
    wire = client.send(
        "echo_bot.echo",
        args=(2, 3),
        countdown=30,
        expires=120,
        priority=5,
        time_limit=60,
        soft_time_limit=50,
        shadow="shown-name",
        ignore_result=True,
    )
    task = wire.parse()
    assert task.args == [2, 3] and task.priority == 5
    assert task.eta is not None and task.expires is not None
    assert task.eta.tzinfo is UTC and 29 <= (task.eta - before).total_seconds() <= 60
    assert 119 <= (task.expires - before).total_seconds() <= 150
    assert (task.time_limit, task.soft_time_limit) == (60.0, 50.0)
    assert task.shadow == task.display_name == "shown-name"
    assert task.ignore_result is True


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml"])
@pytest.mark.parametrize("compression", [None, "gzip", "bzip2", "lzma"])
def test_every_serializer_and_compression_a_client_can_use_is_parsed(
    client: Client, serializer: str, compression: str | None
) -> None:
    wire = client.send(
        "echo_bot.echo",
        args=[1, "x", None, 1.5, [True]],
        kwargs={"s": "h\u00e9llo", "b": None},
        serializer=serializer,
        compression=compression,
    )
    if compression:
        assert wire.headers["compression"].startswith("application/x-")
    task = wire.parse()
    assert task.args == [1, "x", None, 1.5, [True]]
    assert task.kwargs == {"s": "h\u00e9llo", "b": None}


def test_kombu_envelopes_in_arguments_become_python_objects(client: Client) -> None:
    values = [
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        uuid.UUID(int=1),
        b"ab",
        b"\xff",
    ]
    task = client.send("echo_bot.echo", args=values, kwargs={"when": values[0]}).parse()
    assert task.args == values and task.kwargs == {"when": values[0]}


def test_links_become_callbacks_and_errbacks(client: Client) -> None:
    link = client.app.signature("proj.tsum")
    link_error = client.app.signature("echo_bot.echo", kwargs={"err": True}, immutable=True)
    task = client.send("proj.add", args=(2, 3), link=link, link_error=link_error).parse()
    assert task.callbacks is not None and task.errbacks is not None
    assert [sig["task"] for sig in task.callbacks] == ["proj.tsum"]
    assert task.errbacks[0]["kwargs"] == {"err": True} and task.errbacks[0]["immutable"] is True


def test_a_chain_keeps_the_remaining_steps_next_step_last(client: Client) -> None:
    queue = f"nagatha-test-{uuid.uuid4().hex}"
    add = client.app.signature
    chain(add("proj.add", (1, 1)), add("proj.add", (10,)), add("proj.add", (100,))).apply_async(
        queue=queue, task_id="chain-last"
    )
    task = client.fetch(queue).parse()
    assert task.args == [1, 1] and task.root_id == task.task_id != "chain-last"
    assert task.chain is not None
    assert [sig["args"] for sig in task.chain] == [[100], [10]]
    assert task.chain[0]["options"]["task_id"] == "chain-last"


def test_group_members_carry_group_id_and_index(client: Client) -> None:
    queue = f"nagatha-test-{uuid.uuid4().hex}"
    add = client.app.signature
    result = group(add("proj.add", (1, 1)), add("proj.add", (2, 2))).apply_async(queue=queue)
    members = [client.fetch(queue).parse() for _ in range(2)]
    assert {task.group_id for task in members} == {result.id}
    assert sorted(task.group_index for task in members if task.group_index is not None) == [0, 1]


def test_a_chord_header_task_carries_the_body_signature(client: Client) -> None:
    body = dict(client.app.signature("proj.tsum", options={"task_id": "body-id", "group_id": "g"}))
    task = client.send("proj.add", args=(1, 1), chord=body, group_id="g", group_index=0).parse()
    assert task.chord is not None and task.chord["options"]["task_id"] == "body-id"
    assert (task.group_id, task.group_index) == ("g", 0)


# --- genuine protocol 1 and hybrids -------------------------------------------------------


def test_a_protocol_1_message_is_parsed(client_v1: Client) -> None:
    link = client_v1.app.signature("proj.tsum")
    wire = client_v1.send(
        "echo_bot.echo",
        args=[1],
        kwargs={"text": "hi"},
        countdown=5,
        time_limit=7,
        group_id="g1",
        group_index=3,
        link=link,
        task_id="v1-id",
    )
    assert wire.headers == {}
    task = wire.parse()
    assert task.protocol == 1
    assert (task.task_id, task.task_name, task.args, task.kwargs) == (
        "v1-id",
        "echo_bot.echo",
        [1],
        {"text": "hi"},
    )
    assert task.eta is not None and task.eta.tzinfo is UTC
    assert (task.time_limit, task.soft_time_limit) == (7.0, None)
    assert (task.group_id, task.group_index) == ("g1", 3)
    assert task.callbacks is not None and task.callbacks[0]["task"] == "proj.tsum"
    assert task.chain is None and task.root_id is None


def test_protocol_1_defaults_missing_args_and_kwargs_and_uses_taskset() -> None:
    wire = Wire(json.dumps({"task": "a.b", "id": "x", "taskset": "ts"}).encode(), JSON, None, None)
    task = wire.parse()
    assert (task.args, task.kwargs, task.group_id, task.retries) == ([], {}, "ts", 0)


def test_protocol_1_naive_times_are_utc_whatever_the_flag_and_timezone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    utc = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert v1_wire(eta="2030-01-02T03:04:05").parse().eta == utc
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        flagged = v1_wire(eta="2030-01-02T03:04:05", expires="2030-01-02T03:04:05", utc=False)
        task = flagged.parse()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert task.eta == task.expires == utc  # as a real Celery 5.7 worker reads them


def test_protocol_1_uses_correlation_id_when_the_body_has_no_id() -> None:
    wire = Wire(json.dumps({"task": "a.b"}).encode(), JSON, "utf-8", {}, correlation_id="cid")
    assert wire.parse().task_id == "cid"
    with pytest.raises(ProtocolError, match="no task id"):
        wire.parse(correlation_id=None)


def test_a_hybrid_message_takes_body_fields_overridden_by_headers() -> None:
    # Given headers naming the task and a protocol-1 style body with args
    body = {
        "task": "other.task",
        "id": "body-id",
        "args": [1],
        "kwargs": {"a": 1},
        "eta": "2030-01-02T03:04:05+00:00",
        "group": "g",
        "retries": 9,
        "callbacks": [{"task": "proj.tsum", "args": [], "kwargs": {}, "options": {}}],
        "utc": True,
    }
    wire = v2_wire(body, id="head-id", retries=2)
    # When parsed
    task = wire.parse()
    # Then headers win where both speak, and the body supplies the rest
    assert (task.task_id, task.task_name, task.retries) == ("head-id", "echo_bot.echo", 2)
    assert (task.args, task.kwargs, task.group_id) == ([1], {"a": 1}, "g")
    assert task.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert task.callbacks is not None and task.chain is None and task.protocol == 2


# --- transport quirks -----------------------------------------------------------------------


def test_bytes_header_names_and_values_from_pika_are_accepted(client: Client) -> None:
    wire = client.send("echo_bot.echo", args=[1], compression="gzip", countdown=5)
    as_bytes = {
        key.encode(): value.encode() if isinstance(value, str) else value
        for key, value in wire.headers.items()
    }
    assert replace(wire, headers=as_bytes).parse() == wire.parse()


@pytest.mark.parametrize(
    "headers",
    [{b"task": "a.b", "task": "a.b"}, {b"\xff": 1}, {1: "x"}, ["task"], "task", b"x"],
)
def test_bad_header_tables_are_protocol_errors(headers: Any) -> None:
    with pytest.raises(ProtocolError):
        v2_wire([[], {}, NO_EMBED]).parse(headers=headers)


def test_oversized_bodies_are_refused_with_the_task_identity(client: Client) -> None:
    wire = client.send("echo_bot.echo", args=["x" * 2000])
    with pytest.raises(ProtocolError, match="exceeds") as caught:
        wire.parse(max_body_bytes=1000)
    assert caught.value.task_id == wire.headers["id"]
    assert caught.value.task_name == "echo_bot.echo"


def test_a_small_compressed_body_that_inflates_too_far_is_refused(client: Client) -> None:
    wire = client.send("echo_bot.echo", args=["x" * 100_000], compression="gzip")
    assert len(wire.body) < 1000
    with pytest.raises(ProtocolError, match="limit"):
        wire.parse(max_body_bytes=1000)
    assert wire.parse(max_body_bytes=1000, max_decoded_bytes=200_000).args == ["x" * 100_000]


@pytest.mark.parametrize("reply_to", ["", None])
def test_an_empty_reply_to_means_none(reply_to: str | None) -> None:
    assert v2_wire([[], {}, NO_EMBED]).parse(reply_to=reply_to).reply_to is None


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        ("correlation_id", 5),
        ("correlation_id", "x\x00"),
        ("reply_to", ["q"]),
        ("priority", 256),
        ("priority", "5"),
        ("priority", True),
        ("content_type", 5),
        ("content_encoding", 5),
        ("body", "[[], {}, {}]"),
        ("body", None),
    ],
)
def test_bad_message_properties_are_protocol_errors(prop: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        v2_wire([[], {}, NO_EMBED]).parse(**{prop: value})


# --- pickle ---------------------------------------------------------------------------------


class Evil:
    """Pickles into a call that creates a file: proof of execution if it ever appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_a_pickle_message_is_refused_never_executed_and_identified(
    client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    wire = client.send("echo_bot.echo", args=[Evil(marker)], serializer="pickle")
    assert wire.content_type == PICKLE
    with pytest.raises(PickleRefused) as caught:
        wire.parse()
    assert (caught.value.task_id, caught.value.task_name) == (wire.headers["id"], "echo_bot.echo")
    assert not marker.exists()


def test_a_protocol_1_pickle_message_is_identified_by_its_correlation_id(
    client_v1: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    wire = client_v1.send("echo_bot.echo", args=[Evil(marker)], serializer="pickle")
    with pytest.raises(PickleRefused) as caught:
        wire.parse()
    assert caught.value.task_id == wire.correlation_id and not marker.exists()


# --- strict field validation ----------------------------------------------------------------

BAD_HEADERS: list[tuple[str, Any]] = [
    ("task", 5),
    ("task", None),
    ("task", ""),
    ("task", ["echo"]),
    ("task", "a..b"),
    ("task", "../../etc/passwd"),
    ("task", "/etc/passwd"),
    ("task", "echo\x00bot"),
    ("task", "echo\n"),
    ("task", "1echo"),
    ("task", "echo bot"),
    ("task", "echo."),
    ("task", "x" * 201),
    ("task", b"\xff\xfe"),
    ("id", 5),
    ("id", ["x"]),
    ("id", "x" * 256),
    ("id", "a\x00b"),
    ("id", "a\nb"),
    ("eta", 5),
    ("eta", "tomorrow"),
    ("eta", ["2030-01-01"]),
    ("eta", "9999-12-31T23:59:59-23:59"),
    ("eta", "2030-01-01" + "0" * 100),
    ("expires", 1.5),
    ("expires", "2030-02-30T00:00:00"),
    ("retries", "1"),
    ("retries", -1),
    ("retries", True),
    ("retries", 1.0),
    ("retries", 2**40),
    ("timelimit", [1]),
    ("timelimit", "60"),
    ("timelimit", [1, 2, 3]),
    ("timelimit", ["60", None]),
    ("timelimit", [-1, None]),
    ("timelimit", [None, float("inf")]),
    ("timelimit", [True, None]),
    ("timelimit", {"hard": 1}),
    ("root_id", 1),
    ("parent_id", ["x"]),
    ("group", 3),
    ("group_index", "0"),
    ("group_index", -1),
    ("group_index", 0.5),
    ("shadow", 1),
    ("shadow", "a\tb"),
    ("ignore_result", "yes"),
    ("ignore_result", 0),
    ("origin", 1),
    ("argsrepr", 1),
    ("kwargsrepr", []),
    ("compression", 1),
    ("compression", "application/x-unknown"),
]


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
def test_every_header_field_is_type_checked(name: str, value: Any) -> None:
    # Given a valid protocol 2 message with one bad header
    wire = v2_wire([[1], {"a": 1}, NO_EMBED], **{name: value})
    # When parsed, Then a ProtocolError names what it could read of the task
    with pytest.raises(ProtocolError) as caught:
        wire.parse()
    assert caught.value.task_id == "t-1"  # the header id, else the correlation id
    assert caught.value.task_name == (None if name == "task" else "echo_bot.echo")


GOOD_SIG = {"task": "proj.add", "args": [], "kwargs": {}, "options": {}, "immutable": False}
BAD_BODIES: list[Any] = [
    [{"a": 1}, {}, NO_EMBED],
    ["args", {}, NO_EMBED],
    [[], [], NO_EMBED],
    [[], "kwargs", NO_EMBED],
    [[], {}, []],
    [[], {}, None],
    [[], {}],
    [[], {}, NO_EMBED, {}],
    {"kwargs": {}},
    "text",
    None,
    [[], {}, dict(NO_EMBED, callbacks={"task": "a"})],
    [[], {}, dict(NO_EMBED, callbacks=[1])],
    [[], {}, dict(NO_EMBED, callbacks=[{}])],
    [[], {}, dict(NO_EMBED, callbacks=[{"task": "a..b"}])],
    [[], {}, dict(NO_EMBED, errbacks=[dict(GOOD_SIG, args="x")])],
    [[], {}, dict(NO_EMBED, errbacks=[dict(GOOD_SIG, kwargs=[])])],
    [[], {}, dict(NO_EMBED, chain=[dict(GOOD_SIG, options=None)])],
    [[], {}, dict(NO_EMBED, chain=[dict(GOOD_SIG, immutable="no")])],
    [[], {}, dict(NO_EMBED, chain=[dict(GOOD_SIG, subtask_type=3)])],
    [[], {}, dict(NO_EMBED, chain="x")],
    [[], {}, dict(NO_EMBED, chord=[GOOD_SIG])],
    [[], {}, dict(NO_EMBED, chord={"task": 1})],
    {"args": "x", "kwargs": {}},
    {"args": [], "kwargs": []},
    {"args": [], "kwargs": {}, "utc": "yes"},
    {"args": [], "eta": "soon"},
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_every_body_field_is_type_checked(body: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        v2_wire(body).parse()
    assert (caught.value.task_id, caught.value.task_name) == ("t-1", "echo_bot.echo")


@pytest.mark.parametrize(
    "fields",
    [
        {"args": "x"},
        {"kwargs": []},
        {"utc": "yes"},
        {"taskset": 5},
        {"timelimit": "x"},
        {"retries": None, "eta": 3},
        {"callbacks": "x"},
        {"chord": 1},
        {"task": None},
        {"task": "a/b"},
        {"id": 7},
    ],
)
def test_protocol_1_fields_are_type_checked(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as caught:
        v1_wire(**fields).parse()
    assert caught.value.task_id == "t-1"


def test_kwargs_with_non_string_keys_are_refused() -> None:
    body = msgpack.packb([[], {b"bytes-key": 1}, NO_EMBED], use_bin_type=True)
    wire = replace(v2_wire(None), body=body, content_type=MSGPACK, content_encoding="binary")
    with pytest.raises(ProtocolError, match="string keys"):
        wire.parse()
    yaml_wire = replace(v2_wire(None), body=b"- []\n- {1: x}\n- {}\n", content_type=YAML)
    with pytest.raises(ProtocolError, match="string keys"):
        yaml_wire.parse()


@pytest.mark.parametrize(
    "name", ["a", "_x", "echo_bot.echo", "celery.chord_unlock", "ns:task-1", "A" * 200]
)
def test_reasonable_task_names_are_accepted(name: str) -> None:
    assert v2_wire([[], {}, NO_EMBED], task=name).parse().task_name == name


def test_a_message_without_task_header_or_v1_body_is_not_a_task() -> None:
    wire = Wire(json.dumps([[], {}, NO_EMBED]).encode(), JSON, "utf-8", {"id": "x"}, "x")
    with pytest.raises(ProtocolError, match="not a Celery task message") as caught:
        wire.parse()
    assert caught.value.task_id == "x"


def test_truncated_msgpack_and_python_yaml_tags_are_protocol_errors(tmp_path: Path) -> None:
    packed = msgpack.packb([[1, 2, 3], {"a": "b" * 50}, NO_EMBED], use_bin_type=True)
    wire = replace(v2_wire(None), body=packed[:-7], content_type=MSGPACK, content_encoding="binary")
    with pytest.raises(ProtocolError):
        wire.parse()
    marker = tmp_path / "pwned"
    evil = f'- [!!python/object/apply:pathlib.Path.touch ["{marker}"]]\n- {{}}\n- {{}}\n'
    with pytest.raises(ProtocolError, match="tag"):
        replace(v2_wire(None), body=evil.encode(), content_type=YAML).parse()
    assert not marker.exists()


def test_compression_lies_are_protocol_errors_with_identity() -> None:
    plain = v2_wire([[], {}, NO_EMBED], compression="application/x-gzip")
    with pytest.raises(ProtocolError) as caught:
        plain.parse()
    assert caught.value.task_id == "t-1"
    hidden = replace(v2_wire(None), body=zlib.compress(json.dumps([[], {}, NO_EMBED]).encode()))
    with pytest.raises(ProtocolError):
        hidden.parse()


def test_zero_time_limits_mean_not_set() -> None:
    task = v2_wire([[], {}, NO_EMBED], timelimit=[0, 0.0]).parse()
    assert (task.time_limit, task.soft_time_limit) == (None, None)


# --- options round trip ---------------------------------------------------------------------


def test_to_options_round_trips_every_field_through_json(client: Client) -> None:
    sig = dict(client.app.signature("proj.tsum", options={"eta": datetime(2030, 1, 1, tzinfo=UTC)}))
    wire = client.send(
        "proj.add",
        args=(1, 2),
        kwargs={"k": "v"},
        countdown=3,
        expires=60,
        time_limit=9,
        link=[sig],
        link_error=[sig],
        chain=[sig],
        chord=sig,
        group_id="g",
        group_index=1,
        parent_id="p",
        root_id="r",
        shadow="s",
        priority=3,
        ignore_result=False,
    )
    task = wire.parse()
    assert roundtrip(task) == task
    assert task.chord is not None and task.chord["options"]["eta"].tzinfo is UTC


@pytest.mark.parametrize(
    "options",
    [
        None,
        [],
        {},
        {"v": 2, "task_id": "x", "task_name": "a", "protocol": 2},
        {"v": 1, "task_name": "a", "protocol": 2},
        {"v": 1, "task_id": "x", "task_name": "a", "protocol": 3},
        {"v": 1, "task_id": "x", "task_name": "a..b", "protocol": 2},
        {"v": 1, "task_id": "x", "task_name": "a", "protocol": 2, "chain": "x"},
        {"v": 1, "task_id": "x", "task_name": "a", "protocol": 2, "eta": "x"},
    ],
)
def test_from_options_refuses_bad_options(options: Any) -> None:
    with pytest.raises(ProtocolError):
        CeleryTask.from_options(options)


# --- property tests -------------------------------------------------------------------------

HEADER_NAMES = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "compression",
    "stamps",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
keys = st.sampled_from(HEADER_NAMES + ["args", "kwargs", "callbacks", "chain", "chord", "utc"])
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(keys | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
names = st.sampled_from(["echo_bot.echo", "a", "x.y:z-1"]) | st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_.:-]{0,20}", fullmatch=True
)
ids = st.sampled_from(["t-1", "11111111-1111-1111-1111-111111111111"]) | st.text(
    min_size=1, max_size=20
)
moments = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)
seconds = st.none() | st.integers(0, 100) | st.floats(0, 100)
# Plausible values per field, mixed with anything at all, so both paths get exercised.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "task": names,
    "id": ids,
    "shadow": st.none() | ids,
    "eta": st.none() | moments,
    "expires": st.none() | moments,
    "group": st.none() | ids,
    "group_index": st.none() | st.integers(0, 5),
    "retries": st.integers(0, 5),
    "timelimit": st.lists(seconds, min_size=2, max_size=2),
    "root_id": ids,
    "parent_id": st.none() | ids,
    "ignore_result": st.none() | st.booleans(),
    "compression": st.sampled_from(["application/x-gzip", "application/x-bz2", "bogus"]),
}
signatures = st.fixed_dictionaries(
    {"task": names},
    optional={
        "args": st.lists(values, max_size=2),
        "kwargs": st.dictionaries(st.text(max_size=5), values, max_size=2),
        "options": st.dictionaries(st.text(max_size=5), values, max_size=2),
        "subtask_type": st.none() | st.sampled_from(["group", "chain", "chord"]),
        "immutable": st.booleans(),
    },
)
embeds = st.fixed_dictionaries(
    {},
    optional={
        "callbacks": st.none() | st.lists(signatures | values, max_size=2),
        "errbacks": st.none() | st.lists(signatures, max_size=2),
        "chain": st.none() | st.lists(signatures, max_size=2),
        "chord": st.none() | signatures | values,
    },
)
arguments = st.lists(values, max_size=3)
keyword_arguments = st.dictionaries(st.text(max_size=6), values, max_size=3)
v2_bodies = st.tuples(arguments, keyword_arguments, embeds).map(list)
v1_bodies = st.fixed_dictionaries(
    {"task": names},
    optional={
        "id": ids,
        "args": arguments,
        "kwargs": keyword_arguments,
        "utc": st.booleans(),
        "taskset": st.none() | ids,
        **{name: FIELD_VALUES[name] | values for name in ("eta", "retries", "timelimit")},
    },
).map(lambda body: {**body, **({"callbacks": [{"task": "a"}]} if "id" in body else {})})
plausible_headers = st.fixed_dictionaries(
    {"task": names, "id": ids},
    optional={
        name: FIELD_VALUES.get(name, values) | values
        for name in HEADER_NAMES
        if name not in ("task", "id")
    },
)
header_tables = (
    st.none()
    | values
    | plausible_headers
    | st.dictionaries(
        keys | keys.map(str.encode) | st.text(max_size=6) | st.binary(max_size=4), values
    )
)
content_types = (
    st.sampled_from([JSON, MSGPACK, YAML])
    | st.sampled_from([PICKLE, None, "text/plain"])
    | st.text(max_size=12)
)


def _serialize(content_type: str | None, value: Any) -> bytes:
    if content_type == MSGPACK:
        return msgpack.packb(value, use_bin_type=True)
    if content_type == YAML:
        return yaml.safe_dump(value).encode()
    return kombu_json.dumps(value).encode()


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    # NOTE: "sane" draws plausible properties so that the parser's deeper paths are reached
    # as often as its early refusals.
    sane = draw(st.booleans())
    content_type = draw(st.sampled_from([JSON, MSGPACK, YAML]) if sane else content_types)
    shape = draw(st.sampled_from(["bytes", "values", "v2", "v1"]))
    if shape == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        strategy = {"values": values, "v2": v2_bodies, "v1": v1_bodies}[shape]
        body = _serialize(content_type, draw(strategy))
    headers = draw(st.just({}) if shape == "v1" else header_tables)
    if sane and isinstance(headers, dict):
        headers.pop("compression", None)
    return {
        "body": body,
        "content_type": content_type,
        "content_encoding": "utf-8" if sane else draw(st.none() | st.text(max_size=5)),
        "headers": headers,
        "correlation_id": draw(ids if sane else scalars),
        "reply_to": draw(st.none() | ids if sane else scalars),
        "priority": draw(st.none() | st.integers(0, 9) if sane else scalars),
    }


def check_contract(message: dict[str, Any]) -> CeleryTask | None:
    """Parse and assert the contract: a valid, round-trippable task, or a ProtocolError."""
    arguments = dict(message)
    body = arguments.pop("body")
    try:
        task = parse_message(body, **arguments)
    except ProtocolError:
        return None
    assert isinstance(task, CeleryTask) and isinstance(task.args, list)
    assert isinstance(task.task_id, str) and task.protocol in (1, 2)
    assert task.eta is None or task.eta.tzinfo is UTC
    assert roundtrip(task) == task
    return task


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_parse_message_returns_a_task_or_raises_protocol_error_for_any_input(
    message: dict[str, Any],
) -> None:
    check_contract(message)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from(HEADER_NAMES),
    header_value=values,
    body=v2_bodies | values,
    content_type=st.sampled_from([JSON, MSGPACK, YAML]),
)
def test_mutating_one_header_or_the_body_never_breaks_the_contract(
    header: str, header_value: Any, body: Any, content_type: str
) -> None:
    # Given a valid header table with one header replaced by anything
    message = {
        "body": _serialize(content_type, body),
        "content_type": content_type,
        "content_encoding": "utf-8",
        "headers": {"task": "echo_bot.echo", "id": "t-1", header: header_value},
        "correlation_id": "t-1",
        "reply_to": "q",
    }
    # When parsed, Then it is a task, or a ProtocolError that still names the task id
    try:
        check_contract(message)
    except ProtocolError as exc:  # pragma: no cover - check_contract swallows it
        raise AssertionError from exc
    try:
        parse_message(message.pop("body"), **message)
    except ProtocolError as exc:
        assert exc.task_id == "t-1" or (header == "id" and exc.task_id is not None)


def test_ids_are_limited_in_utf8_bytes_as_amqp_short_strings_are() -> None:
    assert identifier("é" * 127, "id") == "é" * 127  # 254 bytes
    with pytest.raises(ProtocolError, match="at most 255 bytes"):
        identifier("é" * 128, "id")  # 128 characters, 256 bytes
