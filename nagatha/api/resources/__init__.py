"""Falcon resources, one per concern, free of business logic (the registry has it).

Each takes its collaborators in ``__init__`` and answers with a pydantic model of
:mod:`nagatha.types` or :mod:`nagatha.api.schemas` through :func:`send`.
"""

from __future__ import annotations

import json

import falcon
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError


def send(resp: falcon.Response, body: BaseModel, status: int = 200) -> None:
    """Answer ``body`` as its JSON form (``model_dump(mode="json")``) with ``status``."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    try:
        resp.data = body.model_dump_json().encode("utf-8")
    except PydanticSerializationError:
        # NOTE: a string no UTF-8 can hold (a lone surrogate a task returned or a Celery
        # client sent) still goes out, as a JSON \u escape.
        resp.data = json.dumps(body.model_dump(mode="json"), separators=(",", ":")).encode()
