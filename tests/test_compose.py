"""docker-compose.yml: structure, mounted files, ports, and the configs it mounts (no Docker needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from support import binary

from observer.cli import cli
from observer.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_service_has_an_image_and_the_build_context_a_dockerfile():
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").exists()


def test_every_mounted_file_exists():
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name}: named volume {source} not declared"


def test_host_ports_do_not_clash():
    seen: dict[str, str] = {}
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            host = str(port).split(":")[-2]  # [bind address:]host port:container port
            assert host not in seen, f"host port {host} used by {seen[host]} and {name}"
            seen[host] = name


def test_profiles_default_runs_anywhere_gpu_adds_the_real_things():
    gpu_only = {n for n, s in SERVICES.items() if "gpu" in s.get("profiles", [])}
    assert gpu_only == {"vllm", "gpu-exporter"}
    assert "--otlp-traces-endpoint" in SERVICES["vllm"]["command"]
    vm_only = {n for n, s in SERVICES.items() if "victoriametrics" in s.get("profiles", [])}
    assert vm_only == {"victoriametrics", "vmagent", "vmalert"}  # see tests/test_victoriametrics.py
    assert all("profiles" not in s for n, s in SERVICES.items() if n not in gpu_only | vm_only)


def test_observer_services_run_real_subcommands():
    commands = set(cli.commands)
    for name, svc in SERVICES.items():
        if svc.get("image") == "llm-observer:local":
            assert svc["command"][0] in commands, f"{name}: unknown subcommand {svc['command'][0]}"
    serve = SERVICES["observer"]["command"]
    assert serve[serve.index("--db") + 1].startswith("postgresql://")


def test_prometheus_config_rules_and_targets():
    prom = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    out = subprocess.run(
        [binary("promtool"), "check", "config", "--syntax-only", str(prom)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load(prom.read_text())
    jobs = {j["job_name"] for j in cfg["scrape_configs"]}
    a = Settings().alerting
    assert {a.engine_job, a.engine_exporter_job, a.gpu_job, a.observer_job} <= jobs  # the rules' selectors
    assert list((ROOT / "alerts" / "generated").glob("*.yml")), "rules mounted into Prometheus"
    for target_file in ("engines.yml", "gpus.yml"):
        groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "targets" / target_file).read_text())
        for group in groups:
            for target in group["targets"]:
                host = target.split(":")[0]
                assert host in SERVICES, f"{target_file}: {host} is not a compose service"


def test_alertmanager_and_grafana_provisioning():
    out = subprocess.run(
        [binary("amtool"), "check-config", str(ROOT / "alerts" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "observer:4318" in (ROOT / "alerts" / "alertmanager.yml").read_text()
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/llm-observer.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["grafana"]["volumes"] if v.startswith("."))
    assert mounts[path] == "./dashboards/generated"
