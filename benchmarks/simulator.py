"""How many concurrent streams and generated tokens/s one simulator process sustains.

The simulator runs in its own process with the step-time model off (speed factor 0), so the figure
is the CPU cost of scheduling + SSE streaming. The client counts SSE events without JSON parsing to
keep its own share of the 2 cores small. Target (issue): >= 2,000 tokens/s across >= 200 streams.

    python benchmarks/simulator.py [--streams 200 400] [--tokens 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import simulator


async def one_stream(client: httpx.AsyncClient, tokens: int) -> int:
    body = {
        "messages": [{"role": "user", "content": "benchmark " * 20}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    got = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        async for chunk in resp.aiter_text():
            got += chunk.count('"delta":{"content":')
    return got


async def run(base: str, streams: int, tokens: int) -> tuple[float, int, float]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        start = time.perf_counter()
        counts = await asyncio.gather(*(one_stream(client, tokens) for _ in range(streams)))
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
    print(f"simulator, speed factor 0, {args.tokens} tokens per stream, median of {args.repeats} runs")
    with simulator(*flags) as (base, _):
        asyncio.run(run(base, 20, 10))  # warm up
        for streams in args.streams:
            rates = []
            for _ in range(args.repeats):
                rate, total, _elapsed = asyncio.run(run(base, streams, args.tokens))
                assert total == streams * args.tokens, f"lost tokens: {total} != {streams * args.tokens}"
                rates.append(rate)
            print(
                f"  {streams:4d} concurrent streams: {statistics.median(rates):8.0f} generated tokens/s "
                f"(min {min(rates):.0f}, max {max(rates):.0f}); target >= 2000 -> "
                f"{'OK' if statistics.median(rates) >= 2000 else 'MISSED'}"
            )


if __name__ == "__main__":
    main()
