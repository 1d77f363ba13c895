"""The CLI and `nagatha worker` against real RabbitMQ and Redis."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from nagatha.broker_probes import probe_rabbitmq
from nagatha.config import BrokerConfig, FrameworkConfig
from nagatha.errors import BrokerUnavailable
from nagatha.stores import RedisStatusStore
from nagatha.testing import HubProcess, run_cli, wait_until
from nagatha.types import TaskRecord, TaskStatus, utcnow

pytestmark = pytest.mark.integration


def store_for(config: FrameworkConfig) -> RedisStatusStore:
    return RedisStatusStore(config.results.url, prefix=config.results.prefix)


def test_echo_round_trip_prints_a_success_record(
    hub_env: dict[str, str], worker: HubProcess
) -> None:
    done = run_cli(["run", "echo_bot.echo", "-k", "message=héllo", "--wait", "--json"], hub_env)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "success"
    assert record["result"] == "héllo"
    for key in ("created_at", "started_at", "completed_at"):
        assert record[key]
    assert record["created_at"] <= record["started_at"] <= record["completed_at"]


def test_add_parses_k_values_as_json(hub_env: dict[str, str], worker: HubProcess) -> None:
    done = run_cli(
        ["run", "diagnostics.add", "-k", "x=2", "-k", "y=3", "--wait", "--json"], hub_env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == 5


def test_k_values_that_are_no_strict_json_stay_strings(
    hub_env: dict[str, str], worker: HubProcess
) -> None:
    for text in ("NaN", "-Infinity", "1e400", "[1, 2"):
        done = run_cli(
            ["run", "echo_bot.echo", "-k", f"message={text}", "--wait", "--json"], hub_env
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"] == text


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--kwargs", '{"message": "\\ud800"}'], "lone surrogate"),
        (["-k", "message=\udcff"], "lone surrogate"),  # a byte of another encoding in argv
        (["--kwargs", '{"message": NaN}'], "NaN is not valid JSON"),
        (["--kwargs", '{"message": ' + "[" * 300 + "]" * 300 + "}"], "deeper than 200 levels"),
    ],
)
def test_kwargs_the_hub_could_not_keep_exit_2_before_anything_is_sent(
    hub_env: dict[str, str], args: list[str], reason: str
) -> None:
    # No worker and an unreachable broker: the refusal must come first.
    env = {**hub_env, "NAGATHA_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    done = run_cli(["run", "echo_bot.echo", *args], env)
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr
    assert "Traceback" not in done.stderr


def test_a_record_holding_a_lone_surrogate_is_still_shown(
    hub_env: dict[str, str], hub_config: FrameworkConfig
) -> None:
    store = store_for(hub_config)
    defaults = {"task_name": "x.y", "created_at": "2026-11-29T00:00:00Z"}
    store.update("surrogate-1", TaskStatus.SUCCESS, {"result": "a\ud800b"}, defaults)
    store.close()
    done = run_cli(["status", "surrogate-1", "--json"], hub_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "a\ud800b"
    table = run_cli(["status", "surrogate-1"], hub_env)
    assert table.returncode == 0, table.stderr
    assert "a\\ud800b" in table.stdout


def test_failing_task_exits_1_with_its_message(hub_env: dict[str, str], worker: HubProcess) -> None:
    done = run_cli(
        ["run", "diagnostics.fail", "--kwargs", '{"message": "kaputt here"}', "--wait", "--json"],
        hub_env,
    )
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["status"] == "failure"
    assert "kaputt here" in record["error"]


def test_status_of_an_unknown_id_says_not_found(hub_env: dict[str, str]) -> None:
    done = run_cli(["status", "no-such-id"], hub_env)
    assert done.returncode == 1
    assert "not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_follows_a_task_by_id(hub_env: dict[str, str], worker: HubProcess) -> None:
    task_id = run_cli(["run", "diagnostics.sleep", "-k", "seconds=0.3"], hub_env).stdout.strip()
    done = run_cli(["status", "--task-id", task_id, "--wait", "--json"], hub_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "success"


def test_unknown_task_is_refused_before_enqueue(hub_env: dict[str, str], vhost) -> None:  # type: ignore[no-untyped-def]
    done = run_cli(["run", "nope.missing", "-k", "a=1"], hub_env)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: unknown task 'nope.missing': see `nagatha list tasks` or GET /tasks for the names"
    )
    bad = run_cli(["run", "diagnostics.add", "-k", "x=1", "-k", "zz=2"], hub_env)
    assert bad.returncode == 2
    assert "unknown zz" in bad.stderr and "missing y" in bad.stderr


def test_unreachable_broker_exits_3_and_leaves_no_record(
    hub_env: dict[str, str], hub_config: FrameworkConfig
) -> None:
    env = {**hub_env, "NAGATHA_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
    done = run_cli(["run", "diagnostics.noop", "--json"], env)
    assert done.returncode == 3
    assert "RabbitMQ at 127.0.0.1:1) unavailable, the task was not accepted" in done.stderr
    assert done.stderr.strip().endswith("Connection refused")
    store = store_for(hub_config)
    assert list(store.client.scan_iter(match=f"{hub_config.results.prefix}task:*")) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("amqp://guest:wrong-pw@127.0.0.1:5672/%2F", "refused the login: check the user"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "refused access to the vhost"),
    ],
)
def test_refused_credentials_are_named_as_such_not_as_an_outage(
    hub_env: dict[str, str], start_process: type[HubProcess], url: str, reason: str
) -> None:
    env = {**hub_env, "NAGATHA_BROKER_URL": url}
    done = run_cli(["run", "diagnostics.noop"], env)
    assert done.returncode == 3
    assert reason in done.stderr
    assert "wrong-pw" not in done.stderr
    # /health and the bridge say the same (they named pika's exception classes).
    with pytest.raises(BrokerUnavailable, match=re.escape(reason)):
        probe_rabbitmq(BrokerConfig(url=url), timeout=10)
    bridge = start_process(["bridge"], env)
    bridge.wait_for_log(rf"bridge connection lost \(RabbitMQ {re.escape(reason)}", timeout=60)
    assert bridge.stop() == 0
    assert "wrong-pw" not in bridge.log()


def test_worker_killed_mid_task_is_redelivered_to_a_new_worker(
    hub_env: dict[str, str], hub_config: FrameworkConfig, start_process: type[HubProcess]
) -> None:
    first = start_process(["worker", "--processes", "1", "--threads", "2"], hub_env)
    first.wait_for_log(r"worker process \d+ consuming", timeout=60)
    task_id = run_cli(["run", "diagnostics.sleep", "-k", "seconds=3"], hub_env).stdout.strip()
    store = store_for(hub_config)
    wait_until(
        lambda: (r := store.get(task_id)) and r.status == "started", 30, message="task started"
    )
    first.kill()  # SIGKILL the supervisor and its worker process: no graceful anything
    assert store.get(task_id).status == "started"  # type: ignore[union-attr]

    second = start_process(["worker", "--processes", "1", "--threads", "2"], hub_env)
    second.wait_for_log(r"worker process \d+ consuming", timeout=60)
    record = wait_until(
        lambda: (r := store.get(task_id)) and r.status.final and r,
        60,
        message="redelivered task finished",
    )
    assert record.status == "success"
    assert record.result == 3.0


def test_restarts_that_cut_a_task_short_never_fail_it_as_lost(
    hub_env: dict[str, str], hub_config: FrameworkConfig, start_process: type[HubProcess]
) -> None:
    # A rolling deploy, twice, over a task longer than the grace period: with one redelivery
    # allowed, the third start used to fail it as WorkerLost ("killed, out of memory or
    # crashed") although every worker had stopped gracefully.
    env = {**hub_env, "NAGATHA_WORKER_SHUTDOWN_GRACE": "0.5"}
    env["NAGATHA_WORKER_MAX_REDELIVERIES"] = "1"
    task_id = run_cli(["run", "diagnostics.sleep", "-k", "seconds=5"], env).stdout.strip()
    for _ in range(2):
        worker = start_process(["worker", "--processes", "1", "--threads", "1"], env)
        worker.wait_for_log(rf"task {task_id} \S+ started", timeout=60)
        assert worker.stop() == 0
        assert re.search(
            rf"task {task_id} diagnostics.sleep: still running when the grace period ended; "
            "given back",
            worker.log(),
        ), worker.log()
    last = start_process(["worker", "--processes", "1", "--threads", "1"], env)
    store = store_for(hub_config)
    record = wait_until(
        lambda: (r := store.get(task_id)) and r.status.final and r, 60, message="task ended"
    )
    assert record.status == "success", record.error
    assert "gave it back" in last.log()


def test_a_dead_worker_process_is_reported_and_replaced(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    supervisor = start_process(["worker", "--processes", "1", "--threads", "1"], hub_env)
    supervisor.wait_for_log(r"worker process \d+ consuming", timeout=60)
    (child,) = supervisor.children()
    import os

    os.kill(child, signal.SIGKILL)
    supervisor.wait_for_log(rf"worker process {child} died with exit code -9", timeout=30)
    supervisor.wait_for_log(r"worker process \d+ consuming", timeout=60, count=2)
    assert supervisor.stop() == 0


def test_modules_json_lists_good_failed_and_skips_private(
    hub_env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "mods"
    for name, body in {
        "good": '"""Good."""\n__version__ = "1.2.3"\ndef t():\n    pass\n'
        'def register_tasks(r):\n    r.register_task("good", "t", t)\n',
        "broken": "raise ImportError('cannot import this on purpose')\n",
        "_private": "raise SystemExit(3)\n",
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(textwrap.dedent(body))
    done = run_cli(["modules", "--json"], {**hub_env, "NAGATHA_MODULES_PATHS": str(root)})
    assert done.returncode == 0, done.stderr
    modules = {m["name"]: m for m in json.loads(done.stdout)["modules"]}
    assert set(modules) == {"good", "broken"}
    assert (modules["good"]["status"], modules["good"]["version"]) == ("loaded", "1.2.3")
    assert modules["broken"]["status"] == "failed"
    assert "cannot import this on purpose" in modules["broken"]["error"]


def test_list_tasks_json_matches_the_http_shape(hub_env: dict[str, str]) -> None:
    done = run_cli(["list", "tasks", "--json"], hub_env)
    tasks = {t["name"]: t for t in json.loads(done.stdout)["tasks"]}
    assert tasks["diagnostics.add"]["parameters"][0] == {
        "name": "x",
        "required": True,
        "default": None,
        "annotation": "float",
    }
    assert tasks["echo_bot.echo"]["module"] == "echo_bot"


def test_config_masks_secrets_and_names_sources(hub_env: dict[str, str]) -> None:
    env = {
        **hub_env,
        "NAGATHA_API_TOKENS": "tok-very-secret",
        "NAGATHA_BROKER_URL": "amqp://guest:pw-very-secret@127.0.0.1:5672/x",
    }
    done = run_cli(["config", "--json"], env)
    assert done.returncode == 0
    assert "very-secret" not in done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["sources"]["api.tokens"] == "env NAGATHA_API_TOKENS"
    one = run_cli(["config", "broker.url"], env)
    assert one.stdout.strip() == "amqp://guest:****@127.0.0.1:5672/x"


def test_bad_config_exits_2_with_one_line(hub_env: dict[str, str]) -> None:
    done = run_cli(["list"], {**hub_env, "NAGATHA_RESULTS_TTL": "soon"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "results.ttl" in done.stderr


def test_debug_adds_the_traceback_and_keeps_the_exit_code(hub_env: dict[str, str]) -> None:
    bad_config = run_cli(["--debug", "list"], {**hub_env, "NAGATHA_RESULTS_TTL": "soon"})
    closed = run_cli(
        ["--debug", "run", "diagnostics.noop"],
        {**hub_env, "NAGATHA_RESULTS_URL": "redis://127.0.0.1:1/0"},
    )
    for done, code in ((bad_config, 2), (closed, 3)):
        assert done.returncode == code, done.stderr
        assert "Traceback (most recent call last)" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_queue_no_task_uses_is_reported(
    hub_env: dict[str, str], start_process: type[HubProcess]
) -> None:
    process = start_process(["worker", "-p", "1", "-t", "1", "--queues", "defualt"], hub_env)
    process.wait_for_log(r"queue defualt: no loaded task uses it", timeout=60)
    process.wait_for_log(r"worker process \d+ consuming defualt", timeout=60)


def test_ctrl_c_during_a_wait_exits_130_not_task_failed(
    hub_env: dict[str, str], hub_config: FrameworkConfig
) -> None:
    store = store_for(hub_config)
    task_id = str(uuid.uuid4())
    store.create(
        TaskRecord(task_id=task_id, task_name="a.b", status="pending", created_at=utcnow())
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "nagatha", "status", task_id, "--wait", "--timeout", "60"],
        env=hub_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT; Ctrl-C reaches a foreground command.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Waiting: its listener connection is named after its pid.
        wait_until(
            lambda: any(
                client.get("name", "").endswith(f"-{process.pid}")
                for client in store.client.client_list()
            ),
            30,
            message="the CLI waiting on the record",
        )
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        store.close()
    assert process.returncode == 130
    assert err.strip() == "interrupted"


def test_rerun_runs_an_ended_task_again_with_its_arguments(
    hub_env: dict[str, str], worker: HubProcess
) -> None:
    failed = run_cli(
        ["run", "diagnostics.fail", "-k", "message=twice", "--wait", "--json"], hub_env
    )
    assert failed.returncode == 1, failed.stderr
    old = json.loads(failed.stdout)
    again = run_cli(["rerun", old["task_id"], "--wait", "--json"], hub_env)
    assert again.returncode == 1, again.stderr  # it failed again, as it should
    new = json.loads(again.stdout)
    assert new["task_id"] != old["task_id"]
    assert (new["status"], new["error"], new["kwargs"]) == ("failure", old["error"], old["kwargs"])

    added = run_cli(
        ["run", "diagnostics.add", "-k", "x=2", "-k", "y=3", "--wait", "--json"], hub_env
    )
    assert added.returncode == 0, added.stderr
    printed = run_cli(["rerun", json.loads(added.stdout)["task_id"]], hub_env)
    assert printed.returncode == 0, printed.stderr
    done = run_cli(["status", printed.stdout.strip(), "--wait", "--json"], hub_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == 5


def test_rerun_refuses_a_task_that_has_not_ended(
    hub_env: dict[str, str], hub_config: FrameworkConfig
) -> None:
    # A record that waits to run, made directly: a real long task would stay in the session's
    # queue for the next test's worker.
    task_id = str(uuid.uuid4())
    store = store_for(hub_config)
    try:
        store.create(
            TaskRecord(
                task_id=task_id,
                task_name="diagnostics.add",
                status=TaskStatus.PENDING,
                kwargs={"x": 1, "y": 2},
                created_at=utcnow(),
            )
        )
    finally:
        store.close()
    refused = run_cli(["rerun", task_id], hub_env)
    assert refused.returncode == 1
    assert "cannot be run again: it has not ended (status pending)" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    unknown = run_cli(["rerun", "no-such-id"], hub_env)
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    embedded = run_cli(
        ["rerun", task_id],
        {**hub_env, "NAGATHA_BROKER_URL": "memory://", "NAGATHA_RESULTS_URL": "memory://"},
    )
    assert embedded.returncode == 2 and "POST /tasks/rerun" in embedded.stderr


def test_commands_that_only_read_records_load_no_module(
    hub_env: dict[str, str], tmp_path: Path
) -> None:
    # A module that is broken or hangs at import must not hold up status, cancel, ...
    imported = tmp_path / "imported"
    folder = tmp_path / "mods" / "marker"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(
        f"open({str(imported)!r}, 'a').write('x')\ndef register_tasks(registry):\n    pass\n"
    )
    env = {**hub_env, "NAGATHA_MODULES_PATHS": str(folder.parent)}
    for args, code in (
        (["status", "no-such-id"], 1),
        (["cancel", "no-such-id"], 1),
        (["failures"], 0),
        (["workers"], 0),
    ):
        done = run_cli(args, env)
        assert done.returncode == code, (args, done.stderr)
    assert not imported.exists()
    assert run_cli(["list"], env).returncode == 0
    assert imported.exists()  # the module does load where tasks are needed
