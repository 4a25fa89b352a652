"""Alert rules as code: generated files, promtool, amtool, runbooks, catalog coverage, the webhook,
and the whole chain simulator -> exporter -> Prometheus -> Alertmanager -> observer serve."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from support import Alertmanager, Prometheus, alert_events, binary, observer_server, simulator

from alerts.model import expand, humanize_duration, humanize_percentage
from alerts.recording import recording_groups, slo_windows
from alerts.rules import alert_groups, all_alert_names, render, write, write_rule_files
from observer.catalog import CATALOG, exposed_series_names
from observer.config import Settings, load_settings
from observer.load.generator import LoadConfig, run_load
from observer.promql import metric_names
from observer.stack import probe_scrape_job

ALERTS_DIR = Path(__file__).resolve().parents[1] / "alerts"
RUNBOOKS = Path(__file__).resolve().parents[1] / "docs" / "runbooks.md"
UNUSUAL = Path(__file__).resolve().parent / "fixtures" / "settings" / "unusual.yaml"
# The defaults, and a file far from them (thresholds, job names, two burn windows, for overrides).
SETTINGS = {"defaults": Settings(), "unusual": load_settings(UNUSUAL, environ={})}


def test_generated_files_are_up_to_date():
    for rel, text in render(Settings()).items():
        path = ALERTS_DIR / rel
        assert path.exists(), f"{rel} missing: run `python -m alerts`"
        assert path.read_text() == text, f"{rel} drifted from observer/config.py: run `python -m alerts`"


def _generated(name: str, tmp_path: Path) -> Path:
    """The committed files for the defaults; for other settings, what `python -m alerts --config` writes."""
    if name == "defaults":
        return ALERTS_DIR
    write(SETTINGS[name], tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_promtool_check_rules(name, tmp_path):
    out = subprocess.run(
        [
            binary("promtool"),
            "check",
            "rules",
            *sorted(str(p) for p in (_generated(name, tmp_path) / "generated").glob("*.yml")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_promtool_unit_tests_cover_every_alert_positive_and_negative(name, tmp_path):
    """The generated cases pass for the settings they were generated from, defaults or not."""
    root = _generated(name, tmp_path)
    tests = [yaml.safe_load(p.read_text()) for p in sorted((root / "tests").glob("*.yml"))]
    fires, silent = set(), set()
    for t in tests:
        for group in t["tests"]:
            for check in group.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(all_alert_names(SETTINGS[name]))
    assert names <= fires, f"alerts without a firing test: {names - fires}"
    assert names - {"Watchdog"} <= silent, f"alerts without a negative test: {names - silent - {'Watchdog'}}"
    out = subprocess.run(
        [binary("promtool"), "test", "rules", *sorted(str(p) for p in (root / "tests").glob("*.yml"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_unusual_settings_reach_rules_and_cases(tmp_path):
    """Nothing in the unusual file's output is a default: job names, thresholds, windows, runbooks."""
    s = SETTINGS["unusual"]
    write(s, tmp_path)
    text = "".join(p.read_text() for p in sorted(tmp_path.rglob("*.yml")))
    for default in ('job="llm-engines"', 'job="gpu"', 'job="observer"', "ratio_rate30m", "ratio_rate6h"):
        assert default not in text, default
    assert 'job="vllm"' in text and 'job="dcgm"' in text and "runbooks.example" in text
    assert "> 0.8" in text and "> 0.99" in text and "> 20" in text
    assert slo_windows(s) == ["10m", "1h", "2h", "12h"]


def test_prometheus_template_functions():
    # Values Prometheus 2.42 renders (checked end to end by the promtool cases above).
    assert humanize_percentage(0.985) == "98.5%" and humanize_percentage(1) == "100%"
    assert humanize_duration(0.1975) == "197.5ms" and humanize_duration(7.375) == "7.375s"
    assert humanize_duration(90) == "1m 30s" and humanize_duration(0) == "0s"
    assert expand("{{ $labels.a }} at {{ $value }}", {"a": "x"}, 20.0) == "x at 20"
    with pytest.raises(ValueError):
        expand("{{ $value | title }}", {}, 1)


def test_mutated_threshold_is_caught_by_the_unit_tests(tmp_path):
    """The tests discriminate: rules generated with another KV threshold fail them."""
    settings = Settings.model_validate({"slo": {"kv_cache_warning_ratio": 0.96}})
    write_rule_files(settings, tmp_path / "generated")
    test = yaml.safe_load((ALERTS_DIR / "tests" / "engine_test.yml").read_text())
    test["tests"] = [g for g in test["tests"] if g["name"] == "kv cache near full"]
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text(yaml.safe_dump(test))
    out = subprocess.run(
        [binary("promtool"), "test", "rules", str(tmp_path / "tests" / "t.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "LLMKVCacheNearFull" in out.stdout + out.stderr


def test_every_alert_is_well_formed_and_has_a_runbook_section():
    anchors = {m.group(1).lower() for m in re.finditer(r"^## (\S+)", RUNBOOKS.read_text(), re.M)}
    for group in alert_groups(Settings()):
        assert len(group["rules"]) <= 20
        for rule in group["rules"]:
            name, ann = rule["alert"], rule["annotations"]
            assert re.fullmatch(r"[A-Z][A-Za-z]+", name) and len(name) <= 40
            assert rule["labels"]["severity"] in ("critical", "warning", "info", "none")
            assert ann["summary"][0].isupper() and ann["summary"].endswith(".") and "{{" not in ann["summary"]
            if name != "Watchdog":  # constant by nature, as in kube-prometheus
                assert "{{" in ann["description"], f"{name}: description must be templated"
            anchor = ann["runbook_url"].split("#", 1)[1]
            assert anchor == name.lower() and anchor in anchors, f"{name}: no '## {name}' in docs/runbooks.md"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_metric_in_the_rules_is_in_the_catalog_or_recorded(name):
    s = SETTINGS[name]
    known = {n for spec in CATALOG for n in exposed_series_names(spec)} | {"up"}
    recorded = {r["record"] for g in recording_groups(s) for r in g["rules"]}
    read: set[str] = set()
    for group in recording_groups(s) + alert_groups(s):
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            read |= names
            unknown = names - known - recorded
            assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown} not in the catalog"
    # Every recorded SLO window is a burn window, and every burn window's ratios are read by an alert.
    windows = {w for r in recorded if (m := re.fullmatch(r"llm:\w+:(?:ratio_)?rate(\w+)", r)) for w in [m[1]]}
    assert windows - {"5m"} <= set(slo_windows(s)) <= windows
    for w in s.slo.burn_windows:
        assert {f"llm:ttft_slo_errors:ratio_rate{w.long}", f"llm:request_errors:ratio_rate{w.short}"} <= read


def test_thresholds_come_from_the_config():
    s = Settings.model_validate(
        {
            "slo": {"kv_cache_warning_ratio": 0.8, "queue_waiting_threshold": 42},
            "alerting": {"for_overrides": {"LLMKVCacheSaturated": "7s"}},
        }
    )
    rules = {r["alert"]: r for g in alert_groups(s) for r in g["rules"]}
    assert "> 0.8" in rules["LLMKVCacheNearFull"]["expr"]
    assert "> 42" in rules["LLMRequestQueueBuildingUp"]["expr"]
    assert rules["LLMKVCacheSaturated"]["for"] == "7s"
    with pytest.raises(ValueError, match="unknown alerts"):
        alert_groups(Settings.model_validate({"alerting": {"for_overrides": {"Nope": "1m"}}}))


def test_alertmanager_example_config_and_routes():
    amtool = binary("amtool")
    cfg = str(ALERTS_DIR / "alertmanager.yml")
    assert subprocess.run([amtool, "check-config", cfg], capture_output=True, timeout=30).returncode == 0

    def route(*labels: str) -> str:
        out = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={cfg}", *labels],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip()

    assert route("alertname=Watchdog", "severity=none") == "heartbeat"
    assert route("alertname=LLMKVCacheSaturated", "severity=critical") == "pager,observer-webhook"
    assert route("alertname=GPUOverTemperature", "severity=warning") == "tickets,observer-webhook"


def _payload(status: str, starts: str = "2026-11-21T10:00:00Z", ends: str = "0001-01-01T00:00:00Z") -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="LLMKVCacheSaturated"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "observer-webhook",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am",
        "notification_reason": "new",
        "routeLabels": {},
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "LLMKVCacheSaturated", "severity": "critical", "model": "m"},
                "annotations": {"summary": "KV cache is saturated."},
                "startsAt": starts,
                "endsAt": ends,
                "generatorURL": "http://prom",
                "fingerprint": "3142c133cfa756d3",  # Alertmanager's, of these labels (webhook checks it)
                "someFutureField": 1,
            }
        ],
    }


def test_webhook_keeps_an_idempotent_incident_log(tmp_path):
    with observer_server("serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", ready_path="/healthz") as (
        base,
        _,
    ):
        for _ in range(3):  # repeat notifications of one episode
            assert httpx.post(base + "/api/v1/alerts/webhook", json=_payload("firing")).json() == {
                "stored": 1
            }
        resolved = _payload("resolved", ends="2026-11-21T10:05:00Z")
        assert httpx.post(base + "/api/v1/alerts/webhook", json=resolved).status_code == 200
        log = httpx.get(base + "/api/v1/alerts").json()["alerts"]
        assert [(a["status"], a["notifications"]) for a in log] == [("resolved", 1), ("firing", 3)]
        assert log[0]["ends_at"] == "2026-11-21T10:05:00Z" and log[1]["ends_at"] is None
        assert log[1]["labels"]["model"] == "m" and log[1]["severity"] == "critical"
        assert (
            httpx.get(base + "/api/v1/alerts", params={"status": "firing"}).json()["alerts"][0]["status"]
            == "firing"
        )
        for bad in ({"alerts": "x"}, {"alerts": [{"labels": {}, "status": "weird"}]}, [1, 2]):
            assert httpx.post(base + "/api/v1/alerts/webhook", json=bad).status_code == 400


def test_end_to_end_kv_saturation_alert_fires_and_resolves(tmp_path):
    """Overloaded simulator -> engine exporter -> Prometheus (rules) -> Alertmanager -> webhook log."""
    settings = Settings.model_validate(
        {
            "slo": {"kv_cache_warning_ratio": 0.8, "kv_cache_critical_ratio": 0.9},
            "alerting": {"for_overrides": {"LLMKVCacheSaturated": "2s"}},
        }
    )
    rules = write_rule_files(settings, tmp_path / "rules")
    sim_flags = ("--num-gpu-blocks", "128", "--max-num-seqs", "64", "--max-num-batched-tokens", "2048")
    with (
        simulator("--model", "m-e2e", *sim_flags) as (sim, _),
        observer_server("engine-exporter") as (exporter, _),
        observer_server("serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", ready_path="/healthz") as (
            serve,
            _,
        ),
    ):
        am = Alertmanager(serve + "/api/v1/alerts/webhook")
        target = sim.removeprefix("http://")
        exporters = [exporter.removeprefix("http://")]
        job = probe_scrape_job("llm-engines", [target], exporters, scrape_interval="1s", scrape_timeout="1s")
        prom = Prometheus(
            [job],
            rule_files=sorted(str(p) for p in rules),
            alertmanager=am.url.removeprefix("http://"),
        )
        try:
            prom.wait_for('llm_engine_up{job="llm-engines"} == 1')
            load = LoadConfig(
                target=sim,
                rps=40,
                duration=8,
                users=20,
                mix={"chat": 1.0},
                ignore_eos=True,
                grace_s=2,
                seed=3,
            )
            start = time.monotonic()
            asyncio.run(run_load(load))  # returns once the overload is over (stragglers cancelled)

            firing = alert_events(serve, "LLMKVCacheSaturated", "firing", timeout=30)
            assert firing, "LLMKVCacheSaturated never reached the webhook"
            assert firing[0]["labels"]["model"] == "m-e2e" and firing[0]["labels"]["instance"] == target
            assert firing[0]["annotations"]["runbook_url"].endswith("#llmkvcachesaturated")
            resolved = alert_events(serve, "LLMKVCacheSaturated", "resolved", timeout=60)
            assert resolved, "the resolution never arrived after the load stopped"
            print(f"\nKV saturation: fired and resolved end to end within {time.monotonic() - start:.0f}s")
        finally:
            prom.stop()
            am.stop()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_incident_scenarios_detected_in_time_and_nothing_unrelated(name, tmp_path):
    """A normal diurnal day pages nobody; each incident fires its alert within budget, alone, for the
    defaults and for incidents and thresholds taken from the unusual settings."""
    from alerts.scenarios import run

    results = run(SETTINGS[name], tmp_path, promtool=binary("promtool"))
    report = "\n".join(
        f"  {r.scenario:<30} {r.alert or '(no alert expected)':<32} "
        f"detected after {r.detected_after_min} min (budget {r.budget_min})"
        for r in results
    )
    print("\nscenario detection times:\n" + report)
    assert all(r.passed for r in results), report
    assert len(results) == 8
