"""``/openapi.json`` describes exactly what the Falcon router serves, with valid schemas."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from falcon.testing import TestClient

from nagatha.api import HubApp, create_app
from nagatha.config import FrameworkConfig
from nagatha.hub import create_hub

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def make_app(**api: Any) -> HubApp:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}, "api": api}
    )
    return create_app(config, create_hub(config))


CONVERTER = re.compile(r"\{(\w+):[^}]*\}")  # {task_id:path} is {task_id} in OpenAPI


def router_operations(app: HubApp) -> set[tuple[str, str]]:
    """(path template, METHOD) for every responder a resource defines (not Falcon's defaults)."""
    found: set[tuple[str, str]] = set()

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None:
                for method, responder in node.method_map.items():
                    if getattr(responder, "__self__", None) is node.resource:
                        found.add((CONVERTER.sub(r"{\1}", node.uri_template), method))
            walk(node.children)

    walk(app._router._roots)  # type: ignore[attr-defined]
    return found


def document(app: HubApp) -> dict[str, Any]:
    result = TestClient(app).simulate_get("/openapi.json", headers={"Authorization": "Bearer t"})
    assert result.status_code == 200
    return result.json


def doc_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.mark.parametrize("api", [{}, {"tokens": ["t"]}, {"tokens": ["t"], "health_public": False}])
def test_every_route_and_method_of_the_router_is_documented(api: dict[str, Any]) -> None:
    app = make_app(**api)
    served = router_operations(app)
    assert served == doc_operations(document(app))
    assert {path for path, _ in served} == {
        "/ping",
        "/health",
        "/modules",
        "/tasks",
        "/tasks/run",
        "/tasks/rerun",
        "/tasks/{task_id}",
        "/status/{task_id}",
        "/failures",
        "/workers",
        "/stats",
        "/metrics",
        "/ui",
        "/openapi.json",
    }


def statuses(doc: dict[str, Any], path: str, method: str = "get") -> set[int]:
    return {int(code) for code in doc["paths"][path][method]["responses"]}


def test_documented_statuses_follow_the_auth_policy() -> None:
    open_doc = document(make_app())
    closed = document(make_app(tokens=["t"]))
    assert statuses(open_doc, "/tasks/run", "post") == {202, 400, 404, 411, 413, 422, 500, 503}
    assert statuses(closed, "/tasks/run", "post") == {
        202,
        400,
        401,
        404,
        411,
        413,
        422,
        500,
        503,
    }
    assert statuses(closed, "/tasks/{task_id}") == {200, 400, 401, 404, 413, 500, 503}
    assert 401 not in statuses(closed, "/ping")
    assert 401 not in statuses(closed, "/health")
    assert statuses(closed, "/health") == {200, 413, 500, 503}
    assert 401 in statuses(document(make_app(tokens=["t"], health_public=False)), "/health")
    assert closed["paths"]["/tasks"]["get"]["security"] == [{"bearerToken": []}]
    assert closed["paths"]["/ping"]["get"]["security"] == []


def test_every_ref_resolves_and_the_schemas_are_valid_json_schema() -> None:
    doc = document(make_app(tokens=["t"]))
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in schemas, name
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_wait_parameter_is_bounded_by_max_wait() -> None:
    doc = document(make_app(max_wait=12))
    wait = next(
        p for p in doc["paths"]["/tasks/{task_id}"]["get"]["parameters"] if p["name"] == "wait"
    )
    assert wait["in"] == "query" and wait["schema"]["maximum"] == 12


def test_answers_conform_to_their_documented_schemas() -> None:
    app = make_app()
    client = TestClient(app)
    doc = document(app)
    checks = [
        ("get", "/ping", "/ping", None),
        ("get", "/health", "/health", None),
        ("get", "/modules", "/modules", None),
        ("get", "/tasks", "/tasks", None),
        ("get", "/openapi.json", "/openapi.json", None),
        ("post", "/tasks/run", "/tasks/run", {"task_name": "diagnostics.noop"}),
        ("post", "/tasks/run", "/tasks/run", {"task_name": "no.such"}),
        ("post", "/tasks/run", "/tasks/run", {"task_name": "diagnostics.add"}),
        ("post", "/tasks/run", "/tasks/run", [1]),
        ("get", "/tasks/{task_id}", "/tasks/nope", None),
    ]
    for method, template, path, body in checks:
        result = client.simulate_request(
            method.upper(), path, body=None if body is None else json.dumps(body)
        )
        responses = doc["paths"][template][method]["responses"]
        assert str(result.status_code) in responses, (path, result.status_code)
        ref = responses[str(result.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(result.json, {**ref, "components": doc["components"]})


def test_the_metrics_answers_are_the_documented_text() -> None:
    app = make_app()
    content = document(app)["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    answered = {
        TestClient(app).simulate_get("/metrics", headers=headers).headers["content-type"]
        for headers in ({}, {"Accept": "application/openmetrics-text; version=1.0.0"})
    }
    assert sorted(kind.split(";")[0] for kind in answered) == sorted(content)
    assert all(spec["schema"] == {"type": "string"} for spec in content.values())
