"""Engine exporter cost: probe latency for a 5,000-series exposition, and 100 concurrent probes.

1. In-process: parse + normalize + render of a vLLM exposition with 5,000 series (LoRA models x DP
   ranks), median and p99 over many runs, against prometheus_client's own text parser alone on the
   same input (the baseline ratio). Target: median < 50 ms.
2. Over HTTP: a real exporter process, 100 concurrent probes spread over 10 targets serving that
   exposition. Target: all finish in < 2 s.

    python benchmarks/engine_exporter.py [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import observer_server

from exporters.engine.normalize import normalize, render_probe
from observer.catalog import VLLM_V1, make_metric, vllm_request_tokens_buckets
from observer.netutil import free_port


def big_exposition(models: int = 10, ranks: int = 2) -> str:
    registry = CollectorRegistry()
    token_buckets = vllm_request_tokens_buckets(32768)
    for s in VLLM_V1:
        if s.name == "vllm:cache_config_info":
            continue
        metric = make_metric(
            s, registry, buckets=token_buckets if s.type == "histogram" and not s.buckets else None
        )
        for m in range(models):
            for r in range(ranks):
                labels = {"model_name": f"org/base-model-lora-{m:02d}", "engine": str(r)}
                if "finished_reason" in s.labels:
                    for reason in ("stop", "length", "abort", "error", "repetition"):
                        metric.labels(finished_reason=reason, **labels).inc(m + 1)
                elif s.type == "histogram":
                    metric.labels(**labels).observe(0.05 * (m + 1))
                elif s.type == "counter":
                    metric.labels(**labels).inc(1000 * (m + 1))
                else:
                    metric.labels(**labels).set(0.5)
    return generate_latest(registry).decode()


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()

    text = big_exposition()
    n = series_count(text)
    ours = timed(lambda: render_probe(normalize(text), True, 0.0), args.runs)
    theirs = timed(
        lambda: [list(f.samples) for f in text_string_to_metric_families(text)], max(20, args.runs // 5)
    )
    print(f"exposition: {n} series, {len(text) / 1024:.0f} KiB")
    print(
        f"probe (parse + normalize + render): median {statistics.median(ours) * 1000:.1f} ms, "
        f"p99 {p(ours, 99) * 1000:.1f} ms  (target median < 50 ms)"
    )
    print(
        f"prometheus_client parser alone:     median {statistics.median(theirs) * 1000:.1f} ms  "
        f"-> ours is {statistics.median(theirs) / statistics.median(ours):.1f}x faster than the baseline"
    )

    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default backlog of 5 resets connections under a burst

    server = Server(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    async def burst(exporter: str, distinct: int = 10) -> float:
        targets = [f"http://127.0.0.1:{port}/engine-{i}" for i in range(distinct)]
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            start = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    client.get(exporter + "/probe", params={"target": targets[i % distinct]})
                    for i in range(100)
                )
            )
            elapsed = time.perf_counter() - start
        failed = [r.text for r in responses if "llm_engine_up 1.0" not in r.text]
        assert not failed, f"{len(failed)} probes failed, first: {failed[0][-300:]}"
        return elapsed

    with observer_server("engine-exporter") as (exporter, _):
        asyncio.run(burst(exporter))  # warm up
        walls = [asyncio.run(burst(exporter)) for _ in range(5)]
        # Without the singleflight sharing: 100 distinct targets, each probe does its own work.
        solo = [asyncio.run(burst(exporter, distinct=100)) for _ in range(3)]
    server.shutdown()
    print(
        f"100 concurrent probes of 10 targets ({n} series each): median {statistics.median(walls):.2f} s "
        f"(min {min(walls):.2f}, max {max(walls):.2f}; target < 2 s)"
    )
    print(
        f"100 concurrent probes of 100 distinct targets (no sharing): median {statistics.median(solo):.2f} s "
        "(one exporter process uses one core)"
    )


if __name__ == "__main__":
    main()
