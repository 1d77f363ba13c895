"""Hostile Celery messages over AMQP into a running ``nagatha bridge``, between good ones.

Hypothesis (bounded: 60 examples, generate phase only) builds messages that are bad in one
definite way each - truncated msgpack, YAML with Python or unknown tags, pickle, compression
headers that lie, unknown content types, invalid UTF-8, a missing ``id`` or ``task``, and a
wrong type in one field of the headers or the body - and publishes them with pika to the
``celery`` queue on a vhost of the private RabbitMQ node. Every few examples the real
``celery`` client sends a good ``echo_bot.echo``. The bridge must stay up, every bad message must
end in the dead-letter queue with an ``x-nagatha-reason`` header (seen through
``nagatha bridge dlq list --json`` and by reading the queue), and every good task must return
its result. The parser's own property tests live in ``tests/unit``; this is the running bridge.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import msgpack
import pika
import pytest
from celery import Celery
from fault_kit import Outcome, RabbitNode, RedisServer
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from nagatha.config import FrameworkConfig
from nagatha.testing import HubProcess, run_cli, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLES = 60
GOOD_EVERY = 6
DLQ = "nagatha.bridge.dead"
TASK = "echo_bot.echo"

# -- what makes a message bad -----------------------------------------------------------------

# pika encodes no float in a header table; a Decimal is its non-integer number.
DECIMALS = st.decimals(min_value=-1000, max_value=1000, places=2)
NOT_TEXT = st.one_of(
    st.integers(-(2**31), 2**31),
    DECIMALS,
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), max_size=2),
)
NOT_INTEGER = st.one_of(
    st.integers(-(2**31), -1),
    st.text(max_size=5),
    DECIMALS.filter(lambda d: d != int(d)),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=2),
)
NOT_FLAG = st.one_of(st.integers(0, 9), st.text(max_size=5), st.lists(st.booleans(), max_size=2))
NOT_MOMENT = st.one_of(
    st.integers(-(2**31), 2**31),
    st.sampled_from(["tomorrow", "2026-13-45T99:99:99", "now", "12:00", "-"]),
    st.lists(st.integers(0, 9), max_size=2),
    st.booleans(),
)
NOT_TIMELIMIT = st.one_of(
    st.integers(0, 100),
    st.text(max_size=5),
    st.lists(st.integers(0, 9), min_size=3, max_size=4),
    st.just([-1, None]),
    st.just(["a", "b"]),
)
#: Header field -> values that field never accepts.
HEADER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "task": st.one_of(NOT_TEXT, st.sampled_from(["", "a b", "x..y", "end.", "\x00"])),
    "id": NOT_TEXT.filter(lambda v: v is not False),
    "root_id": NOT_TEXT,
    "parent_id": NOT_TEXT,
    "group": NOT_TEXT,
    "shadow": NOT_TEXT,
    "origin": NOT_TEXT,
    "argsrepr": NOT_TEXT,
    "kwargsrepr": NOT_TEXT,
    "retries": NOT_INTEGER,
    "group_index": NOT_INTEGER,
    "ignore_result": NOT_FLAG,
    "eta": NOT_MOMENT,
    "expires": NOT_MOMENT,
    "timelimit": NOT_TIMELIMIT,
}
#: Body part (index in [args, kwargs, embed]) -> what it may not be.
NOT_LIST = st.one_of(
    st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers())
)
NOT_MAP = st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3))
YAML_TAGS = [
    "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system",
    "!!python/tuple [1, 2]",
    "!custom {a: 1}",
    "!!python/object:builtins.object {}",
]


def _headers(task_id: str) -> dict[str, Any]:
    return {"task": TASK, "id": task_id, "lang": "py", "retries": 0, "argsrepr": "()"}


def _good_body(message: str) -> list[Any]:
    return [[], {"message": message}, {"callbacks": None, "errbacks": None, "chord": None}]


@st.composite
def bad_messages(draw: st.DrawFn) -> dict[str, Any]:
    """One message that is bad in one definite way: ``kind``, body, properties."""
    task_id = f"hostile-{uuid.uuid4()}"
    headers = _headers(task_id)
    body = _good_body(draw(st.text(max_size=20)))
    kind = draw(
        st.sampled_from(
            [
                "truncated msgpack",
                "yaml tag",
                "pickle",
                "compression lie",
                "compressed without header",
                "unknown content type",
                "invalid utf-8",
                "missing id",
                "missing task",
                "wrong header type",
                "wrong body type",
                "not an array",
            ]
        )
    )
    content_type, encoding = "application/json", "utf-8"
    raw = json.dumps(body).encode()
    if kind == "truncated msgpack":
        packed = msgpack.packb(body)
        raw = packed[: draw(st.integers(0, len(packed) - 1))]
        content_type, encoding = "application/x-msgpack", "binary"
    elif kind == "yaml tag":
        tag = draw(st.sampled_from(YAML_TAGS))
        raw = f"- []\n- {{message: {tag}}}\n- {{}}\n".encode()
        content_type = "application/x-yaml"
    elif kind == "pickle":
        raw = pickle.dumps(body)
        content_type, encoding = "application/x-python-serialize", "binary"
    elif kind == "compression lie":
        headers["compression"] = draw(
            st.sampled_from(["zlib", "gzip", "application/x-gzip", "bzip2", "brotli", "x-fuzz"])
        )
    elif kind == "compressed without header":
        raw = zlib.compress(raw)
        encoding = "binary"
    elif kind == "unknown content type":
        content_type = "application/x-fuzz-" + draw(st.text("abcdefxyz-", max_size=8))
    elif kind == "invalid utf-8":
        raw = raw.replace(b'"message": "', b'"message": "\xff\xfe', 1)
    elif kind == "missing id":
        del headers["id"]
    elif kind == "missing task":
        del headers["task"]
    elif kind == "wrong header type":
        field = draw(st.sampled_from(sorted(HEADER_FIELDS)))
        headers[field] = draw(HEADER_FIELDS[field])
        kind = f"wrong type: {field}"
    elif kind == "wrong body type":
        part = draw(st.sampled_from(["args", "kwargs", "callbacks", "chord", "embed"]))
        if part == "args":
            body[0] = draw(NOT_LIST)
        elif part == "kwargs":
            body[1] = draw(NOT_MAP)
        elif part == "callbacks":
            body[2]["callbacks"] = draw(st.one_of(st.integers(), st.text(max_size=3)))
        elif part == "chord":
            body[2]["chord"] = draw(st.one_of(st.integers(), st.text(max_size=3), st.just([1])))
        else:
            body[2] = draw(NOT_MAP)
        raw = json.dumps(body).encode()
        kind = f"wrong type: body {part}"
    else:  # not an array: protocol 2 bodies are [args, kwargs, embed]
        raw = json.dumps(draw(st.one_of(st.integers(), st.text(max_size=5), NOT_LIST))).encode()
    return {
        "kind": kind,
        "body": raw,
        "properties": pika.BasicProperties(
            content_type=content_type,
            content_encoding=encoding,
            headers=headers,
            message_id=str(uuid.uuid4()),
            delivery_mode=2,
        ),
    }


# -- the stack --------------------------------------------------------------------------------


@pytest.fixture
def bridge(fault_env: dict[str, str], tmp_path: Path) -> Iterator[HubProcess]:
    """A running ``nagatha bridge`` on the private node's vhost and the private Redis."""
    process = HubProcess(["bridge"], fault_env, cwd=tmp_path)
    try:
        process.wait_for_log(r"bridge (\S+) consuming", timeout=90)
        yield process
    finally:
        if process.process.poll() is None:
            process.stop(timeout=30)
        process.log_path.unlink(missing_ok=True)


@pytest.fixture
def celery_app(fault_config: FrameworkConfig, redis_private: RedisServer) -> Iterator[Celery]:
    """The real Celery client, its results in the private Redis."""
    app = Celery(
        "hostile-celery",
        broker=fault_config.broker.url,
        backend=redis_private.url,
        set_as_current=False,
    )
    try:
        yield app
    finally:
        app.close()


def _vhost(config: FrameworkConfig) -> str:
    return unquote(urlsplit(config.broker.url).path.lstrip("/"))


def _drain_dlq(channel: Any) -> dict[str, str]:
    """Read every dead letter (the vhost is this test's own): message_id -> reason."""
    found: dict[str, str] = {}
    while True:
        method, properties, _body = channel.basic_get(DLQ, auto_ack=True)
        if method is None:
            return found
        reason = (properties.headers or {}).get("x-nagatha-reason")
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        found[str(properties.message_id)] = reason or ""


def test_hostile_celery_messages_are_dead_lettered_and_good_ones_complete(
    rabbit_node: RabbitNode,
    fault_config: FrameworkConfig,
    fault_env: dict[str, str],
    start_worker: Callable[..., HubProcess],
    bridge: HubProcess,
    celery_app: Celery,
    record_fault: Callable[[Outcome], None],
) -> None:
    start_worker(processes=1, threads=4)
    connection = pika.BlockingConnection(pika.URLParameters(fault_config.broker.url))
    sent: list[dict[str, Any]] = []
    good: list[tuple[Any, str]] = []
    begun = time.monotonic()
    try:
        channel = connection.channel()
        channel.confirm_delivery()

        def send_good() -> None:
            message = f"good-{len(good)}-{uuid.uuid4().hex[:6]}"
            good.append((celery_app.send_task(TASK, kwargs={"message": message}), message))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate])
        @given(bad_messages())
        def publish(message: dict[str, Any]) -> None:
            if len(sent) % GOOD_EVERY == 0:
                send_good()
            channel.basic_publish("", "celery", message["body"], message["properties"])
            sent.append(message)
            assert bridge.process.poll() is None, bridge.log()[-3000:]

        publish()
        send_good()

        # Then every good task returns its result ...
        for result, message in good:
            assert result.get(timeout=60) == message
        # ... and every bad message is in the dead-letter queue, with a reason.
        vhost = _vhost(fault_config)
        wait_until(
            lambda: rabbit_node.queue_depths(vhost).get(DLQ, 0) >= len(sent),
            60,
            message=f"{len(sent)} dead letters",
        )
        done = run_cli(["bridge", "dlq", "list", "--json"], fault_env)
        assert done.returncode == 0, done.stderr
        listed = json.loads(done.stdout)["dead_letters"]
        dead = _drain_dlq(channel)
    finally:
        connection.close()
    elapsed = time.monotonic() - begun

    assert len(listed) == len(sent) and all(letter["reason"] for letter in listed)
    missing = [m["kind"] for m in sent if m["properties"].message_id not in dead]
    assert missing == [], missing
    assert all(dead[m["properties"].message_id] for m in sent)
    assert bridge.process.poll() is None, bridge.log()[-3000:]
    kinds = sorted({m["kind"].split(":")[0] for m in sent})
    record_fault(
        Outcome(
            fault="hostile Celery messages (hypothesis)",
            load=f"{len(sent)} bad messages over AMQP + {len(good)} good send_task, worker 1x4",
            accepted=len(good),
            finished=len(good),
            lost=0,
            executed_twice=0,
            recovery_s=None,
            observed=(
                f"all {len(sent)} bad messages dead-lettered with a reason ({len(kinds)} kinds: "
                f"{', '.join(kinds)}), all {len(good)} good tasks returned, bridge up; "
                f"{elapsed:.1f} s"
            ),
            extra={"bad": len(sent), "dead_lettered": len(dead)},
        )
    )
