"""The HTTP API under gunicorn (`nagatha serve` subprocess) against real RabbitMQ and Redis.

Each test gets its own vhost/Redis prefix (``hub_env``), a gunicorn API on a free port and,
where tasks must run, a ``nagatha worker`` beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nagatha.config import FrameworkConfig, load_config
from nagatha.stores import RedisStatusStore
from nagatha.testing import HubProcess, RabbitVhost, RedisPrefix, free_port, wait_until
from nagatha.types import TaskStatus

pytestmark = pytest.mark.integration

TOKEN = "integration-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
THREE_MB = 3 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "modules"


def wait_for_api(base_url: str, alive: Any, timeout: float = 60) -> None:
    """Poll ``/ping`` until it answers 200; fail at once if the server process died."""

    def up() -> bool:
        alive()
        try:
            return httpx.get(f"{base_url}/ping", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout, 0.1, f"{base_url}/ping")


def start_api(
    start_process: type[HubProcess], env: dict[str, str], *extra: str
) -> tuple[HubProcess, str]:
    """``nagatha serve`` (gunicorn, 2 workers x 4 threads) on a free port, once /ping answers."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--threads", "4"]
    process = start_process([*args, *extra], env)
    base_url = f"http://127.0.0.1:{port}"
    process.wait_for_ping(base_url)
    return process, base_url


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """The one error shape, the status, the request id, and ``words`` in the description."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["title"] and body["description"]
    assert body["request_id"] == response.headers["x-request-id"]
    for word in words:
        assert word in body["description"], body
    return body


def store_for(config: FrameworkConfig) -> RedisStatusStore:
    return RedisStatusStore(config.results.url, prefix=config.results.prefix)


def task_keys(config: FrameworkConfig) -> list[str]:
    store = store_for(config)
    try:
        return list(store.client.scan_iter(match=f"{config.results.prefix}task:*"))
    finally:
        store.close()


@pytest.fixture
def api_env(hub_env: dict[str, str]) -> dict[str, str]:
    """``hub_env`` with an API token: for servers a test starts for itself."""
    return {**hub_env, "NAGATHA_API_TOKENS": TOKEN}


@pytest.fixture(scope="module")
def shared_env(
    vhost: RabbitVhost, redis_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Environment of the API and worker this module's tests share (own Redis prefix)."""
    prefix = RedisPrefix()
    home = tmp_path_factory.mktemp("api-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    env.update(
        {
            "HOME": str(home),
            "NAGATHA_BROKER_URL": vhost.url,
            "NAGATHA_RESULTS_URL": prefix.url,
            "NAGATHA_RESULTS_PREFIX": prefix.prefix,
            "NAGATHA_MODULES_PATHS": str(MODULES),
            "NAGATHA_LOGGING_LEVEL": "INFO",
            "NAGATHA_WORKER_SHUTDOWN_GRACE": "5",
            "NAGATHA_API_TOKENS": TOKEN,
            "PYTHONPATH": str(ROOT),
        }
    )
    yield env
    prefix.cleanup()


@pytest.fixture(scope="module")
def shared_config(shared_env: dict[str, str]) -> FrameworkConfig:
    return load_config(env=shared_env, home=Path(shared_env["HOME"])).config


@pytest.fixture(scope="module")
def shared_server(
    shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[HubProcess, str]]:
    """One API (gunicorn, with tokens) and one worker for the tests that can share them."""
    cwd = tmp_path_factory.mktemp("api-cwd")
    worker = HubProcess(["worker", "--processes", "1", "--threads", "4"], shared_env, cwd=cwd)
    started = [worker]
    try:
        worker.wait_for_log(r"worker process \d+ consuming", timeout=60)
        port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
        api = HubProcess([*args, "--threads", "4"], shared_env, cwd=cwd)
        started.append(api)
        base_url = f"http://127.0.0.1:{port}"
        api.wait_for_ping(base_url)
        yield api, base_url
    finally:
        for process in started:
            process.stop(timeout=40)


@pytest.fixture
def client(shared_server: tuple[HubProcess, str]) -> Iterator[httpx.Client]:
    """A client with the token, on the shared API (a worker runs the tasks)."""
    with httpx.Client(base_url=shared_server[1], headers=AUTH, timeout=60) as http:
        yield http


# -- every endpoint --------------------------------------------------------------------------


def test_ping_answers_without_token_and_names_the_version(
    shared_server: tuple[HubProcess, str],
) -> None:
    response = httpx.get(f"{shared_server[1]}/ping")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["version"]


def test_health_is_ready_and_lists_broker_store_and_heartbeats(
    shared_server: tuple[HubProcess, str],
) -> None:
    response = httpx.get(f"{shared_server[1]}/health", timeout=10)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["status"] == "ok"
    assert report["checks"]["broker"]["status"] == "ok"
    assert report["checks"]["store"]["status"] == "ok"
    assert report["modules"]["diagnostics"] == {"status": "ok"}
    assert "ai" in report["modules"]


def test_modules_and_tasks_list_what_the_hub_can_run(client: httpx.Client) -> None:
    modules = {m["name"]: m for m in client.get("/modules").json()["modules"]}
    assert modules["echo_bot"]["status"] == "loaded"
    assert "echo_bot.echo" in modules["echo_bot"]["tasks"]
    tasks = {t["name"]: t for t in client.get("/tasks").json()["tasks"]}
    assert tasks["diagnostics.add"]["parameters"][0]["name"] == "x"
    assert tasks["echo_bot.echo"]["queue"] == "default"


def test_head_probes_and_celery_ids_with_a_slash_through_gunicorn(
    client: httpx.Client, shared_config: FrameworkConfig
) -> None:
    assert client.head("/ping").status_code == 200
    assert client.head("/health").status_code == 200
    store = store_for(shared_config)
    defaults = {"task_name": "x.y", "created_at": "2026-11-29T00:00:00Z"}
    store.update("reports/2024-06", TaskStatus.SUCCESS, {"result": 7}, defaults)
    store.close()
    response = client.get("/tasks/reports%2F2024-06")  # as status_url encodes it
    assert response.status_code == 200, response.text
    assert response.json()["task_id"] == "reports/2024-06"


def test_openapi_is_served(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/tasks/run" in doc["paths"]


def test_a_task_runs_end_to_end_and_the_status_alias_agrees(client: httpx.Client) -> None:
    response = client.post(
        "/tasks/run", json={"task_name": "diagnostics.add", "kwargs": {"x": 20, "y": 22}}
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "pending"
    assert response.headers["location"] == accepted["status_url"]
    record = client.get(accepted["status_url"], params={"wait": 30}).json()
    assert (record["status"], record["result"]) == ("success", 42)
    assert client.get(f"/status/{accepted['task_id']}").json() == record


def test_rerun_through_gunicorn_runs_the_same_task_again(client: httpx.Client) -> None:
    body = {"task_name": "diagnostics.add", "kwargs": {"x": 1, "y": 41}}
    old_id = client.post("/tasks/run", json=body).json()["task_id"]
    old = client.get(f"/tasks/{old_id}", params={"wait": 30}).json()
    response = client.post("/tasks/rerun", json={"task_id": old_id})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["rerun_of"] == old_id and response.headers["location"] == accepted["status_url"]
    new = client.get(accepted["status_url"], params={"wait": 30}).json()
    assert (new["status"], new["result"], new["kwargs"]) == ("success", 42, body["kwargs"])
    assert client.get(f"/tasks/{old_id}").json() == old


def test_wait_returns_as_soon_as_the_task_is_final(client: httpx.Client) -> None:
    task_id = client.post(
        "/tasks/run", json={"task_name": "diagnostics.sleep", "kwargs": {"seconds": 0.5}}
    ).json()["task_id"]
    started = time.monotonic()
    record = client.get(f"/tasks/{task_id}", params={"wait": 30}).json()
    elapsed = time.monotonic() - started
    assert record["status"] == "success"
    assert elapsed < 15, f"wait=30 held {elapsed:.1f}s for a 0.5 s task"


def test_a_failing_task_ends_as_failure_with_its_message(client: httpx.Client) -> None:
    body = {"task_name": "diagnostics.fail", "kwargs": {"message": "kaputt over http"}}
    task_id = client.post("/tasks/run", json=body).json()["task_id"]
    record = client.get(f"/tasks/{task_id}", params={"wait": 30}).json()
    assert record["status"] == "failure"
    assert "kaputt over http" in record["error"]


def test_wait_answers_the_unfinished_record_when_time_runs_out(client: httpx.Client) -> None:
    body = {"task_name": "diagnostics.noop", "delay_ms": 60_000}
    task_id = client.post("/tasks/run", json=body).json()["task_id"]
    record = client.get(f"/tasks/{task_id}", params={"wait": 0.5}).json()
    assert record["status"] == "pending"


# -- every error code ------------------------------------------------------------------------


def test_a_3_mb_body_is_413(client: httpx.Client) -> None:
    body = b'{"task_name": "echo_bot.echo", "kwargs": {"message": "' + b"x" * THREE_MB + b'"}}'
    assert_error(client.post("/tasks/run", content=body), 413, "1048576")


def test_a_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"task_name": "echo_bot.echo", "kwargs": {"message": "'
        for _ in range(48):
            yield b"x" * 65536
        yield b'"}}'

    assert_error(client.post("/tasks/run", content=chunks()), 413)


def test_a_chunked_body_within_the_limit_is_accepted(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"task_name": "echo_bot.echo",'
        yield b' "kwargs": {"message": "hi"}}'

    assert client.post("/tasks/run", content=chunks()).status_code == 202


def test_malformed_json_is_400(client: httpx.Client) -> None:
    body = assert_error(client.post("/tasks/run", content=b'{"task_name": '), 400)
    assert body["title"] == "Malformed JSON"


def test_a_body_that_is_not_an_object_is_400(client: httpx.Client) -> None:
    body = assert_error(client.post("/tasks/run", json=["echo_bot.echo"]), 400, "object")
    assert body["title"] == "Invalid body"


def test_a_body_of_the_wrong_shape_is_400_naming_the_field(client: httpx.Client) -> None:
    body = assert_error(client.post("/tasks/run", json={"kwargs": {}}), 400, "task_name")
    assert body["errors"][0]["field"] == "task_name"


def test_an_unknown_task_is_404_and_leaves_no_record(
    client: httpx.Client, shared_config: FrameworkConfig
) -> None:
    before = len(task_keys(shared_config))
    response = client.post("/tasks/run", json={"task_name": "nope.missing"})
    assert_error(response, 404, "nope.missing")
    assert len(task_keys(shared_config)) == before


def test_kwargs_that_do_not_fit_are_422_with_the_names(
    client: httpx.Client, shared_config: FrameworkConfig
) -> None:
    before = len(task_keys(shared_config))
    response = client.post(
        "/tasks/run", json={"task_name": "diagnostics.add", "kwargs": {"x": 1, "zz": 2}}
    )
    body = assert_error(response, 422, "zz", "y")
    assert (body["unknown"], body["missing"]) == (["zz"], ["y"])
    assert len(task_keys(shared_config)) == before


def test_an_unknown_id_is_404(client: httpx.Client) -> None:
    assert_error(client.get("/tasks/never-handed-out"), 404, "never-handed-out")
    assert_error(client.get("/status/never-handed-out", params={"wait": 1}), 404)


def test_a_wait_out_of_range_is_400(client: httpx.Client) -> None:
    assert_error(client.get("/tasks/x", params={"wait": 61}), 400, '"wait"')
    assert_error(client.get("/tasks/x", params={"wait": "soon"}), 400, '"wait"')


def test_a_missing_or_wrong_token_is_401(shared_server: tuple[HubProcess, str]) -> None:
    base_url = shared_server[1]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.get(f"{base_url}/tasks", headers=headers)
        assert_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert_error(httpx.post(f"{base_url}/tasks/run", json={"task_name": "x"}), 401)
    assert httpx.get(f"{base_url}/ping").status_code == 200
    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200


def test_an_unknown_path_is_404_in_the_same_shape(
    client: httpx.Client, shared_server: tuple[HubProcess, str]
) -> None:
    response = client.get("/nowhere", headers={"X-Request-ID": "lost-one"})
    assert_error(response, 404, "openapi.json")
    # serve logs at logging.level (INFO here), the access log included, in gunicorn's workers.
    api = shared_server[0]
    api.wait_for_log(r"API listening on http://127\.0\.0\.1:\d+", timeout=10)
    api.wait_for_log(r"request_id=lost-one .*status=404", timeout=10)


# -- outages ---------------------------------------------------------------------------------


def test_a_closed_broker_port_gives_503_and_leaves_no_record(
    api_env: dict[str, str],
    start_process: type[HubProcess],
    hub_config: FrameworkConfig,
    client: httpx.Client,
) -> None:
    env = {**api_env, "NAGATHA_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/x"}
    _, base_url = start_api(start_process, env)
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as down:
        response = down.post("/tasks/run", json={"task_name": "diagnostics.noop"})
        assert_error(response, 503, "the task was not accepted")
        assert response.headers["retry-after"]
        assert task_keys(hub_config) == []
        health = down.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"]["broker"]["status"] == "unavailable"
        assert health.json()["checks"]["store"]["status"] == "ok"
        metrics = down.get("/metrics")  # 200: a failed scrape would hide the store's counts
        assert metrics.status_code == 200
        assert 'nagatha_up{dependency="broker"} 0.0' in metrics.text
        assert "nagatha_task_events_total{" in metrics.text
        assert "nagatha_queue_messages{" not in metrics.text
    assert client.get("/health").status_code == 200, "the healthy API beside it is unaffected"


def test_a_closed_redis_port_gives_503_quickly(
    api_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    env = {**api_env, "NAGATHA_RESULTS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    _, base_url = start_api(start_process, env)
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as down:
        assert_error(down.post("/tasks/run", json={"task_name": "diagnostics.noop"}), 503)
        assert_error(down.get("/tasks/some-id", params={"wait": 5}), 503, "Redis")
        started = time.monotonic()
        health = down.get("/health")
        assert time.monotonic() - started < 10
        assert health.status_code == 503
        assert health.json()["checks"]["store"]["status"] == "unavailable"
        metrics = down.get("/metrics")
        assert metrics.status_code == 200
        assert 'nagatha_up{dependency="store"} 0.0' in metrics.text
        assert 'nagatha_queue_messages{queue="default"}' in metrics.text


# -- serving ---------------------------------------------------------------------------------


def amqp_sockets(pid: int) -> int:
    """Established TCP connections of process ``pid`` to port 5672 (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == 5672 and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def test_the_gunicorn_master_never_holds_a_broker_connection(
    shared_server: tuple[HubProcess, str], client: httpx.Client
) -> None:
    process, _ = shared_server
    for _ in range(4):
        assert client.post("/tasks/run", json={"task_name": "diagnostics.noop"}).status_code == 202
    workers = process.children()
    assert len(workers) == 2
    assert sum(amqp_sockets(pid) for pid in workers) >= 1
    assert amqp_sockets(process.pid) == 0


def test_sigterm_stops_the_server_gracefully_and_closes_connections(
    api_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    process, base_url = start_api(start_process, api_env)
    for _ in range(4):
        response = httpx.post(
            f"{base_url}/tasks/run", json={"task_name": "diagnostics.noop"}, headers=AUTH
        )
        assert response.status_code == 202
    assert process.stop(timeout=40) == 0
    log = process.log()
    assert "Shutting down: Master" in log
    assert "Traceback" not in log and "closing connections failed" not in log


def test_gunicorn_serves_the_wsgi_module_with_the_shipped_config(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "-c", "python:nagatha.api.gunicorn_conf",
            "-b", f"127.0.0.1:{port}", "-w", "1", "nagatha.api.wsgi:application",
        ],
        env=api_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "gunicorn.log").read_text())

        base_url = f"http://127.0.0.1:{port}"
        wait_for_api(base_url, alive)
        assert httpx.get(f"{base_url}/tasks").status_code == 401
        assert httpx.get(f"{base_url}/tasks", headers=AUTH).status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_long_polls_leave_a_thread_for_probes_and_submits(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    # 1 process x 3 threads: at most 2 requests wait at once, the third thread stays free.
    _, base_url = start_api(start_process, hub_env, "--workers", "1", "--threads", "3")
    with httpx.Client(base_url=base_url, timeout=30) as client:
        task_id = client.post("/tasks/run", json={"task_name": "diagnostics.noop"}).json()[
            "task_id"
        ]  # no worker runs: it stays pending
        held: list[httpx.Response] = []

        def hold() -> None:  # until it holds a slot (a probe below may take one for 0.2 s)
            def waited() -> httpx.Response | None:
                answer = client.get(f"/tasks/{task_id}?wait=8")
                return None if "retry-after" in answer.headers else answer

            held.append(wait_until(waited, 30, message="a waiting slot"))

        waiters = [threading.Thread(target=hold) for _ in range(2)]
        for waiter in waiters:
            waiter.start()

        def slots_taken() -> httpx.Response | None:
            probe = client.get(f"/tasks/{task_id}?wait=0.2")
            return probe if "retry-after" in probe.headers else None

        # Then a further wait is answered at once, with the record as it is ...
        early = wait_until(slots_taken, 20, message="both waiting slots taken")
        assert early.status_code == 200 and early.json()["status"] == "pending"
        assert early.headers["retry-after"] == "1"
        # ... and the free thread serves probes and submits meanwhile.
        assert httpx.get(f"{base_url}/ping", timeout=2).status_code == 200
        assert client.post("/tasks/run", json={"task_name": "diagnostics.noop"}).status_code == 202
        for waiter in waiters:
            waiter.join(30)
    assert [r.status_code for r in held] == [200, 200]
    assert all("retry-after" not in r.headers for r in held)


def test_a_stopping_api_answers_its_long_polls_at_once(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    # A wait longer than gunicorn's graceful timeout (30 s) used to be cut with no answer; it
    # is answered 5 s before it (the task has not ended: no worker runs).
    process, base_url = start_api(start_process, hub_env, "--workers", "1", "--threads", "2")
    with httpx.Client(base_url=base_url, timeout=30) as client:
        task_id = client.post("/tasks/run", json={"task_name": "diagnostics.noop"}).json()[
            "task_id"
        ]  # no worker runs: it stays pending
    answers: list[httpx.Response] = []

    def long_poll() -> None:
        with httpx.Client(base_url=base_url, timeout=90) as own:
            answers.append(own.get(f"/tasks/{task_id}?wait=60"))

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    # The gunicorn worker's wait listener connects when its first wait begins (a probe by
    # request could take the waiting slot itself and turn the long poll away).
    (worker_pid,) = process.children()
    redis_client = redis.Redis.from_url(hub_env["NAGATHA_RESULTS_URL"])

    def listening() -> bool:
        names = (client.get("name", "") for client in redis_client.client_list())
        return any(n.startswith("nagatha-wait-") and n.endswith(f"-{worker_pid}") for n in names)

    wait_until(listening, 20, message="the long poll waiting")
    redis_client.close()
    process.signal(signal.SIGTERM)
    waiter.join(60)
    assert [a.status_code for a in answers] == [200]
    assert answers[0].json()["status"] == "pending"
    assert process.process.wait(30) == 0
