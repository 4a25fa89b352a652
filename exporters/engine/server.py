"""HTTP front of the engine exporter (Prometheus multi-target exporter pattern).

Prometheus scrapes ``/probe?target=<engine base URL>`` and relabels ``__param_target`` into
``instance`` (see README), so every series is attributed to the engine, not to the exporter.
``/metrics`` is the exporter's own health.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import generate_latest

from exporters.engine.allowlist import TargetRefused
from exporters.engine.mappings import engine_names, known_engines_text
from exporters.engine.probe import Prober
from observer.config import EngineExporterSettings
from observer.exposition import CONTENT_TYPE, add_health_and_metrics

INDEX = f"""LLM Observer engine exporter

  /probe?target=http://vllm-0:8000   normalized llm_* metrics of one engine ({known_engines_text()})
                                      (scheme://host:port only: the exporter picks the metrics path)
        [&model=NAME]                 model label for engines that do not name their model (tgi, llama.cpp)
        [&engine=KIND]                fetch only that engine's metrics path(s)
  /metrics                            this exporter's own health
"""


def create_app(settings: EngineExporterSettings, listen: tuple[str, int] | None = None) -> FastAPI:
    """``listen``: the address the app is served on, which it refuses to probe."""
    prober: Prober | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal prober
        prober = Prober(settings, listen=listen)
        app.state.prober = prober
        yield
        await prober.aclose()

    app = FastAPI(title="LLM Observer engine exporter", lifespan=lifespan)

    @app.get("/", response_class=PlainTextResponse)
    async def index() -> str:
        return INDEX

    add_health_and_metrics(app, lambda: generate_latest(prober.registry))  # prober: set at startup

    @app.get("/probe")
    async def probe(request: Request, target: str = "", model: str = "", engine: str = "") -> Response:
        assert prober is not None
        if not target:
            return PlainTextResponse("missing target parameter: /probe?target=http://host:port\n", 400)
        if engine and engine not in engine_names():
            known = known_engines_text()
            return PlainTextResponse(f"unknown engine {engine!r}; known engines: {known}\n", 400)
        timeout = prober.timeout_for(request.headers.get("x-prometheus-scrape-timeout-seconds"))
        started = time.monotonic()
        try:
            # The allow-list's DNS lookup counts against the probe's deadline too.
            async with asyncio.timeout(timeout):
                checked = await prober.check_target(target)
        except TargetRefused as exc:
            return PlainTextResponse(f"target refused: {exc}\n", status_code=403)
        except TimeoutError:
            return Response(prober.timed_out_answer(timeout), media_type=CONTENT_TYPE)
        remaining = timeout - (time.monotonic() - started)
        result = await prober.probe(checked, remaining, model=model, engine=engine or None)
        return Response(result.text, media_type=CONTENT_TYPE)

    return app
