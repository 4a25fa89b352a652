"""HTTP front of the GPU exporter and the load signal that makes fake GPUs follow real work."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from prometheus_client import PROCESS_COLLECTOR, CollectorRegistry, generate_latest

from exporters.engine.parse import iter_samples
from exporters.gpu.sampler import GpuSampler
from observer.exposition import add_health_and_metrics

_RUNNING = frozenset({"vllm:num_requests_running", "llm_requests_running"})


class MetricsLoadSignal:
    """Load 0..1 from a /metrics URL: running requests / ``capacity``, refreshed at most once a second."""

    def __init__(self, url: str, capacity: float = 32.0, refresh_s: float = 1.0) -> None:
        self.url, self.capacity, self.refresh_s = url, capacity, refresh_s
        self._value = 0.0
        self._at = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            if time.monotonic() - self._at >= self.refresh_s:
                self._at = time.monotonic()
                try:
                    text = httpx.get(self.url, timeout=0.5).text
                    # The engine exporter's parser: validates the text, parses labels only for these names.
                    running = sum(value for _name, _labels, value in iter_samples(text, _RUNNING))
                    self._value = min(1.0, running / self.capacity)
                except (httpx.HTTPError, ValueError):  # ParseError, TooManySamples
                    self._value = 0.0  # engine gone or not speaking Prometheus text: GPUs idle
            return self._value


def create_app(sampler: GpuSampler, on_stop: Callable[[], None] | None = None) -> FastAPI:
    registry = CollectorRegistry()
    registry.register(PROCESS_COLLECTOR)  # so the exporter's own CPU and memory are visible

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sampler.start()
        yield
        sampler.stop()
        if on_stop:
            on_stop()

    app = FastAPI(title="LLM Observer GPU exporter", lifespan=lifespan)

    add_health_and_metrics(app, lambda: sampler.text.encode() + generate_latest(registry))

    return app
