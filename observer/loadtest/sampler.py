"""Samples the engine's own metrics during a load test: KV cache usage, queue, preemptions.

The URL is either an engine's ``/metrics`` (vLLM, SGLang, TGI, llama.cpp, TensorRT-LLM: read with
the engine exporter's parser and normalizer, so every engine and vLLM version maps to the same
``llm_*`` names) or the engine exporter's ``/probe?target=...`` (already normalized).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from exporters.engine.normalize import UnknownEngine, normalize
from exporters.engine.parse import ParseError, iter_samples
from observer.catalog import spec

# Names from the catalog (the single source of truth): a rename there fails here at import.
KV = spec("llm_kv_cache_usage_ratio").name
WAITING = spec("llm_requests_waiting").name
RUNNING = spec("llm_requests_running").name
PREEMPTIONS = spec("llm_preemptions_total").name
QUEUE_SUM = spec("llm_request_queue_time_seconds").name + "_sum"
QUEUE_COUNT = spec("llm_request_queue_time_seconds").name + "_count"
PREFILL_SUM = spec("llm_request_prefill_time_seconds").name + "_sum"
PREFILL_COUNT = spec("llm_request_prefill_time_seconds").name + "_count"
WANTED = frozenset({KV, WAITING, RUNNING, PREEMPTIONS, QUEUE_SUM, QUEUE_COUNT, PREFILL_SUM, PREFILL_COUNT})


@dataclass(slots=True)
class Sample:
    t: float  # seconds from the load test's time 0
    values: dict[str, float]  # summed over models/ranks; KV usage: the fullest rank


def read_exposition(text: str) -> dict[str, float]:
    """The ``llm_*`` values this module uses, from engine text or exporter probe text."""
    by_name: dict[str, float] = {}
    if "llm_engine_up" in text:  # the exporter's probe output is already normalized
        series: dict[str, list[float]] = {}
        for name, _labels, value in iter_samples(text, WANTED):
            series.setdefault(name, []).append(value)
    else:
        normalized = normalize(text)
        series = {name: list(values.values()) for name, values in normalized.series.items() if name in WANTED}
    for name, values in series.items():
        by_name[name] = max(values) if name == KV else sum(values)
    return by_name


@dataclass
class MetricsSampler:
    url: str
    interval_s: float = 0.5
    t0: float = field(default_factory=time.perf_counter)
    samples: list[Sample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task | None = None

    async def _loop(self) -> None:
        async with httpx.AsyncClient(timeout=max(2.0, self.interval_s * 4)) as client:
            while True:
                began = time.perf_counter()
                await self.sample_once(client)
                await asyncio.sleep(max(0.0, self.interval_s - (time.perf_counter() - began)))

    async def sample_once(self, client: httpx.AsyncClient) -> None:
        try:
            resp = await client.get(self.url)
            resp.raise_for_status()
            values = read_exposition(resp.text)
        except (httpx.HTTPError, UnknownEngine, ParseError, ValueError) as exc:
            # TooManySamples and the like included: a bad scrape is counted, never ends the run.
            key = type(exc).__name__
            self.errors[key] = self.errors.get(key, 0) + 1
            return
        self.samples.append(Sample(time.perf_counter() - self.t0, values))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # One last look, so a short run still has a sample taken after its load.
        async with httpx.AsyncClient(timeout=5.0) as client:
            await self.sample_once(client)

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]


def _delta(samples: list[Sample], name: str) -> float | None:
    """Increase of a counter over the samples, tolerating a reset in between."""
    values = [s.values[name] for s in samples if name in s.values]
    if len(values) < 2:
        return None
    total = 0.0
    for prev, cur in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


def summarize_server(samples: list[Sample], before: Sample | None = None) -> dict[str, Any]:
    """Peaks and increases over one run's samples (``before``: the sample just ahead of it)."""
    if before is not None:
        samples = [before, *samples]
    kv = [s.values[KV] for s in samples if KV in s.values]
    waiting = [s.values[WAITING] for s in samples if WAITING in s.values]
    running = [s.values[RUNNING] for s in samples if RUNNING in s.values]
    out: dict[str, Any] = {
        "samples": len(samples),
        "kv_cache_usage_peak": round(max(kv), 4) if kv else None,
        "kv_cache_usage_mean": round(sum(kv) / len(kv), 4) if kv else None,
        "requests_waiting_peak": max(waiting) if waiting else None,
        "requests_running_peak": max(running) if running else None,
        "preemptions": _delta(samples, PREEMPTIONS),
    }
    for label, s_name, c_name in (
        ("queue_time_mean_s", QUEUE_SUM, QUEUE_COUNT),
        ("prefill_time_mean_s", PREFILL_SUM, PREFILL_COUNT),
    ):
        total, count = _delta(samples, s_name), _delta(samples, c_name)
        out[label] = round(total / count, 6) if total is not None and count else None
    return out
