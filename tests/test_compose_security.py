"""The compose stack's security (issue 13): loopback ports, no default passwords, no lifecycle API, and
the credentials each component needs actually sent, by real Prometheus, Alertmanager and a simulator."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml
from support import Process, Prometheus, binary, simulator, wait_http

from observer.config import CollectorSettings
from observer.netutil import free_port
from observer.stack import alertmanager_args

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def expand(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} (which fails when unset)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "-":
            return arg
        raise KeyError(f"{name} is required: {arg}")

    return _VAR.sub(one, text)


@contextmanager
def compose_env() -> Iterator[dict[str, str]]:
    """The .env scripts/compose-env.sh writes, read back."""
    work = Path(tempfile.mkdtemp(prefix="compose-env-"))
    try:
        (work / "scripts").mkdir()
        shutil.copy(ROOT / "scripts" / "compose-env.sh", work / "scripts")
        subprocess.run(["sh", str(work / "scripts" / "compose-env.sh")], check=True, capture_output=True)
        env = {}
        for line in (work / ".env").read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
        assert oct((work / ".env").stat().st_mode & 0o777) == "0o600"
        yield env
    finally:
        shutil.rmtree(work)


class Recorder:
    """A loopback HTTP server that records each request's path and Authorization header."""

    def __init__(self, body: bytes = b"") -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, predicate, timeout: float = 30.0) -> list[tuple[str, str, str | None]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [s for s in self.seen if predicate(s)]
            if hits:
                return hits
            time.sleep(0.1)
        raise AssertionError(f"no matching request in {timeout}s; seen {self.seen}")


# --- the compose file ----------------------------------------------------------------------------------


def test_every_published_port_binds_to_loopback_unless_told_otherwise():
    published = [(name, str(p)) for name, svc in SERVICES.items() for p in svc.get("ports", [])]
    assert published
    for name, port in published:
        assert expand(port, {}).startswith("127.0.0.1:"), (name, port)
        assert expand(port, {"OBSERVER_BIND": "0.0.0.0"}).startswith("0.0.0.0:"), (name, port)


def test_no_default_passwords_and_every_secret_comes_from_the_generated_env():
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    required = {m.group(1) for m in _VAR.finditer(COMPOSE_TEXT) if m.group(2) == "?"}
    assert {"GRAFANA_ADMIN_PASSWORD", "OBSERVER_WRITE_TOKEN", "OBSERVER_WEBHOOK_TOKEN"} <= required
    secret_sources = {s["environment"] for s in COMPOSE["secrets"].values()}
    with compose_env() as env, compose_env() as other:
        assert required | secret_sources <= set(env)
        for key in required:
            assert len(env[key]) >= 32 and env[key] != other[key]  # random, not a shipped default
        expand(COMPOSE_TEXT, env)  # everything resolves
    try:
        expand(grafana["GF_SECURITY_ADMIN_PASSWORD"], {})
    except KeyError as exc:
        assert "compose-env.sh" in str(exc)
    else:
        raise AssertionError("Grafana started without a password")


def test_prometheus_has_no_lifecycle_api():
    for name, svc in SERVICES.items():
        command = svc.get("command") or []
        assert not any("enable-lifecycle" in str(arg) for arg in command), name


def test_observer_tokens_are_real_settings_and_span_senders_carry_the_write_token():
    env = SERVICES["observer"]["environment"]
    tokens = {k.removeprefix("OBSERVER_COLLECTOR__").lower(): v for k, v in env.items() if "TOKEN" in k}
    assert set(tokens) == {"auth_token", "read_token", "metrics_token", "webhook_token"}
    assert set(tokens) <= set(CollectorSettings.model_fields)
    header = "authorization=Bearer%20${OBSERVER_WRITE_TOKEN"
    for name in ("simulator-0", "simulator-1", "users-0", "users-1", "vllm"):
        assert SERVICES[name]["environment"]["OTEL_EXPORTER_OTLP_TRACES_HEADERS"].startswith(header), name


def _mounted_secret(service: str, path: str) -> None:
    name = path.removeprefix("/run/secrets/")
    assert path.startswith("/run/secrets/") and name in COMPOSE["secrets"], path
    assert name in SERVICES[service]["secrets"], (service, name)


def test_credential_files_are_secrets_mounted_where_they_are_read():
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "observer")
    for service in {"prometheus", "vmagent"} & set(SERVICES):  # vmagent reads the same prometheus.yml
        _mounted_secret(service, job["authorization"]["credentials_file"])
    am = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
    hooks = [w for r in am["receivers"] for w in r.get("webhook_configs", []) if "observer:4318" in w["url"]]
    assert hooks
    for hook in hooks:
        _mounted_secret("alertmanager", hook["http_config"]["authorization"]["credentials_file"])


# --- the credentials on the wire, from real components -------------------------------------------------


def test_alertmanager_sends_the_webhook_token():
    token = "am-webhook-token-1234567890"
    webhook = Recorder()
    work = Path(tempfile.mkdtemp(prefix="am-sec-"))
    proc = None
    try:
        (work / "token").write_text(token + "\n")
        config = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
        for route in [config["route"], *config["route"].get("routes", [])]:
            route.update(group_wait="0s", group_interval="1s")
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = hook["url"].replace("observer:4318", webhook.address)
                hook["http_config"]["authorization"]["credentials_file"] = str(work / "token")
        (work / "am.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        args = alertmanager_args(binary("prometheus-alertmanager"), work / "am.yml", work / "data", port)
        proc = Process(args, "alertmanager")
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30, proc=proc.proc)
        alert = {"labels": {"alertname": "LLMEngineDown", "severity": "critical", "instance": "x"}}
        httpx.post(f"http://127.0.0.1:{port}/api/v2/alerts", json=[alert], timeout=10).raise_for_status()
        hits = webhook.wait(lambda s: s[1] == "/api/v1/alerts/webhook")
        assert {auth for _, _, auth in hits} == {f"Bearer {token}"}
    finally:
        if proc is not None:
            proc.stop()
        webhook.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_prometheus_scrapes_observer_with_the_metrics_token():
    token = "prom-metrics-token-1234567890"
    target = Recorder(b"observer_up 1\n")
    work = Path(tempfile.mkdtemp(prefix="prom-sec-"))
    prom = None
    try:
        (work / "token").write_text(token)
        config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
        job = next(j for j in config["scrape_configs"] if j["job_name"] == "observer")
        job["static_configs"] = [{"targets": [target.address]}]
        job["authorization"]["credentials_file"] = str(work / "token")
        prom = Prometheus([job])
        hits = target.wait(lambda s: s[1] == "/metrics")
        assert {auth for _, _, auth in hits} == {f"Bearer {token}"}
    finally:
        if prom is not None:
            prom.stop()
        target.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_a_simulator_exports_spans_with_the_compose_write_token():
    token = "write-token-1234567890"
    collector = Recorder()
    env = {
        k: expand(v, {"OBSERVER_WRITE_TOKEN": token})
        for k, v in SERVICES["simulator-0"]["environment"].items()
    }
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export within a tenth of a second
    try:
        with simulator(
            "--model",
            "m",
            "--speed-factor",
            "0",
            "--otlp-traces-endpoint",
            f"http://{collector.address}",
            env=env,
        ) as (sim, _):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            httpx.post(sim + "/v1/chat/completions", json=body, timeout=30).raise_for_status()
            hits = collector.wait(lambda s: s[1] == "/v1/traces")
        assert {auth for _, _, auth in hits} == {f"Bearer {token}"}
    finally:
        collector.stop()
