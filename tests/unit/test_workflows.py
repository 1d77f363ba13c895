"""Workflow dispatch compared with what a real Celery 5 worker does, offline.

The reference is the ``celery`` package itself, playing both roles over kombu's in-memory
transport and the in-memory cache backend: as the client it applies a canvas (chain, link,
chord...) and yields the first task message; as the worker it runs that message through
Celery's own tracer (``celery.app.trace.build_tracer``), which publishes the callbacks,
chain steps and errbacks and stores the chain failures. The bridge gets the same message
(parsed by :func:`bridge.protocol.parse_message`) and must publish the same messages, byte
for byte, and store the same failures. Ids that either side invents (a callback's task id,
an errback group's id, the worker's reply queue) are matched by their order of appearance.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from celery import Celery, chain, chord, group
from celery.app.trace import build_tracer
from celery.utils.saferepr import saferepr as celery_saferepr
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.messaging import Producer

from bridge.celery_results import exception_info
from bridge.chords import exception_repr
from bridge.outgoing import Sender, UnsupportedCanvas, saferepr
from bridge.protocol import parse_message
from bridge.task import CeleryTask
from bridge.workflows import apply_signature, dispatch_failure, dispatch_success, fail_chain

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TRACE = "Traceback (most recent call last):\n  ...\nValueError: mid\n"


@dataclass(frozen=True)
class Wire:
    """One published task message, as RabbitMQ would carry it."""

    exchange: str
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    properties: dict[str, Any]

    def parse(self) -> CeleryTask:
        return parse_message(
            self.body,
            content_type=self.properties["content_type"],
            content_encoding=self.properties["content_encoding"],
            headers=self.headers,
            correlation_id=self.properties["correlation_id"],
            reply_to=self.properties["reply_to"],
            priority=self.properties["priority"],
        )


class Recorder:
    """A TaskPublisher and a result writer that keep what they are given."""

    def __init__(self) -> None:
        self.wires: list[Wire] = []
        self.metas: dict[str, dict[str, Any]] = {}

    def publish(
        self, *, exchange, routing_key, body, headers, properties, declare_queue=False
    ) -> None:  # type: ignore[no-untyped-def]
        assert declare_queue == (exchange == ""), "a queue reached through '' must be declared"
        self.wires.append(Wire(exchange, routing_key, headers, body, properties))

    def write(self, meta: dict[str, Any]) -> bool:
        self.metas[meta["task_id"]] = meta
        return True


class Reference:
    """Real Celery apps, offline: a client that applies canvases and a worker that runs them.

    The client speaks ``protocol``; the worker, like any Celery worker, sends protocol 2.
    """

    def __init__(self, protocol: int = 2) -> None:
        self.client = Celery(
            "client", broker="memory://", backend="cache+memory://", set_as_current=False
        )
        self.client.conf.task_protocol = protocol
        self.app = Celery(
            "worker", broker="memory://", backend="cache+memory://", set_as_current=False
        )

    def close(self) -> None:
        self.client.close()
        self.app.close()

    def sig(
        self, name: str, *args: Any, immutable: bool = False, options: Any = None, **kwargs: Any
    ) -> Any:
        """A signature of ``name(*args, **kwargs)`` with execution ``options``."""
        return self.client.signature(
            name, args=args, kwargs=kwargs, options=options or {}, immutable=immutable
        )

    def send(self, canvas: Any, **options: Any) -> list[Wire]:
        """Apply ``canvas`` as a client; return the messages it published."""
        with captured() as wires:
            canvas.apply_async(**options)
        return wires

    def run(
        self, wire: Wire, result: Any = None, *, fail: bool = False
    ) -> tuple[CeleryTask, list[Wire]]:
        """Run ``wire`` through Celery's worker tracer; return the task and what it published.

        Its task is registered for this run only (returning ``result``, or raising
        ``ValueError('mid')``), so every other name is sent as an unregistered task, as a
        Celery worker without the hub's tasks sends it.
        """
        task = wire.parse()

        def run(*args: Any, **kwargs: Any) -> Any:
            if fail:
                raise ValueError("mid")
            return result

        self.app.task(name=task.task_name, shared=False)(run)
        tracer = build_tracer(task.task_name, self.app.tasks[task.task_name], app=self.app)
        request = {
            "id": task.task_id,
            "root_id": task.root_id,
            "parent_id": task.parent_id,
            "group": task.group_id,
            "group_index": task.group_index,
            "callbacks": task.callbacks,
            "errbacks": task.errbacks,
            "chain": task.chain,
            "chord": task.chord,
            "reply_to": task.reply_to,
            "correlation_id": task.correlation_id,
            "delivery_info": {},
        }
        try:
            with captured() as wires:
                tracer(task.task_id, list(task.args), dict(task.kwargs), request)
        finally:
            self.app.tasks.unregister(task.task_name)
        return task, wires

    def meta(self, task_id: str) -> dict[str, Any]:
        """The meta the worker stored, as JSON (a PENDING one when nothing was stored)."""
        backend = self.app.backend
        raw = backend.get(backend.get_key_for_task(task_id))
        return json.loads(raw) if raw else {"status": "PENDING", "task_id": task_id}


@contextmanager
def captured() -> Iterator[list[Wire]]:
    """Record every message kombu publishes, after kombu prepared it for the wire."""
    wires: list[Wire] = []

    def publish(
        producer,
        body,
        priority,
        content_type,
        content_encoding,
        headers,
        properties,
        routing_key,
        mandatory,
        immediate,
        exchange,
        *rest,
    ):  # type: ignore[no-untyped-def]
        wires.append(
            Wire(
                exchange,
                routing_key,
                dict(headers),
                body.encode() if isinstance(body, str) else body,
                {
                    "content_type": content_type,
                    "content_encoding": content_encoding,
                    **properties,
                    "priority": priority or 0,
                },
            )
        )

    with mock.patch.object(Producer, "_publish", publish):
        yield wires


def normalised(wires: list[Wire], known: set[str]) -> list[dict[str, Any]]:
    """The wires as text, with ids not in ``known`` numbered by first appearance."""
    names: dict[str, str] = {}

    def rename(text: str) -> str:
        return UUID.sub(
            lambda m: m[0] if m[0] in known else names.setdefault(m[0], f"<id{len(names)}>"),
            text,
        )

    out = []
    for wire in wires:
        properties = dict(wire.properties)
        expiration = properties.pop("expiration", None)
        out.append(
            {
                "route": (wire.exchange, wire.routing_key),
                "headers": rename(json.dumps(wire.headers)),
                "properties": rename(json.dumps(properties, sort_keys=True)),
                "body": rename(wire.body.decode("utf-8")),
                "expiration": expiration is not None,
            }
        )
    return out


def assert_same_wires(ours: list[Any], theirs: list[Wire], known: set[str]) -> None:
    """The bridge's messages are Celery's, field by field (new ids matched by position)."""
    mine, celery = normalised(ours, known), normalised(theirs, known)
    assert len(mine) == len(celery)
    for index, (got, expected) in enumerate(zip(mine, celery, strict=True)):
        for key in expected:
            assert got[key] == expected[key], f"message {index}: {key}"


def ids_in(wire: Wire) -> set[str]:
    return set(UUID.findall(json.dumps(wire.headers) + wire.body.decode() + str(wire.properties)))


def bridge_success(task: CeleryTask, result: Any) -> tuple[list[str], Recorder]:
    recorder = Recorder()
    children = dispatch_success(task, result, publisher=recorder, results=None, redis_client=None)
    return children, recorder


def bridge_failure(task: CeleryTask, error: dict[str, Any]) -> Recorder:
    recorder = Recorder()
    services: dict[str, Any] = {"publisher": recorder, "results": recorder, "redis_client": None}
    fail_chain(task, error, traceback=TRACE, **services)
    dispatch_failure(task, error, **services)
    return recorder


def child_ids(meta: dict[str, Any]) -> list[str]:
    """Task ids in Celery's ``children`` (a group's members flattened)."""
    ids = []
    for (node_id, _parent), members in meta["children"]:
        ids += [member[0][0] for member in members] if members else [node_id]
    return ids


def assert_same_success(ref: Reference, wire: Wire, result: Any) -> tuple[CeleryTask, Recorder]:
    """Given a message, when Celery and the bridge complete it, they publish the same."""
    task, expected = ref.run(wire, result)
    children, recorder = bridge_success(task, result)
    known = ids_in(wire)
    assert_same_wires(recorder.wires, expected, known)
    celery_children = ref.meta(task.task_id)["children"]
    # The same ids where the client chose them, the same shape (a group of callbacks is one
    # GroupResult tuple), and the ids of what each side published.
    assert id_shape(children, known) == id_shape(celery_children, known)
    assert child_ids({"children": children}) == [wire.headers["id"] for wire in recorder.wires]
    assert child_ids({"children": celery_children}) == [wire.headers["id"] for wire in expected]
    return task, recorder


def id_shape(children: Any, known: set[str]) -> Any:
    """``children`` with each id the client did not choose replaced by ``"<new>"``."""
    if isinstance(children, list):
        return [id_shape(item, known) for item in children]
    if isinstance(children, str) and children not in known:
        return "<new>"
    return children


@pytest.fixture
def ref() -> Iterator[Reference]:
    reference = Reference()
    yield reference
    reference.close()


# --- chains -----------------------------------------------------------------------------


def test_the_next_chain_step_is_the_last_element_and_gets_the_result_prepended(
    ref: Reference,
) -> None:
    # Given a chain of three sent by a client with its own id for the chain's result
    canvas = chain(ref.sig("proj.first"), ref.sig("proj.add", 10), ref.sig("proj.mul", 100))
    first = ref.send(canvas, task_id="33333333-0000-0000-0000-000000000004")[0]
    # When the first step succeeds with 2
    task, recorder = assert_same_success(ref, first, 2)
    # Then the middle step (chain[-1]) goes out with (2, 10), its frozen id and the ids
    (step,) = recorder.wires
    assert step.headers["id"] == task.chain[-1]["options"]["task_id"]
    assert step.headers["parent_id"] == task.task_id and step.headers["root_id"] == task.task_id
    args, _, embed = json.loads(step.body)
    assert args == [2, 10] and embed["chain"] == task.chain[:-1]
    # and the last step, with the client's id, arrives with an empty chain
    last_task, last = assert_same_success(ref, step, 12)
    assert last.wires[0].headers["id"] == "33333333-0000-0000-0000-000000000004"
    assert json.loads(last.wires[0].body)[2]["chain"] == []
    assert last.wires[0].headers["root_id"] == task.task_id


def test_an_immutable_chain_step_does_not_receive_the_result(ref: Reference) -> None:
    canvas = chain(ref.sig("proj.first"), ref.sig("proj.add", 1, 1, immutable=True))
    first = ref.send(canvas)[0]
    _, recorder = assert_same_success(ref, first, 5)
    assert json.loads(recorder.wires[0].body)[0] == [1, 1]
    assert recorder.wires[0].headers["argsrepr"] == "[1, 1]"  # Celery keeps the list


def test_a_chain_from_a_protocol_1_client_is_run_through_nested_links() -> None:
    reference = Reference(protocol=1)
    canvas = chain(
        reference.sig("proj.first"), reference.sig("proj.add", 10), reference.sig("proj.mul")
    )
    first = reference.send(canvas)[0]
    assert first.headers == {}
    _, recorder = assert_same_success(reference, first, 1)
    assert json.loads(recorder.wires[0].body)[2]["callbacks"][0]["task"] == "proj.mul"
    reference.close()


def test_a_step_keeps_its_routing_priority_limits_and_absolute_times(ref: Reference) -> None:
    eta = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    step = ref.sig(
        "proj.add",
        10,
        options={
            "queue": "hub",
            "priority": 5,
            "time_limit": 60,
            "soft_time_limit": 50,
            "eta": eta,
            "expires": eta + timedelta(hours=1),
            "shadow": "adder",
        },
    )
    first = ref.send(chain(ref.sig("proj.first"), step))[0]
    _, recorder = assert_same_success(ref, first, 1)
    wire = recorder.wires[0]
    assert (wire.exchange, wire.routing_key) == ("", "hub")
    assert wire.properties["priority"] == 5 and wire.headers["timelimit"] == [60, 50]
    assert wire.headers["eta"] == "2031-01-02T03:04:05+00:00"
    expected_ms = (eta + timedelta(hours=1) - datetime.now(UTC)).total_seconds() * 1000
    assert abs(int(wire.properties["expiration"]) - expected_ms) < 60_000


def test_a_countdown_becomes_an_eta_from_now() -> None:
    sig = {"task": "proj.add", "args": [], "kwargs": {}, "options": {"countdown": 30}}
    now = datetime(2030, 1, 1, tzinfo=UTC)
    app = apply_signature(sig, (1,), sender=Sender(task_id="t", root_id="r", now=lambda: now))
    headers = app.messages[0].headers
    assert headers["eta"] == "2030-01-01T00:00:30+00:00"
    assert headers["parent_id"] == "t" and headers["root_id"] == "r"


def test_a_result_with_kombu_types_is_passed_on_as_kombu_encodes_it(ref: Reference) -> None:
    first = ref.send(chain(ref.sig("proj.first"), ref.sig("proj.echo")))[0]
    task = first.parse()
    value = {"when": datetime(2030, 1, 2, tzinfo=UTC), "raw": b"ab"}
    _, recorder = bridge_success(task, value)
    assert json.loads(recorder.wires[0].body)[0] == [
        {
            "when": {"__type__": "datetime", "__value__": "2030-01-02T00:00:00+00:00"},
            "raw": {"__type__": "bytes", "__value__": "ab"},
        }
    ]


def test_a_task_rebuilt_from_its_dramatiq_options_dispatches_the_same(ref: Reference) -> None:
    canvas = chain(ref.sig("proj.first"), ref.sig("proj.add", 10), ref.sig("proj.add", 100))
    task = ref.send(canvas)[0].parse()
    again = CeleryTask.from_options(task.to_options(), args=task.args, kwargs=task.kwargs)
    assert bridge_success(again, 2)[1].wires[0].body == bridge_success(task, 2)[1].wires[0].body


# --- links, groups and chords -------------------------------------------------------------


def test_a_link_callback_gets_the_result_and_its_own_arguments(ref: Reference) -> None:
    first = ref.send(ref.sig("proj.first"), link=ref.sig("proj.tsum", 4, scale=2))[0]
    _, recorder = assert_same_success(ref, first, 3)
    args, kwargs, _ = json.loads(recorder.wires[0].body)
    assert args == [3, 4] and kwargs == {"scale": 2}


def test_several_callbacks_are_sent_together_as_one_group(ref: Reference) -> None:
    links = [ref.sig("proj.a"), ref.sig("proj.b", 1), ref.sig("proj.c", immutable=True)]
    first = ref.send(ref.sig("proj.first"), link=links)[0]
    _, recorder = assert_same_success(ref, first, 3)
    groups = {wire.headers["group"] for wire in recorder.wires}
    assert len(groups) == 1 and None not in groups
    assert [wire.headers["group_index"] for wire in recorder.wires] == [0, 1, 2]


def test_a_group_after_a_task_gets_the_result_in_every_member(ref: Reference) -> None:
    canvas = chain(ref.sig("proj.first"), group(ref.sig("proj.add", 1), ref.sig("proj.add", 2)))
    first = ref.send(canvas)[0]
    _, recorder = assert_same_success(ref, first, 1)
    assert [json.loads(w.body)[0] for w in recorder.wires] == [[1, 1], [1, 2]]


def test_a_group_then_a_task_becomes_a_chord_whose_size_is_recorded_first(
    ref: Reference,
) -> None:
    # Given chain(a, group(b, c), d, e): Celery turns group | d into a chord
    canvas = chain(
        ref.sig("proj.first"),
        group(ref.sig("proj.add", 1), ref.sig("proj.add", 2)),
        ref.sig("proj.tsum"),
        ref.sig("proj.add", 5),
    )
    first = ref.send(canvas)[0]
    task, expected = ref.run(first, 1)
    # When the bridge applies the next step
    options = {"chain": task.chain[:-1], "parent_id": task.task_id, "root_id": task.root_id}
    app = apply_signature(
        task.chain[-1],
        (1,),
        None,
        {**options, "priority": None},
        sender=Sender(task_id=task.task_id),
    )
    # Then it publishes Celery's header messages, carrying the body and the rest of the chain
    known = ids_in(first)
    assert_same_wires(app.messages, expected, known)
    header_id = app.messages[0].headers["group"]
    assert app.chord_sizes == [(header_id, 2)]
    body = json.loads(app.messages[0].body)[2]["chord"]
    assert body["options"]["chain"] == task.chain[:-1]
    assert body["options"]["group_id"] == header_id


def test_a_chord_body_is_published_with_the_header_results(ref: Reference) -> None:
    header = [ref.sig("proj.first", 1), ref.sig("proj.first", 2)]
    wires = ref.send(chord(header, ref.sig("proj.tsum", 10)))
    member = wires[1].parse()
    app = apply_signature(
        member.chord, ([1, 2],), sender=Sender(task_id=member.task_id, root_id=member.root_id)
    )
    (message,) = app.messages
    assert json.loads(message.body)[0] == [[1, 2], 10]
    assert message.headers["id"] == member.chord["options"]["task_id"]
    assert message.headers["group"] == member.group_id
    assert message.headers["parent_id"] == member.task_id


@pytest.mark.parametrize(
    "build",
    [
        lambda r: r.sig("proj.first", options={"link": chain(r.sig("proj.a"), r.sig("proj.b"))}),
        lambda r: r.sig(
            "ref.ok", options={"link": group(chain(r.sig("proj.a"), r.sig("proj.b")), r.sig("c"))}
        ),
    ],
    ids=["chain-as-link", "chain-inside-a-group"],
)
def test_an_unsupported_callback_is_logged_and_not_sent(
    ref: Reference, build: Callable[[Reference], Any], caplog: pytest.LogCaptureFixture
) -> None:
    task = ref.send(build(ref))[0].parse()
    children, recorder = bridge_success(task, 1)
    assert children == [] and recorder.wires == []
    assert "not sent" in caplog.text


def test_an_unsupported_chain_step_fails_the_rest_of_the_chain(ref: Reference) -> None:
    first = ref.send(chain(ref.sig("proj.first"), ref.sig("proj.a"), ref.sig("proj.b")))[0]
    task = first.parse()
    nested = dict(task.chain[-1], subtask_type="chain", task="celery.chain")
    broken = CeleryTask.from_options(
        {**task.to_options(), "chain": [task.chain[0], nested]}, args=task.args
    )
    recorder = Recorder()
    children = dispatch_success(
        broken,
        1,
        publisher=recorder,
        results=recorder,
        redis_client=None,  # type: ignore[arg-type]
    )
    assert children == [] and recorder.wires == []
    failed = recorder.metas[task.chain[0]["options"]["task_id"]]
    assert failed["result"]["exc_type"] == "NotImplementedError"
    with pytest.raises(UnsupportedCanvas):
        apply_signature(nested, (1,), sender=Sender())


def test_a_group_step_holding_a_chain_fails_every_id_the_client_waits_for(
    ref: Reference,
) -> None:
    canvas = chain(
        ref.sig("proj.first"), group(chain(ref.sig("proj.a"), ref.sig("proj.b")), ref.sig("c"))
    )
    with captured() as wires:
        result = canvas.apply_async()
    recorder = Recorder()
    children = dispatch_success(
        wires[0].parse(), 1, publisher=recorder, results=recorder, redis_client=None
    )
    assert children == [] and recorder.wires == []
    waited = [result.id, *(member.id for member in result.results)]  # a GroupResult's
    assert len(waited) == 3
    for task_id in waited:
        assert recorder.metas[task_id]["result"]["exc_type"] == "NotImplementedError", task_id


def test_a_group_step_holding_a_chord_fails_the_chords_id_too(ref: Reference) -> None:
    inner = chord([ref.sig("proj.a"), ref.sig("proj.b")], ref.sig("proj.body"))
    canvas = chain(ref.sig("proj.first"), group(inner, ref.sig("proj.c")))
    with captured() as wires:
        result = canvas.apply_async()
    recorder = Recorder()
    dispatch_success(wires[0].parse(), 1, publisher=recorder, results=recorder, redis_client=None)
    waited = [member.id for member in result.results]  # the chord's id is its body's
    assert len(waited) == 2
    for task_id in waited:
        assert recorder.metas[task_id]["result"]["exc_type"] == "NotImplementedError", task_id


def test_a_chord_step_holding_a_chain_fails_its_header_ids_too(ref: Reference) -> None:
    header = [chain(ref.sig("proj.a"), ref.sig("proj.b")), ref.sig("proj.c")]
    canvas = chain(ref.sig("proj.first"), chord(header, ref.sig("proj.body")))
    with captured() as wires:
        result = canvas.apply_async()
    recorder = Recorder()
    dispatch_success(wires[0].parse(), 1, publisher=recorder, results=recorder, redis_client=None)
    waited = [result.id, *(member.id for member in result.parent.results)]
    assert len(waited) == 3
    for task_id in waited:
        assert recorder.metas[task_id]["result"]["exc_type"] == "NotImplementedError", task_id


# --- failures ---------------------------------------------------------------------------


def test_a_failing_step_fails_every_remaining_chain_step_like_celery(ref: Reference) -> None:
    # Given a chain whose first step fails
    canvas = chain(ref.sig("proj.first"), ref.sig("proj.add", 10), ref.sig("proj.add", 100))
    first = ref.send(canvas, task_id="33333333-0000-0000-0000-00000000000f")[0]
    task, expected = ref.run(first, fail=True)
    # When the bridge is told of the failure
    recorder = bridge_failure(task, exception_info(ValueError("mid")))
    # Then the remaining steps are FAILURE, as Celery stored them, and nothing is published
    assert expected == [] and recorder.wires == []
    for step in task.chain:
        step_id = step["options"]["task_id"]
        ours, theirs = recorder.metas.pop(step_id), ref.meta(step_id)
        assert ours["traceback"] == TRACE
        for key in ("status", "result", "children", "task_id"):
            assert ours[key] == theirs[key], key
    assert recorder.metas == {}
    assert task.chain[0]["options"]["task_id"] == "33333333-0000-0000-0000-00000000000f"


def test_a_failure_before_a_chord_in_a_chain_fails_the_chord_body(ref: Reference) -> None:
    canvas = chain(
        ref.sig("proj.first"), group(ref.sig("proj.a"), ref.sig("proj.b")), ref.sig("proj.tsum")
    )
    task, _ = ref.run(ref.send(canvas)[0], fail=True)
    recorder = bridge_failure(task, exception_info(ValueError("mid")))
    body_id = task.chain[-1]["kwargs"]["body"]["options"]["task_id"]
    candidates = (body_id, task.chain[-1]["options"]["task_id"])
    stored = {i for i in candidates if ref.meta(i)["status"] == "FAILURE"}
    assert body_id in stored and set(recorder.metas) == stored


def test_errbacks_are_published_with_the_failed_task_id_first(ref: Reference) -> None:
    errbacks = [ref.sig("proj.on_error", "extra"), ref.sig("proj.log_error")]
    first = ref.send(ref.sig("proj.first"), link_error=errbacks)[0]
    task, expected = ref.run(first, fail=True)
    recorder = bridge_failure(task, exception_info(ValueError("mid")))
    known = ids_in(first)
    assert_same_wires(recorder.wires, expected, known)
    assert json.loads(recorder.wires[0].body)[0] == [task.task_id, "extra"]
    assert recorder.wires[0].headers["parent_id"] == task.task_id


@pytest.mark.parametrize(
    "info",
    [
        exception_info(ValueError("x")),
        exception_info(KeyError("k", 3)),
        exception_info(RuntimeError()),
        {"exc_type": "BotError", "exc_message": ["bad input", 3], "exc_module": "hub.errors"},
        {
            "exc_type": "TaskRevokedError",
            "exc_message": ["revoked"],
            "exc_module": "celery.exceptions",
        },
    ],
)
def test_the_chord_error_text_names_the_exception_as_the_client_rebuilds_it(
    ref: Reference, info: dict[str, Any]
) -> None:
    assert exception_repr(info) == repr(ref.app.backend.exception_to_python(info))


# --- argsrepr ---------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.tuples(inner)
        | st.tuples(inner, inner)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_argsrepr_matches_celery_saferepr_below_the_length_limit(value: Any) -> None:
    expected = celery_saferepr(value, 1024, maxlevels=3)
    if len(expected) < 1000:
        assert saferepr(value) == expected
