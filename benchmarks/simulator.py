"""How many concurrent streams and generated tokens/s one simulator process sustains.

The simulator runs in its own process with the step-time model off (speed factor 0), so the figure
is the CPU cost of scheduling + SSE streaming. The client counts SSE events without JSON parsing to
keep its own share of the 2 cores small. Target (issue): >= 2,000 tokens/s across >= 200 streams.

    python benchmarks/simulator.py [--streams 200 400] [--tokens 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import simulator

_MARKER = b'"delta":{"content":'


async def one_stream(host: str, port: int, body: bytes) -> int:
    """One streamed chat completion over a raw connection; returns the content events received.

    A raw asyncio client, not httpx: httpx's pool does work per open connection on response events,
    and against a stand-in server that does nothing but write the same SSE chunks, its per-token CPU
    grew 1.4x and its wall time 2.5x from 200 to 400 streams: the old benchmark measured its own client
    (12,955 -> 6,307 tok/s). This client's cost per token is flat.
    """
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    got, tail = 0, b""
    while chunk := await reader.read(65536):
        data = tail + chunk
        got += data.count(_MARKER)
        tail = data[-(len(_MARKER) - 1) :]  # a marker split across reads is counted once
    writer.close()
    return got


async def run(base: str, streams: int, tokens: int) -> tuple[float, int, float]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "benchmark " * 20}],
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    start = time.perf_counter()
    counts = await asyncio.gather(*(one_stream(host, int(port), body) for _ in range(streams)))
    elapsed = time.perf_counter() - start
    return sum(counts) / elapsed, sum(counts), elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--tokens", type=int, default=100, help="generated tokens per stream")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    flags = (
        "--speed-factor",
        "0",
        "--num-gpu-blocks",
        "200000",
        "--max-num-seqs",
        "1024",
        "--max-num-batched-tokens",
        "65536",
    )
    print(f"simulator, speed factor 0, {args.tokens} tokens per stream, median of {args.repeats} rounds")
    print("  (stream counts interleave round by round so each sees the same machine load; on a shared")
    print(
        "  machine compare server CPU per 1k tokens: it is what grows if the simulator's cost is superlinear)"
    )
    rates: dict[int, list[float]] = {n: [] for n in args.streams}
    server_cpu: dict[int, list[float]] = {n: [] for n in args.streams}
    client_cpu: dict[int, list[float]] = {n: [] for n in args.streams}
    with simulator(*flags) as (base, proc):
        pid = proc.proc.pid
        asyncio.run(run(base, 20, 10))  # warm up
        for _ in range(args.repeats):
            for streams in args.streams:
                cpu_before, own_before = process_cpu_s(pid), time.process_time()
                rate, total, _elapsed = asyncio.run(run(base, streams, args.tokens))
                server_cpu[streams].append((process_cpu_s(pid) - cpu_before) / total * 1000)
                client_cpu[streams].append((time.process_time() - own_before) / total * 1000)
                assert total == streams * args.tokens, f"lost tokens: {total} != {streams * args.tokens}"
                rates[streams].append(rate)
    for streams in args.streams:
        median = statistics.median(rates[streams])
        print(
            f"  {streams:4d} concurrent streams: {median:8.0f} generated tokens/s "
            f"(min {min(rates[streams]):.0f}, max {max(rates[streams]):.0f}); server CPU "
            f"{statistics.median(server_cpu[streams]) * 1000:.0f} ms per 1k tokens (client "
            f"{statistics.median(client_cpu[streams]) * 1000:.0f} ms); target >= 2000 -> "
            f"{'OK' if median >= 2000 else 'MISSED'}"
        )


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
