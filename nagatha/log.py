"""Logging setup shared by every entry point: text or JSON lines, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from nagatha.config import MASK, LoggingConfig
from nagatha.errors import ConfigError, NagathaError

_HANDLER_NAME = "nagatha"
#: Dramatiq warns on every non-None return without its Results middleware; the hub keeps
#: results itself (StatusMiddleware), so that warning is noise.
_DRAMATIQ_RESULTS_WARNING = "haven't added the Results middleware"


class RedactingFilter(logging.Filter):
    """Replace every known secret in a record's final message with ``****``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _DRAMATIQ_RESULTS_WARNING in message:
            return False
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, MASK)
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if any(secret in text for secret in self.secrets):
                for secret in self.secrets:
                    text = text.replace(secret, MASK)
                redacted = f"{redacted}\n{text}"
                record.exc_info = None
                record.exc_text = None
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def describe_error(error: BaseException, secrets: Iterable[str]) -> str:
    """``Type: message`` of ``error`` for people (``/health``, ``nagatha stats``; the hub's
    own errors by their message, written for people already): every secret replaced with
    ``****``, at most 300 characters."""
    if isinstance(error, NagathaError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text[:300]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: LoggingConfig, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once per process (calling again replaces the setup)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    if config.file:
        try:
            handler = logging.FileHandler(config.file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"logging.file = {config.file!r}: cannot open it for writing ({exc.strerror})"
            ) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(config.level)
    # pika logs full tracebacks for every reaped idle connection that Dramatiq then reopens.
    logging.getLogger("pika").setLevel(max(logging.CRITICAL, root.level))
