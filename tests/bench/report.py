"""Scenario results: per-round figures in, summaries, paired ratios, JSON and Markdown out.

A ratio is computed round by round (contenders alternate within a round, so both sides of a
pair saw the same machine load) and then summarized like any figure: median and min-max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness import summary


@dataclass(frozen=True)
class Ratio:
    """``figure`` of ``numerator`` divided by the same figure of ``denominator``."""

    figure: str
    numerator: str
    denominator: str
    #: The target, e.g. ``(">=", 2.0)``; ``None`` when the ratio is informative only.
    target: tuple[str, float] | None = None

    @property
    def name(self) -> str:
        return f"{self.figure}: {self.numerator} / {self.denominator}"


@dataclass
class Scenario:
    """Everything one scenario measured."""

    key: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    contenders: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ratio_specs: list[Ratio] = field(default_factory=list)

    def add(self, contender: str, figures: dict[str, float]) -> None:
        """Record one round's figures of ``contender``."""
        target = self.runs.setdefault(contender, {})
        for name, value in figures.items():
            target.setdefault(name, []).append(float(value))

    def skip(self, contender: str, reason: str) -> None:
        self.skipped[contender] = reason
        print(f"  {self.key}/{contender}: skipped: {reason}", flush=True)

    def ratios(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in self.ratio_specs:
            num = self.runs.get(spec.numerator, {}).get(spec.figure, [])
            den = self.runs.get(spec.denominator, {}).get(spec.figure, [])
            pairs = [a / b for a, b in zip(num, den, strict=False) if b and a == a and b == b]
            if not pairs:
                continue
            entry = summary(pairs)
            if spec.target is not None:
                op, bound = spec.target
                value = entry["median"]
                entry["target"] = f"{op} {bound:g}"
                entry["met"] = value >= bound if op == ">=" else value <= bound
            out[spec.name] = entry
        return out

    def to_json(self) -> dict[str, Any]:
        figures = {
            contender: {name: summary(values) for name, values in figs.items()}
            for contender, figs in self.runs.items()
        }
        ratios = self.ratios()
        return {
            "title": self.title,
            "params": self.params,
            "contenders": self.contenders,
            "figures": figures,
            "memory": self.memory,
            "ratios": ratios,
            "skipped": self.skipped,
            "notes": self.notes,
        }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.3f}"
    return str(value)


def _range(entry: dict[str, Any]) -> str:
    if entry.get("min") is None:
        return ""
    return f"{_fmt(entry['min'])}–{_fmt(entry['max'])}"


def markdown(results: dict[str, Any]) -> str:
    """The Markdown table of a whole run (figures, ratios, memory, skips)."""
    meta = results["meta"]
    lines = [
        f"## nagatha benchmark ({'quick' if meta['quick'] else 'full'}, {meta['started_at']})",
        "",
        f"{meta['machine']['cpu_count']} cores ({meta['machine']['cpu_model']}), "
        f"{meta['machine']['mem_gib']} GiB, load before run {meta['machine']['loadavg_before']}; "
        f"{meta['rounds']} rounds per scenario, contenders alternating.",
        "",
        "| scenario | contender | figure | median | min–max |",
        "|---|---|---|---:|---:|",
    ]
    for key in ("ceiling", "http_e2e", "latency", "worker", "bridge"):
        scenario = results.get(key)
        if not scenario:
            continue
        for contender, figs in scenario["figures"].items():
            for name, entry in figs.items():
                lines.append(
                    f"| {key} | {contender} | {name} | {_fmt(entry['median'])} | {_range(entry)} |"
                )
        for name, entry in scenario["ratios"].items():
            target = ""
            if "target" in entry:
                target = f" (target {entry['target']}: {'met' if entry['met'] else 'MISSED'})"
            lines.append(
                f"| {key} | ratio | {name}{target} | {_fmt(entry['median'])} | {_range(entry)} |"
            )
        for contender, mem in scenario["memory"].items():
            lines.append(
                f"| {key} | {contender} | peak RSS MiB (sum of {mem['processes']} processes) "
                f"| {_fmt(mem['peak_rss_mb_sum'])} | max one {_fmt(mem['peak_rss_mb_max'])} |"
            )
        for contender, reason in scenario["skipped"].items():
            lines.append(f"| {key} | {contender} | skipped: {reason} | | |")
    return "\n".join(lines)
