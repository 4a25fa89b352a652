"""Panel helpers over grafanalib that emit the modern Grafana dashboard model.

grafanalib (0.7.1, unmaintained) builds the object tree; its JSON is then modernized:
``schemaVersion`` 39, datasource objects bound to a ``datasource`` variable, no legacy fields
(``rows``, ``style``, ``hideControls``, ``sharedCrosshair``, target ``query``/``step``/
``intervalFactor``...), current option sets for gauge, bar gauge and heatmap, absolute thresholds
drawn from the settings, a unit and a description on every panel, and a stable uid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grafanalib import core as G
from grafanalib._gen import DashboardEncoder

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "row"}
GREEN, ORANGE, RED = "green", "orange", "red"


@dataclass
class Q:
    """One query: PromQL, legend, and whether it is read at one instant (stat/gauge/table)."""

    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"  # time_series | table | heatmap


@dataclass
class Panel:
    kind: str  # timeseries | stat | gauge | bargauge | table | heatmap | text
    title: str
    description: str
    unit: str = "none"
    queries: list[Q] = field(default_factory=list)
    w: int = 12
    h: int = 8
    thresholds: list[tuple[float, str]] | None = None  # (value, color) above the green base
    threshold_lines: bool = False  # draw thresholds as lines on time series
    min: float | None = None
    max: float | None = None
    stack: bool = False
    content: str = ""  # text panels (markdown)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    # Why a panel may legitimately show no data in a healthy demo (checked by the tests).
    may_be_empty: str | None = None


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _grafanalib_panel(p: Panel, grid: G.GridPos, pid: int) -> Any:
    targets = [
        G.Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i), instant=q.instant, format=q.fmt)
        for i, q in enumerate(p.queries)
    ]
    common = {"title": p.title, "description": p.description, "gridPos": grid, "id": pid, "dataSource": DS}
    if p.kind == "timeseries":
        return G.TimeSeries(
            targets=targets,
            unit=p.unit,
            stacking={"mode": "normal"} if p.stack else {},
            fillOpacity=25 if p.stack else 8,
            legendDisplayMode="table",
            legendCalcs=["lastNotNull", "max"],
            tooltipMode="multi",
            **common,
        )
    if p.kind == "stat":
        return G.Stat(targets=targets, format=p.unit, reduceCalc="lastNotNull", **common)
    if p.kind == "gauge":
        return G.GaugePanel(targets=targets, format=p.unit, **common)
    if p.kind == "bargauge":
        return G.BarGauge(targets=targets, format=p.unit, orientation="horizontal", **common)
    if p.kind == "table":
        return G.Table(targets=targets, unit=p.unit, transformations=p.transformations, **common)
    if p.kind == "heatmap":
        return G.Heatmap(targets=targets, **common)
    if p.kind == "text":
        return G.Text(
            content=p.content, mode="markdown", **{k: v for k, v in common.items() if k != "dataSource"}
        )
    raise ValueError(f"unknown panel kind {p.kind!r}")


def _thresholds(p: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": GREEN, "value": None}]
    steps += [{"color": color, "value": value} for value, color in (p.thresholds or [])]
    return {"mode": "absolute", "steps": steps}


def _modern_panel(raw: dict[str, Any], p: Panel) -> dict[str, Any]:
    """Rewrite grafanalib's panel JSON into the current model (fields Grafana 10-12 expect)."""
    panel: dict[str, Any] = {
        "id": raw["id"],
        "type": raw["type"],
        "title": p.title,
        "description": p.description,
        "gridPos": raw["gridPos"],
    }
    if p.kind == "text":
        panel["options"] = {"mode": "markdown", "content": p.content}
        return panel
    panel["datasource"] = DS
    panel["targets"] = [
        {
            "datasource": DS,
            "refId": t["refId"],
            "expr": t["expr"],
            "legendFormat": t.get("legendFormat") or "__auto",
            "range": not q.instant,
            "instant": q.instant,
            "format": q.fmt,
            "editorMode": "code",
        }
        for t, q in zip(raw["targets"], p.queries, strict=True)
    ]
    defaults: dict[str, Any] = {"unit": p.unit, "thresholds": _thresholds(p), "mappings": []}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    options: dict[str, Any]
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if p.kind == "timeseries":
        custom = dict(raw["fieldConfig"]["defaults"]["custom"])
        custom["thresholdsStyle"] = {"mode": "line+area" if p.threshold_lines else "off"}
        custom.pop("axisSoftMin", None)
        custom.pop("axisSoftMax", None)
        defaults["custom"] = custom
        defaults["color"] = {"mode": "palette-classic"}
        options = raw["options"]
    elif p.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {**raw["options"], "reduceOptions": reduce}
    elif p.kind == "gauge":
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "reduceOptions": reduce,
            "showThresholdMarkers": True,
            "showThresholdLabels": False,
            "orientation": "auto",
        }
    elif p.kind == "bargauge":
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "reduceOptions": reduce,
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
        }
    elif p.kind == "table":
        defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True}
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        panel["transformations"] = p.transformations
    elif p.kind == "heatmap":
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
        raise ValueError(p.kind)
    panel["fieldConfig"] = {"defaults": defaults, "overrides": []}
    panel["options"] = options
    return panel


def _variable(name: str, label: str, query: str) -> G.Template:
    return G.Template(
        name=name,
        label=label,
        query=query,
        dataSource=DS,
        includeAll=True,
        multi=True,
        allValue=".+",
        refresh=2,
        sort=1,
    )


def variables(job_query: str, instance_query: str, model_query: str) -> list[G.Template]:
    ds = G.Template(name="datasource", label="Data source", query="prometheus", type="datasource")
    return [
        ds,
        _variable("job", "Job", job_query),
        _variable("instance", "Instance", instance_query),
        _variable("model", "Model", model_query),
    ]


@dataclass
class Board:
    uid: str
    title: str
    description: str
    tags: list[str]
    rows: list[Row]
    templates: list[G.Template]
    refresh: str = "30s"
    time_from: str = "now-3h"

    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r.panels]

    def build(self) -> dict[str, Any]:
        """grafanalib object tree -> JSON -> the modern model, laid out on the 24-column grid."""
        objects: list[Any] = []
        specs: dict[int, Panel] = {}
        y, pid = 0, 1
        for row in self.rows:
            objects.append(G.RowPanel(title=row.title, gridPos=G.GridPos(h=1, w=24, x=0, y=y), id=pid))
            pid += 1
            y += 1
            x, line_h = 0, 0
            for p in row.panels:
                if x + p.w > 24:
                    x, y = 0, y + line_h
                    line_h = 0
                objects.append(_grafanalib_panel(p, G.GridPos(h=p.h, w=p.w, x=x, y=y), pid))
                specs[pid] = p
                pid += 1
                x += p.w
                line_h = max(line_h, p.h)
            y += line_h
        dashboard = G.Dashboard(
            title=self.title,
            uid=self.uid,
            description=self.description,
            tags=self.tags,
            panels=objects,
            templating=G.Templating(list=self.templates),
            time=G.Time(self.time_from, "now"),
            refresh=self.refresh,
            timezone="browser",
            graphTooltip=1,
            editable=True,
        )
        raw = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
        return self._modernize(raw, specs)

    def _modernize(self, raw: dict[str, Any], specs: dict[int, Panel]) -> dict[str, Any]:
        panels = []
        for p in raw["panels"]:
            if p["type"] == "row":
                panels.append(
                    {
                        "id": p["id"],
                        "type": "row",
                        "title": p["title"],
                        "collapsed": False,
                        "gridPos": p["gridPos"],
                        "panels": [],
                    }
                )
            else:
                panels.append(_modern_panel(p, specs[p["id"]]))
        templates = []
        for t in raw["templating"]["list"]:
            if t["type"] == "datasource":
                templates.append(
                    {
                        "type": "datasource",
                        "name": "datasource",
                        "label": t["label"],
                        "query": "prometheus",
                        "refresh": 1,
                        "hide": 0,
                        "current": {},
                    }
                )
            else:
                templates.append(
                    {
                        "type": "query",
                        "name": t["name"],
                        "label": t["label"],
                        "datasource": DS,
                        "query": {"query": t["query"], "refId": f"{t['name']}-var"},
                        "definition": t["query"],
                        "refresh": 2,
                        "multi": True,
                        "includeAll": True,
                        "allValue": ".+",
                        "sort": 1,
                        "hide": 0,
                        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                        "regex": "",
                    }
                )
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
            "links": [],
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
            "templating": {"list": templates},
            "panels": panels,
        }
