"""``GET /ui`` (the dashboard page) and ``GET /stats`` (the JSON it reads), in process.

The page is checked statically: every path its script calls is a route of the API, its
policy allows exactly its own inline script and style, and it never writes HTML from data.
A browser (Chromium, when installed) loads it from an embedded hub (no services: this is
no integration test, and only such a tool can be missing here).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from falcon.testing import TestClient

from nagatha.api import create_app
from nagatha.api.resources.dashboard import _hashes
from nagatha.api.routes import build_routes
from nagatha.config import FrameworkConfig
from nagatha.hub import create_hub
from nagatha.monitoring import StateReader
from nagatha.testing import HubProcess, wait_until

TOKEN = "dash-token-1"


def client(**api: object) -> TestClient:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}, "api": api}
    )
    return TestClient(create_app(config))


def page_and_policy() -> tuple[str, str]:
    result = client(tokens=[TOKEN]).simulate_get("/ui")  # no token: the page holds no data
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/html; charset=utf-8"
    assert result.headers["x-content-type-options"] == "nosniff"
    assert result.headers["x-frame-options"] == "DENY"
    return result.text, result.headers["content-security-policy"]


def inline(page: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)


def sha(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


def test_the_policy_allows_the_pages_own_script_and_style_and_nothing_else() -> None:
    page, policy = page_and_policy()
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == " ".join(sha(block) for block in inline(page, "script"))
    assert directives["style-src"] == " ".join(sha(block) for block in inline(page, "style"))
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert len(inline(page, "script")) == 1 and "<script src" not in page


def test_the_script_calls_only_routes_of_the_api_by_relative_paths() -> None:
    page, _ = page_and_policy()
    script = inline(page, "script")[0]
    called = set(re.findall(r'(?:call|settle)\("([^"]+)"', script))
    assert called == {"ping", "health", "workers", "stats", "failures?limit=20", "tasks/rerun"}
    paths = {route.path for route in build_routes(FrameworkConfig().api)}
    for path in called:
        assert "/" + path.split("?")[0] in paths


def test_the_script_never_turns_data_into_html() -> None:
    script = inline(page_and_policy()[0], "script")[0]
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.skipif(shutil.which("node") is None, reason="no Node.js to parse the script")
def test_the_script_parses(tmp_path: Path) -> None:
    source = tmp_path / "dashboard.js"
    source.write_text(inline(page_and_policy()[0], "script")[0], encoding="utf-8")
    checked = subprocess.run(
        ["node", "--check", str(source)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


def test_stats_answers_what_nagatha_stats_json_prints() -> None:
    config = FrameworkConfig.model_validate(
        {
            "broker": {"url": "memory://"},
            "results": {"url": "memory://"},
            "api": {"tokens": [TOKEN]},
        }
    )
    registry = create_hub(config)
    test_client = TestClient(create_app(config, registry))
    assert test_client.simulate_get("/stats").status_code == 401
    result = test_client.simulate_get("/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert result.status_code == 200
    assert result.headers["cache-control"] == "no-store"
    body, expected = result.json, StateReader(registry, config).read().document()
    for check in (*expected["checks"].values(), *body["checks"].values()):
        check.pop("latency_ms")
    assert body == expected
    rows = {row["task"]: row for row in body["tasks"]}
    assert rows["diagnostics.add"]["submitted"] == 0 and rows["diagnostics.add"]["runs"] == 0
    assert "default" in {row["queue"] for row in body["queues"]}
    assert body["checks"]["store"]["status"] == "ok"


def test_uptime_checks_may_send_head() -> None:
    result = client(tokens=[TOKEN]).simulate_head("/ui")
    assert result.status_code == 200 and result.text == ""


def test_a_script_the_policy_would_not_cover_stops_the_start() -> None:
    with pytest.raises(RuntimeError, match="inline, without attributes"):
        _hashes("<script>a()</script><script type=module>b()</script>", "script")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no Chromium to load the page in")
def test_the_dashboard_shows_the_hub_in_a_browser(
    embedded: tuple[HubProcess, httpx.Client], tmp_path: Path
) -> None:
    process, client = embedded
    hostile = "<img src=x onerror=alert(1)>"
    failed = client.post(
        "/tasks/run", json={"task_name": "diagnostics.fail", "kwargs": {"message": hostile}}
    ).json()["task_id"]
    assert client.get(f"/tasks/{failed}", params={"wait": 20}).json()["status"] == "failure"
    wait_until(lambda: client.get("/workers").json()["workers"], 30, message="announced")
    browser = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            f"{client.base_url}/ui",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = browser.stdout
    assert f"{socket.gethostname()}:{process.pid}" in dom  # the workers table, filled
    assert failed in dom and "DiagnosticFailure: &lt;img src=x" in dom  # shown as text
    assert "<img" not in dom
    assert "Content Security Policy" not in browser.stderr, browser.stderr[-2000:]
    assert "Uncaught" not in browser.stderr, browser.stderr[-2000:]
