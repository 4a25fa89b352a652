"""Engine exporter under hostile concurrency (issue 13): figures for the findings the hardening fixed.

1. Starvation: 64 dead targets (they accept connections and never answer) probed with 8 s deadlines,
   twice each, while a live engine is probed 100 times: its success rate and latency (median, p99),
   against the same probes with no dead targets.
2. Deadlines: one 0.4 s probe of an engine that answers in 0.7 s, then 15 overlapping 1.5 s probes:
   how many of the 15 read up 1 (the shared fetch must not inherit the short deadline).
3. Parse cost: a ~30 MB exposition (~550k series) probed while /metrics and a small engine are
   polled: the probe's answer and duration, and the worst /metrics and small-probe latency meanwhile.

    python benchmarks/engine_exporter_concurrency.py [--checkout DIR]

``--checkout DIR`` runs the exporter from another source tree (e.g. a ``git archive`` of an older
commit) to compare before and after on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import Process, observer_cmd, wait_http

from observer.netutil import free_port

FIXTURE = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "engines" / "vllm-0.11.txt"
).read_bytes()
HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


class Engine:
    def __init__(self, body: bytes = FIXTURE, delay_s: float = 0.0) -> None:
        self.fetches = 0
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                engine.fetches += 1
                if delay_s:
                    time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def exporter(checkout: Path | None, env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    proc = Process(
        observer_cmd("engine-exporter", "--listen", f"127.0.0.1:{port}"),
        "engine-exporter",
        env=env,
        cwd=str(checkout) if checkout else None,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc.proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


async def timed_probe(client: httpx.AsyncClient, base: str, target: str, header: float) -> tuple[bool, float]:
    start = time.monotonic()
    r = await client.get(base + "/probe", params={"target": target}, headers={HEADER: str(header)})
    return "llm_engine_up 1.0" in r.text, time.monotonic() - start


def starvation(checkout: Path | None) -> None:
    engine = Engine()
    dead = []
    for _ in range(64):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(256)
        dead.append(s)
    dead_urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in dead]

    async def run(flood: bool) -> tuple[int, list[float]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:
            await timed_probe(client, base, engine.url, 3)  # the live engine has answered before
            hostile = None
            if flood:
                hostile = asyncio.gather(*(timed_probe(client, base, u, 8.5) for u in dead_urls * 2))
                await asyncio.sleep(0.5)
            results = []
            for _ in range(10):  # 10 waves of 10 concurrent probes, like 10 Prometheus jobs
                results += await asyncio.gather(
                    *(timed_probe(client, base, engine.url, 3) for _ in range(10))
                )
            if hostile is not None:
                await hostile
        return sum(ok for ok, _ in results), [t for _, t in results]

    try:
        with exporter(checkout) as base:
            for flood in (False, True):
                ok, latencies = asyncio.run(run(flood))
                label = "with 64 dead targets x2" if flood else "alone                  "
                print(
                    f"  live engine {label}: {ok}/100 up, latency median "
                    f"{statistics.median(latencies) * 1000:.0f} ms, p99 {p99(latencies) * 1000:.0f} ms"
                )
    finally:
        engine.stop()
        for s in dead:
            s.close()


def deadlines(checkout: Path | None) -> None:
    engine = Engine(delay_s=0.7)

    async def run() -> tuple[bool, list[bool]]:
        async with httpx.AsyncClient(timeout=60) as client:
            short = asyncio.create_task(timed_probe(client, base, engine.url, 0.9))
            await asyncio.sleep(0.1)
            normal = await asyncio.gather(*(timed_probe(client, base, engine.url, 2.0) for _ in range(15)))
            return (await short)[0], [ok for ok, _ in normal]

    try:
        with exporter(checkout) as base:
            short_ok, normal = asyncio.run(run())
        print(
            f"  0.4 s probe up={int(short_ok)}; overlapping 1.5 s probes up: {sum(normal)}/15 "
            f"(engine fetched {engine.fetches}x)"
        )
    finally:
        engine.stop()


def huge_exposition() -> bytes:
    line = 'vllm:num_requests_running{{model_name="org/model-{:07d}",engine="0"}} 1\n'
    n = 30 * 1024 * 1024 // len(line.format(0))
    return ("# TYPE vllm:num_requests_running gauge\n" + "".join(line.format(i) for i in range(n))).encode()


def parse_cost(checkout: Path | None) -> None:
    body = huge_exposition()
    huge, small = Engine(body), Engine()

    async def run() -> tuple[str, float, list[float], list[float]]:
        async with httpx.AsyncClient(timeout=120) as client:
            await client.get(base + "/probe", params={"target": small.url})
            start = time.monotonic()
            big = asyncio.create_task(client.get(base + "/probe", params={"target": huge.url}))
            metrics, probes = [], []
            while not big.done():
                t = time.monotonic()
                await client.get(base + "/metrics")
                metrics.append(time.monotonic() - t)
                probes.append((await timed_probe(client, base, small.url, 10))[1])
                await asyncio.sleep(0.05)
            answer = (await big).text
            return answer, time.monotonic() - start, metrics, probes

    try:
        with exporter(checkout, env={"OBSERVER_ENGINE_EXPORTER__DEFAULT_TIMEOUT_S": "60"}) as base:
            answer, took, metrics, probes = asyncio.run(run())
        series = sum(1 for line in answer.splitlines() if line and not line.startswith("#"))
        error = next((line for line in answer.splitlines() if line.startswith("llm_engine_probe_error")), "")
        print(
            f"  {len(body) / 2**20:.0f} MB exposition: answered in {took:.2f} s with {series} series {error}"
        )
        print(
            f"  meanwhile: /metrics worst {max(metrics) * 1000:.0f} ms, small-engine probe worst "
            f"{max(probes) * 1000:.0f} ms ({len(metrics)} polls)"
        )
    finally:
        huge.stop()
        small.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, help="run the exporter from this source tree instead")
    args = ap.parse_args()
    checkout = args.checkout.resolve() if args.checkout else None
    print(f"exporter from {checkout or 'this tree'}")
    print("1. dead targets vs a live one (default 64 fetch slots)")
    starvation(checkout)
    print("2. overlapping probes with different deadlines")
    deadlines(checkout)
    print("3. a 30 MB exposition")
    parse_cost(checkout)


if __name__ == "__main__":
    main()
