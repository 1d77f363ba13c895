"""The fault tests' figures: one entry per test, printed as a table and written to a file.

A plugin that ``tests/conftest.py`` registers rather than hooks in ``tests/faults/conftest.py``:
under pytest-xdist the controller never loads that conftest (it collects nothing), so it could
neither gather what its workers recorded nor print the table. Each worker hands its entries to
the controller in ``workeroutput``; the process that ran no worker of its own writes the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

RESULTS_FILE = Path(__file__).resolve().parent / "results.json"
PLUGIN_NAME = "nagatha-fault-report"
_WORKER_OUTPUT = "nagatha_fault_results"


class FaultReport:
    """Collects the entries ``record_fault`` makes during one run."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def record(self, entry: dict[str, Any]) -> None:
        self.results.append(entry)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """xdist controller: take what a worker recorded (a crashed worker sends nothing)."""
        output = getattr(node, "workeroutput", None) or {}
        self.results.extend(json.loads(output.get(_WORKER_OUTPUT, "[]")))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        worker_output = getattr(session.config, "workeroutput", None)
        if worker_output is not None:  # an xdist worker: the controller reports
            worker_output[_WORKER_OUTPUT] = json.dumps(self.results)
        elif self.results:
            RESULTS_FILE.write_text(json.dumps(self.results, indent=2) + "\n", encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        terminalreporter.section("fault results")
        header = (
            f"{'fault':34} {'accepted':>8} {'finished':>8} {'lost':>4} {'twice':>5} {'recov s':>7}"
        )
        terminalreporter.write_line(header)
        for entry in self.results:
            recovery = "-" if entry["recovery_s"] is None else f"{entry['recovery_s']:.2f}"
            terminalreporter.write_line(
                f"{entry['fault'][:34]:34} {entry['accepted']:>8} {entry['finished']:>8} "
                f"{entry['lost']:>4} {entry['executed_twice']:>5} {recovery:>7}"
            )
        terminalreporter.write_line(f"(written to {RESULTS_FILE})")
