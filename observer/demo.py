"""``observer demo``: the stack on one machine, no Docker.

Starts each component as its own ``observer`` subprocess on loopback ports (so a crash in one
is visible, not fatal), drives the simulators with synthetic users, and shows a live terminal view
of the key engine signals. Ctrl-C (or ``--duration``) stops everything cleanly.

Components grow with the project: simulators and the load generator now; exporters, the collector,
Prometheus and Alertmanager join as their issues land.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from observer.load.generator import LoadConfig, run_load
from observer.netutil import free_port


@dataclass
class Component:
    name: str
    url: str
    proc: subprocess.Popen
    last: dict[str, float] = field(default_factory=dict)


def _spawn(name: str, args: list[str], host: str = "127.0.0.1") -> Component:
    port = free_port(host)
    proc = subprocess.Popen(
        [sys.executable, "-m", "observer.cli", *args, "--listen", f"{host}:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Component(name, f"http://{host}:{port}", proc)


def _wait_ready(components: list[Component], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for c in components:
        while True:
            if c.proc.poll() is not None:
                raise RuntimeError(f"{c.name} exited with {c.proc.returncode}")
            try:
                if httpx.get(c.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{c.name} did not start")
            time.sleep(0.1)


def _engine_row(c: Component, elapsed: float) -> list[str]:
    try:
        text = httpx.get(c.url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return [c.name, "[red]down", "", "", "", "", ""]
    values: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("vllm:") and not s.name.endswith("_created"):
                key = s.name + ("" if "le" not in s.labels else f"@{s.labels['le']}")
                values[key] = values.get(key, 0.0) + s.value
    prev = c.last or values
    dt = max(elapsed, 1e-6)
    gen_rate = (
        values.get("vllm:generation_tokens_total", 0) - prev.get("vllm:generation_tokens_total", 0)
    ) / dt
    # TTFT p95 over the last interval from bucket deltas, as Prometheus' histogram_quantile does.
    buckets = sorted(
        (float(k.split("@")[1]), v - prev.get(k, 0.0))
        for k, v in values.items()
        if k.startswith("vllm:time_to_first_token_seconds_bucket@") and not k.endswith("+Inf")
    )
    count = values.get("vllm:time_to_first_token_seconds_count", 0) - prev.get(
        "vllm:time_to_first_token_seconds_count", 0
    )
    p95 = next((le for le, n in buckets if count and n >= 0.95 * count), None)
    c.last = values
    kv = values.get("vllm:kv_cache_usage_perc", 0.0)
    kv_style = "red" if kv >= 0.95 else "yellow" if kv >= 0.8 else "green"
    return [
        c.name,
        "[green]up",
        f"{values.get('vllm:num_requests_running', 0):.0f}",
        f"{values.get('vllm:num_requests_waiting', 0):.0f}",
        f"[{kv_style}]{kv:.0%}",
        f"{gen_rate:.0f}",
        "-" if p95 is None else f"<= {p95:g}s",
    ]


async def run_demo(
    engines: int = 2, users: int = 200, rps: float = 4.0, duration: float | None = None
) -> None:
    console = Console()
    sims = [
        _spawn(f"sim-{i}", ["simulate", "--model", model, "--seed", str(i)])
        for i, model in enumerate(
            ["acme/chat-8b", "acme/code-32b"][:engines] + ["acme/chat-8b"] * (engines - 2)
        )
    ]
    components = sims
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        _wait_ready(components)
        for c in components:
            console.print(
                f"[bold]{c.name}[/] {c.url}  (OpenAI API at {c.url}/v1, metrics at {c.url}/metrics)"
            )
        horizon = duration if duration is not None else 10**9
        loads = [
            asyncio.create_task(
                run_load(
                    LoadConfig(
                        target=s.url,
                        users=users,
                        rps=rps / len(sims),
                        duration=horizon,
                        seed=i + 1,
                        grace_s=2,
                    )
                )
            )
            for i, s in enumerate(sims)
        ]
        started = time.monotonic()
        last = started
        with Live(console=console, refresh_per_second=2) as live:
            while not stop.is_set() and (duration is None or time.monotonic() - started < duration):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                now = time.monotonic()
                table = Table(title=f"LLM Observer demo - {now - started:.0f}s (Ctrl-C stops)")
                for col in ("engine", "state", "running", "waiting", "KV cache", "gen tok/s", "TTFT p95"):
                    table.add_column(col, justify="right" if col not in ("engine", "state") else "left")
                for s in sims:
                    table.add_row(*_engine_row(s, now - last))
                last = now
                live.update(table)
        if not stop.is_set():
            await asyncio.wait(loads, timeout=5)  # scripted run: let the generators print their summary
        for task in loads:
            task.cancel()
        results = await asyncio.gather(*loads, return_exceptions=True)
        for s, r in zip(sims, results, strict=True):
            if not isinstance(r, BaseException):
                console.print(f"[bold]{s.name}[/]\n{r.render()}")
    finally:
        for c in components:
            c.proc.terminate()
        for c in components:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                c.proc.kill()
        console.print("demo stopped; every component shut down")
