"""Retries against the real RabbitMQ: a retry the broker refuses is held, not lost."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nagatha.config import load_config
from nagatha.hub import create_hub
from nagatha.testing import HubProcess, RabbitVhost, rabbitmqctl, wait_until
from nagatha.types import TaskStatus

pytestmark = pytest.mark.integration

FLAKY = '''
    """Fails its first attempt (a marker file remembers it across processes)."""
    from pathlib import Path

    MARKER = Path({marker!r})

    def once():
        if not MARKER.exists():
            MARKER.write_text("failed once")
            raise RuntimeError("first attempt fails")
        return "second attempt"

    def register_tasks(registry):
        registry.register_task("flaky", "once", once, max_retries=3, min_backoff=10,
                               max_backoff=20)
'''


def test_a_retry_refused_by_a_full_delay_queue_is_held_then_runs(
    hub_env: dict[str, str],
    start_process: type[HubProcess],
    vhost: RabbitVhost,
    tmp_path: Path,
    home: Path,
) -> None:
    modules = tmp_path / "mods"
    (modules / "flaky").mkdir(parents=True)
    body = FLAKY.format(marker=str(tmp_path / "failed-once"))
    (modules / "flaky" / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    env = {**hub_env, "NAGATHA_MODULES_PATHS": str(modules)}
    hub = create_hub(load_config(env=env, home=home, cwd=home).config)
    # The policy ops/README.md recommends, with no room: every retry publish is NACKed.
    policy = f"full-dq-{tmp_path.name}"[:60]
    definition = json.dumps({"max-length": 0, "overflow": "reject-publish"})
    pattern = r"^default\.DQ$"
    rabbitmqctl("set_policy", "-p", vhost.name, "--apply-to", "queues", policy, pattern, definition)
    policy_set = True
    try:
        worker = start_process(["worker", "--processes", "1", "--threads", "2"], env)
        worker.wait_for_log(r"worker process \d+ consuming", timeout=60)
        task_id = hub.submit("flaky.once").task_id
        held = rf"task {task_id} flaky.once: the retry could not be enqueued"
        worker.wait_for_log(held, timeout=60)
        # Held: neither acked nor recorded as retrying; the broker still holds the attempt.
        # (The deferred started write may land just after the log line.)
        wait_until(lambda: hub.get_task_status(task_id).status is TaskStatus.STARTED, 30)
        rabbitmqctl("clear_policy", "-p", vhost.name, policy)
        policy_set = False
        record = hub.wait_for(task_id, 60, strict=True)
        assert record.status is TaskStatus.SUCCESS
        assert record.result == "second attempt"
        assert record.retries == 1
    finally:
        if policy_set:  # the vhost is the session's: leave no policy behind
            rabbitmqctl("clear_policy", "-p", vhost.name, policy)
        hub.broker.close()
        hub.store.close()
