"""Property-based run against the live API: no 500, and only documented statuses and bodies.

Hypothesis generates requests for every operation of ``/openapi.json`` (valid, half-valid and
garbage bodies, odd ids, odd ``wait`` values, good, bad and missing tokens) and sends them to
a real gunicorn server on RabbitMQ and Redis. Every answer must be a status the document lists
for that operation, with a body that validates against the documented schema.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nagatha.testing import HubProcess, free_port

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token"
LIMIT = 256
KNOWN_TASKS = ["diagnostics.add", "diagnostics.noop", "echo_bot.echo", "diagnostics.fail"]

#: Text, sometimes a lone surrogate: valid JSON ("\ud800") that is not valid Unicode.
texts = st.text(max_size=20) | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
kwargs = st.dictionaries(
    st.sampled_from(["x", "y", "message", "zz"]) | texts, json_values, max_size=4
)
run_bodies = st.one_of(
    st.fixed_dictionaries(
        {"task_name": st.sampled_from(KNOWN_TASKS) | texts, "kwargs": kwargs},
        optional={"delay_ms": st.integers(min_value=-5, max_value=10**10) | json_values},
    ).map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.binary(min_size=LIMIT + 1, max_size=2 * LIMIT),
)
GOOD = {"Authorization": f"Bearer {TOKEN}"}
BAD = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Zm9vOmJhcg=="}]
headers = st.sampled_from([GOOD] * 8 + BAD + [{"Authorization": "Bearer"}])
ids = st.text(min_size=1, max_size=80).map(lambda text: quote(text, safe="").replace(".", "%2E"))
waits = st.none() | st.text(max_size=8) | st.floats(min_value=-2, max_value=3).map(str)
simple_paths = st.sampled_from(
    ["/ping", "/health", "/modules", "/tasks", "/failures", "/metrics", "/openapi.json"]
)


def run_request(body: Any) -> tuple[str, str, str, dict[str, Any], bytes]:
    """A ``POST /tasks/run`` of ``body`` as JSON (for explicit examples)."""
    return "post", "/tasks/run", "/tasks/run", {}, json.dumps(body).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any], bytes | None]:
    """(method, path template, URL, query, body) for one operation of the API."""
    kind = draw(st.sampled_from(["run", "run", "status", "alias", "simple"]))
    if kind == "run":
        return "post", "/tasks/run", "/tasks/run", {}, draw(run_bodies)
    if kind == "simple":
        path = draw(simple_paths)
        return "get", path, path, {}, None
    prefix = "/tasks" if kind == "status" else "/status"
    wait = draw(waits)
    query = {} if wait is None else {"wait": wait}
    return "get", f"{prefix}/{{task_id}}", f"{prefix}/{draw(ids)}", query, None


@pytest.fixture
def live_api(hub_env: dict[str, str], start_process: type[HubProcess]) -> str:
    env = {
        **hub_env,
        "NAGATHA_API_TOKENS": TOKEN,
        "NAGATHA_API_MAX_WAIT": "1",
        "NAGATHA_API_MAX_BODY_BYTES": str(LIMIT),
    }
    port = free_port()
    process = start_process(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--threads", "4"],
        env,
    )
    base_url = f"http://127.0.0.1:{port}"
    process.wait_for_ping(base_url)
    return base_url


def test_no_generated_request_gets_a_500_or_an_undocumented_answer(live_api: str) -> None:
    with httpx.Client(base_url=live_api, timeout=30) as client:
        doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        seen: Counter[tuple[str, str, int]] = Counter()

        @settings(
            max_examples=100,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(request=requests(), auth=headers)
        @example(
            request=run_request({"task_name": "echo_bot.echo", "kwargs": {"message": "hi"}}),
            auth=GOOD,
        )
        @example(
            request=run_request({"task_name": "diagnostics.add", "kwargs": {"x": 1}}), auth=GOOD
        )
        @example(request=run_request({"task_name": "x" * LIMIT}), auth=GOOD)
        @example(request=("post", "/tasks/run", "/tasks/run", {}, b"{"), auth=GOOD)
        @example(
            request=("get", "/tasks/{task_id}", "/tasks/none", {"wait": "0.2"}, None), auth=GOOD
        )
        @example(request=("get", "/ping", "/ping", {}, None), auth={})
        @example(request=("get", "/tasks", "/tasks", {}, None), auth={})
        def check(
            request: tuple[str, str, str, dict[str, Any], bytes | None], auth: dict[str, str]
        ) -> None:
            method, template, url, query, body = request
            response = client.request(method.upper(), url, params=query, content=body, headers=auth)
            seen[(method, template, response.status_code)] += 1
            assert response.status_code != 500, (url, query, body, response.text)
            responses = doc["paths"][template][method]["responses"]
            assert str(response.status_code) in responses, (url, query, response.text)
            content = responses[str(response.status_code)]["content"]
            if "application/json" not in content:  # /metrics: Prometheus text
                assert response.headers["content-type"].split(";")[0] in content
                return
            schema = content["application/json"]["schema"]
            jsonschema.validate(response.json(), {**schema, "components": doc["components"]})

        check()
    statuses = {status for (_, _, status) in seen}
    assert {200, 202, 400, 401, 404, 413, 422} <= statuses, seen  # the examples ensure these
