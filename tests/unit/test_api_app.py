"""The Falcon app in process (falcon.testing, memory broker and store, embedded worker).

Every endpoint, every error code and the error shape, without servers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from falcon.testing import Result, TestClient

from nagatha import __version__
from nagatha.api import HubApp, create_app
from nagatha.config import FrameworkConfig
from nagatha.errors import StoreUnavailable
from nagatha.hub import create_hub
from nagatha.registry import TaskRegistry
from nagatha.types import TaskRecord, TaskStatus, utcnow
from nagatha.worker import start_worker

TOKEN = "unit-token-1"


def memory_config(**api: Any) -> FrameworkConfig:
    return FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}, "api": api}
    )


@pytest.fixture(scope="module")
def hub() -> Iterator[TaskRegistry]:
    """One hub and embedded worker for the module (tests that patch it use monkeypatch)."""
    registry = create_hub(memory_config())
    worker = start_worker(registry.broker, threads=2)
    yield registry
    worker.stop(timeout=1000)


@pytest.fixture
def app(hub: TaskRegistry) -> HubApp:
    return create_app(memory_config(max_body_bytes=1024, max_wait=5), hub)


@pytest.fixture
def client(app: HubApp) -> TestClient:
    return TestClient(app)


def assert_error(result: Result, status: int, *words: str) -> dict[str, Any]:
    """The error has the one shape, the status, and mentions ``words``."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["description"], str) and body["description"]
    assert body["request_id"] == result.headers["x-request-id"]
    for word in words:
        assert word in body["description"], body
    return body


def run(client: TestClient, body: Any) -> Result:
    return client.simulate_post("/tasks/run", body=json.dumps(body))


# -- the endpoints ---------------------------------------------------------------------------


def test_ping_answers_ok_and_the_version(client: TestClient) -> None:
    result = client.simulate_get("/ping")
    assert result.status_code == 200
    assert result.json == {"status": "ok", "version": __version__}


def test_tasks_lists_the_shipped_tasks_with_parameters(client: TestClient) -> None:
    tasks = {task["name"]: task for task in client.simulate_get("/tasks").json["tasks"]}
    add = tasks["diagnostics.add"]
    assert add["module"] == "diagnostics"
    assert add["queue"] == "default"
    assert add["description"] == "Return ``x + y``."
    assert [(p["name"], p["required"]) for p in add["parameters"]] == [("x", True), ("y", True)]


def test_modules_lists_each_module_with_status_and_tasks(client: TestClient) -> None:
    modules = {m["name"]: m for m in client.simulate_get("/modules").json["modules"]}
    assert modules["diagnostics"]["status"] == "loaded"
    assert modules["diagnostics"]["error"] is None
    assert "diagnostics.add" in modules["diagnostics"]["tasks"]
    assert modules["echo_bot"]["version"]


def test_run_answers_202_with_the_id_and_the_task_finishes(client: TestClient) -> None:
    result = run(client, {"task_name": "diagnostics.add", "kwargs": {"x": 20, "y": 22}})
    assert result.status_code == 202
    accepted = result.json
    assert accepted["status"] == "pending"
    assert accepted["status_url"] == f"/tasks/{accepted['task_id']}"
    assert result.headers["location"] == accepted["status_url"]
    record = client.simulate_get(accepted["status_url"], params={"wait": "5"}).json
    assert record["status"] == "success"
    assert record["result"] == 42


def test_status_alias_answers_the_same_record(client: TestClient) -> None:
    task_id = run(client, {"task_name": "diagnostics.noop"}).json["task_id"]
    first = client.simulate_get(f"/tasks/{task_id}", params={"wait": "5"}).json
    assert client.simulate_get(f"/status/{task_id}").json == first


def test_wait_zero_answers_at_once_even_when_not_final(
    client: TestClient, hub: TaskRegistry
) -> None:
    task_id = hub.submit("diagnostics.sleep", kwargs={"seconds": 3}, delay_ms=60_000).task_id
    record = client.simulate_get(f"/tasks/{task_id}", params={"wait": "0"}).json
    assert record["status"] == "pending"


@pytest.mark.parametrize("delay_ms", [10, 1_500_000])
def test_delay_ms_is_accepted_up_to_25_minutes(client: TestClient, delay_ms: int) -> None:
    body = {"task_name": "diagnostics.noop", "kwargs": {}, "delay_ms": delay_ms}
    assert run(client, body).status_code == 202


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        (b"{", "Malformed JSON"),
        (b'{"task_name": NaN}', "Malformed JSON"),
        (b"\xff\xfe\x00", "Malformed JSON"),
        (b"[" * 100_000, "Malformed JSON"),
        (b'{"task_name": "\\ud800"}', "Malformed JSON"),
        (b'{"task_name": "echo_bot.echo", "kwargs": {"message": "\\udc00"}}', "Malformed JSON"),
        (b'{"task_name": "echo_bot.echo", "kwargs": {"\\udc00": 1}}', "Malformed JSON"),
        (b"[1, 2]", "Invalid body"),
        (b'"text"', "Invalid body"),
        (b"null", "Invalid body"),
        (b"", "Empty body"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(
    client: TestClient, app: HubApp, raw: bytes, title: str
) -> None:
    if len(raw) > 1024:  # over this app's limit: use an app with the default limit
        client = TestClient(create_app(memory_config(), app.registry))
    result = client.simulate_post("/tasks/run", body=raw)
    assert assert_error(result, 400)["title"] == title


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kwargs": {}}, "task_name"),
        ({"task_name": 5}, "task_name"),
        ({"task_name": "diagnostics.add", "kwargs": [1]}, "kwargs"),
        ({"task_name": "diagnostics.add", "args": [1, 2]}, "args"),
        ({"task_name": "diagnostics.noop", "delay_ms": -1}, "delay_ms"),
        # Longer than a worker may hold a message within RabbitMQ's consumer_timeout.
        ({"task_name": "diagnostics.noop", "delay_ms": 1_500_001}, "delay_ms"),
        ({"task_name": "diagnostics.noop", "delay_ms": True}, "delay_ms"),
        ({"task_name": "diagnostics.noop", "delay_ms": "100"}, "delay_ms"),
    ],
)
def test_body_fields_of_the_wrong_shape_are_400_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    error = assert_error(run(client, body), 400, field)
    assert field in [e["field"] for e in error["errors"]]


def test_a_422_names_at_most_20_unknown_arguments(client: TestClient, app: HubApp) -> None:
    client = TestClient(create_app(memory_config(), app.registry))  # the default body limit
    kwargs = {f"k{i:05}": 1 for i in range(5000)}
    result = run(client, {"task_name": "diagnostics.noop", "kwargs": kwargs})
    error = assert_error(result, 422, "and 4980 more")
    assert error["unknown"] == [f"k{i:05}" for i in range(20)]
    assert len(result.content) < 2000


def test_a_400_lists_at_most_20_fields_each_cut_short(client: TestClient, app: HubApp) -> None:
    client = TestClient(create_app(memory_config(), app.registry))  # the default body limit
    body = {"task_name": "diagnostics.noop", **{f"k{i:05}": 0 for i in range(5000)}}
    body["x" * 5000] = 0
    result = run(client, body)
    error = assert_error(result, 400, "and 4996 more")
    assert len(error["errors"]) == 20
    assert max(len(e["field"]) for e in error["errors"]) <= 103
    assert len(result.content) < 4000


def test_a_path_cannot_forge_a_log_line(
    client: TestClient,
    hub: TaskRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("status store (Redis) unavailable: ConnectionError")

    monkeypatch.setattr(hub.store, "get", down)
    with caplog.at_level(logging.WARNING, logger="nagatha.api"):
        assert_error(client.simulate_get("/tasks/abc\nFORGED: all good"), 503)
    lines = [r.getMessage() for r in caplog.records if "abc" in r.getMessage()]
    assert lines and all("\n" not in line and "abc%0AFORGED" in line for line in lines)


def test_the_embedded_server_does_not_limit_waits(app: HubApp) -> None:
    # A thread per request there: no waiting slots to keep free (gunicorn: test_api.py).
    client = TestClient(create_app(memory_config(threads=1, max_wait=5), app.registry))
    task_id = run(client, {"task_name": "diagnostics.noop", "delay_ms": 60_000}).json["task_id"]
    answers: list[Result] = []
    waiters = [
        threading.Thread(
            target=lambda: answers.append(client.simulate_get(f"/tasks/{task_id}?wait=0.5"))
        )
        for _ in range(2)
    ]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(10)
    assert [a.json["status"] for a in answers] == ["pending", "pending"]
    assert all("retry-after" not in a.headers for a in answers)


def test_unknown_task_is_404(client: TestClient) -> None:
    error = assert_error(run(client, {"task_name": "nope.missing"}), 404, "nope.missing")
    assert error["title"] == "Unknown task"


def test_kwargs_that_do_not_bind_are_422_with_the_names(
    client: TestClient, hub: TaskRegistry
) -> None:
    body = {"task_name": "diagnostics.add", "kwargs": {"x": 1, "zz": 2}}
    error = assert_error(run(client, body), 422, "zz", "y")
    assert error["unknown"] == ["zz"]
    assert error["missing"] == ["y"]


def test_a_record_holding_a_lone_surrogate_is_answered_with_an_escape(
    client: TestClient, hub: TaskRegistry
) -> None:
    # A task may return such a string, and a Celery client may send one (both JSON escapes).
    defaults = {"task_name": "x.y", "created_at": "2026-11-29T00:00:00Z"}
    hub.store.update("lone", TaskStatus.SUCCESS, {"result": "a\ud800b"}, defaults)
    result = client.simulate_get("/tasks/lone")
    assert result.status_code == 200
    assert b'"a\\ud800b"' in result.content
    assert json.loads(result.content)["result"] == "a\ud800b"


def test_ids_a_celery_client_may_choose_are_found_slash_and_255_bytes_included(
    client: TestClient, hub: TaskRegistry
) -> None:
    defaults = {"task_name": "x.y", "created_at": "2026-11-29T00:00:00Z"}
    for task_id in ("reports/2024-06", "a/b/c", "é" * 127, "x" * 255):
        hub.store.update(task_id, TaskStatus.SUCCESS, {"result": 1}, defaults)
        for prefix in ("/tasks/", "/status/"):
            result = client.simulate_get(prefix + task_id)
            assert result.status_code == 200, (prefix, task_id)
            assert result.json["task_id"] == task_id
    assert_error(client.simulate_get("/tasks/" + "x" * 256), 404)


def test_unknown_id_is_404(client: TestClient) -> None:
    assert_error(client.simulate_get("/tasks/no-such-id"), 404, "no-such-id")
    assert_error(client.simulate_get("/status/no-such-id", params={"wait": "0.1"}), 404)
    assert_error(client.simulate_get("/tasks/" + "x" * 500), 404)


@pytest.mark.parametrize("wait", ["abc", "-1", "nan", "inf", "5.01", "1e9"])
def test_wait_outside_0_to_max_wait_is_400(client: TestClient, wait: str) -> None:
    assert_error(client.simulate_get("/tasks/any", params={"wait": wait}), 400, '"wait"')


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    body = json.dumps({"task_name": "echo_bot.echo", "kwargs": {"message": "x" * 2000}})
    assert_error(client.simulate_post("/tasks/run", body=body), 413, "1024")


def test_unknown_route_is_404_in_the_same_shape(client: TestClient) -> None:
    body = assert_error(client.simulate_get("/nowhere"), 404, "openapi.json")
    assert body["title"] == "Not found"


def test_wrong_method_is_405_in_the_same_shape(client: TestClient) -> None:
    response = client.simulate_delete("/tasks")
    body = assert_error(response, 405, "this path answers GET")
    assert body["title"] == "Method not allowed" and response.headers["Allow"] == "GET, OPTIONS"


def test_store_down_is_503_and_nothing_is_enqueued(
    client: TestClient, hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("status store (Redis) unavailable: ConnectionError")

    enqueued: list[dramatiq.Message[Any]] = []
    monkeypatch.setattr(hub.store, "create", down)
    monkeypatch.setattr(hub.store, "get", down)
    monkeypatch.setattr(hub.broker, "enqueue", lambda message, delay=None: enqueued.append(message))
    result = run(client, {"task_name": "diagnostics.noop"})
    assert assert_error(result, 503, "Redis")["title"] == "Store unavailable"
    assert result.headers["retry-after"] == "5"
    assert enqueued == []
    assert_error(client.simulate_get("/tasks/any-id"), 503)


def test_broker_down_is_503_and_no_record_is_left(
    client: TestClient, hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[str] = []
    original_create = hub.store.create

    def create(record: Any) -> bool:
        created.append(record.task_id)
        return original_create(record)

    def refuse(message: Any, delay: Any = None) -> None:
        raise dramatiq.errors.ConnectionClosed(OSError("connection refused"))

    monkeypatch.setattr(hub.store, "create", create)
    monkeypatch.setattr(hub.broker, "enqueue", refuse)
    result = run(client, {"task_name": "diagnostics.noop"})
    assert assert_error(result, 503, "the task was not accepted")["title"] == "Broker unavailable"
    assert len(created) == 1 and hub.store.get(created[0]) is None


def test_unexpected_error_is_500_without_internals_and_logged_with_the_request_id(
    client: TestClient,
    hub: TaskRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(hub, "list_tasks", broken)
    with caplog.at_level(logging.ERROR, logger="nagatha.api"):
        result = client.simulate_get("/tasks", headers={"X-Request-ID": "req-42"})
    body = assert_error(result, 500, "req-42")
    assert "secret" not in result.text and "RuntimeError" not in result.text
    assert body["request_id"] == "req-42"
    logged = [r for r in caplog.records if "req-42" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_a_sane_request_id_is_echoed_and_an_insane_one_replaced(client: TestClient) -> None:
    assert (
        client.simulate_get("/ping", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"]
        == "abc-1"
    )
    replaced = client.simulate_get("/ping", headers={"X-Request-ID": "a b\nc"})
    assert replaced.headers["x-request-id"] not in ("a b\nc", "")


def test_each_request_is_in_the_access_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nagatha.api.access"):
        client.simulate_get("/tasks/x y", headers={"X-Request-ID": "log-1"})
    line = next(r.getMessage() for r in caplog.records if r.name == "nagatha.api.access")
    assert line.startswith("request_id=log-1 method=GET ")
    assert 'path="/tasks/x%20y"' in line and "status=404" in line


def test_successful_probes_are_logged_at_debug_only(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    poll = {"X-Nagatha-Poll": "1"}  # the dashboard's periodic reads
    with caplog.at_level(logging.INFO, logger="nagatha.api.access"):
        client.simulate_get("/ping")
        client.simulate_head("/health")
        client.simulate_get("/modules")
        client.simulate_get("/workers", headers=poll)
        client.simulate_get("/tasks/no-such-id", headers=poll)  # a 404 is logged all the same
        client.simulate_post("/tasks/rerun", body="{}", headers=poll)  # and so is any POST
    paths = [r.getMessage().split('path="')[1].split('"')[0] for r in caplog.records]
    assert paths == ["/modules", "/tasks/no-such-id", "/tasks/rerun"]
    with caplog.at_level(logging.DEBUG, logger="nagatha.api.access"):
        client.simulate_get("/ping")
    assert any('path="/ping"' in r.getMessage() for r in caplog.records)


def test_failures_lists_the_newest_failed_tasks_and_checks_the_limit(
    hub: TaskRegistry, client: TestClient
) -> None:
    failed = []
    for index in range(3):  # one after the other: two worker threads could swap them
        failed.append(hub.run_task("diagnostics.fail", message=f"nope {index}"))
        assert hub.wait_for(failed[-1], 10).status is TaskStatus.FAILURE
    result = client.simulate_get("/failures", params={"limit": "2"})
    assert result.status_code == 200
    assert result.headers["cache-control"] == "no-store"
    assert [record["task_id"] for record in result.json["tasks"]] == failed[:0:-1]
    assert result.json["tasks"][0]["error"] == "DiagnosticFailure: nope 2"
    assert failed[0] in {r["task_id"] for r in client.simulate_get("/failures").json["tasks"]}
    for bad in ("0", "1001", "abc", "1.5", "²", "-1", "1" * 40):
        assert_error(client.simulate_get("/failures", params={"limit": bad}), 400, "limit")


def rerun(client: TestClient, body: Any) -> Result:
    return client.simulate_post("/tasks/rerun", body=json.dumps(body))


def test_rerun_runs_an_ended_task_again_as_a_new_one(hub: TaskRegistry, client: TestClient) -> None:
    old_id = hub.run_task("diagnostics.add", x=20, y=22)
    old = hub.wait_for(old_id, 10)
    result = rerun(client, {"task_id": old_id})
    assert result.status_code == 202, result.text
    accepted = result.json
    assert accepted["rerun_of"] == old_id and accepted["task_id"] != old_id
    assert (accepted["task_name"], accepted["status"]) == ("diagnostics.add", "pending")
    assert result.headers["location"] == accepted["status_url"] == f"/tasks/{accepted['task_id']}"
    new = hub.wait_for(accepted["task_id"], 10)
    assert (new.status, new.result, new.kwargs) == (TaskStatus.SUCCESS, 42, {"x": 20, "y": 22})
    assert hub.get_task_status(old_id) == old  # the old record stays as it was


def test_rerun_of_a_failure_and_of_a_cancelled_task_runs_them(
    hub: TaskRegistry, client: TestClient
) -> None:
    failed = hub.run_task("diagnostics.fail", message="again")
    assert hub.wait_for(failed, 10).status is TaskStatus.FAILURE
    cancelled = hub.submit("diagnostics.add", kwargs={"x": 1, "y": 1}, delay_ms=60_000).task_id
    hub.cancel(cancelled)
    outcomes = {}
    for old in (failed, cancelled):
        result = rerun(client, {"task_id": old})
        assert result.status_code == 202, result.text
        record = hub.wait_for(result.json["task_id"], 10)
        outcomes[old] = (record.status, record.result, record.error)
    assert outcomes[failed] == (TaskStatus.FAILURE, None, "DiagnosticFailure: again")
    assert outcomes[cancelled] == (TaskStatus.SUCCESS, 2, None)


def test_rerun_refuses_what_it_cannot_run_again(hub: TaskRegistry, client: TestClient) -> None:
    waiting = hub.submit("diagnostics.add", kwargs={"x": 1, "y": 1}, delay_ms=60_000).task_id
    try:
        body = assert_error(rerun(client, {"task_id": waiting}), 409, "not ended", "pending")
        assert body["status"] == "pending"
    finally:
        hub.cancel(waiting)
    assert_error(rerun(client, {"task_id": "no-such-task"}), 404, "no-such-task")
    assert_error(rerun(client, {"task_id": "x" * 300}), 404)
    for bad in ({}, {"task_id": ""}, {"task_id": 7}, {"task_id": "a", "kwargs": {}}):
        assert_error(rerun(client, bad), 400)
    # The record of a task no module registers now, and one whose arguments no longer fit.
    now = utcnow()
    for task_id, name, kwargs in (
        ("gone", "gone.task", {}),
        ("changed", "diagnostics.add", {"z": 1}),
    ):
        hub.store.create(
            TaskRecord(
                task_id=task_id,
                task_name=name,
                status=TaskStatus.PENDING,
                kwargs=kwargs,
                created_at=now,
            )
        )
        hub.store.update(task_id, TaskStatus.FAILURE, {"error": "E: old", "completed_at": now})
    assert_error(rerun(client, {"task_id": "gone"}), 404, "gone.task", "no module registers it")
    body = assert_error(rerun(client, {"task_id": "changed"}), 422)
    assert body["unknown"] == ["z"] and body["missing"] == ["x", "y"]


def test_rerun_refuses_the_record_of_a_celery_message_refused_unread(
    hub: TaskRegistry, client: TestClient
) -> None:
    now = utcnow()
    hub.store.update(
        "refused-1",
        TaskStatus.FAILURE,
        {"error": "ContentDisallowed: pickle is refused", "completed_at": now},
        {"task_name": "diagnostics.add", "args": [], "kwargs": {}, "created_at": now},
    )
    body = assert_error(rerun(client, {"task_id": "refused-1"}), 409, "bridge dlq replay")
    assert body["status"] == "failure"
