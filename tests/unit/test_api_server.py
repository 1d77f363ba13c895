"""Serving: the lazy WSGI app, gunicorn settings and hooks, the serve command's refusals."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from nagatha.api import gunicorn_conf
from nagatha.api.server import GunicornServer
from nagatha.api.wsgi import LazyApp
from nagatha.config import ApiConfig, FrameworkConfig
from nagatha.testing import HubProcess, free_port, run_cli

ROOT = Path(__file__).resolve().parents[2]
KEEP_ALIVE = "nagatha.api.keepalive.KeepAliveWorker"


class FakeApp:
    closed = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def close(self) -> None:
        FakeApp.closed += 1


def test_lazy_app_builds_once_on_first_use_and_closes() -> None:
    built: list[FakeApp] = []

    def factory() -> Any:
        built.append(FakeApp())
        return built[-1]

    lazy = LazyApp(factory)
    assert not lazy.loaded and built == []
    assert lazy({}, lambda status, headers: None) == [b"ok"]
    lazy.load()
    assert len(built) == 1 and lazy.loaded
    lazy.close()
    assert not lazy.loaded and FakeApp.closed == 1


def test_forget_drops_an_inherited_app_without_closing_it() -> None:
    lazy = LazyApp(FakeApp)  # type: ignore[arg-type]
    lazy.load()
    before = FakeApp.closed
    gunicorn_conf.post_fork(SimpleNamespace(app=SimpleNamespace(callable=lazy)), None)
    assert not lazy.loaded and FakeApp.closed == before


def test_gunicorn_settings_are_the_keep_alive_gthread_worker_without_preload() -> None:
    api = ApiConfig(host="0.0.0.0", port=8123, workers=3, threads=5, timeout=40)
    settings = gunicorn_conf.settings(api)
    assert settings["worker_class"] == KEEP_ALIVE
    assert settings["preload_app"] is False
    assert settings["bind"] == ["0.0.0.0:8123"]
    assert (settings["workers"], settings["threads"], settings["timeout"]) == (3, 5, 40)
    assert gunicorn_conf.settings(ApiConfig(host="::1"))["bind"] == ["[::1]:8000"]


def test_the_gunicorn_application_takes_its_settings_and_builds_no_app_in_the_master() -> None:
    config = FrameworkConfig.model_validate({"api": {"port": 8124, "workers": 2, "threads": 3}})
    server = GunicornServer(config)
    assert server.cfg.worker_class_str == KEEP_ALIVE
    assert server.cfg.preload_app is False
    assert server.cfg.bind == ["127.0.0.1:8124"]
    assert (server.cfg.workers, server.cfg.threads) == (2, 3)
    assert server.cfg.accesslog is None
    app = server.load()
    assert isinstance(app, LazyApp) and not app.loaded


def test_post_worker_init_exits_with_the_boot_error_code_when_the_app_fails() -> None:
    def broken() -> Any:
        raise RuntimeError("cannot build")

    worker = SimpleNamespace(wsgi=LazyApp(broken))
    with pytest.raises(SystemExit) as stopped:
        gunicorn_conf.post_worker_init(worker)
    assert stopped.value.code == gunicorn_conf.WORKER_BOOT_ERROR


def test_gunicorn_reads_the_config_module_alone() -> None:
    from gunicorn.app.wsgiapp import WSGIApplication

    argv = sys.argv
    sys.argv = [
        "gunicorn",
        "-c",
        "python:nagatha.api.gunicorn_conf",
        "nagatha.api.wsgi:application",
    ]
    try:
        app = WSGIApplication()
    finally:
        sys.argv = argv
    assert app.cfg.worker_class_str == KEEP_ALIVE
    assert issubclass(app.cfg.worker_class, ThreadWorker)  # gthread, as DESIGN §5 requires
    assert app.cfg.preload_app is False
    assert app.cfg.control_socket_disable is True


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    env.update({"HOME": str(tmp_path), "PYTHONPATH": str(ROOT), **extra})
    return env


def test_serving_beyond_loopback_without_tokens_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_cli(["serve", "--host", "0.0.0.0", "--port", str(free_port())], cli_env(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: refusing to serve on 0.0.0.0 without tokens")


@pytest.mark.parametrize("command", [["serve"], ["run", "diagnostics.noop"], ["list"]])
def test_memory_store_with_a_rabbitmq_broker_exits_2(tmp_path: Path, command: list[str]) -> None:
    env = cli_env(tmp_path, NAGATHA_RESULTS_URL="memory://")
    done = run_cli([*command, *(["--port", str(free_port())] if command == ["serve"] else [])], env)
    assert done.returncode == 2
    assert "results.url is memory:// (from env NAGATHA_RESULTS_URL)" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_shows_a_memory_store_beside_rabbitmq_with_a_warning(tmp_path: Path) -> None:
    """The one command that shows it: the tool to diagnose it with."""
    env = cli_env(tmp_path, NAGATHA_RESULTS_URL="memory://")
    done = run_cli(["config", "results.url"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "memory://"
    assert done.stderr.startswith(
        "warning: results.url is memory:// (from env NAGATHA_RESULTS_URL)"
    )


def test_serve_embedded_puts_both_in_memory_whatever_the_store_says(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(tmp_path, NAGATHA_RESULTS_URL="memory://", NAGATHA_WORKER_THREADS="3")
    process = HubProcess(["serve", "--embedded", "--port", str(port)], env, cwd=tmp_path)
    try:
        process.wait_for_log(
            rf"embedded hub serving on http://127\.0\.0\.1:{port} .*store memory://, 3 worker",
            timeout=60,
        )
    finally:
        process.stop(timeout=20)


@pytest.mark.parametrize("flag", ["--workers", "--threads"])
def test_gunicorn_sizes_are_refused_for_the_embedded_hub(tmp_path: Path, flag: str) -> None:
    done = run_cli(["serve", "--embedded", flag, "3"], cli_env(tmp_path), timeout=30)
    assert done.returncode == 2
    assert "the embedded hub is one process" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("embedded", [False, True])
def test_a_port_in_use_exits_2_with_one_line_in_both_modes(tmp_path: Path, embedded: bool) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        args = ["serve", "--port", str(port), *(["--embedded"] if embedded else [])]
        done = run_cli(args, cli_env(tmp_path), timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another with --port or NAGATHA_API_PORT)"
    ]


def test_run_in_process_prints_the_record_and_nothing_else(tmp_path: Path) -> None:
    env = cli_env(tmp_path, NAGATHA_BROKER_URL="memory://", NAGATHA_RESULTS_URL="memory://")
    done = run_cli(["run", "diagnostics.fail", "-k", "message=boom", "--json"], env)
    assert done.returncode == 1
    assert '"error": "DiagnosticFailure: boom"' in done.stdout
    assert done.stderr == ""  # no worker traceback repeating what the record says
    ok = run_cli(["run", "diagnostics.add", "-k", "x=1", "-k", "y=2", "--json"], env)
    assert ok.returncode == 0 and '"result": 3' in ok.stdout


@pytest.mark.parametrize(
    ("command", "timeout", "needle"),
    [
        (["run", "diagnostics.noop", "--wait"], "nan", "nan is not from 0 to 86400 seconds"),
        (["run", "diagnostics.noop", "--wait"], "inf", "is not from 0 to 86400 seconds"),
        (["run", "diagnostics.noop", "--wait"], "-1", "is not from 0 to 86400 seconds"),
        (["run", "diagnostics.noop", "--wait"], "1e10", "is not from 0 to 86400 seconds"),
        (["status", "x"], "soon", "'soon' is not a number of seconds"),
        # click's FloatRange let nan through, and stats blamed both servers for not answering.
        (["stats"], "nan", "nan is not from 0.1 to 600 seconds"),
    ],
)
def test_a_timeout_out_of_range_is_a_usage_error(
    tmp_path: Path, command: list[str], timeout: str, needle: str
) -> None:
    env = cli_env(tmp_path, NAGATHA_BROKER_URL="memory://", NAGATHA_RESULTS_URL="memory://")
    done = run_cli([*command, "--timeout", timeout], env)
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("queue", "reason"), [("", "empty"), ("amq.q", "RabbitMQ's own")])
def test_a_bridge_queue_rabbitmq_would_not_take_is_a_usage_error(
    tmp_path: Path, queue: str, reason: str
) -> None:
    done = run_cli(["bridge", "--queue", "celery", "--queue", queue], cli_env(tmp_path))
    assert done.returncode == 2
    assert reason in done.stderr and "Traceback" not in done.stderr


def test_a_host_that_does_not_resolve_is_named_as_such(tmp_path: Path) -> None:
    env = cli_env(tmp_path, NAGATHA_API_TOKENS="t-1")
    done = run_cli(["serve", "--host", "no-such-host.invalid", "--port", "8000"], env)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot listen on no-such-host.invalid:8000: ")
    assert line.endswith("(check --host)") and "Unknown error" not in line
