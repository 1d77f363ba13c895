"""Bearer-token authentication and the exposure rule of ``nagatha serve``."""

from __future__ import annotations

from typing import Any

import pytest
from falcon.testing import TestClient

from nagatha.api import create_app
from nagatha.api.auth import TokenAuth, bearer_token
from nagatha.api.server import check_exposure, embedded_config, is_loopback
from nagatha.config import FrameworkConfig
from nagatha.errors import ConfigError
from nagatha.hub import create_hub

TOKENS = ["first-token", "zweites-Tökén"]


def config(**api: Any) -> FrameworkConfig:
    return FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}, "api": api}
    )


@pytest.fixture
def client() -> TestClient:
    cfg = config(tokens=TOKENS)
    return TestClient(create_app(cfg, create_hub(cfg)))


def bearer(token: str) -> dict[str, str]:
    # WSGI carries header values as latin-1 text: send UTF-8 bytes as a real client does.
    return {"Authorization": f"Bearer {token}".encode().decode("latin-1")}


@pytest.mark.parametrize("path", ["/tasks", "/modules", "/tasks/some-id", "/openapi.json"])
def test_protected_paths_need_a_token(client: TestClient, path: str) -> None:
    result = client.simulate_get(path)
    assert result.status_code == 401
    assert result.headers["www-authenticate"].startswith("Bearer")
    assert set(result.json) >= {"title", "description", "request_id"}


def test_a_wrong_token_is_401_and_a_configured_one_passes(client: TestClient) -> None:
    assert client.simulate_get("/tasks", headers=bearer("first-token-x")).status_code == 401
    assert client.simulate_get("/tasks", headers=bearer("first-toke")).status_code == 401
    assert client.simulate_get("/tasks", headers={"Authorization": "Basic Zm9v"}).status_code == 401
    assert client.simulate_get("/tasks", headers=bearer("first-token")).status_code == 200
    assert client.simulate_get("/tasks", headers=bearer(TOKENS[1])).status_code == 200
    lower = {"Authorization": "bearer first-token"}
    assert client.simulate_get("/tasks", headers=lower).status_code == 200


def test_a_post_without_token_is_401_before_the_body_is_read(client: TestClient) -> None:
    result = client.simulate_post("/tasks/run", body=b"x" * 5_000_000)
    assert result.status_code == 401


def test_ping_and_health_are_public_by_default(client: TestClient) -> None:
    assert client.simulate_get("/ping").status_code == 200
    assert client.simulate_get("/health").status_code == 200


def test_health_needs_a_token_when_not_public() -> None:
    cfg = config(tokens=TOKENS, health_public=False)
    app = create_app(cfg, create_hub(cfg))
    client = TestClient(app)
    assert client.simulate_get("/health").status_code == 401
    assert client.simulate_get("/health", headers=bearer("first-token")).status_code == 200
    assert client.simulate_get("/ping").status_code == 200


def test_without_tokens_everything_is_open() -> None:
    auth = TokenAuth([])
    assert not auth.enabled
    assert not auth.protects("/tasks/run")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Token abc", None),
        ("Bearer abc", "abc"),
        ("  BEARER   abc  ", "abc"),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_without_tokens_is_refused_unless_anonymous_is_allowed() -> None:
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without tokens"):
        check_exposure(config(host="0.0.0.0"))
    check_exposure(config(host="0.0.0.0", tokens=["t"]))
    check_exposure(config(host="0.0.0.0", allow_anonymous=True))
    check_exposure(config(host="127.0.0.1"))


def test_embedded_config_rules() -> None:
    rabbit = FrameworkConfig()
    assert embedded_config(rabbit, forced=False) is None
    forced = embedded_config(rabbit, forced=True)
    assert forced is not None and forced.embedded and forced.results.url == "memory://"
    memory_broker = FrameworkConfig.model_validate({"broker": {"url": "memory://"}})
    assert embedded_config(memory_broker, forced=False) is memory_broker
