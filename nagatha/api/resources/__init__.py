"""Falcon resources, one per concern, free of business logic (the registry has it).

Each takes its collaborators in ``__init__`` and answers with a pydantic model of
:mod:`nagatha.types` or :mod:`nagatha.api.schemas` through :func:`send`.
"""

from __future__ import annotations

import falcon
from pydantic import BaseModel


def send(resp: falcon.Response, body: BaseModel, status: int = 200) -> None:
    """Answer ``body`` as its JSON form (``model_dump(mode="json")``) with ``status``."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body.model_dump_json().encode("utf-8")
