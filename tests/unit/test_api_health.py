"""``/health``: probes, the short cache, the deadline, and 503."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from falcon.testing import TestClient

from nagatha.api import create_app
from nagatha.api.health import HealthChecker
from nagatha.broker_probes import probe_rabbitmq
from nagatha.config import BrokerConfig, FrameworkConfig
from nagatha.errors import StoreUnavailable
from nagatha.hub import create_hub
from nagatha.registry import TaskRegistry
from nagatha.testing import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub() -> TaskRegistry:
    return create_hub(
        FrameworkConfig.model_validate(
            {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
        )
    )


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def checker(hub: TaskRegistry, probe: Any, **kwargs: Any) -> HealthChecker:
    return HealthChecker(hub, hub.config, broker_probe=probe, **kwargs)


def test_ready_when_broker_and_store_answer_with_heartbeats(hub: TaskRegistry) -> None:
    app = create_app(hub.config, hub)
    result = TestClient(app).simulate_get("/health")
    assert result.status_code == 200
    body = result.json
    assert body["status"] == "ok"
    assert body["checks"]["broker"]["status"] == "ok"
    assert body["checks"]["store"]["status"] == "ok"
    assert body["modules"]["diagnostics"] == {"status": "ok"}
    assert result.headers["cache-control"] == "no-store"


def test_head_probes_get_the_status_without_a_body(hub: TaskRegistry) -> None:
    app = create_app(hub.config, hub)
    for path in ("/ping", "/health"):
        result = TestClient(app).simulate_head(path)
        assert result.status_code == 200, path
        assert result.content == b""


def test_a_heartbeat_that_is_not_json_is_an_error_entry_not_a_500(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime
    import decimal
    import types

    since = datetime.datetime(2026, 11, 29, tzinfo=datetime.UTC)
    answers = {
        "odd": lambda: {"status": "ok", "since": object()},
        "nan": lambda: {"status": "ok", "load": float("nan")},
        "exits": lambda: exit(3),
        # What the API can answer is answered as it would be: text for these.
        "money": lambda: {"status": "ok", "balance": decimal.Decimal("1.5")},
        "dated": lambda: {"status": "ok", "since": since},
    }
    modules = {name: types.SimpleNamespace(heartbeat=beat) for name, beat in answers.items()}
    monkeypatch.setattr(hub, "_module_objects", modules)
    app = create_app(hub.config, hub)
    result = TestClient(app).simulate_get("/health")
    assert result.status_code == 200
    beats = result.json["modules"]
    assert {name: beat["status"] for name, beat in beats.items()} == {
        "odd": "error",
        "nan": "error",
        "exits": "error",
        "money": "ok",
        "dated": "ok",
    }
    assert "Unable to serialize" in beats["odd"]["error"]
    assert beats["money"]["balance"] == "1.5"
    assert beats["dated"]["since"] == "2026-11-29T00:00:00Z"


def test_a_heartbeat_that_hangs_times_out_alone_and_is_not_started_twice(
    hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    import types

    calls: list[str] = []

    def hangs() -> dict[str, str]:
        calls.append("slow")
        release.wait(30)
        return {"status": "late"}

    monkeypatch.setitem(hub._module_objects, "slow", types.SimpleNamespace(heartbeat=hangs))
    clock = Clock()
    health = checker(hub, lambda: None, timeout=2, clock=clock)  # time for the healthy ones
    try:
        first = health.check()
        assert first.modules["slow"] == {"status": "timeout", "detail": "no answer within 2s"}
        assert first.modules["diagnostics"] == {"status": "ok"} and first.status == "ok"
        clock.now += 60  # past the cache: probed again, the hung heartbeat awaited, not restarted
        assert health.check().modules["slow"]["status"] == "timeout"
        assert calls == ["slow"]
    finally:
        release.set()


def test_a_failing_broker_is_503_with_the_reason(hub: TaskRegistry) -> None:
    def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    health = checker(hub, refused)
    app = create_app(hub.config, hub, health=health)
    result = TestClient(app).simulate_get("/health")
    assert result.status_code == 503
    broker = result.json["checks"]["broker"]
    assert broker["status"] == "unavailable"
    assert "ConnectionRefusedError" in broker["detail"]


def test_a_failing_store_is_503(hub: TaskRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    def down() -> None:
        raise StoreUnavailable("status store (Redis) unavailable: ConnectionError")

    monkeypatch.setattr(hub.store, "ping", down)
    health = checker(hub, lambda: None)
    report = health.check()
    assert report.status == "unavailable"
    assert report.checks["store"].status == "unavailable"


def test_a_hanging_probe_is_reported_timeout_and_not_started_again(
    hub: TaskRegistry, release: threading.Event
) -> None:
    calls: list[int] = []

    def hangs() -> None:
        calls.append(1)
        release.wait(30)

    clock = Clock()
    health = checker(hub, hangs, timeout=2, clock=clock)
    report = health.check()
    assert report.status == "unavailable"
    assert report.checks["broker"].status == "timeout"
    assert report.checks["store"].status == "ok"
    clock.now += 10
    health.check()
    assert calls == [1], "a probe still running is awaited, not started again"
    release.set()


def test_reports_are_cached_briefly(hub: TaskRegistry) -> None:
    calls: list[int] = []
    clock = Clock()
    health = checker(hub, lambda: calls.append(1), cache_seconds=1.5, clock=clock)
    first = health.check()
    clock.now += 1.0
    assert health.check() is first
    clock.now += 1.0
    assert health.check() is not first
    assert len(calls) == 2


def test_probe_rabbitmq_fails_fast_on_a_closed_port() -> None:
    config = BrokerConfig(url=f"amqp://guest:secret-pw@127.0.0.1:{free_port()}/x")
    with pytest.raises(Exception) as caught:
        probe_rabbitmq(config, timeout=1.0)
    assert "secret-pw" not in str(caught.value)


def test_details_never_show_secrets(hub: TaskRegistry) -> None:
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "amqp://u:hunter22@localhost//"}, "results": {"url": "memory://"}}
    )

    def leaky() -> None:
        raise RuntimeError("cannot log in as u:hunter22")

    health = HealthChecker(hub, config, broker_probe=leaky)
    detail = health.check().checks["broker"].detail or ""
    assert "hunter22" not in detail and "****" in detail
