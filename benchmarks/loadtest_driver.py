"""The load-test driver's own cost: CPU per request and the highest open-loop rate it holds on one core.

The simulator runs in its own process with the step-time model off (speed factor 0) and a large KV
cache, pinned to the other core when there are two, so it does not share the driver's core. The
driver (this process) is pinned to one core and sends a fixed small request (100-token prompt,
``--tokens`` streamed output tokens) on a Poisson schedule at each rate for ``--duration`` seconds.

Per rate it prints the achieved send rate, how late sends were against the schedule (p50/p99), the
share of requests that succeeded, and the driver's CPU time per request (process CPU, so the
simulator's work is excluded). A rate is "sustained" when the achieved rate is within 5% of the
target, the p99 send lag is under 50 ms and every request succeeded. Target (issue): >= 200 req/s.
``--server stub`` swaps the simulator for a canned-answer server, so only the driver can be the limit
(the simulator's own HTTP front end saturates first on a 2-core machine); ``--transport httpx`` runs
the same driver over httpx, which it uses for https targets.

    python benchmarks/loadtest_driver.py [--rates 100 200 300 400] [--duration 10] [--tokens 16] \\
        [--transport raw httpx] [--server simulator|stub] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import httpx
from support import simulator

from observer.load.generator import percentile
from observer.loadtest.driver import Driver
from observer.loadtest.profiles import Lengths, Profile, Scenario
from observer.netutil import free_port


def stub_response(tokens: int) -> bytes:
    """A vLLM-shaped chunked SSE answer of ``tokens`` tokens, written at once (no model, no pacing)."""
    events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
    events += [
        b'data: {"choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}\n\n'
    ] * tokens
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n')
    events.append(b'data: {"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":%d}}\n\n' % tokens)
    events.append(b"data: [DONE]\n\n")
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def serve_stub(port: int, tokens: int) -> None:
    """The stand-in server: reads a request, writes the canned answer, closes."""
    answer = stub_response(tokens)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            writer.write(answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):  # the readiness probe connects and leaves
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextmanager
def stub_server(tokens: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(port), "--tokens", str(tokens)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(10)


def pin(pid: int, core: int) -> None:
    if hasattr(os, "sched_setaffinity") and core < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {core})


async def one_rate(base: str, model: str, rate: float, duration: float, tokens: int, transport: str) -> dict:
    scenario = Scenario("bench", "chat", Lengths(100, 0, 100, 100), Lengths(tokens, 0, tokens, tokens), 1, 0)
    profile = Profile("bench", [(scenario, 1.0)])
    client = None
    if transport == "httpx":  # the driver uses httpx for https targets or a client it is given
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=2048), timeout=60
        )
    driver = Driver(base, model, profile, request_timeout_s=60, client=client)
    cpu0 = time.process_time()
    result = await driver.run(rate=rate, duration=duration, drain_s=30)
    cpu = time.process_time() - cpu0
    await driver.aclose()
    if client is not None:
        await client.aclose()
    records = result.records
    lags = [r.lag for r in records]
    ok = sum(r.outcome == "success" for r in records)
    achieved = len(records) / result.send_window
    lag99 = percentile(lags, 99) or 0.0
    return {
        "rate": rate,
        "achieved": achieved,
        "lag_p50_ms": (percentile(lags, 50) or 0.0) * 1000,
        "lag_p99_ms": lag99 * 1000,
        "success": ok / len(records) if records else 0.0,
        "cpu_ms_per_request": cpu / len(records) * 1000 if records else float("nan"),
        "ttft_p50_ms": (percentile([r.ttft for r in records if r.ttft is not None], 50) or 0) * 1000,
        "sustained": achieved >= 0.95 * rate and lag99 < 0.05 and ok == len(records),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[100, 200, 300, 400])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=16, help="streamed output tokens per request")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--transport", choices=["raw", "httpx"], nargs="+", default=["raw"])
    ap.add_argument(
        "--server",
        choices=["simulator", "stub"],
        default="simulator",
        help="stub: a canned-answer server, so only the driver can be the limit",
    )
    ap.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_stub:
        serve_stub(args.serve_stub, args.tokens)
        return
    flags = ("--speed-factor", "0", "--num-gpu-blocks", "200000", "--max-num-seqs", "1024")
    server = simulator(*flags) if args.server == "simulator" else stub_server(args.tokens)
    with server as (base, proc):
        pin(getattr(proc, "proc", proc).pid, 1)
        pin(0, 0)
        print(
            f"driver pinned to core 0, {args.server} to core 1 ({os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f}); {args.duration:g}s per rate, {args.tokens} output tokens per request"
        )
        for transport in args.transport:
            print(f"transport {transport}")
            print(
                f"{'target':>7} {'achieved':>9} {'lag p50':>8} {'lag p99':>9} {'success':>8} "
                f"{'CPU/req':>8} {'TTFT p50':>9}  sustained"
            )
            best = 0.0
            cpu_per_req: list[float] = []
            for rate in args.rates:
                runs = [
                    asyncio.run(one_rate(base, "Qwen/Qwen3-8B", rate, args.duration, args.tokens, transport))
                    for _ in range(args.repeats)
                ]
                r = sorted(runs, key=lambda x: x["lag_p99_ms"])[len(runs) // 2]
                med = statistics.median(x["cpu_ms_per_request"] for x in runs)
                cpu_per_req.append(med)
                verdict = "yes" if r["sustained"] else "NO"
                print(
                    f"{rate:7.0f} {r['achieved']:9.1f} {r['lag_p50_ms']:6.2f}ms {r['lag_p99_ms']:7.2f}ms "
                    f"{r['success']:8.1%} {med:6.2f}ms {r['ttft_p50_ms']:7.2f}ms  {verdict}"
                )
                if sum(x["sustained"] for x in runs) * 2 > len(runs):
                    best = max(best, rate)
            cpu = statistics.median(cpu_per_req)
            print(
                f"{transport}: highest sustained rate {best:g} req/s; driver CPU per request {cpu:.2f} ms "
                f"(median over rates), so one core's CPU bound is ~{1000 / cpu:.0f} req/s"
            )


if __name__ == "__main__":
    main()
