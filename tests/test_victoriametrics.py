"""The metrics path on VictoriaMetrics: vmagent (same scrape config) -> VictoriaMetrics <- vmalert (same
generated rules) -> Alertmanager -> observer serve's webhook, with real binaries from Debian's package."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from support import (
    Alertmanager,
    Process,
    alert_events,
    binary,
    drive_stack,
    observer_server,
    panels_without_data,
    simulator,
    wait_http,
)

from alerts.rules import write_rule_files
from dashboards.boards import BOARDS
from observer.config import Settings
from observer.load.generator import LoadConfig, run_load
from observer.netutil import free_port
from observer.promql import instant_query
from observer.stack import (
    Stack,
    StackOptions,
    probe_scrape_job,
    victoriametrics_args,
    vmagent_args,
    vmalert_args,
)

GENERATED_RULES = sorted((Path(__file__).resolve().parents[1] / "alerts" / "generated").glob("*.yml"))


def query(tsdb: str, expr: str) -> list[dict]:
    """An instant query with the dashboards' Grafana variables filled in as test_dashboards does."""
    for var, value in (("$__rate_interval", "30s"), ("$job", ".+"), ("$instance", ".+"), ("$model", ".+")):
        expr = expr.replace(var, value)
    return instant_query(tsdb, expr)


def wait_for(tsdb: str, expr: str, timeout: float = 45) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := query(tsdb, expr):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{expr!r} returned nothing from VictoriaMetrics within {timeout}s")


def dry_run(rule_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary("vmalert"), "-dryRun", f"-rule={rule_file}", "-loggerLevel=ERROR"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("rule_file", GENERATED_RULES, ids=lambda p: p.name)
def test_vmalert_dry_run_accepts_every_generated_rule_file(rule_file):
    out = dry_run(rule_file)
    assert out.returncode == 0, out.stdout + out.stderr


def test_vmalert_dry_run_rejects_a_broken_rule(tmp_path):
    """The check above can fail: an expression MetricsQL cannot parse is refused."""
    assert len(GENERATED_RULES) >= 2
    groups = {"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum(rate(m[5m]) by (a"}]}]}
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(groups))
    assert dry_run(tmp_path / "bad.yml").returncode != 0


class VictoriaMetricsPath:
    """VictoriaMetrics single-node, vmagent scraping ``scrape_configs`` and vmalert with ``rule_files``."""

    def __init__(self, scrape_configs: list[dict], rule_files: list[str], alertmanager: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vm-"))
        self.procs: list[Process] = []
        try:
            vm_port, agent_port, alert_port = free_port(), free_port(), free_port()
            self.url = f"http://127.0.0.1:{vm_port}"
            self._start(victoriametrics_args(binary("victoria-metrics"), self.dir / "data", vm_port), vm_port)
            config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}}
            (self.dir / "scrape.yml").write_text(yaml.safe_dump({**config, "scrape_configs": scrape_configs}))
            agent = vmagent_args(
                binary("vmagent"), self.dir / "scrape.yml", self.url, self.dir / "q", agent_port
            )
            self._start(agent, agent_port)
            alert = vmalert_args(binary("vmalert"), rule_files, self.url, alertmanager, alert_port, "1s")
            self.vmalert_url = f"http://127.0.0.1:{alert_port}"
            self._start(alert, alert_port)
        except Exception:
            self.stop()
            raise

    def _start(self, args: list[str], port: int) -> None:
        proc = Process(args, Path(args[0]).name)
        self.procs.append(proc)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=30, proc=proc.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{proc.output()[-2000:]}") from None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_kv_saturation_pages_through_vmalert_alertmanager_and_the_webhook(tmp_path):
    """Overloaded simulator -> exporter -> vmagent -> VictoriaMetrics -> vmalert -> Alertmanager -> log."""
    settings = Settings.model_validate(
        {
            "slo": {"kv_cache_warning_ratio": 0.8, "kv_cache_critical_ratio": 0.9},
            "alerting": {"for_overrides": {"LLMKVCacheSaturated": "2s"}},
        }
    )
    rules = sorted(str(p) for p in write_rule_files(settings, tmp_path / "rules"))
    sim_flags = ("--num-gpu-blocks", "128", "--max-num-seqs", "64", "--max-num-batched-tokens", "2048")
    with (
        simulator("--model", "m-vm", *sim_flags) as (sim, _),
        observer_server("engine-exporter") as (exporter, _),
        observer_server("serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", ready_path="/healthz") as (
            serve,
            _,
        ),
    ):
        am = Alertmanager(serve + "/api/v1/alerts/webhook")
        target = sim.removeprefix("http://")
        job = probe_scrape_job(
            settings.alerting.engine_job, [target], [exporter.removeprefix("http://")], scrape_interval="1s"
        )
        vm = VictoriaMetricsPath([job], rules, am.url)
        try:
            wait_for(vm.url, f'llm_engine_up{{job="{settings.alerting.engine_job}"}} == 1')
            load = LoadConfig(
                target=sim,
                rps=40,
                # Long enough that vmalert sees it: a new series is searchable in VictoriaMetrics
                # only ~10 s after its first sample (8 s of load missed it in 1 of ~5 runs).
                duration=20,
                users=20,
                mix={"chat": 1.0},
                ignore_eos=True,
                grace_s=2,
                seed=3,
            )
            start = time.monotonic()
            asyncio.run(run_load(load))

            firing = alert_events(serve, "LLMKVCacheSaturated", "firing", timeout=60)
            assert firing, "LLMKVCacheSaturated never reached the webhook through vmalert"
            assert firing[0]["labels"]["model"] == "m-vm" and firing[0]["labels"]["instance"] == target
            assert firing[0]["annotations"]["runbook_url"].endswith("#llmkvcachesaturated")
            resolved = alert_events(serve, "LLMKVCacheSaturated", "resolved", timeout=80)
            assert resolved, "the resolution never arrived after the load stopped"
            # vmalert wrote the alert back as ALERTS (the series the alerts dashboard reads), labelled as
            # Prometheus labels it: no vmalert-only alertgroup label.
            recorded = wait_for(
                vm.url, 'max_over_time(ALERTS{alertname="LLMKVCacheSaturated",alertstate="firing"}[5m])'
            )
            assert recorded[0]["metric"]["model"] == "m-vm" and "alertgroup" not in recorded[0]["metric"]
            print(f"\nKV saturation via vmalert: fired and resolved within {time.monotonic() - start:.0f}s")
        finally:
            vm.stop()
            am.stop()


@pytest.mark.integration
def test_every_panel_returns_data_from_victoriametrics(tmp_path):
    """The demo stack with --tsdb victoriametrics feeds every dashboard query, as it does Prometheus."""
    options = StackOptions(
        engines=2,
        gpus=2,
        scrape_interval="1s",
        analytics_refresh_s=2,
        workdir=tmp_path,
        tsdb="victoriametrics",
    )
    with Stack(options) as stack:
        assert stack.victoriametrics_url and stack.vmalert_url and stack.prometheus_url is None
        assert stack.query_url == stack.victoriametrics_url and stack.serve is not None
        wait_for(stack.victoriametrics_url, "llm_engine_up == 1")  # new series are searchable after ~10 s

        drive_stack(stack)
        time.sleep(12)  # VictoriaMetrics makes a new series searchable ~10 s after its first sample
        boards = {name: build(options.settings) for name, build in BOARDS.items()}
        empty = panels_without_data(boards, lambda expr: query(stack.victoriametrics_url, expr))
        assert not empty, "panels without data on VictoriaMetrics:\n" + json.dumps(empty, indent=2)


def test_compose_profile_runs_the_same_scrape_config_and_rules_on_victoriametrics():
    root = Path(__file__).resolve().parents[1]
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    prometheus_config = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    assert prometheus_config in services["vmagent"]["volumes"], "vmagent must read the very prometheus.yml"
    assert any(v.startswith("./alerts/generated:") for v in services["vmalert"]["volumes"])
    agent, alert = services["vmagent"]["command"], services["vmalert"]["command"]
    assert "-promscrape.config.strictParse=false" in agent
    assert "-remoteWrite.url=http://victoriametrics:8428/api/v1/write" in agent
    assert "-notifier.url=http://alertmanager:9093" in alert and "-disableAlertgroupLabel" in alert
    external = dict(
        label.split("=", 1) for label in (a.removeprefix("-external.label=") for a in alert) if "=" in label
    )
    prom = yaml.safe_load((root / "deploy" / "prometheus" / "prometheus.yml").read_text())
    # Alerts from Prometheus and vmalert carry the same labels, so Alertmanager sends each once.
    assert prom["global"]["external_labels"].items() <= external.items()
    sources = yaml.safe_load((root / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    vm = next(d for d in sources["datasources"] if d["uid"] == "victoriametrics")
    assert vm["type"] == "prometheus" and vm["url"] == "http://victoriametrics:8428"
    # vmagent itself accepts the compose prometheus.yml as it is, and only with strictParse off.
    config = str(root / "deploy" / "prometheus" / "prometheus.yml")
    check = [binary("vmagent"), f"-promscrape.config={config}", "-dryRun", "-loggerLevel=ERROR"]
    lenient = subprocess.run(
        [*check, "-promscrape.config.strictParse=false"], capture_output=True, timeout=60
    )
    strict = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert lenient.returncode == 0, lenient.stderr
    assert "rule_files" in strict.stderr
    # What the lenient parse skips is only Prometheus' own sections: every scrape setting (relabeling,
    # file_sd, the observer job's credentials file) is one vmagent understands.
    for prometheus_only in ("rule_files", "alerting"):
        prom.pop(prometheus_only)
    prom["global"].pop("evaluation_interval")
    scrape_only = Path(tempfile.mkdtemp(prefix="vmagent-")) / "scrape.yml"
    scrape_only.write_text(yaml.safe_dump(prom))
    exact = subprocess.run(
        [binary("vmagent"), f"-promscrape.config={scrape_only}", "-dryRun", "-loggerLevel=ERROR"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    shutil.rmtree(scrape_only.parent)
    assert exact.returncode == 0 and not exact.stderr.strip(), exact.stderr
