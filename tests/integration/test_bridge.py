"""Unmodified Celery clients call hub tasks through ``nagatha bridge``.

The client is the real ``celery`` package; the server side is ``nagatha worker`` and
``nagatha bridge`` subprocesses on a vhost and Redis prefix of this module's own (one stack
for the module: starting processes is the slow part). No Celery worker runs anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from billiard.exceptions import TimeLimitExceeded
from bridge_stack import CeleryClient, HubStack, hub_stack
from celery.exceptions import NotRegistered, TaskRevokedError
from kombu.exceptions import ContentDisallowed

from bridge.middleware import CeleryResultsMiddleware
from nagatha.hub import create_hub
from nagatha.middleware.cancellation import Cancellation
from nagatha.middleware.presence import WorkerPresence
from nagatha.middleware.retries import HeldRetries
from nagatha.middleware.status import StatusMiddleware
from nagatha.testing import HubProcess, run_cli, wait_until
from nagatha.types import CANCELLED_ERROR, MAX_HOLD_MS, TaskStatus

pytestmark = pytest.mark.integration

#: Generous: two cores shared with other test runs.
GET_TIMEOUT = 60


@pytest.fixture(scope="module")
def stack(
    rabbitmq: None, redis_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubStack]:
    """A vhost and Redis prefix for this module; its processes are stopped at the end."""
    with hub_stack(tmp_path_factory.mktemp("bridge")) as created:
        yield created


@pytest.fixture(scope="module")
def worker(stack: HubStack) -> HubProcess:
    """A running ``nagatha worker`` storing STARTED; ``diagnostics.fail`` retries once."""
    settings = stack.workdir / "worker.yaml"
    settings.write_text(
        "modules:\n  settings:\n    diagnostics:\n      tasks:\n        fail:\n"
        # Dramatiq's jitter makes the pause 1.5-3 s: the RETRY state is seen under load.
        "          {max_retries: 1, min_backoff: 3000, max_backoff: 3000}\n"
    )
    return stack.start_worker(NAGATHA_BRIDGE_TRACK_STARTED="true", NAGATHA_CONFIG=str(settings))


@pytest.fixture(scope="module")
def bridge(stack: HubStack) -> HubProcess:
    """A running ``nagatha bridge`` on the default ``celery`` queue."""
    return stack.start_bridge()


@pytest.fixture
def client(stack: HubStack, worker: HubProcess, bridge: HubProcess) -> Iterator[CeleryClient]:
    """A Celery app with the Redis result backend, as a service would configure it."""
    created = CeleryClient(stack)
    yield created
    created.close()


def test_celery_results_middleware_runs_its_before_hooks_before_the_status_hooks(
    stack: HubStack,
) -> None:
    kinds = [type(m) for m in create_hub(stack.config, load_modules=False).broker.middleware]
    # Cancellation between them: a bridged task cancelled through the hub is answered REVOKED
    # by the Celery middleware's hook, and never looks started (nor running: WorkerPresence).
    celery = kinds.index(CeleryResultsMiddleware)
    assert kinds[celery + 1 : celery + 4] == [Cancellation, WorkerPresence, StatusMiddleware]
    assert kinds.index(StatusMiddleware) < kinds.index(HeldRetries)


# --- calling tasks ----------------------------------------------------------------------------


def test_send_task_with_kwargs_returns_the_task_result(client: CeleryClient) -> None:
    result = client.send("echo_bot.echo", kwargs={"message": {"a": [1, 2.5, None, True]}})
    assert result.get(timeout=GET_TIMEOUT) == {"a": [1, 2.5, None, True]}
    assert result.state == "SUCCESS"


def test_send_task_with_positional_args(client: CeleryClient) -> None:
    assert client.send("diagnostics.add", args=[2, 3]).get(timeout=GET_TIMEOUT) == 5


def test_non_ascii_text_round_trips_unchanged(client: CeleryClient) -> None:
    text = "héllo wörld ✓ 日本語 🚀"
    assert client.send("echo_bot.echo", kwargs={"message": text}).get(timeout=GET_TIMEOUT) == text


def test_a_client_chosen_task_id_is_the_hub_task_id(client: CeleryClient, stack: HubStack) -> None:
    task_id = client.new_id()
    result = client.send("diagnostics.add", kwargs={"x": 1, "y": 2}, task_id=task_id)
    assert result.id == task_id
    assert result.get(timeout=GET_TIMEOUT) == 3
    record = stack.record(task_id)
    assert record is not None and record.status is TaskStatus.SUCCESS
    assert (record.task_name, record.kwargs, record.result) == (
        "diagnostics.add",
        {"x": 1, "y": 2},
        3,
    )


def test_a_protocol_1_client_is_understood(
    stack: HubStack, worker: HubProcess, bridge: HubProcess
) -> None:
    client = CeleryClient(stack, task_protocol=1)
    try:
        result = client.send("echo_bot.echo", kwargs={"message": "v1"})
        assert result.get(timeout=GET_TIMEOUT) == "v1"
    finally:
        client.close()


def test_msgpack_serialized_tasks_are_understood(client: CeleryClient) -> None:
    result = client.send("diagnostics.add", args=[20, 22], serializer="msgpack")
    assert result.get(timeout=GET_TIMEOUT) == 42


def test_countdown_is_honoured(client: CeleryClient, stack: HubStack) -> None:
    sent_at = datetime.now(UTC)
    result = client.send("echo_bot.echo", kwargs={"message": "later"}, countdown=2)
    assert result.get(timeout=GET_TIMEOUT) == "later"
    record = stack.record(result.id)
    assert record is not None and record.started_at is not None
    # The client's eta is its clock at sending + 2 s, so at least sent_at + 2 s.
    assert record.started_at >= sent_at + timedelta(seconds=2)


def test_a_long_countdown_is_delayed_25_minutes_at_a_time(
    client: CeleryClient, bridge: HubProcess
) -> None:
    # Two hours: held whole, a worker would trip RabbitMQ's 30-minute consumer_timeout.
    result = client.send("echo_bot.echo", kwargs={"message": "in two hours"}, countdown=7200)
    enqueued = rf"task {re.escape(result.id)} echo_bot.echo enqueued on default"
    bridge.wait_for_log(rf"{enqueued} \(delay {MAX_HOLD_MS} ms\)", 30)
    # Revoked (its worker drops it at its first hop), and answered before the keys go.
    result.revoke()
    wait_until(lambda: result.state == "REVOKED", GET_TIMEOUT, message="REVOKED stored")


def test_a_message_due_later_than_its_hop_goes_on_another_hop(
    client: CeleryClient, stack: HubStack, worker: HubProcess
) -> None:
    # What a worker sees when a 25-minute hop of a longer countdown ends: a bridged message in
    # the task queue whose Celery eta is still ahead (here 12 s, sent without any delay).
    eta = datetime.now(UTC) + timedelta(seconds=12)
    result = client.result(client.new_id())  # its result key is deleted after the test
    task_id = result.id
    stack.publish_due_later(task_id, eta, record_ttl=100)
    worker.wait_for_log(rf"task {re.escape(task_id)} echo_bot.echo: due at ", 30)
    waiting = stack.record(task_id)
    assert waiting is not None and waiting.status is TaskStatus.PENDING, waiting
    # The hop started the record's expiry again (results.ttl, a day here).
    assert stack.store.client.ttl(stack.store._key(task_id)) > 3600
    assert result.get(timeout=GET_TIMEOUT) == "later"
    record = stack.final_record(task_id)
    assert record.status is TaskStatus.SUCCESS
    assert record.started_at is not None and record.started_at >= eta - timedelta(seconds=1)


def test_started_is_visible_when_track_started_is_on(client: CeleryClient) -> None:
    result = client.send("diagnostics.sleep", kwargs={"seconds": 3})
    state = wait_until(
        lambda: result.state != "PENDING" and result.state, GET_TIMEOUT, interval=0.02
    )
    assert state == "STARTED"
    assert result.info["hostname"].startswith("nagatha@") and result.info["pid"] > 0
    assert result.get(timeout=GET_TIMEOUT) == 3


def test_ignore_result_stores_nothing_for_the_client(client: CeleryClient, stack: HubStack) -> None:
    result = client.send("echo_bot.echo", kwargs={"message": "x"}, ignore_result=True)
    assert stack.final_record(result.id).status is TaskStatus.SUCCESS
    assert client.app.backend.client.exists(f"celery-task-meta-{result.id}") == 0


# --- failures ---------------------------------------------------------------------------------


def test_a_failing_task_raises_with_its_message(client: CeleryClient) -> None:
    result = client.send("diagnostics.fail", kwargs={"message": "kaputt on purpose"})
    with pytest.raises(Exception, match="kaputt on purpose") as caught:
        result.get(timeout=GET_TIMEOUT)
    # The hub's own exception class is not importable by clients: its builtin base arrives,
    # and the traceback names the real one.
    assert type(caught.value) is Exception
    assert result.state == "FAILURE"
    assert "DiagnosticFailure: kaputt on purpose" in (result.traceback or "")


def test_a_retry_of_the_hub_task_shows_as_retry_before_the_failure(
    client: CeleryClient,
) -> None:
    result = client.send("diagnostics.fail", kwargs={"message": "once more"})

    def retry_meta() -> dict[str, Any] | None:  # state and error read at once
        meta: dict[str, Any] = result.backend.get_task_meta(result.id)
        return meta if meta["status"] == "RETRY" else None

    meta = wait_until(retry_meta, GET_TIMEOUT, interval=0.02, message="RETRY")
    assert str(meta["result"]) == "once more"
    with pytest.raises(Exception, match="once more"):
        result.get(timeout=GET_TIMEOUT)
    assert result.state == "FAILURE"


@pytest.mark.parametrize("ignore_result", [False, True])
def test_an_unknown_task_raises_not_registered(
    client: CeleryClient, stack: HubStack, ignore_result: bool
) -> None:
    # As a Celery worker does, even for ignore_result: nothing else will ever answer it.
    result = client.send("nope.missing", kwargs={"a": 1}, ignore_result=ignore_result)
    if ignore_result:  # get() returns None at once for an ignored result: read the state
        wait_until(lambda: result.state == "FAILURE", GET_TIMEOUT, message="FAILURE stored")
        assert isinstance(result.result, NotRegistered) and "nope.missing" in str(result.result)
    else:
        with pytest.raises(NotRegistered, match="nope.missing"):
            result.get(timeout=GET_TIMEOUT)
    record = stack.final_record(result.id)
    assert record.status is TaskStatus.FAILURE and "NotRegistered" in (record.error or "")


def test_arguments_that_do_not_fit_raise_type_error(client: CeleryClient) -> None:
    result = client.send("echo_bot.echo", kwargs={"wrong": 1})
    with pytest.raises(TypeError, match="wrong"):
        result.get(timeout=GET_TIMEOUT)


@pytest.mark.parametrize("limit", [1, 0.5])
def test_a_task_over_its_time_limit_raises_time_limit_exceeded(
    client: CeleryClient, limit: float
) -> None:
    # The client sends the limit as an AMQP header: 0.5 is a double (which pika alone would
    # decode as 0, no limit).
    result = client.send("diagnostics.sleep", kwargs={"seconds": 30}, time_limit=limit)
    with pytest.raises(TimeLimitExceeded, match=f"{limit:.1f}"):
        result.get(timeout=GET_TIMEOUT)


def test_a_task_overrunning_its_time_limit_by_a_little_is_stopped_too(
    client: CeleryClient,
) -> None:
    # Dramatiq checks time limits once a second by default: a task 0.3 s over its limit then
    # succeeded about two times in three. Three at once, so a coarse check cannot catch all.
    results = [
        client.send("diagnostics.sleep", kwargs={"seconds": 1.3}, time_limit=1) for _ in range(3)
    ]
    for result in results:
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=GET_TIMEOUT)


def test_a_soft_time_limit_before_the_hard_one_ends_the_task(client: CeleryClient) -> None:
    # A Celery worker raises SoftTimeLimitExceeded at the soft limit, which a hub task never
    # catches; the hard limit used to be the only one applied, and the task ran for 30 s.
    result = client.send(
        "diagnostics.sleep", kwargs={"seconds": 30}, soft_time_limit=1, time_limit=60
    )
    with pytest.raises(TimeLimitExceeded, match="1.0"):
        result.get(timeout=GET_TIMEOUT)


def test_an_already_expired_task_raises_revoked_and_never_runs(
    client: CeleryClient, stack: HubStack
) -> None:
    expired = datetime.now(UTC) - timedelta(seconds=5)
    result = client.send("echo_bot.echo", kwargs={"message": "too late"}, expires=expired)
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=GET_TIMEOUT)
    record = stack.final_record(result.id)
    assert record.status is TaskStatus.FAILURE and record.started_at is None
    assert "expired" in (record.error or "")


def test_a_task_that_expires_while_delayed_is_revoked_by_the_worker(
    client: CeleryClient, stack: HubStack, worker: HubProcess
) -> None:
    result = client.send("echo_bot.echo", kwargs={"message": "x"}, countdown=2, expires=1)
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=GET_TIMEOUT)
    worker.wait_for_log(rf"task {re.escape(result.id)} echo_bot.echo not run: expired", 30)
    assert stack.final_record(result.id).started_at is None


def test_a_pickled_task_is_refused_with_a_failure_not_a_hang(
    client: CeleryClient, stack: HubStack
) -> None:
    result = client.send("echo_bot.echo", kwargs={"message": "x"}, serializer="pickle")
    with pytest.raises(ContentDisallowed, match="pickle"):
        result.get(timeout=GET_TIMEOUT)
    # Its record holds no arguments (the message was never read): no rerun from it.
    assert stack.final_record(result.id).arguments_unread
    rerun = run_cli(["rerun", result.id], stack.env)
    assert rerun.returncode == 1
    # The command it suggests instead takes the task id (dead letters have ids of their own).
    suggested = rerun.stderr.split("`")[1]
    assert suggested == f"nagatha bridge dlq replay {result.id}"
    replay = run_cli(suggested.split()[1:], stack.env)
    assert replay.returncode == 0 and replay.stdout.endswith(" to celery\n"), replay.stderr


# --- revoke and control -----------------------------------------------------------------------


def test_revoking_a_delayed_task_means_it_never_runs(
    client: CeleryClient, stack: HubStack, worker: HubProcess
) -> None:
    result = client.send("echo_bot.echo", kwargs={"message": "never"}, countdown=3)
    wait_until(lambda: stack.record(result.id), GET_TIMEOUT, message="the bridge took the task")
    result.revoke()
    with pytest.raises(TaskRevokedError, match="revoked"):
        result.get(timeout=GET_TIMEOUT)
    # When its eta comes, the worker discards it.
    worker.wait_for_log(rf"task {re.escape(result.id)} echo_bot.echo not run: revoked", 30)
    record = stack.final_record(result.id)
    assert record.status is TaskStatus.FAILURE and record.started_at is None
    assert "revoked" in (record.error or "")


def test_a_task_revoked_before_it_was_sent_never_runs(
    client: CeleryClient, stack: HubStack, worker: HubProcess
) -> None:
    """Celery's order of events for an id revoked ahead of its task: the revoke is known to
    every worker (without a round trip per task), so the task is answered and not run."""
    # A task run first starts the worker's watch: the revoke then reaches it as a publish
    # (before that, the worker would ask Redis about an id it does not know of).
    assert client.send("echo_bot.echo", kwargs={"message": "warm"}).get(timeout=GET_TIMEOUT)
    channel = f"{stack.config.results.prefix}cancels"
    wait_until(
        lambda: stack.store.client.pubsub_numsub(channel)[0][1] >= 1,
        30,
        message="the worker's cancel watch subscribed",
    )
    task_id = client.new_id()
    replies = client.app.control.revoke(task_id, reply=True, timeout=10)
    assert any("flagged as revoked" in str(reply) for reply in replies), replies
    result = client.send("echo_bot.echo", kwargs={"message": "never"}, task_id=task_id)
    with pytest.raises(TaskRevokedError, match="revoked"):
        result.get(timeout=GET_TIMEOUT)
    worker.wait_for_log(rf"task {re.escape(task_id)} echo_bot.echo not run: revoked", 30)
    record = stack.final_record(task_id)
    assert record.status is TaskStatus.FAILURE and record.started_at is None
    assert f"task {task_id} echo_bot.echo started" not in worker.log()


def test_a_task_cancelled_through_the_hub_is_revoked_for_its_celery_client(
    client: CeleryClient, stack: HubStack, worker: HubProcess
) -> None:
    # 15 s: the cancel is a new `nagatha` process (imports, modules) on a loaded machine.
    result = client.send("echo_bot.echo", kwargs={"message": "never"}, countdown=15)
    wait_until(lambda: stack.record(result.id), GET_TIMEOUT, message="the bridge took the task")
    cancel = run_cli(["cancel", result.id], stack.env)
    assert cancel.returncode == 0, cancel.stderr
    with pytest.raises(TaskRevokedError, match="revoked"):
        result.get(timeout=GET_TIMEOUT)
    worker.wait_for_log(rf"task {re.escape(result.id)} echo_bot.echo not run: revoked", 60)
    record = stack.final_record(result.id)
    assert record.error == CANCELLED_ERROR and record.started_at is None


def test_control_ping_lists_the_bridge_as_a_node(client: CeleryClient, bridge: HubProcess) -> None:
    node = bridge.wait_for_log(r"bridge (\S+) consuming").group(1)
    replies = client.app.control.ping(timeout=5)
    assert {node: {"ok": "pong"}} in replies


# --- rpc:// backend ---------------------------------------------------------------------------


def test_the_rpc_backend_gets_results_and_failures(
    stack: HubStack, worker: HubProcess, bridge: HubProcess
) -> None:
    client = CeleryClient(stack, backend="rpc://")
    try:
        ok = client.send("echo_bot.echo", kwargs={"message": "over rpc"})
        bad = client.send("diagnostics.fail", kwargs={"message": "rpc failure"})
        assert ok.get(timeout=GET_TIMEOUT) == "over rpc"
        with pytest.raises(Exception, match="rpc failure"):
            bad.get(timeout=GET_TIMEOUT)
    finally:
        client.close()


@pytest.mark.parametrize("expires", [None, 1.5])
def test_an_rpc_client_that_revokes_a_delayed_task_is_answered_revoked(
    stack: HubStack, worker: HubProcess, bridge: HubProcess, expires: float | None
) -> None:
    # With expires, the revoked task also expires before its countdown ends: the worker
    # discards it as expired, and the client must still be answered.
    client = CeleryClient(stack, backend="rpc://")
    try:
        result = client.send(
            "echo_bot.echo", kwargs={"message": "never"}, countdown=3, expires=expires
        )
        wait_until(lambda: stack.record(result.id), GET_TIMEOUT, message="the bridge took it")
        result.revoke()
        with pytest.raises(TaskRevokedError, match="revoked|expired"):
            result.get(timeout=GET_TIMEOUT)
    finally:
        client.close()


# --- volume -----------------------------------------------------------------------------------


def test_a_thousand_tasks_are_all_answered(client: CeleryClient) -> None:
    results = [client.send("diagnostics.add", args=[i, 1]) for i in range(1000)]
    assert [r.get(timeout=GET_TIMEOUT) for r in results] == [i + 1 for i in range(1000)]


def test_the_results_live_in_the_backend_the_clients_read(client: CeleryClient) -> None:
    result = client.send("echo_bot.echo", kwargs={"message": "stored"})
    result.get(timeout=GET_TIMEOUT)
    stored = client.app.backend.get_task_meta(result.id)
    assert stored["status"] == "SUCCESS" and stored["task_id"] == result.id
    # Celery's default result_expires (one day) unless bridge.result_expires says otherwise.
    assert 0 < client.app.backend.client.ttl(f"celery-task-meta-{result.id}") <= 86_400
