"""Collector soak: valid OTLP at a fixed span rate mixed with hostile traffic; RSS and sockets sampled.

Valid: 512-span protobuf batches (the shape of benchmarks/collector.py) paced to --rate spans/s, with
the write token. Hostile, all the time, from other threads: gzip bombs, 2 MiB JSON object bombs, 50k-deep
JSON, 50k-span protobuf bodies, wrong tokens, oversized and forged webhooks, garbage bytes, and
--slowloris connections trickling request heads (re-opened as the server cuts them). Every --sample
seconds: spans/s accepted, the server's RSS, its open sockets, /healthz latency and the status codes.
Pass: RSS and sockets flat (slope of the second half near 0), no 5xx to valid traffic, /healthz up.

    python benchmarks/collector_soak.py [--duration 120] [--rate 5000] [--backend sqlite|postgresql]
    python benchmarks/collector_soak.py --duration 1800      # the 30-minute run
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from collector import fresh, template_batch
from support import observer_server, temporary_database

WRITE, METRICS = "soak-write-token", "soak-metrics-token"
PB = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {WRITE}"}
JS = {"Content-Type": "application/json", "Authorization": f"Bearer {WRITE}"}


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd).startswith("socket:")
    return n


def hostile_bodies() -> list[tuple[str, str, bytes, dict[str, str]]]:
    deep = b'{"resourceSpans":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    spans = b"".join([b"\x0a\x06\x12\x04\x12\x00\x12\x00"] * 26_000)  # 52k empty spans in 0.2 MiB
    return [
        (
            "gzip bomb",
            "/v1/traces",
            gzip.compress(b'{"resourceSpans":[' + b"{}," * 14_000_000 + b"{}]}"),
            {**JS, "Content-Encoding": "gzip"},
        ),
        ("json objects", "/v1/traces", b'{"resourceSpans":[' + b"{}," * 700_000 + b"{}]}", JS),
        ("deep json", "/v1/traces", deep, JS),
        ("many spans", "/v1/traces", spans, PB),
        ("garbage", "/v1/traces", os.urandom(4096), PB),
        ("wrong token", "/v1/traces", b"", {**PB, "Authorization": "Bearer nope"}),
        ("big webhook", "/api/v1/alerts/webhook", b'{"alerts":[],"x":"' + b"a" * 3_000_000 + b'"}', JS),
        (
            "forged resolve",
            "/api/v1/alerts/webhook",
            b'{"alerts":[{"status":"resolved","labels":{"alertname":"X"},"fingerprint":"0000000000000000"}]}',
            JS,
        ),
        ("deep feedback", "/api/v1/feedback", b"[" * 100_000 + b"]" * 100_000, JS),
    ]


class Soak:
    def __init__(self, base: str, pid: int, args: argparse.Namespace) -> None:
        self.base, self.pid, self.args = base, pid, args
        self.port = int(base.rsplit(":", 1)[1])
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.spans = 0
        self.valid_codes: collections.Counter[int] = collections.Counter()
        self.hostile_codes: collections.Counter[str] = collections.Counter()
        self.health_ms: list[float] = []
        self.slowloris_reopened = 0

    def valid_sender(self, payload: bytes, per_batch: int, rate_share: float) -> None:
        interval = per_batch / rate_share
        previous = [os.urandom(8)]
        next_at = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self.stop.is_set():
                body = fresh(payload, previous)
                try:
                    code = client.post("/v1/traces", content=body, headers=PB).status_code
                except httpx.HTTPError:
                    code = 0
                with self.lock:
                    self.valid_codes[code] += 1
                    if code == 200:
                        self.spans += per_batch
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def hostile_sender(self, bodies: list[tuple[str, str, bytes, dict[str, str]]]) -> None:
        i = 0
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self.stop.is_set():
                name, path, body, headers = bodies[i % len(bodies)]
                i += 1
                try:
                    code = str(client.post(path, content=body, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with self.lock:
                    self.hostile_codes[f"{name}: {code}"] += 1
                time.sleep(1 / self.args.hostile_rate)

    def slowloris(self) -> None:
        socks: list[socket.socket] = []
        while not self.stop.is_set():
            while len(socks) < self.args.slowloris:
                try:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
                    socks.append(s)
                    self.slowloris_reopened += 1
                except OSError:
                    break
            alive = []
            for s in socks:
                try:
                    s.sendall(b"X-a: b\r\n")
                    alive.append(s)
                except OSError:
                    s.close()
            socks = alive
            time.sleep(1)
        for s in socks:
            s.close()

    def health(self) -> float:
        t = time.perf_counter()
        try:
            ok = httpx.get(self.base + "/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        ms = (time.perf_counter() - t) * 1000
        return ms if ok else float("inf")


def run(base: str, pid: int, args: argparse.Namespace) -> list[dict]:
    soak = Soak(base, pid, args)
    payload, per_batch = template_batch(), 512
    threads = [
        threading.Thread(
            target=soak.valid_sender, args=(payload, per_batch, args.rate / args.senders), daemon=True
        )
        for _ in range(args.senders)
    ]
    bodies = hostile_bodies()
    threads += [threading.Thread(target=soak.hostile_sender, args=(bodies,), daemon=True) for _ in range(2)]
    if args.slowloris:
        threads.append(threading.Thread(target=soak.slowloris, daemon=True))
    for t in threads:
        t.start()
    samples: list[dict] = []
    start = time.monotonic()
    last_spans, last_t = 0, start
    print(
        f"{'t (s)':>6} {'spans/s':>8} {'RSS MiB':>8} {'sockets':>8} {'healthz ms':>10} {'valid non-200':>13}"
    )
    while time.monotonic() - start < args.duration:
        time.sleep(args.sample)
        now = time.monotonic()
        with soak.lock:
            spans, bad = soak.spans, sum(n for code, n in soak.valid_codes.items() if code != 200)
        sample = {
            "t": now - start,
            "spans_per_s": (spans - last_spans) / (now - last_t),
            "rss": proc_status(pid, "VmRSS"),
            "sockets": open_sockets(pid),
            "health_ms": soak.health(),
            "valid_errors": bad,
        }
        last_spans, last_t = spans, now
        samples.append(sample)
        print(
            f"{sample['t']:6.0f} {sample['spans_per_s']:8.0f} {sample['rss']:8.0f} {sample['sockets']:8d} "
            f"{sample['health_ms']:10.0f} {bad:13d}",
            flush=True,
        )
    soak.stop.set()
    for t in threads:
        t.join(timeout=70)
    print("\nvalid responses:", dict(soak.valid_codes))
    print("hostile responses:")
    for key, n in sorted(soak.hostile_codes.items()):
        print(f"  {key}: {n}")
    print(f"slowloris connections opened: {soak.slowloris_reopened}")
    return samples


def slope_per_10min(samples: list[dict], key: str) -> float:
    """Least-squares slope of the second half (after warm-up), in units per 10 minutes."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return float("nan")
    xs, ys = [s["t"] for s in half], [s[key] for s in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 600 if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--rate", type=float, default=5000, help="valid spans/s to offer")
    ap.add_argument("--senders", type=int, default=3)
    ap.add_argument("--hostile-rate", type=float, default=4, help="hostile requests/s per hostile thread (2)")
    ap.add_argument("--slowloris", type=int, default=300, help="trickling connections kept open")
    ap.add_argument("--sample", type=float, default=10, help="seconds between samples")
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    env = {"OBSERVER_COLLECTOR__AUTH_TOKEN": WRITE, "OBSERVER_COLLECTOR__METRICS_TOKEN": METRICS}
    with contextlib.ExitStack() as stack:
        if args.backend == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp()}/soak.db"
        else:
            url = stack.enter_context(temporary_database())
        base, proc = stack.enter_context(
            observer_server("serve", "--db", url, ready_path="/healthz", env=env)
        )
        samples = run(base, proc.proc.pid, args)
    warm = samples[len(samples) // 2 :] or samples
    rss = [s["rss"] for s in samples]
    health = [s["health_ms"] for s in samples]
    print(
        f"\n{args.backend}, {args.duration:.0f} s, offered {args.rate:.0f} valid spans/s + hostile traffic: "
        f"accepted {statistics.median(s['spans_per_s'] for s in warm):,.0f} spans/s "
        "(median of the second half); "
        f"RSS start {rss[0]:.0f} / peak {max(rss):.0f} / end {rss[-1]:.0f} MiB, "
        f"second-half slope {slope_per_10min(samples, 'rss'):+.1f} MiB per 10 min; "
        f"sockets median {statistics.median(s['sockets'] for s in samples):.0f} "
        f"(slope {slope_per_10min(samples, 'sockets'):+.1f} per 10 min); "
        f"/healthz max {max(health):.0f} ms; valid non-200: {samples[-1]['valid_errors']}"
    )


if __name__ == "__main__":
    main()
