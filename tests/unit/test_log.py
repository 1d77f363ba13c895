"""Logging: secrets never reach the output, JSON lines parse, Dramatiq's results nag is gone."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from nagatha.config import LoggingConfig
from nagatha.log import setup_logging


class Captured:
    """stderr as captured by pytest (the handler binds sys.stderr when set up in the test)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    yield Captured(capsys)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "nagatha":
            root.removeHandler(handler)


def test_secrets_are_redacted_from_messages_and_tracebacks(captured: Captured) -> None:
    setup_logging(LoggingConfig(level="INFO"), ["tok-123456", "pw-abcdef"])
    log = logging.getLogger("nagatha.test")
    log.info("connecting to amqp://u:%s@h with token %s", "pw-abcdef", "tok-123456")
    try:
        raise RuntimeError("bad token tok-123456")
    except RuntimeError:
        log.exception("failed")
    text = captured.getvalue()
    assert "tok-123456" not in text and "pw-abcdef" not in text
    assert "amqp://u:****@h" in text and "RuntimeError" in text


def test_json_format_writes_one_object_per_line(captured: Captured) -> None:
    setup_logging(LoggingConfig(level="INFO", format="json"), [])
    logging.getLogger("nagatha.tasks").info("task %s %s started", "id-1", "m.t")
    (line,) = captured.getvalue().strip().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "task id-1 m.t started"
    assert entry["level"] == "INFO" and entry["logger"] == "nagatha.tasks"


def test_dramatiq_results_middleware_warning_is_dropped(captured: Captured) -> None:
    setup_logging(LoggingConfig(level="INFO"), [])
    logging.getLogger("dramatiq.worker.WorkerThread").warning(
        "Actor 'x' returned a value that is not None, and you haven't added the Results "
        "middleware to the broker"
    )
    assert captured.getvalue() == ""


def test_log_file_is_used_when_configured(tmp_path, captured: Captured) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hub.log"
    setup_logging(LoggingConfig(level="INFO", file=str(path)), [])
    logging.getLogger("nagatha.x").warning("to the file")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "to the file" in path.read_text()
    assert captured.getvalue() == ""
