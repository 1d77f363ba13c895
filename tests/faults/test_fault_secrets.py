"""Secrets: after a run with API tokens and passwords in the service URLs, none is printed."""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_kit import Outcome, RabbitNode, RedisServer, executions, summarize, wait_final

from nagatha.config import load_config
from nagatha.stores import build_store
from nagatha.testing import HubProcess, run_cli

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(180)]


def test_no_token_or_password_appears_in_any_log_or_cli_output(
    rabbit_node: RabbitNode,
    redis_private: RedisServer,
    fault_env: dict[str, str],
    start_worker: Callable[..., HubProcess],
    record_fault: Callable[[Outcome], None],
) -> None:
    # Given a broker user with a random password, random API tokens and a Redis password
    password = secrets.token_hex(16)
    tokens = [secrets.token_urlsafe(24), secrets.token_urlsafe(24)]
    url = rabbit_node.add_vhost(user=f"nagatha-{uuid.uuid4().hex[:6]}", password=password)
    env = {
        **fault_env,
        "NAGATHA_BROKER_URL": url,
        "NAGATHA_API_TOKENS": ",".join(tokens),
        "NAGATHA_LOGGING_LEVEL": "DEBUG",
    }
    wrong_password = secrets.token_hex(16)
    wrong_url = url.replace(password, wrong_password)
    closed_url = url.replace(f":{rabbit_node.port}/", ":1/")
    wrong_redis = redis_private.url.replace(redis_private.password, secrets.token_hex(12))
    secret_values = [password, *tokens, wrong_password, redis_private.password]
    worker = start_worker(processes=1, threads=2, env=env)
    outputs: dict[str, str] = {}

    def cli(
        label: str, args: list[str], code: int, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = run_cli(args, {**env, **(extra or {})}, timeout=90)
        outputs[label] = done.stdout + done.stderr
        assert done.returncode == code, f"{label}: exit {done.returncode}\n{outputs[label]}"
        return done

    # When the CLI runs tasks, shows config, and meets a wrong password and a closed port
    ok = cli("run add", ["run", "diagnostics.add", "-k", "x=1", "-k", "y=2", "--wait", "--json"], 0)
    task_ids = [json.loads(ok.stdout)["task_id"]]
    failed = cli("run fail", ["run", "diagnostics.fail", "--wait", "--json"], 1)
    task_ids.append(json.loads(failed.stdout)["task_id"])
    cli("status", ["status", task_ids[0], "--json"], 0)
    cli("debug run", ["--debug", "run", "diagnostics.noop", "--wait"], 0)
    cli(
        "json log run",
        ["--debug", "run", "diagnostics.noop"],
        0,
        {"NAGATHA_LOGGING_FORMAT": "json"},
    )
    for key in ("", "broker.url", "api.tokens", "results.url"):
        cli(f"config {key}", ["config", *([key] if key else [])], 0)
    cli("config --json", ["config", "--json"], 0)
    cli("list", ["list"], 0)
    cli("modules", ["modules", "--json"], 0)
    cli("wrong broker password", ["run", "diagnostics.noop"], 3, {"NAGATHA_BROKER_URL": wrong_url})
    outputs["wrong broker password --debug"] = run_cli(
        ["--debug", "run", "diagnostics.noop"], {**env, "NAGATHA_BROKER_URL": wrong_url}
    ).stderr
    cli("closed broker port", ["run", "diagnostics.noop"], 3, {"NAGATHA_BROKER_URL": closed_url})
    cli(
        "wrong redis password", ["run", "diagnostics.noop"], 3, {"NAGATHA_RESULTS_URL": wrong_redis}
    )
    cli("bad scheme", ["list"], 2, {"NAGATHA_BROKER_URL": url.replace("amqp://", "amqpx://", 1)})
    assert worker.stop() == 0
    outputs["worker log"] = worker.log()

    # Then no output and no log holds any of the secrets
    leaks = {
        label: [s[:4] + "..." for s in secret_values if s in text]
        for label, text in outputs.items()
    }
    leaks = {label: found for label, found in leaks.items() if found}
    home = Path(env["HOME"])
    config = load_config(env=env, home=home, cwd=home).config
    store = build_store(config.results)
    try:
        records = wait_final(store, task_ids, timeout=30)
    finally:
        store.close()
    outcome = summarize(
        "secrets in logs and CLI output",
        "worker (DEBUG) + 15 CLI runs: tokens, broker and Redis passwords, wrong/closed URLs",
        records,
        executions([outputs["worker log"]]),
        None,
        f"{len(outputs)} outputs searched for {len(secret_values)} secrets: "
        f"{sum(len(v) for v in leaks.values())} found",
        leaks=leaks,
    )
    record_fault(outcome)
    assert leaks == {}
    assert "****" in outputs["config broker.url"]
    assert outcome.lost == 0
