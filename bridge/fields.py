"""Strict validators for the fields of a Celery task message.

Each function takes a raw value as decoded from AMQP headers or a message body and returns
the clean Python value, or raises :class:`~nagatha.errors.ProtocolError` naming the field.
Text may arrive as ``bytes`` (pika, msgpack) and is decoded as UTF-8.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from nagatha.errors import InvalidTaskName, ProtocolError

#: What a task name may look like; also rejects ``..`` separately (see :func:`task_name`).
TASK_NAME_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
#: Longest task/group/root id, ``reply_to`` or ``correlation_id`` in UTF-8 bytes (AMQP's
#: short-string size).
MAX_ID_LENGTH: Final = 255
_MAX_INT: Final = 2**31 - 1
_MAX_TIME_LIMIT: Final = 10**9
_MAX_ISO_LENGTH: Final = 64


def text(value: Any, field: str) -> str | None:
    """Return ``value`` as ``str`` (``bytes`` decoded as UTF-8), or None for None."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"field {field!r} is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise ProtocolError(f"field {field!r} must be a string, got {type(value).__name__}")


def identifier(value: Any, field: str) -> str | None:
    """Return an id-like string (printable, 1-255 chars); None or ``""`` give None."""
    result = text(value, field)
    if not result:
        return None
    # AMQP short strings (a correlation id, a reply_to) are counted in bytes, not characters.
    if len(result.encode("utf-8", "surrogatepass")) > MAX_ID_LENGTH or not result.isprintable():
        raise ProtocolError(
            f"field {field!r} must be printable and at most {MAX_ID_LENGTH} bytes of UTF-8"
        )
    return result


def task_name(value: Any, field: str = "task") -> str:
    """Return a valid task name: ``TASK_NAME_PATTERN``, no ``..``, no trailing dot."""
    name = text(value, field)
    if name is None:
        raise ProtocolError(f"field {field!r} (the task name) is missing")
    if not TASK_NAME_PATTERN.fullmatch(name) or ".." in name or name.endswith("."):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidTaskName(f"field {field!r} is not a valid task name: {shown!r}", shown)
    return name


def integer(value: Any, field: str, *, maximum: int = _MAX_INT) -> int | None:
    """Return an int in ``0..maximum`` (bools refused), or None for None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ProtocolError(f"field {field!r} must be an integer from 0 to {maximum}")
    return value


def flag(value: Any, field: str) -> bool | None:
    """Return a bool, or None for None."""
    if value is None or isinstance(value, bool):
        return value
    raise ProtocolError(f"field {field!r} must be a boolean, got {type(value).__name__}")


def moment(value: Any, field: str) -> datetime | None:
    """Return an aware UTC datetime from an ISO 8601 string or a datetime; None for None.

    A naive value is taken as UTC: a Celery 5 worker reads it so whatever the message's
    ``utc`` flag says (``maybe_make_aware(value, naive_as_utc=True)``).
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | str):
        raw = text(value, field) or ""
        if len(raw) > _MAX_ISO_LENGTH:
            raise ProtocolError(f"field {field!r} is not an ISO 8601 date-time")
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise ProtocolError(f"field {field!r} is not an ISO 8601 date-time: {raw!r}") from None
    if not isinstance(value, datetime):
        raise ProtocolError(f"field {field!r} must be an ISO 8601 string")
    moment: datetime = value
    try:
        if moment.tzinfo is None or moment.utcoffset() is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        raise ProtocolError(f"field {field!r} is out of range") from None


def time_limits(value: Any, field: str = "timelimit") -> tuple[float | None, float | None]:
    """Return ``(hard, soft)`` seconds from Celery's ``[time_limit, soft_time_limit]``.

    Celery treats a falsy limit as "not set", so ``0`` becomes None.
    """
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ProtocolError(f"field {field!r} must be a [hard, soft] pair")
    hard, soft = (_seconds(item, field) for item in value)
    return hard, soft


def _seconds(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_TIME_LIMIT
    ):
        raise ProtocolError(f"field {field!r} must hold seconds from 0 to {_MAX_TIME_LIMIT}")
    return float(value) or None


def args_list(value: Any, field: str = "args") -> list[Any]:
    """Return positional arguments as a list (a tuple is accepted)."""
    if not isinstance(value, list | tuple):
        raise ProtocolError(f"field {field!r} must be a list, got {type(value).__name__}")
    return list(value)


def kwargs_dict(value: Any, field: str = "kwargs") -> dict[str, Any]:
    """Return keyword arguments: a mapping whose keys are all strings."""
    if not isinstance(value, Mapping):
        raise ProtocolError(f"field {field!r} must be a mapping, got {type(value).__name__}")
    if not all(isinstance(key, str) for key in value):
        raise ProtocolError(f"field {field!r} must have string keys only")
    return dict(value)


def signature(value: Any, field: str) -> dict[str, Any]:
    """Return a serialized Celery signature (a dict with a valid ``task``), shape-checked.

    Only the top level is checked (``task``, ``args``, ``kwargs``, ``options``,
    ``subtask_type``, ``immutable``); nested canvas parts are left to Celery's own code.
    """
    if not isinstance(value, Mapping):
        raise ProtocolError(f"field {field!r} must hold signature mappings")
    sig = kwargs_dict(value, field)
    task_name(sig.get("task"), f"{field}.task")
    if "args" in sig:
        args_list(sig["args"], f"{field}.args")
    for key in ("kwargs", "options"):
        if key in sig:
            kwargs_dict(sig[key], f"{field}.{key}")
    text(sig.get("subtask_type"), f"{field}.subtask_type")
    flag(sig.get("immutable"), f"{field}.immutable")
    return sig


def signatures(value: Any, field: str) -> list[dict[str, Any]] | None:
    """Return a list of signatures (``callbacks``, ``errbacks``, ``chain``), or None."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ProtocolError(f"field {field!r} must be a list of signatures")
    return [signature(item, f"{field}[{index}]") for index, item in enumerate(value)]


def optional_signature(value: Any, field: str) -> dict[str, Any] | None:
    """Return one signature (``chord``), or None."""
    return None if value is None else signature(value, field)
