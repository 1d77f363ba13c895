"""The OpenAPI 3.1 document of the API, generated from the route table and pydantic models.

Nothing here is written by hand twice: paths, methods, parameters and statuses come from
:func:`nagatha.api.routes.build_routes`, the statuses every route shares from
:func:`nagatha.api.routes.common_replies` (401 only where :class:`~nagatha.api.auth.TokenAuth`
protects the path), and every body schema from the pydantic model that serializes it. A test
compares the document with Falcon's router and with the statuses a live server answers.

Not listed: Falcon's automatic answers for methods a route does not serve (405, and OPTIONS
with an ``Allow`` header).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from nagatha.api.routes import Reply, Route, common_replies

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerToken"


def _models(
    routes: Iterable[Route], protects: Callable[[str], bool]
) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in routes:
        for operation in route.operations:
            if operation.body is not None:
                found[(operation.body, "validation")] = None
            replies = {**common_replies(protects(route.path)), **operation.replies}
            for reply in replies.values():
                if reply.model is not None:
                    found[(reply.model, "serialization")] = None
    return list(found)


def build_openapi(
    routes: Iterable[Route],
    *,
    protects: Callable[[str], bool],
    version: str,
    max_body_bytes: int,
) -> dict[str, Any]:
    """Return the OpenAPI document for ``routes`` (``protects(path)``: needs a bearer token)."""
    routes = tuple(routes)
    refs, schemas = models_json_schema(_models(routes, protects), ref_template=REF_TEMPLATE)
    paths: dict[str, Any] = {}
    for route in routes:
        protected = protects(route.path)
        item = paths.setdefault(route.openapi_path, {})
        for operation in route.operations:
            replies = {**common_replies(protected), **operation.replies}
            spec: dict[str, Any] = {
                "operationId": operation.operation_id,
                "summary": operation.summary,
                "responses": {
                    str(status): _response(reply, refs, body=operation.method != "HEAD")
                    for status, reply in sorted(replies.items())
                },
                "security": [{SECURITY_SCHEME: []}] if protected else [],
            }
            if operation.parameters:
                spec["parameters"] = [
                    {
                        "name": p.name,
                        "in": p.location,
                        "required": p.required,
                        "description": p.description,
                        "schema": dict(p.schema),
                    }
                    for p in operation.parameters
                ]
            if operation.body is not None:
                spec["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": refs[(operation.body, "validation")]}
                    },
                }
            item[operation.method.lower()] = spec
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "nagatha",
            "version": version,
            "description": (
                "The nagatha task hub: start tasks of plug-in modules by name and follow them. "
                "Every error has the body `{title, description, request_id}`. A body over "
                f"{max_body_bytes} bytes is refused with 413 on any route."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {SECURITY_SCHEME: {"type": "http", "scheme": "bearer"}},
        },
    }


def _response(reply: Reply, refs: Mapping[Any, Any], *, body: bool) -> dict[str, Any]:
    """One documented response; a HEAD response has the status and headers only."""
    response: dict[str, Any] = {"description": reply.description}
    if body and reply.model is None:
        response["content"] = {kind: {"schema": {"type": "string"}} for kind in reply.media_types}
    elif body:
        schema = refs[(reply.model, "serialization")]
        response["content"] = {"application/json": {"schema": schema}}
    return response
