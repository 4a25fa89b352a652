"""Dashboards as code: drift, the modern model, catalog coverage, and every panel against live data."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from alerts.rules import recording_groups
from dashboards.__main__ import render
from dashboards.boards import BOARDS
from dashboards.lib import PANEL_TYPES
from observer.catalog import CATALOG, exposed_series_names
from observer.config import Settings
from observer.load.generator import LoadConfig, run_load
from observer.promql import metric_names
from observer.stack import Stack, StackOptions

GENERATED = Path(__file__).resolve().parents[1] / "dashboards" / "generated"
SETTINGS = Settings()
BUILT = {name: build(SETTINGS) for name, build in BOARDS.items()}
JSONS = {name: json.loads((GENERATED / name).read_text()) for name in BOARDS}


def data_panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] not in ("row", "text")]


def test_generated_json_is_up_to_date_and_nothing_stray():
    for name, text in render(SETTINGS).items():
        assert (GENERATED / name).read_text() == text, f"{name} drifted: run `python -m dashboards`"
    assert {p.name for p in GENERATED.glob("*.json")} == set(BOARDS), "stray JSON in dashboards/generated"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_modern_dashboard_model(name):
    d = JSONS[name]
    assert d["schemaVersion"] >= 39 and d["title"] and d["id"] is None
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"])
    for legacy in ("rows", "style", "hideControls", "sharedCrosshair", "gnetId", "__inputs"):
        assert legacy not in d
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[:4] == ["datasource", "job", "instance", "model"]
    for v in d["templating"]["list"][1:]:
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["description"], f"{p['title']}: no description"
        if p["type"] == "text":
            continue
        assert p["fieldConfig"]["defaults"]["unit"] not in (None, ""), f"{p['title']}: no unit"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            for legacy in ("query", "step", "intervalFactor", "target", "metric"):
                assert legacy not in t
            # Rates over raw series follow Grafana's scrape-aware interval; recorded series (with a
            # colon) already carry their window.
            for fn, metric, window in re.findall(
                r"\b(rate|increase|irate)\(([a-zA-Z_:][\w:]*)\{[^}]*\}\[([^\]]+)\]", t["expr"]
            ):
                if ":" not in metric:
                    assert window == "$__rate_interval", f"{p['title']}: {fn}({metric}[{window}])"
        if p["type"] == "heatmap":
            assert isinstance(p["options"], dict) and p["options"]["calculate"] is False
        if p["type"] in ("gauge", "bargauge"):
            assert "fieldOptions" not in p["options"]


def test_every_metric_a_dashboard_names_exists():
    known = {n for s in CATALOG for n in exposed_series_names(s)} | {"ALERTS", "up"}
    recorded = {r["record"] for g in recording_groups(SETTINGS) for r in g["rules"]}
    for name, d in JSONS.items():
        exprs = [t["expr"] for p in data_panels(d) for t in p["targets"]]
        # label_values(<series selector>, <label>): only the selector names a metric.
        exprs += [
            re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"]).group(1)
            for v in d["templating"]["list"]
            if v["type"] == "query"
        ]
        for expr in exprs:
            unknown = metric_names(expr) - known - recorded
            assert not unknown, f"{name}: {expr!r} reads {unknown}, not in the catalog or the recording rules"


def test_thresholds_are_the_alert_thresholds():
    slo = SETTINGS.slo
    serving = {p["title"]: p for p in data_panels(JSONS["llm-serving.json"])}
    steps = [s["value"] for s in serving["KV cache usage"]["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, slo.kv_cache_warning_ratio, slo.kv_cache_critical_ratio]
    ttft = [
        s["value"] for s in serving["Time to first token"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    ]
    assert ttft == [None, slo.ttft_target_s]
    custom = Settings.model_validate({"slo": {"kv_cache_warning_ratio": 0.7, "kv_cache_critical_ratio": 0.8}})
    board = BOARDS["llm-serving.json"](custom).build()
    kv = next(p for p in board["panels"] if p["title"] == "KV cache usage")
    assert [s["value"] for s in kv["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.7, 0.8]


def _instant(prom: str, expr: str) -> list[dict]:
    q = (
        expr.replace("$__rate_interval", "30s")
        .replace("$job", ".+")
        .replace("$instance", ".+")
        .replace("$model", ".+")
    )
    body = httpx.get(f"{prom}/api/v1/query", params={"query": q}, timeout=10).json()
    assert body["status"] == "success", (q, body)
    return body["data"]["result"]


@pytest.mark.integration
def test_every_panel_returns_data_from_the_demo_stack(tmp_path):
    """Simulators + exporters (fake GPUs) + observer serve with synthetic users -> real Prometheus."""
    options = StackOptions(engines=2, gpus=2, scrape_interval="1s", analytics_refresh_s=2, workdir=tmp_path)
    with Stack(options) as stack:
        assert stack.prometheus_url, "Prometheus is required (installed by .ci/run)"
        assert stack.serve is not None

        async def drive() -> None:
            await asyncio.gather(
                *(
                    run_load(
                        LoadConfig(
                            target=e.url,
                            users=40,
                            rps=6,
                            duration=25,
                            seed=i + 1,
                            grace_s=5,
                            otlp_traces_endpoint=stack.serve.url,
                            feedback_url=stack.serve.url,
                            feedback_share=0.5,
                        )
                    )
                    for i, e in enumerate(stack.engines)
                )
            )

        asyncio.run(drive())
        time.sleep(6)  # a few more scrapes, rule evaluations and an analytics refresh
        empty: dict[str, list[str]] = {}
        for name, board in BUILT.items():
            for p in board.panels():
                if p.kind == "text":
                    continue
                missing = [q.expr for q in p.queries if not _instant(stack.prometheus_url, q.expr)]
                if missing and not p.may_be_empty:
                    empty.setdefault(name, []).append(f"{p.title}: {missing}")
        assert not empty, "panels without data:\n" + json.dumps(empty, indent=2)
