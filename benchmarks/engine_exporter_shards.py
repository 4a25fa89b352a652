"""Probe throughput with 1 vs 2 engine exporter shards, and the exporter CPU each probe costs.

A fleet of distinct fake engines (one loopback port each, served by a separate asyncio process)
answers the /metrics body of a simulated vLLM engine under load (or --exposition FILE, e.g. a real
capture). Each probe goes to the shard Prometheus' ``hashmod`` relabeling picks for its target
(observer.stack.probe_relabel_configs), from --concurrency clients for --duration seconds.
Reported per shard count: probes/s (median of --rounds), exporter CPU ms per probe (from /proc),
and the ratio 2 shards / 1 shard. CPU per probe is the sizing figure: exporter cores needed =
engines / scrape interval x CPU per probe.

    python benchmarks/engine_exporter_shards.py [--engines 200] [--duration 10] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import observer_server, simulator

from observer.load.generator import LoadConfig, run_load


def prometheus_hashmod(value: str, modulus: int) -> int:
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def simulated_exposition() -> str:
    """The simulator's vLLM V1 /metrics after a short load: every finish reason and bucket in use."""
    with simulator("--model", "acme/chat-8b", "--speed-factor", "0.2") as (sim, _):
        asyncio.run(run_load(LoadConfig(target=sim, users=20, rps=20, duration=6, grace_s=2, seed=1)))
        return httpx.get(sim + "/metrics", timeout=10).text


def moving_bodies(text: str) -> Iterator[bytes]:
    """Endless expositions of ``text`` whose counters and histograms grow and gauges move, as a TSDB
    sees a live engine (constant values would compress unrealistically well)."""
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    grows = [name.split("{")[0].endswith(("_total", "_bucket", "_count", "_sum")) for name, _ in lines]
    step = 0
    while True:
        step += 1
        yield "".join(
            f"{name} {float(v) + step * 3 if g else float(v) + step % 7}\n"
            for (name, v), g in zip(lines, grows, strict=True)
        ).encode()


def serve_engines(count: int, body_file: str, vary: bool = False) -> None:
    """Child process: ``count`` HTTP/1.1 keep-alive servers answering every GET with the body."""
    text = Path(body_file).read_text()
    bodies = moving_bodies(text) if vary else None

    def response() -> bytes:
        body = next(bodies) if bodies else text.encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    break
                writer.write(response())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        ports = []
        for _ in range(count):
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
            ports.append(server.sockets[0].getsockname()[1])
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(targets: list[str], exporters: list[str], duration: float, concurrency: int) -> int:
    """Successful probes (the engine is up) in ``duration`` seconds; fails past 1% failed probes."""
    shard_of = [exporters[prometheus_hashmod(t, len(exporters))] for t in targets]
    done = failed = 0
    reasons: Counter[str] = Counter()
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal done, failed
            i = offset
            while time.monotonic() < stop_at:
                t = i % len(targets)
                i += concurrency
                try:
                    r = await client.get(shard_of[t] + "/probe", params={"target": targets[t]})
                except httpx.TransportError as exc:  # e.g. a keep-alive connection the exporter just closed
                    failed += 1
                    reasons[type(exc).__name__] += 1
                    continue
                if r.status_code == 200 and "llm_engine_up 1" in r.text:
                    done += 1
                else:
                    failed += 1
                    reason = re.search(r'llm_engine_probe_error\{reason="(\w+)"', r.text)
                    reasons[reason.group(1) if reason else str(r.status_code)] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    if failed > 0.05 * (done + failed):
        raise RuntimeError(f"{failed} of {done + failed} probes failed: {dict(reasons)}")
    if failed:
        print(f"  ({failed} of {done + failed} probes failed on this busy machine: {dict(reasons)})")
    return done


def measure(shards: int, targets: list[str], args: argparse.Namespace) -> tuple[float, float]:
    """(median probes/s, exporter CPU ms per probe) with ``shards`` exporter processes."""
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(observer_server("engine-exporter")) for _ in range(shards)]
        urls = [url for url, _ in servers]
        pids = [proc.proc.pid for _, proc in servers]
        asyncio.run(drive(targets, urls, 2, args.concurrency))  # warm up: connections, allow-list cache
        rates, cpu_per_probe = [], []
        for _ in range(args.rounds):
            cpu0 = sum(cpu_seconds(p) for p in pids)
            t0 = time.perf_counter()
            done = asyncio.run(drive(targets, urls, args.duration, args.concurrency))
            elapsed = time.perf_counter() - t0
            rates.append(done / elapsed)
            cpu_per_probe.append((sum(cpu_seconds(p) for p in pids) - cpu0) / done * 1000)
    return statistics.median(rates), statistics.median(cpu_per_probe)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", type=int, default=200)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--exposition", help="an engine /metrics capture (default: the simulator's, after load)")
    ap.add_argument("--serve-engines", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--body", help=argparse.SUPPRESS)
    ap.add_argument("--vary", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_engines:
        serve_engines(args.serve_engines, args.body, args.vary)
        return

    text = Path(args.exposition).read_text() if args.exposition else simulated_exposition()
    body_file = Path(f"/tmp/engine-exporter-shards-{os.getpid()}.txt")
    body_file.write_text(text)
    fleet = subprocess.Popen(
        [sys.executable, __file__, "--serve-engines", str(args.engines), "--body", str(body_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fleet.stdout is not None
        targets = [f"127.0.0.1:{p}" for p in json.loads(fleet.stdout.readline())]
        with observer_server("engine-exporter") as (exporter, _):
            normalized = httpx.get(exporter + "/probe", params={"target": targets[0]}, timeout=10).text
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work shares them)")
        print(
            f"engine exposition: {series(text)} series ({len(text) / 1024:.0f} KiB) -> "
            f"{series(normalized)} normalized llm_* series per probe; {len(targets)} distinct engines, "
            f"{args.concurrency} concurrent probes, {os.cpu_count()} CPU cores on this machine"
        )
        results = {}
        for shards in args.shards:
            rate, cpu_ms = measure(shards, targets, args)
            results[shards] = rate
            print(
                f"{shards} exporter shard(s): {rate:,.0f} probes/s "
                f"(median of {args.rounds} x {args.duration:.0f} s), "
                f"exporter CPU {cpu_ms:.2f} ms per probe -> {1000 / cpu_ms:,.0f} probes/s per core"
            )
        if 1 in results and 2 in results:
            print(f"2 shards / 1 shard: {results[2] / results[1]:.2f}x")
    finally:
        fleet.terminate()
        fleet.wait(10)
        body_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
