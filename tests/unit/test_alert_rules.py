"""ops/prometheus/alerts.yml is valid PromQL that names only series and labels ``GET /metrics``
serves (promql-parser is the Rust parser Prometheus-compatible tools use)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nagatha.api.metrics import MetricsCollector
from nagatha.config import FrameworkConfig
from nagatha.hub import create_hub
from nagatha.worker import start_worker

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "alerts.yml"
SELECTOR = re.compile(r"\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    """Each series name ``/metrics`` serves after a task ran, with its label names."""
    config = FrameworkConfig.model_validate(
        {"broker": {"url": "memory://"}, "results": {"url": "memory://"}}
    )
    hub = create_hub(config)
    worker = start_worker(hub.broker, threads=1)
    try:
        assert hub.wait_for(hub.run_task("diagnostics.add", x=1, y=2), 10).status.final
        # Queues as RabbitMQ reports them (the embedded broker knows no consumers).
        collector = MetricsCollector(hub, config, queue_probe=lambda qs: {q: (0, 1) for q in qs})
        text = collector.render(None)[0].decode()
    finally:
        worker.stop(timeout=1000)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_each_alert_uses_served_series_and_labels(
    rule: dict[str, Any], served: dict[str, set[str]]
) -> None:
    assert rule["for"] and rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"]
    expr = rule["expr"]
    promql_parser.parse(expr)  # raises ValueError on a syntax error
    series = set(re.findall(r"\bnagatha_\w+", expr))
    assert series and series <= set(served), series - set(served)
    labels = set().union(*(served[name] for name in series))
    used = {name for part in SELECTOR.findall(expr) for name in MATCHER.findall(part)}
    used |= {name.strip() for part in GROUPING.findall(expr) for name in part.split(",")}
    assert used <= labels, used - labels
