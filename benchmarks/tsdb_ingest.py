"""Metrics store cost: Prometheus vs VictoriaMetrics (fed by vmagent) ingesting a fleet of engines.

Every fake engine serves what the engine exporter answers for one simulated vLLM engine under load
(its normalized llm_* series), with counters growing and gauges moving at every scrape. Each store
scrapes the fleet every --interval; after --warmup, over --duration it reports active series,
samples/s ingested, CPU cores used and resident memory, for each fleet size in --engines. The
memory slope between two fleet sizes is the per-series cost that the README's sizing uses.

    python benchmarks/tsdb_ingest.py [--engines 100 400] [--interval 5] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from engine_exporter_shards import cpu_seconds, series
from support import Process, binary, observer_server, simulator, wait_http

from observer.load.generator import LoadConfig, run_load
from observer.netutil import free_port
from observer.promql import instant_query
from observer.stack import prometheus_args, victoriametrics_args, vmagent_args


def normalized_exposition() -> str:
    """The engine exporter's answer for one simulated vLLM engine after a short load."""
    with (
        simulator("--model", "acme/chat-8b", "--speed-factor", "0.2") as (sim, _),
        observer_server("engine-exporter") as (exporter, _),
    ):
        asyncio.run(run_load(LoadConfig(target=sim, users=20, rps=20, duration=6, grace_s=2, seed=1)))
        return httpx.get(exporter + "/probe", params={"target": sim.removeprefix("http://")}, timeout=10).text


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def counter_sum(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def run_store(store: str, targets: list[str], args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"tsdb-{store}-"))
    job = {"job_name": "engines", "static_configs": [{"targets": targets}]}
    config = {"global": {"scrape_interval": f"{args.interval:g}s", "scrape_timeout": f"{args.interval:g}s"}}
    (workdir / "scrape.yml").write_text(yaml.safe_dump({**config, "scrape_configs": [job]}))
    procs: list[Process] = []
    try:
        if store == "prometheus":
            port = free_port()
            procs.append(
                Process(
                    prometheus_args(binary("prometheus"), workdir / "scrape.yml", workdir / "data", port),
                    store,
                )
            )
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/-/ready", timeout=30, proc=procs[0].proc)
            samples = lambda: counter_sum(url + "/metrics", "prometheus_tsdb_head_samples_appended_total")  # noqa: E731
        else:
            vm_port, agent_port = free_port(), free_port()
            url = f"http://127.0.0.1:{vm_port}"
            procs.append(
                Process(victoriametrics_args(binary("victoria-metrics"), workdir / "vm", vm_port), "vm")
            )
            wait_http(url + "/health", timeout=30, proc=procs[0].proc)
            agent = vmagent_args(binary("vmagent"), workdir / "scrape.yml", url, workdir / "q", agent_port)
            procs.append(Process(agent, "vmagent"))
            wait_http(f"http://127.0.0.1:{agent_port}/health", timeout=30, proc=procs[1].proc)
            samples = lambda: counter_sum(url + "/metrics", "vm_rows_inserted_total")  # noqa: E731
        pids = [p.proc.pid for p in procs]
        time.sleep(args.warmup)
        s0, c0, t0 = samples(), sum(cpu_seconds(p) for p in pids), time.monotonic()
        time.sleep(args.duration)
        s1, c1, t1 = samples(), sum(cpu_seconds(p) for p in pids), time.monotonic()
        active = float(instant_query(url, 'count({job="engines"})', timeout=30)[0]["value"][1])
        return {
            "active_series": active,
            "samples_per_s": (s1 - s0) / (t1 - t0),
            "cores": (c1 - c0) / (t1 - t0),
            "rss_mib": sum(rss_bytes(p) for p in pids) / 2**20,
        }
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--interval", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--stores", nargs="+", default=["prometheus", "victoriametrics"])
    args = ap.parse_args()

    text = normalized_exposition()
    body_file = Path(f"/tmp/tsdb-ingest-{os.getpid()}.txt")
    body_file.write_text(text)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work shares them)")
    print(f"per engine: {series(text)} series, scraped every {args.interval:.0f} s")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for engines in args.engines:
        fleet = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("engine_exporter_shards.py")),
                "--serve-engines",
                str(engines),
                "--body",
                str(body_file),
                "--vary",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert fleet.stdout is not None
            targets = [f"127.0.0.1:{p}" for p in json.loads(fleet.stdout.readline())]
            for store in args.stores:
                r = results[(store, engines)] = run_store(store, targets, args)
                print(
                    f"{store:<16} {engines:>4} engines: {r['active_series']:>8,.0f} series, "
                    f"{r['samples_per_s']:>8,.0f} samples/s, {r['cores']:.2f} cores "
                    f"({r['cores'] / max(r['samples_per_s'], 1) * 1e6:.1f} core-s per million samples), "
                    f"RSS {r['rss_mib']:.0f} MiB"
                )
        finally:
            fleet.terminate()
            fleet.wait(10)
    body_file.unlink(missing_ok=True)
    if len(args.engines) >= 2:
        small, big = min(args.engines), max(args.engines)
        for store in args.stores:
            a, b = results[(store, small)], results[(store, big)]
            per_series = (b["rss_mib"] - a["rss_mib"]) * 2**20 / (b["active_series"] - a["active_series"])
            print(f"{store}: {per_series / 1024:.1f} KiB per extra active series ({small} -> {big} engines)")


if __name__ == "__main__":
    main()
