"""One load test: a single level (rate or concurrency) or a capacity sweep, with the engine sampled.

The sweep finds the highest request rate that meets every SLO in few steps: double the rate from
``sweep_start_rps`` while the SLO holds (halve it while it does not), then binary-search between
the last passing and first failing rates until they are within ``sweep_precision``. A step whose
SLO is clearly broken stops early (see :func:`analysis.early_stop_rule`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from observer.config import Settings
from observer.loadtest import analysis
from observer.loadtest.driver import Driver, Record, RunResult, resolve_model
from observer.loadtest.profiles import Profile
from observer.loadtest.sampler import KV, RUNNING, WAITING, MetricsSampler, summarize_server

TIMELINE_MAX_POINTS = 3000


@dataclass
class LoadtestOptions:
    target: str
    profile: Profile
    slo: dict[str, float]
    model: str | None = None
    rps: float | None = None
    concurrency: int | None = None
    sweep: bool = False
    duration: float = 30.0
    max_requests: int | None = None
    metrics_url: str | None = None
    seed: int = 1
    progress: bool = True


class _Progress:
    """A rich progress bar on stderr for long runs on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()

    def task(self, description: str, total: float):
        if self.bar is None:
            return None
        task_id = self.bar.add_task(description, total=total, stats="")

        def tick(elapsed: float, sent: int, done: int) -> None:
            self.bar.update(task_id, completed=min(elapsed, total), stats=f"sent {sent} done {done}")

        return tick

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Runner:
    def __init__(self, opts: LoadtestOptions, settings: Settings) -> None:
        self.opts = opts
        self.settings = settings
        self.lt = settings.loadtest
        self.t0 = time.perf_counter()
        self.sampler: MetricsSampler | None = None
        self.records: list[Record] = []  # every request of every level, for the timeline
        self.driver: Driver | None = None

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        target = opts.target.rstrip("/")
        async with httpx.AsyncClient(base_url=target, timeout=10.0) as probe:
            if opts.model:
                # Reachability only (a refused connection is exit 2, not a failed SLO); a server
                # without /v1/models is fine.
                await probe.get("/v1/models")
                model = opts.model
            else:
                model = await resolve_model(probe)
        self.driver = Driver(target, model, opts.profile, self.lt.request_timeout_s, seed=opts.seed)
        if opts.metrics_url:
            self.sampler = MetricsSampler(opts.metrics_url, self.lt.metrics_interval_s, t0=self.t0)
            self.sampler.start()
        long_run = opts.duration * (self.lt.sweep_max_steps if opts.sweep else 1) >= self.lt.progress_min_s
        progress = _Progress(opts.progress and long_run)
        started = datetime.now(UTC)
        try:
            if opts.sweep:
                body = await self._sweep(progress)
            else:
                body = await self._single(progress)
        finally:
            progress.close()
            if self.sampler is not None:
                await self.sampler.stop()
            await self.driver.aclose()
        report: dict[str, Any] = {
            "version": 1,
            "created": started.isoformat(timespec="seconds"),
            "target": target,
            "model": model,
            "profile": opts.profile.describe(),
            **body,
            "mode": "sweep" if opts.sweep else ("rate" if opts.rps is not None else "concurrency"),
            "slo_targets": opts.slo,
            "timeline": self._timeline(),
        }
        if self.sampler is not None and self.sampler.errors:
            report["metrics_errors"] = dict(self.sampler.errors)
        return report

    # --- one level ---------------------------------------------------------------------------------
    async def _level(
        self,
        progress: _Progress,
        label: str,
        *,
        rate: float | None = None,
        concurrency: int | None = None,
        early_stop: bool = False,
    ) -> tuple[dict[str, Any], RunResult]:
        assert self.driver is not None
        should_stop = (
            analysis.early_stop_rule(self.opts.slo, self.lt.early_stop_share, self.lt.early_stop_min_requests)
            if early_stop
            else None
        )
        began = time.perf_counter() - self.t0
        duration = self.opts.duration
        if early_stop and rate:  # a sweep step: enough requests for its percentiles to mean something
            duration = max(duration, self.lt.sweep_min_requests / rate)
        result = await self.driver.run(
            rate=rate,
            concurrency=concurrency,
            duration=duration,
            max_requests=self.opts.max_requests,
            drain_s=self.lt.drain_s,
            should_stop=should_stop,
            on_tick=progress.task(label, duration),
            t0=self.t0,
        )
        ended = time.perf_counter() - self.t0
        self.records.extend(result.records)
        point = analysis.summarize(result)
        point["window"] = [round(began, 3), round(ended, 3)]
        server = self._server(began, ended)
        if server is not None:
            point["server"] = server
        point["slo"] = analysis.check_slo(point, self.opts.slo)
        return point, result

    def _server(self, start: float, end: float) -> dict[str, Any] | None:
        if self.sampler is None:
            return None
        before = [s for s in self.sampler.samples if s.t < start]
        return summarize_server(self.sampler.window(start, end), before[-1] if before else None)

    async def _settle(self) -> None:
        """Between sweep steps: let the engine finish what the last step left (queue, aborts)."""
        if self.sampler is None:
            await asyncio.sleep(1.0)
            return
        deadline = time.perf_counter() + max(5.0, self.lt.drain_s)
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.perf_counter() < deadline:
                await self.sampler.sample_once(client)
                last = self.sampler.samples[-1].values if self.sampler.samples else {}
                if last.get(RUNNING, 0) + last.get(WAITING, 0) == 0:
                    return
                await asyncio.sleep(self.lt.metrics_interval_s)

    async def _single(self, progress: _Progress) -> dict[str, Any]:
        opts = self.opts
        label = f"{opts.rps:g} req/s" if opts.rps is not None else f"{opts.concurrency} concurrent"
        point, _ = await self._level(progress, label, rate=opts.rps, concurrency=opts.concurrency)
        diagnosis = analysis.diagnose(point, point["slo"], point.get("server"), self.settings.slo)
        return {**point, "diagnosis": diagnosis}

    # --- the sweep -------------------------------------------------------------------------------
    async def _sweep(self, progress: _Progress) -> dict[str, Any]:
        lt = self.lt
        points: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None  # highest passing point
        worst: dict[str, Any] | None = None  # lowest failing point
        rate = lt.sweep_start_rps
        for step in range(lt.sweep_max_steps):
            if step:
                await self._settle()
            point, _ = await self._level(
                progress, f"step {step + 1}: {rate:g} req/s", rate=rate, early_stop=True
            )
            point["rate"] = rate
            points.append(point)
            if point["slo"]["pass"]:
                if best is None or rate > best["rate"]:
                    best = point
            elif worst is None or rate < worst["rate"]:
                worst = point
            if worst is None:  # still climbing
                if rate >= lt.sweep_max_rps:
                    break
                rate = min(rate * 2, lt.sweep_max_rps)
            elif best is None:  # even the start fails: come down
                rate = rate / 2
                if rate < lt.sweep_start_rps / 64:
                    break
            else:
                if (worst["rate"] - best["rate"]) / best["rate"] <= lt.sweep_precision:
                    break
                rate = round((best["rate"] + worst["rate"]) / 2, 4)
        points.sort(key=lambda p: p["rate"])
        baseline = points[0] if points and points[0]["slo"]["pass"] else None
        headline = best or worst or points[-1]
        if worst is not None:
            diagnosis = analysis.diagnose(
                worst, worst["slo"], worst.get("server"), self.settings.slo, baseline, lt.diagnosis_growth
            )
            diagnosis.insert(
                0,
                f"Above {best['rate']:g} req/s the SLO breaks; at {worst['rate']:g} req/s:"
                if best
                else f"The SLO fails even at {worst['rate']:g} req/s:",
            )
        else:
            diagnosis = [
                f"Every SLO held up to {headline['rate']:g} req/s (the sweep's ceiling or step limit)."
            ]
        body: dict[str, Any] = {k: v for k, v in headline.items() if k not in ("window",)}
        body["points"] = points
        body["diagnosis"] = diagnosis
        if best is not None:
            body["capacity"] = {
                "offered_requests_per_s": best["rate"],
                "requests_per_s": best["throughput"]["requests_per_s"],
                "output_tokens_per_s": best["throughput"]["output_tokens_per_s"],
                "total_tokens_per_s": best["throughput"]["total_tokens_per_s"],
            }
            body["cost_per_million_tokens"] = analysis.cost_at_capacity(
                self.settings.cost, lt.gpus, body["capacity"], best["tokens"]
            )
        else:
            body["capacity"] = None
            body["cost_per_million_tokens"] = None
        return body

    def _timeline(self) -> dict[str, Any]:
        ok = [(round(r.start, 3), round(r.ttft, 4)) for r in self.records if r.ttft is not None]
        if len(ok) > TIMELINE_MAX_POINTS:
            stride = len(ok) / TIMELINE_MAX_POINTS
            ok = [ok[int(i * stride)] for i in range(TIMELINE_MAX_POINTS)]
        out: dict[str, Any] = {"ttft": ok}
        if self.sampler is not None:
            out["server"] = [
                {
                    "t": round(s.t, 3),
                    "kv": s.values.get(KV),
                    "waiting": s.values.get(WAITING),
                    "running": s.values.get(RUNNING),
                }
                for s in self.sampler.samples
            ]
        return out


def exit_code(report: dict[str, Any]) -> int:
    """0 when every SLO holds (a sweep: when some load level met them all), else 1."""
    if report.get("mode") == "sweep":
        return 0 if report.get("capacity") else 1
    return 0 if report["slo"]["pass"] else 1


async def run_loadtest(opts: LoadtestOptions, settings: Settings) -> dict[str, Any]:
    return await Runner(opts, settings).run()
