"""GPU exporter cost: collect cycle and scrape for 8 fake GPUs x 8 processes, and CPU per hour.

1. In-process: a collect cycle (per-GPU worker tasks, error isolation, render of both naming modes)
   minus the time spent inside the fake NVML calls = the exporter's own overhead per cycle. Every
   cycle takes a GPM sample per GPU and computes activity from the previous one (gpm_min_span_s 0),
   as a 1 s interval does on Hopper; ``--no-gpm`` measures the same node as pre-Hopper GPUs.
2. Scrape: over HTTP against a real exporter process (the snapshot is pre-rendered, so a scrape is
   a memory copy plus the process collector).
3. CPU seconds per hour of that process at a 1 s sampling interval, read from its own
   process_cpu_seconds_total over a 30 s window. Targets: scrape < 5 ms median, < 1% of one core.

    python benchmarks/gpu_exporter.py [--cycles 300] [--window 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import observer_server, scrape

from exporters.gpu.fake import FakeNvml
from exporters.gpu.sampler import GpuSampler
from observer.config import GpuExporterSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--no-gpm", action="store_true", help="GPUs without GPM (A100-like)")
    args = ap.parse_args()

    fake = FakeNvml(8, processes_per_gpu=8, load=lambda: 0.6)
    if args.no_gpm:
        for i in range(8):
            fake.without_gpm(i)
    settings = GpuExporterSettings(hostname="bench", gpm_min_span_s=0)
    sampler = GpuSampler(fake, settings, native=True, dcgm=True)
    sampler.collect()
    walls, inside, cpus = [], [], []
    for _ in range(args.cycles):
        before = fake.call_seconds
        cpu0, start = time.process_time(), time.perf_counter()
        sampler.collect()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu0)  # all threads: less sensitive to a busy machine than wall
        inside.append(fake.call_seconds - before)
    renders = []
    for _ in range(args.cycles):
        cpu0 = time.process_time()
        sampler.render(sampler.snapshot)
        renders.append(time.process_time() - cpu0)
    sampler.stop()
    overhead = [w - i for w, i in zip(walls, inside, strict=True)]
    series = sum(1 for line in sampler.text.splitlines() if line and not line.startswith("#"))
    print(
        f"8 fake GPUs x 8 processes, native + dcgm names, GPM {'off' if args.no_gpm else 'on'}: "
        f"{series} series, {len(sampler.text) / 1024:.0f} KiB per scrape (exporter part)"
    )
    print(
        f"collect cycle: median {statistics.median(walls) * 1000:.2f} ms wall, of which fake NVML calls "
        f"{statistics.median(inside) * 1000:.2f} ms -> exporter overhead "
        f"{statistics.median(overhead) * 1000:.2f} ms; CPU {statistics.median(cpus) * 1000:.2f} ms per "
        f"cycle, of which rendering both namings {statistics.median(renders) * 1000:.2f} ms"
    )

    flags = ("--fake-gpus", "8", "--fake-processes", "8", "--dcgm-compat", "--interval", "1")
    with observer_server("gpu-exporter", *flags) as (base, _):
        with httpx.Client() as client:
            for _ in range(20):
                client.get(base + "/metrics")
            scrapes = []
            for _ in range(300):
                start = time.perf_counter()
                client.get(base + "/metrics")
                scrapes.append(time.perf_counter() - start)
        print(
            f"scrape over HTTP: median {statistics.median(scrapes) * 1000:.2f} ms, "
            f"p99 {sorted(scrapes)[int(0.99 * len(scrapes))] * 1000:.2f} ms (target < 5 ms median)"
        )
        time.sleep(2)
        cpu0 = scrape(base + "/metrics")["process_cpu_seconds_total"][()]
        t0 = time.monotonic()
        time.sleep(args.window)
        cpu1 = scrape(base + "/metrics")["process_cpu_seconds_total"][()]
        elapsed = time.monotonic() - t0
    per_hour = (cpu1 - cpu0) / elapsed * 3600
    print(
        f"CPU at a 1 s interval: {per_hour:.1f} CPU-seconds per hour = {per_hour / 36:.2f}% of one core "
        f"(target < 1%; measured over {elapsed:.0f} s, 2 scrapes)"
    )


if __name__ == "__main__":
    main()
