"""Helpers of ``nagatha.testing`` that the suite's own hygiene relies on."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from nagatha.testing import _ephemeral_range, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert all(not low <= port <= high for port in ports)


def test_a_run_stopped_by_sigterm_still_tears_its_fixtures_down(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            from nagatha.testing import interrupt_on_sigterm

            def pytest_configure(config):
                interrupt_on_sigterm()
            """
        )
    )
    (tmp_path / "test_probe.py").write_text(
        textwrap.dedent(
            """
            import threading
            from pathlib import Path

            import pytest

            @pytest.fixture(scope="session")
            def server():
                Path("started").write_text("")
                try:
                    yield
                finally:
                    Path("stopped").write_text("")

            def test_runs_until_stopped(server):
                threading.Event().wait(60)
            """
        )
    )
    probe = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: (tmp_path / "started").exists(), 30, message="probe fixture set up")
        probe.send_signal(signal.SIGTERM)
        output = probe.communicate(timeout=30)[0].decode()
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    assert (tmp_path / "stopped").exists(), output
    assert probe.returncode == 2, output  # pytest's "interrupted"
    assert "stopped by signal 15" in output
