"""Real servers for tests: each on a free 127.0.0.1 port, each stopped by the test that started it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from observer.netutil import free_port
from observer.promql import instant_query
from observer.stack import alertmanager_args, alertmanager_config, prometheus_args

REPO = Path(__file__).resolve().parents[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


class Process:
    """A child process with its captured log, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self, args: Sequence[str], log_name: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        # Closed in stop(); kept open so the child can write to it for its whole life.
        self.log = tempfile.NamedTemporaryFile(prefix=f"{log_name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(args), stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        """Die abruptly, like a crashed engine."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def observer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "observer.cli", *args]


@contextmanager
def observer_server(
    subcommand: str, *args: str, ready_path: str = "/health", env: dict[str, str] | None = None
) -> Iterator[tuple[str, Process]]:
    """Run ``observer <subcommand> --listen 127.0.0.1:<free> ...``; yields (base_url, process)."""
    port = free_port()
    proc = Process(observer_cmd(subcommand, "--listen", f"127.0.0.1:{port}", *args), subcommand, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(base + ready_path, proc=proc.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- {subcommand} output ---\n{proc.output()[-3000:]}") from None
        yield base, proc
    finally:
        proc.stop()


def simulator(*args: str, env: dict[str, str] | None = None):
    return observer_server("simulate", *args, env=env)


def scrape(
    url: str, headers: dict[str, str] | None = None
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET a /metrics page and index it as {sample name: {sorted labels: value}}."""
    text = httpx.get(url, timeout=10, headers=headers).raise_for_status().text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def binary(name: str) -> str:
    """Path of a required external binary; fails loudly (CI installs these, see .ci/run)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run .ci/run (it installs Debian's package)")
    return path


class Prometheus:
    """A real Prometheus on a loopback port with the given scrape config and rule files."""

    def __init__(
        self,
        scrape_configs: list[dict[str, Any]],
        rule_files: Sequence[str] = (),
        interval: str = "1s",
        alertmanager: str | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prom-"))
        self.port = free_port()
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": scrape_configs,
        }
        if rule_files:
            config["rule_files"] = [str(Path(r).resolve()) for r in rule_files]
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        config_file, data = self.dir / "prometheus.yml", self.dir / "data"
        self.proc = Process(prometheus_args(binary("prometheus"), config_file, data, self.port), "prometheus")
        try:
            wait_http(self.url + "/-/ready", timeout=30, proc=self.proc.proc)
        except Exception:
            self.stop()
            raise

    def query(self, promql: str) -> list[dict[str, Any]]:
        return instant_query(self.url, promql)

    def wait_for(
        self, promql: str, predicate=lambda r: bool(r), timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{promql!r} never satisfied the condition in {timeout}s; last result {result}")

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Alertmanager:
    """A real Alertmanager on a loopback port delivering every alert to one webhook, fast."""

    def __init__(self, webhook_url: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="am-"))
        self.port = free_port()
        config = alertmanager_config(webhook_url, group_wait="1s", group_interval="1s")
        (self.dir / "am.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        am = binary("prometheus-alertmanager")
        self.proc = Process(
            alertmanager_args(am, self.dir / "am.yml", self.dir / "data", self.port), "alertmanager"
        )
        try:
            wait_http(self.url + "/-/ready", timeout=30, proc=self.proc.proc)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def alert_events(observer_url: str, alertname: str, status: str, timeout: float) -> list[dict]:
    """The incident log's events of ``alertname`` with ``status`` (firing/resolved) once there are any,
    or [] after ``timeout`` seconds (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        log = httpx.get(observer_url + "/api/v1/alerts", params={"alertname": alertname}).json()
        events = [a for a in log["alerts"] if a["status"] == status]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def drive_stack(stack: Any, users: int = 40, rps: float = 6, duration: float = 25) -> None:
    """Synthetic users on every engine of an ``observer.stack.Stack`` at once, their spans and feedback
    sent to its ``observer serve``: data for every panel and analytics gauge."""
    from observer.load.generator import LoadConfig, run_load

    async def drive() -> None:
        configs = [
            LoadConfig(
                target=engine.url,
                users=users,
                rps=rps,
                duration=duration,
                seed=i + 1,
                grace_s=5,
                otlp_traces_endpoint=stack.serve.url,
                feedback_url=stack.serve.url,
                feedback_share=0.5,
            )
            for i, engine in enumerate(stack.engines)
        ]
        await asyncio.gather(*(run_load(config) for config in configs))

    asyncio.run(drive())


def panels_without_data(boards: dict[str, Any], query: Any) -> dict[str, list[str]]:
    """Board name -> "panel: [queries]" for every panel whose queries return nothing through ``query``
    (expr -> result list), unless the panel says why it may be empty. Text panels have no query."""
    empty: dict[str, list[str]] = {}
    for name, board in boards.items():
        for panel in board.panels():
            if panel.kind in ("text", "alertlist"):
                continue
            missing = [q.expr for q in panel.queries if not query(q.expr)]
            if missing and not panel.may_be_empty:
                empty.setdefault(name, []).append(f"{panel.title}: {missing}")
    return empty


@contextmanager
def temporary_database(admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (trust auth), dropped afterwards."""
    import uuid

    import psycopg

    name = f"observer_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_url, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:  # CI has the server; say so loudly instead of skipping
        raise RuntimeError(f"PostgreSQL on 127.0.0.1:5432 is required: {exc}") from None
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class TcpProxy:
    """A loopback TCP forwarder the test can stop and start, to take a real server "down".

    Stopping closes the listener and every open connection, exactly what a client sees when the
    database server dies; starting listens on the same port again.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        import socket
        import threading

        self._socket, self._threading = socket, threading
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = None
        self._conns: list = []
        self._lock = threading.Lock()

    def start(self) -> None:
        s = self._socket.socket(self._socket.AF_INET, self._socket.SOCK_STREAM)
        s.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        self._threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        if self._listener is not None:
            # Wakes the thread blocked in accept(); close() alone would leave it accepting.
            with contextlib.suppress(OSError):
                self._listener.shutdown(self._socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(self._socket.SHUT_RDWR)
            c.close()
