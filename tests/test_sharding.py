"""Sharded engine exporters: with N exporter instances behind ``hashmod`` relabeling, every engine is
probed by exactly one of them, with Prometheus and with vmagent reading the same scrape config."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from support import Process, Prometheus, binary, observer_server, wait_http

from observer.netutil import free_port
from observer.stack import probe_relabel_configs, probe_scrape_job, victoriametrics_args, vmagent_args

ROOT = Path(__file__).resolve().parents[1]
EXPOSITION = (ROOT / "tests" / "fixtures" / "engines" / "vllm-0.11.txt").read_bytes()


def prometheus_hashmod(value: str, modulus: int) -> int:
    """Prometheus' ``hashmod``: the last 8 bytes of the MD5 of the value, big-endian, modulo."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def socket_owner(local_port: int, pids: dict[int, int]) -> int | None:
    """Which of ``pids`` ({pid: shard}) holds the TCP socket bound to ``local_port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(fields[9])
    for pid, shard in pids.items():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed while we looked
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return shard
    return None


class FakeEngines:
    """``count`` engines on their own loopback ports serving one vLLM exposition; each request is
    attributed, at the moment it arrives, to the exporter process whose socket sent it."""

    def __init__(self, count: int) -> None:
        self.exporter_pids: dict[int, int] = {}
        self.probed_by: dict[int, set[int | None]] = defaultdict(set)
        self.fetches: dict[int, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.servers = [self._serve(i) for i in range(count)]
        self.targets = [f"127.0.0.1:{s.server_address[1]}" for s in self.servers]

    def _serve(self, index: int) -> ThreadingHTTPServer:
        engines = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                shard = socket_owner(self.client_address[1], engines.exporter_pids)
                with engines._lock:
                    engines.probed_by[index].add(shard)
                    engines.fetches[index] += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(EXPOSITION)))
                self.end_headers()
                self.wfile.write(EXPOSITION)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def wait_for_fetches(self, per_target: int, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.fetches) == len(self.servers) and min(self.fetches.values()) >= per_target:
                    return
            time.sleep(0.25)
        raise AssertionError(f"not every engine was probed {per_target} times: {dict(self.fetches)}")

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


def test_relabel_configs_one_exporter_is_the_classic_block_and_n_use_hashmod():
    assert probe_relabel_configs(["exp:9400"]) == [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": "exp:9400"},
    ]
    sharded = probe_relabel_configs(["a:9400", "b:9400", "c:9400"])
    hashmod = [c for c in sharded if c.get("action") == "hashmod"]
    assert hashmod == [
        {
            "source_labels": ["__param_target"],
            "modulus": 3,
            "target_label": "__tmp_exporter_shard",
            "action": "hashmod",
        }
    ]
    routes = [(c["regex"], c["replacement"]) for c in sharded if c.get("target_label") == "__address__"]
    assert routes == [("0", "a:9400"), ("1", "b:9400"), ("2", "c:9400")]
    with pytest.raises(ValueError):
        probe_relabel_configs([])


def test_readme_documents_the_sharded_relabeling_the_code_generates():
    """The README's hashmod snippet is exactly what probe_relabel_configs builds for two exporters."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(# sharded engine exporters.*?)```", readme, re.S)
    assert block, "README: no '# sharded engine exporters' yaml block"
    job = yaml.safe_load(block.group(1))["scrape_configs"][0]
    assert job["relabel_configs"] == probe_relabel_configs(
        ["engine-exporter-0:9400", "engine-exporter-1:9400"]
    )


@pytest.mark.parametrize("scraper", ["prometheus", "vmagent"])
def test_every_engine_is_probed_by_exactly_one_exporter_shard(scraper, tmp_path):
    engines = FakeEngines(12)
    try:
        with (
            observer_server("engine-exporter") as (exporter_0, proc_0),
            observer_server("engine-exporter") as (exporter_1, proc_1),
        ):
            engines.exporter_pids = {proc_0.proc.pid: 0, proc_1.proc.pid: 1}
            exporters = [exporter_0.removeprefix("http://"), exporter_1.removeprefix("http://")]
            job = probe_scrape_job("llm-engines", engines.targets, exporters, scrape_interval="1s")
            if scraper == "prometheus":
                server = Prometheus([job])
                stop = server.stop
            else:
                server = VmagentWithStorage(job, tmp_path)
                stop = server.stop
            try:
                engines.wait_for_fetches(per_target=3)
            finally:
                stop()
        probed_by = dict(engines.probed_by)
        assert set(probed_by) == set(range(12)), "some engine was never probed"
        assert all(len(shards) == 1 and None not in shards for shards in probed_by.values()), probed_by
        per_shard = [sorted(i for i, s in probed_by.items() if s == {shard}) for shard in (0, 1)]
        assert per_shard[0] and per_shard[1], f"one exporter got every target: {per_shard}"
        if scraper == "prometheus":  # vmagent's hashmod hashes with xxhash: a different, equally stable split
            predicted = {i: {prometheus_hashmod(t, 2)} for i, t in enumerate(engines.targets)}
            assert probed_by == predicted
    finally:
        engines.close()


class VmagentWithStorage:
    """vmagent scraping one job into a VictoriaMetrics single-node (vmagent needs somewhere to write)."""

    def __init__(self, job: dict, tmp_path: Path) -> None:
        vm_port, agent_port = free_port(), free_port()
        self.vm = Process(victoriametrics_args(binary("victoria-metrics"), tmp_path / "vm", vm_port), "vm")
        (tmp_path / "scrape.yml").write_text(yaml.safe_dump({"scrape_configs": [job]}))
        args = vmagent_args(
            binary("vmagent"),
            tmp_path / "scrape.yml",
            f"http://127.0.0.1:{vm_port}",
            tmp_path / "q",
            agent_port,
        )
        self.agent = Process(args, "vmagent")
        try:
            wait_http(f"http://127.0.0.1:{vm_port}/health", timeout=30, proc=self.vm.proc)
            wait_http(f"http://127.0.0.1:{agent_port}/health", timeout=30, proc=self.agent.proc)
            targets = httpx.get(f"http://127.0.0.1:{agent_port}/targets", timeout=5).text
            assert "llm-engines" in targets, targets
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        self.agent.stop()
        self.vm.stop()
