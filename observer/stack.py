"""The whole stack on one machine, no Docker: what `observer demo` runs and the dashboard tests query.

Every component is its own ``observer`` subprocess on a free loopback port (a crash in one is
visible, not fatal): simulated engines sending ``llm_request`` spans to ``observer serve``
(SQLite), the engine exporter probing them, a fake-GPU exporter whose load follows the first
engine, and, when installed, Prometheus with the generated rules and a multi-target scrape config
plus Alertmanager delivering to ``observer serve``'s webhook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from alerts.rules import write_rule_files
from observer.config import Settings
from observer.netutil import free_port

MODELS = ("acme/chat-8b", "acme/code-32b", "acme/rag-70b")


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
                {
                    "job_name": a.engine_job,
                    "metrics_path": "/probe",
                    "static_configs": [{"targets": [host(e) for e in self.engines]}],
                    "relabel_configs": [
                        {"source_labels": ["__address__"], "target_label": "__param_target"},
                        {"source_labels": ["__param_target"], "target_label": "instance"},
                        {"target_label": "__address__", "replacement": host(self.exporter)},
                    ],
                },
                {"job_name": a.engine_exporter_job, "static_configs": [{"targets": [host(self.exporter)]}]},
                {"job_name": a.gpu_job, "static_configs": [{"targets": [host(self.gpu)]}]},
                {"job_name": a.observer_job, "static_configs": [{"targets": [host(self.serve)]}]},
            ],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        return config

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
        prom_bin = _binary("prometheus")
        if prom_bin:
            prom_port = free_port()
            (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.prometheus_config(am_host)))
            prom = self._spawn(
                "prometheus",
                [
                    prom_bin,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                port=prom_port,
                listen=False,
            )
            self._wait(prom, "/-/ready")
            self.prometheus_url = prom.url
        return self

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
