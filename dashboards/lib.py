"""Panel constructors and the board model, emitting Grafana's classic (v1) dashboard JSON.

Plain dicts in the shape of Grafana 11.2's schema (checked field by field against
``grafana-foundation-sdk`` by the tests). Rules of truthfulness applied here, once:
- a threshold set starts with the colour of the *good* end: green when high is bad, red when low is
  bad; a value with no good or bad direction is drawn in a neutral fixed colour;
- stats query a range, so their sparkline has points to draw; gauges and tables read one instant;
- units are Grafana unit ids (``suffix:``/``count:``/``currency:`` forms for custom ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alerts.promql import histogram_quantile

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "row", "alertlist"}
GREEN, ORANGE, RED, NEUTRAL = "green", "orange", "red", "blue"
RI = "$__rate_interval"
TAG = "llm-observer"
# Currencies Grafana has a unit id for (valueFormats/categories.ts); any other uses `currency:<CODE>`.
BUILTIN_CURRENCIES = {
    "USD", "GBP", "EUR", "JPY", "RUB", "UAH", "BRL", "DKK", "ISK", "NOK", "SEK", "CZK", "CHF", "PLN",
    "BTC", "ZAR", "INR", "KRW", "IDR", "PHP", "VND", "TRY", "MYR", "XPF", "BGN", "PYG", "UYU", "ILS",
}  # fmt: skip


def currency_unit(code: str) -> str:
    return f"currency{code}" if code in BUILTIN_CURRENCIES else f"currency:{code}"


@dataclass
class Q:
    """One query: PromQL, legend, and whether it is read at one instant (gauge/table)."""

    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"  # time_series | table | heatmap


@dataclass
class Panel:
    kind: str  # timeseries | stat | gauge | bargauge | table | heatmap | text | alertlist
    title: str
    description: str
    unit: str = "none"
    queries: list[Q] = field(default_factory=list)
    w: int = 12
    h: int = 8
    # Steps above the base colour, ascending: (value, colour).
    thresholds: list[tuple[float, str]] | None = None
    # Which end is bad: "high" (base green), "low" (base red), or None (neutral, no colouring).
    bad: str | None = "high"
    threshold_lines: bool = False  # draw thresholds as lines on time series
    min: float | None = None
    max: float | None = None
    stack: bool = False
    content: str = ""  # text panels (markdown)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # panel-specific extras (alertlist)
    # Why a panel may legitimately show no data in a healthy demo (checked by the tests).
    may_be_empty: str | None = None

    @property
    def base(self) -> str:
        if self.thresholds is None or self.bad is None:
            return NEUTRAL
        return GREEN if self.bad == "high" else RED

    def steps(self) -> list[dict[str, Any]]:
        return [{"color": self.base, "value": None}] + [
            {"color": color, "value": value} for value, color in (self.thresholds or [])
        ]


@dataclass
class Row:
    title: str
    panels: list[Panel]


# --- constructors -----------------------------------------------------------------------------------


def stat(
    title: str, description: str, unit: str, expr: str, legend: str = "", w: int = 4, h: int = 4, **kw: Any
) -> Panel:
    """A single value with its sparkline (a range query, reduced to its last value)."""
    return Panel("stat", title, description, unit, [Q(expr, legend)], w=w, h=h, **kw)


def gauge(title: str, description: str, unit: str, expr: str, legend: str = "", **kw: Any) -> Panel:
    return Panel("gauge", title, description, unit, [Q(expr, legend, instant=True)], **kw)


def timeseries(title: str, description: str, unit: str, queries: list[Q], **kw: Any) -> Panel:
    return Panel("timeseries", title, description, unit, queries, **kw)


def percentiles(
    title: str,
    description: str,
    metric: str,
    selector: str,
    qs: tuple[float, ...] = (0.5, 0.95, 0.99),
    **kw: Any,
) -> Panel:
    """Quantiles of a latency histogram, built by the same helper as the recording rules."""
    queries = [Q(histogram_quantile(q, metric, selector, RI), f"p{round(q * 100)}") for q in qs]
    return timeseries(title, description, "s", queries, **kw)


def column(name: str, unit: str, **props: Any) -> dict[str, Any]:
    """A table column override: its unit and any other field property (links, thresholds...)."""
    properties = [{"id": "unit", "value": unit}] + [{"id": k, "value": v} for k, v in props.items()]
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


def board_links() -> list[dict[str, Any]]:
    """Links to every board of the project (by tag), keeping the time range and variables."""
    return [
        {
            "type": "dashboards",
            "tags": [TAG],
            "asDropdown": False,
            "includeVars": True,
            "keepTime": True,
            "title": "LLM Observer",
            "icon": "external link",
            "targetBlank": False,
            "tooltip": "",
            "url": "",
        }
    ]


# --- JSON ---------------------------------------------------------------------------------------------


def _target(q: Q, i: int) -> dict[str, Any]:
    return {
        "datasource": DS,
        "refId": chr(ord("A") + i),
        "expr": q.expr,
        "legendFormat": q.legend or "__auto",
        "range": not q.instant,
        "instant": q.instant,
        "format": q.fmt,
        "editorMode": "code",
    }


def _panel_json(p: Panel, pid: int, grid: dict[str, int], alertmanager_uid: str) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "gridPos": grid,
    }
    if p.kind == "text":
        panel["options"] = {"mode": "markdown", "content": p.content}
        return panel
    if p.kind == "alertlist":
        panel["datasource"] = {"type": "alertmanager", "uid": alertmanager_uid}
        panel["options"] = {
            "viewMode": "list",
            "groupMode": "default",
            "groupBy": [],
            "maxItems": 50,
            "sortOrder": 3,
            "dashboardAlerts": False,
            "alertName": "",
            "alertInstanceLabelFilter": "",
            "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False, "error": True},
            **p.options,
        }
        return panel
    panel["datasource"] = DS
    panel["targets"] = [_target(q, i) for i, q in enumerate(p.queries)]
    defaults: dict[str, Any] = {"unit": p.unit, "mappings": []}
    if p.kind != "heatmap":  # the heatmap ignores standard field options; its unit is yAxis.unit
        defaults["thresholds"] = {"mode": "absolute", "steps": p.steps()}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    coloured = {"mode": "thresholds"} if p.base != NEUTRAL else {"mode": "fixed", "fixedColor": NEUTRAL}
    options: dict[str, Any]
    if p.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineInterpolation": "linear",
            "lineWidth": 1,
            "fillOpacity": 25 if p.stack else 8,
            "gradientMode": "none",
            "showPoints": "never",
            "pointSize": 4,
            "spanNulls": False,
            "axisPlacement": "auto",
            "axisLabel": "",
            "scaleDistribution": {"type": "linear"},
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line+area" if p.threshold_lines else "off"},
            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        }
        options = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    elif p.kind == "stat":
        defaults["color"] = coloured
        ranged = any(not q.instant for q in p.queries)
        options = {
            "reduceOptions": reduce,
            "graphMode": "area" if ranged else "none",
            "colorMode": "value",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        }
    elif p.kind == "gauge":
        defaults["color"] = coloured
        options = {
            "reduceOptions": reduce,
            "showThresholdMarkers": p.base != NEUTRAL,
            "showThresholdLabels": False,
            "orientation": "auto",
            "sizing": "auto",
            "minVizWidth": 75,
            "minVizHeight": 75,
        }
    elif p.kind == "bargauge":
        defaults["color"] = coloured
        options = {
            "reduceOptions": reduce,
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
            "minVizWidth": 8,
            "minVizHeight": 16,
            "maxVizHeight": 300,
        }
    elif p.kind == "table":
        defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True}
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}}
        panel["transformations"] = p.transformations
    elif p.kind == "heatmap":
        defaults.pop("unit")
        defaults["custom"] = {
            "scaleDistribution": {"type": "linear"},
            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        }
        options = {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "scale": "exponential",
                "exponent": 0.5,
                "steps": 64,
            },
            "yAxis": {"axisPlacement": "left", "unit": p.unit},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
            "filterValues": {"le": 1e-9},
        }
    else:
        raise ValueError(f"unknown panel kind {p.kind!r}")
    panel["fieldConfig"] = {"defaults": defaults, "overrides": p.overrides}
    panel["options"] = options
    return panel


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "sort": 1,
        "hide": 0,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "regex": "",
    }


def variables(job: str, instance: str, model: str | None = None) -> list[dict[str, Any]]:
    """Data source, job and instance (and model where the board filters by it) variables."""
    out = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "refresh": 1,
            "hide": 0,
            "current": {},
        },
        _variable("job", "Job", job),
        _variable("instance", "Instance", instance),
    ]
    if model is not None:
        out.append(_variable("model", "Model", model))
    return out


@dataclass
class Board:
    uid: str
    title: str
    description: str
    tags: list[str]
    rows: list[Row]
    templates: list[dict[str, Any]]
    refresh: str = "30s"
    time_from: str = "now-3h"
    alertmanager_uid: str = "alertmanager"

    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r.panels]

    def build(self) -> dict[str, Any]:
        """Rows and panels laid out on the 24-column grid, as the classic dashboard model."""
        panels: list[dict[str, Any]] = []
        y, pid = 0, 1
        for row in self.rows:
            panels.append(
                {
                    "id": pid,
                    "type": "row",
                    "title": row.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            pid, y = pid + 1, y + 1
            x, line_h = 0, 0
            for p in row.panels:
                if x + p.w > 24:
                    x, y, line_h = 0, y + line_h, 0
                panels.append(
                    _panel_json(p, pid, {"h": p.h, "w": p.w, "x": x, "y": y}, self.alertmanager_uid)
                )
                pid, x, line_h = pid + 1, x + p.w, max(line_h, p.h)
            y += line_h
        return {
            "id": None,
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "links": board_links(),
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {"list": self.templates},
            "panels": panels,
        }


# --- selectors shared by the boards ----------------------------------------------------------------------

ENGINE = 'job=~"$job",instance=~"$instance",model=~"$model"'
TARGET = 'job=~"$job",instance=~"$instance"'


def engine_variables() -> list[dict[str, Any]]:
    return variables(
        "label_values(llm_engine_up, job)",
        'label_values(llm_engine_up{job=~"$job"}, instance)',
        'label_values(llm_requests_running{job=~"$job",instance=~"$instance"}, model)',
    )


def business_variables(with_model: bool) -> list[dict[str, Any]]:
    return variables(
        "label_values(llm_active_users, job)",
        'label_values(llm_active_users{job=~"$job"}, instance)',
        "label_values(llm_usage_requests_total, model)" if with_model else None,
    )


def burn_thresholds(windows: list[Any]) -> list[tuple[float, str]]:
    """Burn-rate lines at each pair's factor: red where it pages, orange where it opens a ticket."""
    steps = {w.factor: (RED if w.severity == "critical" else ORANGE) for w in windows}
    return sorted(steps.items())
