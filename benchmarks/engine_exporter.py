"""Engine exporter cost: probe latency for a 5,000-series exposition, and 100 concurrent probes.

1. In-process: parse + normalize + render of the real vLLM 0.32 capture and of a synthetic vLLM
   exposition with ~5,500 series (LoRA adapters x DP ranks x every family), median and p99 over many
   runs, against prometheus_client's own text parser alone on the same input (the baseline ratio;
   the script fails below 3x). Target: median < 50 ms.
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

REAL_VLLM = Path(__file__).resolve().parents[1] / "tests/fixtures/engines/real/vllm-0.32.0-load.txt"


def big_exposition(models: int = 10, ranks: int = 2) -> str:
    """Every vLLM family the simulator knows, for ``models`` LoRA adapters x ``ranks`` DP ranks."""
    registry = CollectorRegistry()
    token_buckets = vllm_request_tokens_buckets(32768)
    for s in VLLM_V1:
        if s.name == "vllm:cache_config_info":
            continue
        metric = make_metric(
            s, registry, buckets=token_buckets if s.type == "histogram" and not s.buckets else None
        )
        extra = [name for name in s.labels if name not in ("model_name", "engine")]
        for m in range(models):
            for r in range(ranks if "engine" in s.labels else 1):
                labels = {"model_name": f"org/base-model-lora-{m:02d}"}
                if "engine" in s.labels:
                    labels["engine"] = str(r)
                values = ("stop", "length", "abort", "error", "repetition") if extra else ("",)
                for value in values:
                    child = metric.labels(**labels, **dict.fromkeys(extra, value))
                    if s.type == "histogram":
                        child.observe(0.05 * (m + 1))
                    elif s.type == "counter":
                        child.inc(1000 * (m + 1))
                    else:
                        child.set(0.5)
    return generate_latest(registry).decode()


def compare(label: str, text: str, runs: int) -> float:
    """Median probe cost against prometheus_client's parser alone on the same text; returns the ratio."""
    ours = timed(lambda: render_probe(normalize(text), True, 0.0), runs)
    theirs = timed(
        lambda: [list(f.samples) for f in text_string_to_metric_families(text)], max(20, runs // 5)
    )
    ratio = statistics.median(theirs) / statistics.median(ours)
    print(f"{label}: {series_count(text)} series, {len(text) / 1024:.0f} KiB")
    print(
        f"  probe (parse + normalize + render): median {statistics.median(ours) * 1000:.2f} ms, "
        f"p99 {p(ours, 99) * 1000:.2f} ms  (target median < 50 ms)"
    )
    print(
        f"  prometheus_client parser alone:     median {statistics.median(theirs) * 1000:.2f} ms  "
        f"-> ours is {ratio:.1f}x faster (keep >= 3x)"
    )
    return ratio


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

    ap.add_argument("--http", action=argparse.BooleanOptionalAction, default=True, help="run part 2")
    args = ap.parse_args()

    text = big_exposition(models=7)  # 7 adapters x 2 ranks x every family: ~5,500 series
    n = series_count(text)
    real = REAL_VLLM.read_text()
    for label, body_text, runs in (
        (f"real vLLM 0.32 capture ({REAL_VLLM.name})", real, args.runs * 5),
        ("synthetic vLLM exposition", text, args.runs),
    ):
        ratio = compare(label, body_text, runs)
        assert ratio >= 3, f"probe lost its margin over prometheus_client's parser: {ratio:.1f}x < 3x"
    if not args.http:
        return
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

    # One server per target: a target is scheme://host:port only (no path), so distinct targets need
    # distinct ports.
    servers = []
    for _ in range(100):
        server = Server(("127.0.0.1", free_port()), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    ports = [server.server_address[1] for server in servers]

    async def burst(exporter: str, distinct: int = 10) -> float:
        targets = [f"http://127.0.0.1:{ports[i]}" for i in range(distinct)]
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
    for server in servers:
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
