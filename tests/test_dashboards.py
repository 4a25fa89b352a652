"""Dashboards as code: drift, Grafana's own schema and front-end logic, settings-driven content, and
every panel against live data, for the default settings and for an unusual settings file."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from support import binary, drive_stack, panels_without_data

from alerts.recording import recording_groups, slo_windows
from dashboards.__main__ import render
from dashboards.boards import BOARDS
from dashboards.grafana_schema import GRAFANA_VERSION, SDK_VERSION, check_dashboard, installed_sdk_version
from dashboards.lib import NEUTRAL, PANEL_TYPES, TAG, Panel
from observer.catalog import CATALOG, exposed_series_names
from observer.config import Settings, load_settings
from observer.promql import instant_query, metric_names
from observer.stack import Stack, StackOptions

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "dashboards" / "generated"
LOGIC = ROOT / "dashboards" / "grafana_logic"
UNUSUAL = Path(__file__).resolve().parent / "fixtures" / "settings" / "unusual.yaml"
SETTINGS = {"defaults": Settings(), "unusual": load_settings(UNUSUAL, environ={})}
BUILT = {s: {name: build(SETTINGS[s]) for name, build in BOARDS.items()} for s in SETTINGS}
JSONS = {s: {name: board.build() for name, board in BUILT[s].items()} for s in SETTINGS}
CASES = [(s, name) for s in sorted(SETTINGS) for name in sorted(BOARDS)]


def data_panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] not in ("row", "text", "alertlist")]


def test_generated_json_is_up_to_date_and_nothing_stray():
    for name, text in render(SETTINGS["defaults"]).items():
        assert (GENERATED / name).read_text() == text, f"{name} drifted: run `python -m dashboards`"
        assert json.loads(text) == JSONS["defaults"][name]
    assert {p.name for p in GENERATED.glob("*.json")} == set(BOARDS), "stray JSON in dashboards/generated"


# --- Grafana's schema ------------------------------------------------------------------------------------


def test_schema_build_matches_the_grafana_compose_provisions():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["grafana"]["image"] == f"grafana/grafana:{GRAFANA_VERSION}"
    assert installed_sdk_version() == SDK_VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"grafana-foundation-sdk=={SDK_VERSION}" in pyproject


@pytest.mark.parametrize(("settings", "name"), CASES)
def test_every_dashboard_loads_in_grafanas_typed_schema(settings, name):
    assert check_dashboard(JSONS[settings][name]) == []


def _first(board: dict, kind: str) -> dict:
    return next(p for p in board["panels"] if p["type"] == kind)


FAULTS = {
    "unknown stat option": (
        lambda d: _first(d, "stat")["options"].update(sparkline=True),
        "options.sparkline",
    ),
    "grid width as text": (lambda d: _first(d, "stat")["gridPos"].update(w="4"), "gridPos.w"),
    "graph mode not an enum value": (
        lambda d: _first(d, "stat")["options"].update(graphMode="sparkline"),
        "graphMode",
    ),
    "unknown series style": (
        lambda d: _first(d, "timeseries")["fieldConfig"]["defaults"]["custom"].update(lineStyle2="dash"),
        "custom.lineStyle2",
    ),
    "threshold value as text": (
        lambda d: _first(d, "stat")["fieldConfig"]["defaults"]["thresholds"]["steps"].append(
            {"color": "red", "value": "10"}
        ),
        "steps[",
    ),
    "angular panel type": (lambda d: _first(d, "stat").update(type="graph"), ".type"),
    "legacy dashboard key": (lambda d: d.update(rows=[]), "dashboard.rows"),
    "unknown target field": (lambda d: _first(d, "stat")["targets"][0].update(step=10), "targets[0].step"),
    "unknown variable field": (lambda d: d["templating"]["list"][1].update(definition="x"), "definition"),
    "unknown alertlist option": (
        lambda d: _first(d, "alertlist")["options"].update(showSilenced=1),
        "showSilenced",
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_schema_check_catches_injected_faults(fault):
    inject, where = FAULTS[fault]
    board = copy.deepcopy(
        JSONS["defaults"]["alerts-slos.json" if "alertlist" in fault else "llm-serving.json"]
    )
    inject(board)
    errors = check_dashboard(board)
    assert errors and any(where in e for e in errors), errors


# --- Grafana's front-end logic ----------------------------------------------------------------------------


def _grafana(requests: list[dict]) -> list[list[dict]]:
    """Values rendered by @grafana/data (unit text and colour), as Grafana's panels render them."""
    node = shutil.which("node")
    assert node and (LOGIC / "node_modules" / "@grafana" / "data").is_dir(), "run scripts/bootstrap.sh"
    out = subprocess.run(
        [node, str(LOGIC / "evaluate.cjs")],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _extremes(p: Panel) -> tuple[float, float]:
    """(worst, best) value of a panel: past its last step on the bad side, past its first on the good."""
    values = [v for v, _ in p.thresholds or []]
    low = p.min if p.min is not None else min(values) - abs(min(values)) - 1
    high = p.max if p.max is not None else max(values) * 10 + 1
    return (high, low) if p.bad == "high" else (low, high)


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_every_stat_and_gauge_reads_right_at_its_worst_value_in_grafana(settings):
    """Grafana's threshold logic (the active step's colour): red at the worst value, green at the best;
    values with no good or bad direction in a neutral colour, never green or red."""
    panels = [
        (name, p, j)
        for name, board in BUILT[settings].items()
        for p, j in zip(
            board.panels(), [x for x in JSONS[settings][name]["panels"] if x["type"] != "row"], strict=True
        )
        if p.kind in ("stat", "gauge", "bargauge")
    ]
    requests = []
    for _, p, j in panels:
        values = list(_extremes(p)) if p.base != NEUTRAL else [0, 1e9]
        requests.append({"config": j["fieldConfig"]["defaults"], "values": values})
    wrong = []
    for (name, p, _), rendered in zip(panels, _grafana(requests), strict=True):
        colours = [r["color"] for r in rendered]
        expected = ["red", "green"] if p.base != NEUTRAL else [NEUTRAL, NEUTRAL]
        if colours != expected:
            wrong.append(f"{name} / {p.title}: worst, best = {colours}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    assert len(panels) >= 20


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_every_unit_is_a_grafana_unit_and_renders_cleanly(settings):
    """Each unit (panel default and table column) is one Grafana knows, rendered without doubled spaces."""
    units = {}
    for name, board in JSONS[settings].items():
        for p in data_panels(board):
            d = p["fieldConfig"]["defaults"]
            unit = p["options"]["yAxis"]["unit"] if p["type"] == "heatmap" else d["unit"]
            units[f"{name} / {p['title']}"] = unit
            for o in p["fieldConfig"]["overrides"]:
                for prop in o["properties"]:
                    if prop["id"] == "unit":
                        units[f"{name} / {p['title']} / {o['matcher']['options']}"] = prop["value"]
    rendered = _grafana([{"config": {"unit": u}, "values": [1234.5]} for u in units.values()])
    bad = [
        f"{where}: {unit!r} -> {r[0]['text']!r}"
        for (where, unit), r in zip(units.items(), rendered, strict=True)
        if not r[0]["known"] or "  " in r[0]["text"] or r[0]["text"].endswith(f" {unit}")
    ]
    assert not bad, "\n".join(bad)
    currency = SETTINGS[settings].cost.currency
    cost = [u for w, u in units.items() if w.startswith("cost.json") and "currency" in u]
    assert cost and all(currency in u for u in cost)
    # What a reader sees (Grafana's own rendering): K/M scaling and one space before the unit.
    assert _grafana([{"config": {"unit": "count:tok/s"}, "values": [1500]}])[0][0]["text"] == "1.50K tok/s"


# --- truthful content -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "name"), CASES)
def test_modern_dashboard_model(settings, name):
    d = JSONS[settings][name]
    assert d["schemaVersion"] >= 39 and d["title"] and d["id"] is None
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"])
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[:3] == ["datasource", "job", "instance"]
    used = json.dumps([p.get("targets", []) for p in d["panels"]])
    for v in names[1:]:
        assert f"${v}" in used, f"variable ${v} is never used"
    assert d["links"][0]["type"] == "dashboards" and d["links"][0]["tags"] == [TAG] and TAG in d["tags"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in PANEL_TYPES
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["description"], f"{p['title']}: no description"
    for p in data_panels(d):
        for t in p["targets"]:
            for fn, metric, window in re.findall(
                r"\b(rate|increase|irate)\(([a-zA-Z_:][\w:]*)\{[^}]*\}\[([^\]]+)\]", t["expr"]
            ):
                if ":" not in metric:  # recorded series carry their window
                    assert window == "$__rate_interval", f"{p['title']}: {fn}({metric}[{window}])"
            # Ratios are aggregated from counts: never a sum of per-series ratios.
            assert not re.search(r"\b(sum|avg)\b[^(]*\(\s*[\w:]*ratio", t["expr"]), (
                f"{p['title']}: {t['expr']}"
            )
        if p["type"] == "stat":  # a sparkline needs a range query; instant-only stats draw none
            ranged = any(t["range"] for t in p["targets"])
            assert p["options"]["graphMode"] == ("area" if ranged else "none"), p["title"]
        if p["type"] == "heatmap":
            assert p["options"]["calculate"] is False and p["options"]["yAxis"]["unit"] == "s"
            assert (
                "unit" not in p["fieldConfig"]["defaults"]
                and "thresholds" not in p["fieldConfig"]["defaults"]
            )
            assert all(t["format"] == "heatmap" and "rate(" in t["expr"] for t in p["targets"])
        if p["type"] == "table":
            assert p["fieldConfig"]["overrides"] or p["title"] in (
                "Monthly cohorts",
                "Feedback",
                "Firing alerts",
            )


def test_boards_link_to_each_other_and_a_model_row_to_its_serving_view():
    d = JSONS["defaults"]
    assert all(TAG in board["tags"] for board in d.values()) and len(d) == 5
    table = next(p for p in d["llm-serving.json"]["panels"] if p["title"] == "Models")
    model = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "model")
    links = next(prop["value"] for prop in model["properties"] if prop["id"] == "links")
    assert links[0]["url"].startswith("/d/llm-serving?") and "var-model=${__value.raw}" in links[0]["url"]


def test_alertlist_reads_the_provisioned_alertmanager():
    sources = [
        ds
        for f in sorted((ROOT / "deploy/grafana/provisioning/datasources").glob("*.yml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    am = [ds for ds in sources if ds["type"] == "alertmanager"]
    assert am and am[0]["jsonData"]["implementation"] == "prometheus"
    assert am[0]["url"] == "http://alertmanager:9093"
    panel = _first(JSONS["defaults"]["alerts-slos.json"], "alertlist")
    assert panel["datasource"] == {"type": "alertmanager", "uid": am[0]["uid"]}
    assert am[0]["uid"] == SETTINGS["defaults"].dashboards.alertmanager_datasource_uid


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_every_metric_a_dashboard_names_exists(settings):
    known = {n for s in CATALOG for n in exposed_series_names(s)} | {"ALERTS", "up"}
    recorded = {r["record"] for g in recording_groups(SETTINGS[settings]) for r in g["rules"]}
    read = set()
    for name, d in JSONS[settings].items():
        exprs = [t["expr"] for p in data_panels(d) for t in p["targets"]]
        # label_values(<series selector>, <label>): only the selector names a metric.
        exprs += [
            re.fullmatch(r"label_values\((.*),\s*\w+\)", v["query"]["query"]).group(1)
            for v in d["templating"]["list"]
            if v["type"] == "query"
        ]
        for expr in exprs:
            names = metric_names(expr)
            read |= names
            unknown = names - known - recorded
            assert not unknown, f"{name}: {expr!r} reads {unknown}, not in the catalog or the recording rules"
    for metric in (
        "llm_request_prompt_tokens_bucket",
        "llm_request_generation_tokens_bucket",
        "gpu_tensor_active_ratio",
        "llm_engine_probe_error",
        "observer_collector_spans_rejected_total",
        "gpu_exporter_last_collect_success",
        "observer_engine_exporter_probe_failures_total",
    ):
        assert metric in read, f"no panel shows {metric}"
    burn = {m.group(1) for r in read if (m := re.fullmatch(r"llm:\w+:rate(\w+)", r))}
    assert burn == set(slo_windows(SETTINGS[settings])), "burn panels read exactly the recorded windows"


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_thresholds_are_the_settings(settings):
    s = SETTINGS[settings]
    slo, d = s.slo, s.dashboards

    def steps(board: str, title: str) -> list:
        p = next(p for p in BUILT[settings][board].panels() if p.title == title)
        return [(step["value"], step["color"]) for step in p.steps()]

    assert steps("llm-serving.json", "KV cache usage") == [
        (None, "green"),
        (slo.kv_cache_warning_ratio, "orange"),
        (slo.kv_cache_critical_ratio, "red"),
    ]
    assert steps("llm-serving.json", "Time to first token") == [(None, "green"), (slo.ttft_target_s, "red")]
    assert steps("alerts-slos.json", "TTFT error budget remaining") == [
        (None, "red"),
        (d.budget_critical_below, "orange"),
        (d.budget_warning_below, "green"),
    ]
    assert steps("adoption.json", "DAU/MAU (stickiness)") == [
        (None, "red"),
        (d.stickiness_occasional_below, "orange"),
        (d.stickiness_habit_above, "green"),
    ]
    burn = steps("alerts-slos.json", "TTFT burn rate by window")
    assert {v for v, _ in burn[1:]} == {w.factor for w in slo.burn_windows}
    text = json.dumps(JSONS[settings])
    for w in slo.burn_windows:
        assert f"{w.factor:g}" in text


# --- live data --------------------------------------------------------------------------------------------


def _instant(prom: str, expr: str) -> list[dict]:
    q = (
        expr.replace("$__rate_interval", "30s")
        .replace("$job", ".+")
        .replace("$instance", ".+")
        .replace("$model", ".+")
    )
    return instant_query(prom, q)


@pytest.mark.integration
@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_every_panel_returns_data_from_the_demo_stack(settings, tmp_path):
    """Simulators + exporters (fake GPUs) + observer serve with synthetic users -> real Prometheus
    with the rules generated from the same settings as the boards."""
    binary("prometheus")
    s = SETTINGS[settings]
    options = StackOptions(
        engines=2, gpus=2, scrape_interval="1s", analytics_refresh_s=2, workdir=tmp_path, settings=s
    )
    with Stack(options) as stack:
        assert stack.prometheus_url, "Prometheus is required (installed by .ci/run)"
        assert stack.serve is not None

        drive_stack(stack)
        time.sleep(6)  # a few more scrapes, rule evaluations and an analytics refresh
        empty = panels_without_data(BUILT[settings], lambda expr: _instant(stack.prometheus_url, expr))
        assert not empty, "panels without data:\n" + json.dumps(empty, indent=2)


def test_ttft_p95_stat_and_alert_read_one_series_built_by_one_helper():
    from alerts.promql import BY, histogram_quantile
    from alerts.recording import engine_selector
    from alerts.rules import alert_groups

    s = SETTINGS["defaults"]
    series = "llm:time_to_first_token_seconds:p95_5m"
    stat = next(p for p in BUILT["defaults"]["llm-serving.json"].panels() if p.title == "TTFT p95")
    spike = next(r for g in alert_groups(s) for r in g["rules"] if r["alert"] == "LLMTimeToFirstTokenSpike")
    recorded = {r["record"]: r["expr"] for g in recording_groups(s) for r in g["rules"] if "record" in r}
    assert series in stat.queries[0].expr and series in spike["expr"]
    expected = histogram_quantile(0.95, "llm_time_to_first_token_seconds", engine_selector(s), "5m", BY)
    assert recorded[series] == expected
    panel = next(
        p for p in BUILT["defaults"]["llm-serving.json"].panels() if p.title == "Time to first token"
    )
    assert panel.queries[1].expr == histogram_quantile(
        0.95,
        "llm_time_to_first_token_seconds",
        'job=~"$job",instance=~"$instance",model=~"$model"',
        "$__rate_interval",
    )
