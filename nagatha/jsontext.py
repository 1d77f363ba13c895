"""Strict JSON for values from outside (HTTP bodies, CLI arguments).

What passes is what the hub can store and answer back unchanged: no ``NaN``/``Infinity``
(not JSON), no number beyond float range (``1e400`` would become ``Infinity``), nesting no
deeper than :data:`MAX_DEPTH` (the status store's serializer gives up past ~250 levels; the
bridge uses the same bound for Celery bodies) and no lone surrogate (``"\\ud800"`` is valid
JSON syntax but no Unicode text: it could not be encoded as UTF-8 on the way out).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

MAX_DEPTH = 200


class JsonTextError(ValueError):
    """Text that is not strict JSON, or a value the hub cannot keep; ``str()`` says why.

    The reason reads after a subject: "<the request body> is not valid JSON: ...".
    """


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def loads(text: str | bytes) -> Any:
    """Parse ``text`` strictly and :func:`check` the value; raise :class:`JsonTextError`."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "too deep"
        raise JsonTextError(f"is not valid JSON: {reason[:200]}") from None
    check(value)
    return value


def check(value: Any) -> None:
    """Raise :class:`JsonTextError` if ``value`` (plain JSON data) nests too deep, holds NaN
    or Infinity, or holds a lone surrogate."""
    if too_deep(value):
        raise JsonTextError(f"nests deeper than {MAX_DEPTH} levels")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise JsonTextError("holds NaN or Infinity, which JSON has not") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonTextError("holds a string that is not valid Unicode (a lone surrogate)") from None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if ``value`` nests arrays/objects more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
