"""Cancelling tasks against real RabbitMQ and Redis: gunicorn API, ``nagatha worker``, CLI.

Each test has its own vhost and Redis prefix (``hub_env``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from test_api import AUTH, TOKEN, assert_error, start_api

from nagatha.config import FrameworkConfig
from nagatha.stores import RedisStatusStore, redis_cancels
from nagatha.stores import redis as redis_store
from nagatha.stores.redis_subscriber import IDLE_READ, PING_DEADLINE, PING_EVERY
from nagatha.testing import LOOPBACK, HubProcess, TcpRelay, run_cli, wait_until
from nagatha.types import (
    CANCELLED_ERROR,
    REVOKED_ERROR,
    TaskRecord,
    TaskStatus,
    WorkerInfo,
    utcnow,
)

pytestmark = pytest.mark.integration

CANCEL_FIELDS = {"error": CANCELLED_ERROR}


@pytest.fixture
def api(hub_env: dict[str, str], start_process: type[HubProcess]) -> str:
    _, base_url = start_api(start_process, {**hub_env, "NAGATHA_API_TOKENS": TOKEN})
    return base_url


def submit(base_url: str, task_name: str, **body: Any) -> str:
    response = httpx.post(
        f"{base_url}/tasks/run", json={"task_name": task_name, **body}, headers=AUTH, timeout=30
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def create(store: RedisStatusStore, task_id: str, status: TaskStatus = TaskStatus.PENDING) -> None:
    """Write a record as the hub's producer would."""
    store.create(
        TaskRecord(task_id=task_id, task_name="echo_bot.echo", status=status, created_at=utcnow())
    )


def record_of(base_url: str, task_id: str, wait: float = 0) -> dict[str, Any]:
    response = httpx.get(
        f"{base_url}/tasks/{task_id}", params={"wait": wait}, headers=AUTH, timeout=wait + 30
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_delayed_task_cancelled_over_http_never_runs(api: str, worker: HubProcess) -> None:
    task_id = submit(api, "echo_bot.echo", kwargs={"message": "never"}, delay_ms=2000)
    waited: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: waited.append(record_of(api, task_id, wait=30)))
    waiter.start()
    response = httpx.delete(f"{api}/tasks/{task_id}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "failure" and cancelled["error"] == CANCELLED_ERROR
    assert cancelled["started_at"] is None and cancelled["completed_at"]
    waiter.join(30)
    assert waited and waited[0]["error"] == CANCELLED_ERROR  # the long poll woke on the cancel
    # When its delay ends, the worker takes the message and does not run it.
    worker.wait_for_log(rf"task {re.escape(task_id)} echo_bot.echo not run: cancelled", 30)
    assert record_of(api, task_id) == cancelled
    assert f"task {task_id} echo_bot.echo started" not in worker.log()
    # Cancelling again answers the same record.
    again = httpx.delete(f"{api}/status/{task_id}", headers=AUTH, timeout=30)
    assert again.status_code == 200 and again.json() == cancelled


def test_running_and_ended_tasks_are_not_cancelled(api: str, worker: HubProcess) -> None:
    task_id = submit(api, "diagnostics.sleep", kwargs={"seconds": 1.5})
    wait_until(lambda: record_of(api, task_id)["status"] == "started", 30)
    response = httpx.delete(f"{api}/tasks/{task_id}", headers=AUTH, timeout=30)
    body = assert_error(response, 409, "running")
    assert body["status"] == "started"
    assert record_of(api, task_id, wait=30)["status"] == "success"
    ended = assert_error(httpx.delete(f"{api}/tasks/{task_id}", headers=AUTH), 409, "ended")
    assert ended["status"] == "success"
    assert_error(httpx.delete(f"{api}/tasks/{uuid.uuid4()}", headers=AUTH), 404)
    assert httpx.delete(f"{api}/tasks/{task_id}").status_code == 401


def test_a_task_cancelled_before_any_worker_ran_is_skipped_by_the_first_one(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    """The CLI cancels while no worker runs; a worker started later skips the task (it
    learns of the cancel from Redis, not from a publish it could not have heard)."""
    run = run_cli(["run", "echo_bot.echo", "-k", "message=queued", "--json"], hub_env)
    assert run.returncode == 0, run.stderr
    task_id = json.loads(run.stdout)["task_id"]
    cancel = run_cli(["cancel", task_id, "--json"], hub_env)
    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout)["error"] == CANCELLED_ERROR
    table = run_cli(["cancel", task_id], hub_env)  # again: the same record, as a table
    assert table.returncode == 0 and "Cancelled" in table.stdout, table.stderr
    worker = start_process(["worker", "--processes", "1", "--threads", "2"], hub_env)
    worker.wait_for_log(rf"task {re.escape(task_id)} echo_bot.echo not run: cancelled", 60)
    after = run_cli(["status", task_id, "--json"], hub_env)
    assert json.loads(after.stdout)["error"] == CANCELLED_ERROR
    # A task that already ran cannot be cancelled: exit 1, one line, no traceback.
    done = run_cli(["run", "echo_bot.echo", "-k", "message=done", "--wait", "--json"], hub_env)
    late = run_cli(["cancel", json.loads(done.stdout)["task_id"]], hub_env)
    assert late.returncode == 1
    assert "cannot be cancelled: it has already ended" in late.stderr
    assert "Traceback" not in late.stderr and len(late.stderr.strip().splitlines()) == 1
    unknown = run_cli(["cancel", "no-such-id"], hub_env)
    assert unknown.returncode == 1 and "not found" in unknown.stderr


def test_every_process_learns_of_a_cancel_from_redis(hub_config: FrameworkConfig) -> None:
    """Two stores as two processes would hold them: one cancels, the other's watch loads the
    marks made before it subscribed and hears those published after."""
    results = hub_config.results
    canceller = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    watcher = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    try:
        before, after, running = (str(uuid.uuid4()) for _ in range(3))
        for task_id, status in ((before, "pending"), (after, "retrying"), (running, "started")):
            create(canceller, task_id, TaskStatus(status))
        fields = {**CANCEL_FIELDS, "completed_at": utcnow()}
        assert canceller.cancel(before, fields).status is TaskStatus.FAILURE  # type: ignore[union-attr]
        # Not subscribed yet: the first check asks Redis.
        assert watcher.is_cancelled(before)
        watch = watcher._cancel_watch()
        wait_until(lambda: watch.ready, 10, message="the cancel watch subscribed")
        assert watch.cancelled(before) is True  # loaded when it subscribed
        assert watch.cancelled(after) is False
        assert canceller.cancel(after, fields).retries == 0  # type: ignore[union-attr]
        wait_until(lambda: watch.cancelled(after), 10, message="the published cancel")
        assert canceller.cancel(running, fields).status is TaskStatus.STARTED  # type: ignore[union-attr]
        assert not watcher.is_cancelled(running)
        assert canceller.cancel(str(uuid.uuid4()), fields) is None
        ttl = canceller.client.ttl(f"{results.prefix}cancelled")
        assert 0 < ttl <= 60
    finally:
        canceller.close()
        watcher.close()


def test_revoked_ids_are_known_to_every_process_and_records_stay(
    hub_config: FrameworkConfig,
) -> None:
    """A Celery client's revoke (the bridge calls ``revoke``) joins the cancels: heard by a
    subscribed watch, loaded by a new one, asked of Redis before either; records untouched."""
    results = hub_config.results
    revoker = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    watcher = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    late = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    try:
        ended, unknown, heard = (str(uuid.uuid4()) for _ in range(3))
        create(revoker, ended, TaskStatus.SUCCESS)
        watch = watcher._cancel_watch()
        wait_until(lambda: watch.ready, 10, message="the cancel watch subscribed")
        revoker.revoke([ended, unknown])
        revoker.revoke([])  # nothing to do, no error
        wait_until(lambda: watch.cancelled(unknown), 10, message="the published revoke")
        assert watch.cancelled(ended) is True
        late_watch = late._cancel_watch()
        late_watch.cancelled = lambda task_id: None  # type: ignore[method-assign]
        assert late.is_cancelled(unknown)  # as before it subscribed: asked of Redis
        del late_watch.cancelled
        wait_until(lambda: late_watch.ready, 10, message="the second watch subscribed")
        assert late_watch.cancelled(ended) is True and late_watch.cancelled(heard) is False
        record = revoker.get(ended)
        assert record is not None and record.status is TaskStatus.SUCCESS
        assert revoker.get(unknown) is None
        assert 0 < revoker.client.ttl(f"{results.prefix}cancelled") <= 60
    finally:
        for store in (revoker, watcher, late):
            store.close()


def test_a_cancelled_record_gives_way_only_to_a_run(hub_config: FrameworkConfig) -> None:
    """The Lua update: a write carrying started_at (a worker started the task as the cancel
    came in) replaces the cancel; other writes to a final record are refused as ever."""
    results = hub_config.results
    store = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    try:
        task_id = str(uuid.uuid4())
        create(store, task_id)
        store.cancel(task_id, {**CANCEL_FIELDS, "completed_at": utcnow()})
        assert not store.update(task_id, TaskStatus.FAILURE, {"error": "Expired: ..."})
        assert store.update(task_id, TaskStatus.STARTED, {"started_at": utcnow()})
        record = store.get(task_id)
        assert record is not None and record.status is TaskStatus.STARTED
        assert record.error is None and record.completed_at is None
        assert store.update(task_id, TaskStatus.SUCCESS, {"result": 1, "completed_at": utcnow()})
        assert not store.update(task_id, TaskStatus.STARTED, {"started_at": utcnow()})
        assert store.get(task_id).result == 1  # type: ignore[union-attr]
    finally:
        store.close()


def test_marks_are_capped_in_redis_and_in_each_process(
    hub_config: FrameworkConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revokes come from any Celery client: past MAX_MARKS the oldest marks go, from the set
    (revoke and cancel alike) and from a watch's memory."""
    monkeypatch.setattr(redis_store, "MAX_MARKS", 3)
    monkeypatch.setattr(redis_cancels, "MAX_MARKS", 3)
    results = hub_config.results
    store = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    try:
        ids = [f"mark-{n}" for n in (3, 1, 4, 0, 2)]  # oldest first, not in name order
        for task_id in ids[:4]:
            store.revoke([task_id])
        key = f"{results.prefix}cancelled"
        assert store.client.zrange(key, 0, -1) == ids[1:4]
        create(store, ids[4])
        store.cancel(ids[4], {**CANCEL_FIELDS, "completed_at": utcnow()})
        assert store.client.zrange(key, 0, -1) == ids[2:]
        watch = store._cancel_watch()
        wait_until(lambda: watch.ready, 10, message="the cancel watch subscribed")
        assert [watch.cancelled(i) for i in ids] == [False, False, True, True, True]
        watch.on_message("", "mark-new")
        assert [watch.cancelled(i) for i in ids[2:]] == [False, True, True]
        assert watch.cancelled("mark-new")
    finally:
        store.close()


def test_a_revoked_record_gives_way_to_a_run_that_missed_the_revoke(
    hub_config: FrameworkConfig,
) -> None:
    """A worker whose notice of a revoke came late runs the task: the record the bridge made
    final with the revoke error (Lua update) then tells what happened, as for a cancel."""
    results = hub_config.results
    store = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    try:
        revoked, expired = str(uuid.uuid4()), str(uuid.uuid4())
        for task_id, error in ((revoked, REVOKED_ERROR), (expired, "TaskRevokedError: expired")):
            create(store, task_id)
            assert store.update(task_id, TaskStatus.FAILURE, {"error": error})
            assert not store.update(task_id, TaskStatus.FAILURE, {"error": "Expired: ..."})
        assert store.update(revoked, TaskStatus.STARTED, {"started_at": utcnow()})
        record = store.get(revoked)
        assert record is not None and record.status is TaskStatus.STARTED and record.error is None
        assert not store.update(expired, TaskStatus.STARTED, {"started_at": utcnow()})
        assert store.get(expired).error == "TaskRevokedError: expired"  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_watch_on_a_silent_connection_gives_up_and_catches_up(
    hub_config: FrameworkConfig,
) -> None:
    """A subscription whose connection goes silent without closing (no error is raised) is
    noticed by its PINGs: the watch stops answering from its set, and when Redis answers
    again it reloads the cancels it missed."""
    results = hub_config.results
    db = results.url.rsplit("/", 1)[1]
    canceller = RedisStatusStore(results.url, prefix=results.prefix, ttl=60)
    with TcpRelay(LOOPBACK, 6379) as relay:
        url = f"redis://{LOOPBACK}:{relay.port}/{db}"
        watcher = RedisStatusStore(url, prefix=results.prefix, ttl=60, socket_timeout=1)
        try:
            known, task_id = str(uuid.uuid4()), str(uuid.uuid4())
            for each in (known, task_id):
                create(canceller, each)
            assert not watcher.is_cancelled(task_id)
            watch = watcher._cancel_watch()
            wait_until(lambda: watch.ready, 10, message="the cancel watch subscribed")
            canceller.cancel(known, {**CANCEL_FIELDS, "completed_at": utcnow()})
            wait_until(lambda: watch.cancelled(known), 10, message="the published cancel")
            relay.freeze()
            canceller.cancel(task_id, {**CANCEL_FIELDS, "completed_at": utcnow()})
            limit = PING_EVERY + PING_DEADLINE + IDLE_READ + 5
            wait_until(lambda: not watch.ready, limit, message="the watch giving up")
            assert watch.cancelled(known) is True  # what it knew stays known
            assert watch.cancelled(task_id) is None  # the store asks Redis about the rest
            relay.thaw()
            wait_until(lambda: watch.ready, 20, message="the watch subscribed again")
            assert watch.cancelled(task_id) is True
        finally:
            watcher.close()
            canceller.close()


def test_a_redis_user_limited_to_the_hubs_prefix_has_all_it_needs(
    hub_config: FrameworkConfig,
) -> None:
    """The ACL user ops/README describes (only the hub's keys and channels, no dangerous
    commands): writes, waits, cancels and worker announcements work, and the subscriptions'
    liveness checks need nothing more, so they stay up."""
    results = hub_config.results
    admin = RedisStatusStore(results.url, prefix=results.prefix)
    user, password = f"nagatha-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.client.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{results.prefix}*"],
        # PSUBSCRIBE needs its pattern itself granted, not only a pattern that covers it.
        channels=[f"{results.prefix}*", f"{results.prefix}done:*"],
        commands=["+@all", "-@dangerous", "+client|setname"],
    )
    db = results.url.rsplit("/", 1)[1]
    limited = RedisStatusStore(
        f"redis://{user}:{password}@{LOOPBACK}:6379/{db}", prefix=results.prefix, ttl=60
    )
    try:
        task_id = str(uuid.uuid4())
        create(limited, task_id)
        waited: list[TaskRecord | None] = []
        waiter = threading.Thread(target=lambda: waited.append(limited.wait(task_id, 30)))
        waiter.start()
        wait_until(lambda: limited._listener is not None and limited._listener.ready, 10)
        limited.cancel(task_id, {**CANCEL_FIELDS, "completed_at": utcnow()})
        waiter.join(30)
        assert waited[0] is not None and waited[0].error == CANCELLED_ERROR
        assert limited.is_cancelled(task_id)
        worker = WorkerInfo(
            id="acl:1",
            kind="worker",
            hostname="acl",
            pid=1,
            version="test",
            queues=["default"],
            concurrency=1,
            started_at=utcnow(),
            interval=60,
        )
        limited.announce(worker)
        assert [w.id for w in limited.workers()] == ["acl:1"]
        limited.withdraw("acl:1")
        assert limited.workers() == []
        watch = limited._cancel_watch()
        wait_until(lambda: watch.ready, 10, message="the cancel watch subscribed")
        # Several PING rounds: a watch whose checks failed would drop out within one.
        deadline = time.monotonic() + 2 * (PING_EVERY + PING_DEADLINE + IDLE_READ)
        dropped = False
        while time.monotonic() < deadline and not dropped:
            dropped = not watch.ready
            time.sleep(0.05)
        assert not dropped
    finally:
        limited.close()
        admin.client.acl_deluser(user)
        admin.close()
