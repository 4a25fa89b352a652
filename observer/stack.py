"""The whole stack on one machine, no Docker: what `observer demo` runs and the dashboard tests query.

Every component is its own ``observer`` subprocess on a free loopback port (a crash in one is
visible, not fatal): simulated engines sending ``llm_request`` spans to ``observer serve``
(SQLite), the engine exporter probing them, a fake-GPU exporter whose load follows the first
engine, and, when installed, Prometheus with the generated rules and a multi-target scrape config
plus Alertmanager delivering to ``observer serve``'s webhook.

With ``tsdb="victoriametrics"`` the metrics path is VictoriaMetrics instead: vmagent scrapes with the
very same scrape config (it reads prometheus.yml and skips the sections it does not know), writes to
a single-node VictoriaMetrics, and vmalert evaluates the same generated rule files against it,
sending to the same Alertmanager. No Prometheus runs then, so nothing is evaluated or stored twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import yaml

from alerts.rules import write_rule_files
from observer.config import Settings
from observer.netutil import free_port

MODELS = ("acme/chat-8b", "acme/code-32b", "acme/rag-70b")
TSDBS = ("prometheus", "victoriametrics")


@dataclass
class Component:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class StackOptions:
    engines: int = 2
    gpus: int = 2
    scrape_interval: str = "5s"
    analytics_refresh_s: float = 30
    speed_factor: float = 1.0
    workdir: Path | None = None
    settings: Settings = field(default_factory=Settings)
    tsdb: Literal["prometheus", "victoriametrics"] = "prometheus"


def alertmanager_config(webhook_url: str, group_wait: str, group_interval: str) -> dict:
    """Every alert to one webhook (observer serve's incident log), resolutions included."""
    route = {
        "receiver": "observer",
        "group_by": ["alertname", "model"],
        "group_wait": group_wait,
        "group_interval": group_interval,
        "repeat_interval": "1h",
    }
    receiver = {"name": "observer", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
    return {"route": route, "receivers": [receiver]}


def alertmanager_args(binary: str, config: Path, storage: Path, port: int) -> list[str]:
    """A loopback Alertmanager without the cluster gossip port."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]


def probe_relabel_configs(exporters: Sequence[str]) -> list[dict]:
    """Multi-target relabeling: the engine becomes ``instance`` and ``?target=``, the exporter the address.

    With several exporters, ``hashmod`` of the target picks one per target (stable while the number
    of exporters stays the same), so every engine is probed by exactly one exporter instance.
    """
    if not exporters:
        raise ValueError("at least one engine exporter address is needed")
    configs: list[dict] = [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
    ]
    if len(exporters) == 1:
        return [*configs, {"target_label": "__address__", "replacement": exporters[0]}]
    configs.append(
        {
            "source_labels": ["__param_target"],
            "modulus": len(exporters),
            "target_label": "__tmp_exporter_shard",
            "action": "hashmod",
        }
    )
    for shard, exporter in enumerate(exporters):
        configs.append(
            {
                "source_labels": ["__tmp_exporter_shard"],
                "regex": str(shard),
                "target_label": "__address__",
                "replacement": exporter,
            }
        )
    return configs


def probe_scrape_job(
    job_name: str, targets: Sequence[str], exporters: Sequence[str], **extra: object
) -> dict:
    """A scrape job probing ``targets`` (host:port) through the engine exporter(s)."""
    return {
        "job_name": job_name,
        "metrics_path": "/probe",
        **extra,
        "static_configs": [{"targets": list(targets)}],
        "relabel_configs": probe_relabel_configs(exporters),
    }


def prometheus_args(binary: str, config: Path, storage: Path, port: int) -> list[str]:
    """A loopback Prometheus; the lifecycle API lets a caller reload the config."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]


def victoriametrics_args(binary: str, storage: Path, port: int, latency_offset: str = "1s") -> list[str]:
    """Single-node VictoriaMetrics. Its default ``-search.latencyOffset`` (30 s) hides the newest
    samples from queries; a demo wants to see a scrape as soon as it lands."""
    return [
        binary,
        f"-storageDataPath={storage}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=7d",
        f"-search.latencyOffset={latency_offset}",
        "-loggerLevel=WARN",
    ]


def vmagent_args(binary: str, scrape_config: Path, write_url: str, buffer: Path, port: int) -> list[str]:
    """vmagent scraping with a Prometheus config file as it is (rule_files, alerting are skipped)."""
    return [
        binary,
        f"-promscrape.config={scrape_config}",
        "-promscrape.config.strictParse=false",
        f"-remoteWrite.url={write_url}/api/v1/write",
        f"-remoteWrite.tmpDataPath={buffer}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-loggerLevel=WARN",
    ]


def vmalert_args(
    binary: str, rule_files: Sequence[str], tsdb_url: str, alertmanager_url: str, port: int, interval: str
) -> list[str]:
    """vmalert: rules queried against and recorded into ``tsdb_url``; alerts to Alertmanager.

    Recorded series and ``ALERTS`` are written back, so dashboards read them as from Prometheus;
    remote read restores pending ``for`` timers after a restart.
    """
    return [
        binary,
        *(f"-rule={r}" for r in rule_files),
        f"-datasource.url={tsdb_url}",
        f"-remoteWrite.url={tsdb_url}",
        f"-remoteRead.url={tsdb_url}",
        f"-notifier.url={alertmanager_url}",
        f"-evaluationInterval={interval}",
        "-disableAlertgroupLabel",  # alerts and ALERTS carry the labels Prometheus gives them
        f"-httpListenAddr=127.0.0.1:{port}",
        "-loggerLevel=WARN",
    ]


def _binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


class Stack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.dir = self.options.workdir or Path(tempfile.mkdtemp(prefix="llm-observer-demo-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.components: list[Component] = []
        self.engines: list[Component] = []
        self.serve: Component | None = None
        self.exporter: Component | None = None
        self.gpu: Component | None = None
        self.prometheus_url: str | None = None
        self.victoriametrics_url: str | None = None
        self.vmalert_url: str | None = None
        self.alertmanager_url: str | None = None
        self.db_url = f"sqlite:///{self.dir / 'observer.db'}"

    # --- processes -------------------------------------------------------------------------------------
    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        port: int | None = None,
        listen: bool = True,
    ) -> Component:
        port = port or free_port()
        log = self.dir / f"{name}.log"
        cmd = [*args, "--listen", f"127.0.0.1:{port}"] if listen else args
        proc = subprocess.Popen(
            cmd,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=self.dir,
        )
        c = Component(name, f"http://127.0.0.1:{port}", proc, log)
        self.components.append(c)
        return c

    def _observer(self, name: str, *args: str, env: dict[str, str] | None = None) -> Component:
        return self._spawn(name, [sys.executable, "-m", "observer.cli", *args], env)

    def _wait(self, c: Component, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not c.alive():
                raise RuntimeError(f"{c.name} exited ({c.proc.returncode}); see {c.log}")
            try:
                if httpx.get(c.url + path, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{c.name} did not answer {path} in {timeout}s; see {c.log}")

    # --- configuration files -----------------------------------------------------------------------------
    def _write_rules(self) -> list[str]:
        return [str(p) for p in write_rule_files(self.options.settings, self.dir / "rules")]

    def prometheus_config(self, alertmanager: str | None) -> dict:
        a = self.options.settings.alerting
        assert self.exporter and self.gpu and self.serve
        host = lambda c: c.url.removeprefix("http://")  # noqa: E731
        config = {
            "global": {
                "scrape_interval": self.options.scrape_interval,
                "evaluation_interval": self.options.scrape_interval,
            },
            "rule_files": self._write_rules(),
            "scrape_configs": [
                probe_scrape_job(a.engine_job, [host(e) for e in self.engines], [host(self.exporter)]),
                {"job_name": a.engine_exporter_job, "static_configs": [{"targets": [host(self.exporter)]}]},
                {"job_name": a.gpu_job, "static_configs": [{"targets": [host(self.gpu)]}]},
                {"job_name": a.observer_job, "static_configs": [{"targets": [host(self.serve)]}]},
            ],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        return config

    @property
    def query_url(self) -> str | None:
        """Where PromQL queries go: VictoriaMetrics when it is the TSDB, else Prometheus."""
        return self.victoriametrics_url or self.prometheus_url

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Stack:
        o = self.options
        serve_env = {
            "OBSERVER_ANALYTICS__REFRESH_INTERVAL_S": str(o.analytics_refresh_s),
            "OBSERVER_COLLECTOR__JOIN_GRACE_S": "3",
        }
        self.serve = self._observer("observer-serve", "serve", "--db", self.db_url, env=serve_env)
        self._wait(self.serve, "/healthz")
        for i in range(o.engines):
            self.engines.append(
                self._observer(
                    f"engine-{i}",
                    "simulate",
                    "--model",
                    MODELS[i % len(MODELS)],
                    "--seed",
                    str(i),
                    "--speed-factor",
                    str(o.speed_factor),
                    "--otlp-traces-endpoint",
                    self.serve.url,
                    "--num-gpu-blocks",
                    "1024",
                )
            )
        self.exporter = self._observer("engine-exporter", "engine-exporter")
        self.gpu = self._observer(
            "gpu-exporter",
            "gpu-exporter",
            "--fake-gpus",
            str(o.gpus),
            "--dcgm-compat",
            "--interval",
            "1",
            "--fake-load-from",
            self.engines[0].url + "/metrics",
            "--fake-processes",
            "1",
        )
        for c in (*self.engines, self.exporter, self.gpu):
            self._wait(c, "/health")

        am_bin = _binary("prometheus-alertmanager", "alertmanager")
        am_host = None
        if am_bin:
            am_port = free_port()
            am_cfg = alertmanager_config(self.serve.url + "/api/v1/alerts/webhook", "5s", "10s")
            (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(am_cfg))
            args = alertmanager_args(am_bin, self.dir / "alertmanager.yml", self.dir / "am-data", am_port)
            am = self._spawn("alertmanager", args, port=am_port, listen=False)
            self._wait(am, "/-/ready")
            self.alertmanager_url = am.url
            am_host = am.url.removeprefix("http://")
        if o.tsdb == "victoriametrics":
            self._start_victoriametrics(am_host)
            return self
        prom_bin = _binary("prometheus")
        if prom_bin:
            prom_port = free_port()
            (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.prometheus_config(am_host)))
            args = prometheus_args(prom_bin, self.dir / "prometheus.yml", self.dir / "tsdb", prom_port)
            prom = self._spawn("prometheus", args, port=prom_port, listen=False)
            self._wait(prom, "/-/ready")
            self.prometheus_url = prom.url
        return self

    def _start_victoriametrics(self, alertmanager: str | None) -> None:
        """vmagent -> VictoriaMetrics <- vmalert -> Alertmanager; every binary is required here."""
        missing = [n for n in ("victoria-metrics", "vmagent", "vmalert") if not _binary(n)]
        if missing or alertmanager is None:
            raise RuntimeError(
                f"--tsdb victoriametrics needs {', '.join(missing) or 'Alertmanager'}: "
                "run scripts/bootstrap.sh (Debian packages victoria-metrics, prometheus-alertmanager)"
            )
        vm_port = free_port()
        vm_args = victoriametrics_args(str(_binary("victoria-metrics")), self.dir / "vm-data", vm_port)
        vm = self._spawn("victoria-metrics", vm_args, port=vm_port, listen=False)
        self._wait(vm, "/health")
        self.victoriametrics_url = vm.url
        # The scrape config Prometheus would use, unchanged: one config for both metric paths.
        scrape_config = self.prometheus_config(None)
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(scrape_config))
        agent_port = free_port()
        agent_args = vmagent_args(
            str(_binary("vmagent")),
            self.dir / "prometheus.yml",
            vm.url,
            self.dir / "vmagent-buffer",
            agent_port,
        )
        agent = self._spawn("vmagent", agent_args, port=agent_port, listen=False)
        alert_port = free_port()
        alert_args = vmalert_args(
            str(_binary("vmalert")),
            scrape_config["rule_files"],
            vm.url,
            f"http://{alertmanager}",
            alert_port,
            self.options.scrape_interval,
        )
        vmalert = self._spawn("vmalert", alert_args, port=alert_port, listen=False)
        for c in (agent, vmalert):
            self._wait(c, "/health")
        self.vmalert_url = vmalert.url

    def stop(self) -> None:
        for c in reversed(self.components):
            if c.alive():
                c.proc.terminate()
        for c in self.components:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
