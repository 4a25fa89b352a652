"""Collector scale-out: spans/s with 1, 2 and 4 `observer serve` replicas on one PostgreSQL.

Senders post the 512-span batches of benchmarks/collector.py (``--shape vllm``: 384 requests per
batch, half of them joined; ``--shape split3``: 170 requests of 3 spans, the engine third arriving in
the next batch) round-robin over the replicas, so with ``split3`` the halves of every request land on
different replicas and are joined through the store (the trace's advisory lock). Each configuration
runs ``--repeats`` times on a fresh database; printed: the median accepted spans/s, p50/p99 export
latency, the scaling ratio against one replica, and the CPU spent per 1,000 spans by the replicas
(their process_cpu_seconds_total) and by the PostgreSQL backends serving this database (/proc).
Every replica also runs its scheduler (counting every second, the analytics refresh under the
cluster lock), as in production.

Read the ratio with the machine in mind: the replicas, PostgreSQL and the senders share its cores
(``os.cpu_count()`` is printed); replicas add throughput only where cores are free for them. The CPU
per span is what a busy machine distorts least: it says what each replica and the database cost.

    python benchmarks/collector_replicas.py [--replicas 1 2 4] [--duration 20] [--repeats 3]
        [--senders 4] [--shape vllm|split3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from collector import fresh, split3_batch, template_batch
from support import observer_server, scrape, temporary_database

WARMUP_S = 3.0
TICK_S = os.sysconf("SC_CLK_TCK")


def _replica_cpu_s(bases: list[str]) -> float:
    return sum(scrape(b + "/metrics")["process_cpu_seconds_total"][()] for b in bases)


def _backend_cpu_s(url: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to this database (same machine, /proc)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICK_S  # utime + stime
    return out


def run_once(replicas: int, payload: bytes, per_batch: int, duration: float, senders: int) -> dict:
    with temporary_database() as url, ExitStack() as stack:
        bases = [
            stack.enter_context(observer_server("serve", "--db", url, ready_path="/healthz"))[0]
            for _ in range(replicas)
        ]
        turn = itertools.count()  # shared round-robin: consecutive batches go to different replicas
        accepted, errors = [0], [0]
        latencies: list[float] = []
        measuring, stop = threading.Event(), threading.Event()
        lock = threading.Lock()

        def send() -> None:
            previous = [os.urandom(8)]
            clients = [httpx.Client(base_url=b, timeout=60) for b in bases]
            try:
                while not stop.is_set():
                    body = fresh(payload, previous)
                    client = clients[next(turn) % replicas]
                    t = time.perf_counter()
                    r = client.post(
                        "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
                    )
                    elapsed = time.perf_counter() - t
                    if measuring.is_set():
                        with lock:
                            latencies.append(elapsed)
                            if r.status_code == 200:
                                accepted[0] += per_batch
                            else:
                                errors[0] += 1
            finally:
                for c in clients:
                    c.close()

        threads = [threading.Thread(target=send, daemon=True) for _ in range(senders)]
        for t in threads:
            t.start()
        time.sleep(WARMUP_S)
        cpu0, pg0 = _replica_cpu_s(bases), _backend_cpu_s(url)
        measuring.set()
        start = time.perf_counter()
        time.sleep(duration)
        measuring.clear()
        elapsed = time.perf_counter() - start
        cpu1, pg1 = _replica_cpu_s(bases), _backend_cpu_s(url)
        measured = accepted[0]
        stop.set()
        for t in threads:
            t.join(60)
    latencies.sort()
    pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
    return {
        "spans_per_s": measured / elapsed,
        "collector_ms_per_1k": 1e6 * (cpu1 - cpu0) / max(measured, 1),
        "pg_ms_per_1k": 1e6 * pg_cpu / max(measured, 1),
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan"),
        "errors": errors[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--shape", choices=["vllm", "split3"], default="split3")
    args = ap.parse_args()
    if args.shape == "vllm":
        payload, per_batch = template_batch(), 512
    else:
        payload, per_batch = split3_batch(), 510
    print(
        f"shape {args.shape} ({per_batch} spans/batch), {args.senders} senders round-robin, "
        f"{args.duration:.0f} s x {args.repeats} runs per configuration, {os.cpu_count()} CPU cores "
        "shared by the replicas, PostgreSQL and the senders"
    )
    base = None
    for n in args.replicas:
        runs = [run_once(n, payload, per_batch, args.duration, args.senders) for _ in range(args.repeats)]
        rate = statistics.median(r["spans_per_s"] for r in runs)
        each = ", ".join(f"{r['spans_per_s']:,.0f}" for r in runs)
        base = base or rate
        print(
            f"{n} replica(s): {rate:,.0f} spans/s median "
            f"(runs {each}), "
            f"p50 {statistics.median(r['p50_ms'] for r in runs):.0f} ms, "
            f"p99 {statistics.median(r['p99_ms'] for r in runs):.0f} ms, "
            f"errors {sum(r['errors'] for r in runs)}, scaling ratio {rate / base:.2f}x; "
            "CPU per 1,000 spans: "
            f"collectors {statistics.median(r['collector_ms_per_1k'] for r in runs):.0f} ms, "
            f"PostgreSQL {statistics.median(r['pg_ms_per_1k'] for r in runs):.0f} ms"
        )


if __name__ == "__main__":
    main()
