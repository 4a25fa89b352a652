"""The pieces every alert area uses: an alert, its promtool cases, and Prometheus' template
functions re-done in Python so a case's expected annotation is computed, not copied.

An area module (``alerts/engine.py`` ...) defines ``alerts(settings)`` and ``cases(settings, c)``;
``alerts/rules.py`` writes them. Nothing here imports an area, so there is no cycle.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from observer.config import Settings


@dataclass
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = "0m"
    labels: dict[str, str] = field(default_factory=dict)

    def render(self, runbook_base: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{runbook_base}#{self.name.lower()}",
        }
        return rule


# --- Prometheus alert templates (text/template + the humanize functions of Prometheus 2.x) ------------


def go_value(v: float) -> str:
    """``{{ $value }}``: Go prints a float64 in its shortest form."""
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    return repr(float(v))


def humanize_percentage(v: float) -> str:
    return f"{v * 100:.4g}%"


def humanize_duration(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return f"{v:.4g}"
    if v == 0:
        return f"{v:.4g}s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        d = int(v)
        seconds, minutes, hours, days = d % 60, (d // 60) % 60, (d // 3600) % 24, d // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{v:.4g}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return f"{v:.4g}{prefix}s"


_PIPES = {
    "": go_value,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
    'printf "%.2f"': lambda v: f"{v:.2f}",
}


def expand(template: str, labels: dict[str, str], value: float | None = None) -> str:
    """What Prometheus writes for ``template`` given the alert's labels and value."""

    def one(m: re.Match[str]) -> str:
        inner = m.group(1).strip()
        if inner.startswith("$labels."):
            return labels[inner.removeprefix("$labels.")]
        head, _, pipe = inner.partition("|")
        if head.strip() != "$value" or value is None:
            raise ValueError(f"template piece {inner!r} has no Python counterpart here")
        if pipe.strip() not in _PIPES:
            raise ValueError(f"template function {pipe.strip()!r} has no Python counterpart here")
        return _PIPES[pipe.strip()](value)

    return re.sub(r"\{\{(.*?)\}\}", one, template)


# --- promtool cases -----------------------------------------------------------------------------------


def sel(labels: dict[str, str], **extra: str) -> str:
    items = {**labels, **extra}
    return "{" + ",".join(f'{k}="{v}"' for k, v in items.items()) + "}"


def series(name: str, labels: dict[str, str], values: str, **extra: str) -> dict[str, str]:
    return {"series": f"{name}{sel(labels, **extra)}", "values": values}


def hist(name: str, labels: dict[str, str], buckets: dict[str, str], count: str) -> list[dict[str, str]]:
    """A histogram as promtool input: ``buckets`` maps each ``le`` to its values."""
    out = [series(f"{name}_bucket", {**labels, "dp_rank": "0"}, v, le=le) for le, v in buckets.items()]
    out.append(series(f"{name}_count", {**labels, "dp_rank": "0"}, count))
    return out


class Cases:
    """promtool ``alert_rule_test`` cases of one area; expected annotations come from the alerts."""

    def __init__(self, settings: Settings, alerts: list[Alert]) -> None:
        self.settings = settings
        self.alerts = alerts
        self.groups: list[dict[str, Any]] = []

    def add(
        self,
        name: str,
        input_series: list[dict[str, str]],
        checks: list[dict[str, Any]],
        interval: str = "1m",
    ) -> None:
        self.groups.append(
            {"name": name, "interval": interval, "input_series": input_series, "alert_rule_test": checks}
        )

    def fires(
        self,
        alert: str,
        at: str,
        labels: dict[str, str],
        value: float | None = None,
        severity: str | None = None,
    ) -> dict[str, Any]:
        """The alert fires at ``at`` with ``labels`` (plus its severity) and annotations expanded for
        ``value`` exactly as Prometheus would expand them. ``severity`` picks one rule of a name
        that has several (burn-rate pages and tickets)."""
        rules = [a for a in self.alerts if a.name == alert and severity in (None, a.severity)]
        if len(rules) != 1:
            raise ValueError(f"{alert} (severity {severity}): {len(rules)} rules match")
        a = rules[0]
        return {
            "eval_time": at,
            "alertname": alert,
            "exp_alerts": [
                {
                    "exp_labels": {"severity": a.severity, **a.labels, **labels},
                    "exp_annotations": {
                        "summary": a.summary,
                        "description": expand(a.description, labels, value),
                        "runbook_url": f"{self.settings.alerting.runbook_url}#{alert.lower()}",
                    },
                }
            ],
        }

    def after(self, alert: str, margin_min: int) -> int:
        """Minutes from the start at which ``alert`` has waited its ``for`` (overrides included) plus
        ``margin_min``: cases take their evaluation times from here, not from the defaults."""
        from alerts.promql import duration_seconds

        wait = max(duration_seconds(a.for_) for a in self.alerts if a.name == alert)
        return math.ceil(wait / 60) + margin_min

    @staticmethod
    def silent(alert: str, at: str) -> dict[str, Any]:
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def engine_labels(s: Settings) -> dict[str, str]:
    return {"job": s.alerting.engine_job, "instance": "vllm-0:8000", "model": "m"}


def gpu_labels(s: Settings) -> dict[str, str]:
    return {"job": s.alerting.gpu_job, "instance": "node-a:9835", "gpu": "0", "uuid": "GPU-0"}


def observer_labels(s: Settings) -> dict[str, str]:
    return {"job": s.alerting.observer_job, "instance": "observer:4318"}
