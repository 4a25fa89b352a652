"""``observer demo``: the stack on one machine, no Docker, with synthetic users and a live view.

Starts :class:`observer.stack.Stack` (simulated engines, exporters with fake GPUs, observer serve on
SQLite, plus Prometheus and Alertmanager when installed), drives every engine with the synthetic
company (users in departments with daily habits, gateway spans, feedback), prints the URLs and
keeps a terminal view of the key panels and firing alerts. Ctrl-C or ``--duration`` stops
everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Literal

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from observer.load.generator import LoadConfig, run_load
from observer.promql import instant_query
from observer.stack import Stack, StackOptions


def _query(prom: str, expr: str) -> list[dict]:
    try:
        return instant_query(prom, expr, timeout=3)
    except (httpx.HTTPError, ValueError):  # the view shows "-" until Prometheus has data
        return []


def _value(results: list[dict], default: str = "-", fmt: str = "{:.0f}") -> str:
    return fmt.format(float(results[0]["value"][1])) if results else default


def _by(results: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def view(stack: Stack, elapsed: float) -> Group:
    prom = stack.query_url
    engines = Table(title=f"LLM Observer demo - {elapsed:.0f}s (Ctrl-C stops)", expand=True)
    for col in ("engine", "model", "up", "running", "waiting", "KV cache", "gen tok/s", "TTFT p95"):
        engines.add_column(col, justify="left" if col in ("engine", "model") else "right")
    tables: list[Table] = [engines]
    if prom is None:
        engines.add_row("(Prometheus not installed: run `make demo`, which installs it)", *[""] * 7)
        return Group(*tables)
    up = _by(_query(prom, "llm_engine_up"), "instance")
    running = _by(_query(prom, "sum by (instance) (llm_requests_running)"), "instance")
    waiting = _by(_query(prom, "sum by (instance) (llm_requests_waiting)"), "instance")
    kv = _by(_query(prom, "max by (instance) (llm_kv_cache_usage_ratio)"), "instance")
    gen = _by(_query(prom, "sum by (instance) (rate(llm_generation_tokens_total[30s]))"), "instance")
    ttft = _by(_query(prom, "max by (instance) (llm:time_to_first_token_seconds:p95_5m)"), "instance")
    models = {r["metric"]["instance"]: r["metric"].get("model", "") for r in _query(prom, "llm_engine_info")}
    for i, e in enumerate(stack.engines):
        inst = e.url.removeprefix("http://")
        k = kv.get(inst)
        slo = stack.options.settings.slo  # the alert thresholds, as on the dashboards
        style = (
            "red"
            if k and k > slo.kv_cache_critical_ratio
            else "yellow"
            if k and k > slo.kv_cache_warning_ratio
            else "green"
        )
        engines.add_row(
            f"engine-{i}",
            models.get(inst, ""),
            "[green]1" if up.get(inst) == 1 else "[red]0",
            f"{running.get(inst, 0):.0f}",
            f"{waiting.get(inst, 0):.0f}",
            f"[{style}]{k:.0%}" if k is not None else "-",
            f"{gen.get(inst, 0):.0f}",
            f"{ttft[inst]:.2f}s" if inst in ttft and ttft[inst] == ttft[inst] else "-",
        )
    business = Table(title="Fleet, users and cost", expand=True)
    for col in (
        "GPUs up",
        "GPU util",
        "power",
        "DAU",
        "MAU",
        "DAU/MAU",
        "requests (traces)",
        "self-hosted $/1M tok",
        "public API $/1M tok",
    ):
        business.add_column(col, justify="right")
    business.add_row(
        _value(_query(prom, "sum(gpu_up)")),
        _value(_query(prom, "avg(gpu_utilization_ratio)"), fmt="{:.0%}"),
        _value(_query(prom, "sum(gpu_power_watts)"), fmt="{:.0f} W"),
        _value(_query(prom, 'sum(llm_active_users{window="1d"})')),
        _value(_query(prom, 'sum(llm_active_users{window="30d"})')),
        _value(_query(prom, "max(llm_users_stickiness_ratio)"), fmt="{:.2f}"),
        _value(_query(prom, "sum(llm_usage_requests_total)")),
        _value(_query(prom, "llm:cost_self_hosted:per_million_tokens"), fmt="{:,.2f}"),
        _value(_query(prom, "llm:cost_public_api_equivalent:per_million_tokens"), fmt="{:,.2f}"),
    )
    tables.append(business)
    alerts = Table(title="Firing alerts", expand=True)
    for col in ("alert", "severity", "where"):
        alerts.add_column(col)
    for r in _query(prom, 'ALERTS{alertstate="firing"}'):
        m = r["metric"]
        where = " ".join(f"{k}={m[k]}" for k in ("model", "instance", "gpu") if k in m)
        color = {"critical": "red", "warning": "yellow"}.get(m.get("severity", ""), "dim")
        alerts.add_row(f"[{color}]{m['alertname']}", m.get("severity", ""), where)
    tables.append(alerts)
    return Group(*tables)


async def run_demo(
    engines: int = 2,
    users: int = 300,
    rps: float = 6.0,
    duration: float | None = None,
    tsdb: Literal["prometheus", "victoriametrics"] = "prometheus",
) -> None:
    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print(
        f"starting the stack (simulated engines, exporters, observer serve, {tsdb}, Alertmanager)..."
    )
    stack = Stack(StackOptions(engines=engines, analytics_refresh_s=15, tsdb=tsdb))
    try:
        await asyncio.to_thread(stack.start)
        assert stack.serve is not None
        console.print(
            f"[bold]observer serve[/]    {stack.serve.url}  (OTLP /v1/traces, /api/v1/analytics/summary,"
            " /api/v1/alerts)"
        )
        for e in stack.engines:
            console.print(f"[bold]{e.name}[/]          {e.url}/v1  (OpenAI API)")
        console.print(f"[bold]engine exporter[/]   {stack.exporter.url}/probe?target=...")
        console.print(f"[bold]GPU exporter[/]      {stack.gpu.url}/metrics  (fake GPUs)")
        if stack.victoriametrics_url:
            console.print(f"[bold]VictoriaMetrics[/]   {stack.victoriametrics_url}  (Grafana data source)")
            console.print(f"[bold]vmalert[/]           {stack.vmalert_url}/api/v1/alerts")
        else:
            console.print(f"[bold]Prometheus[/]        {stack.prometheus_url or 'not installed'}")
        console.print(f"[bold]Alertmanager[/]      {stack.alertmanager_url or 'not installed'}")
        console.print(
            f"[dim]logs and configs in {stack.dir}; dashboards to import: dashboards/generated/*.json[/]"
        )
        horizon = duration if duration is not None else 10**9
        loads = [
            asyncio.create_task(
                run_load(
                    LoadConfig(
                        target=e.url,
                        users=users,
                        rps=rps / len(stack.engines),
                        duration=horizon,
                        seed=i + 1,
                        grace_s=2,
                        otlp_traces_endpoint=stack.serve.url,
                        feedback_url=stack.serve.url,
                    )
                )
            )
            for i, e in enumerate(stack.engines)
        ]
        started = time.monotonic()
        with Live(console=console, refresh_per_second=1) as live:
            while not stop.is_set() and (duration is None or time.monotonic() - started < duration):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)
                live.update(await asyncio.to_thread(view, stack, time.monotonic() - started))
        if not stop.is_set():
            await asyncio.wait(loads, timeout=5)  # scripted run: let the generators finish and report
        for task in loads:
            task.cancel()
        results = await asyncio.gather(*loads, return_exceptions=True)
        for e, r in zip(stack.engines, results, strict=True):
            if not isinstance(r, BaseException):
                console.print(f"[bold]{e.name}[/]\n{r.render()}")
    finally:
        await asyncio.to_thread(stack.stop)
        console.print("demo stopped; every component shut down")
