"""vLLM's per-request ``llm_request`` span (vLLM V1 0.11+, ``vllm/tracing.py`` ``SpanAttributes``).

One SERVER span per finished request, started at arrival, parented by an incoming W3C
``traceparent`` so a gateway span and the engine span share one trace. Attribute names are vLLM's
(the old GenAI ``gen_ai.usage.prompt_tokens`` plus its own ``gen_ai.latency.*``); V1 does not set
``gen_ai.response.model``, so neither do we. Exported over OTLP/HTTP protobuf.
"""

from __future__ import annotations

import os
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observer.simulator.scheduler import SimRequest

_PROPAGATOR = TraceContextTextMapPropagator()


def traces_url(endpoint: str) -> str:
    """Accept a collector base URL (``http://host:4318``) or the full ``.../v1/traces`` URL."""
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parts.path in ("", "/"):
        return parts._replace(path="/v1/traces").geturl()
    return parts.geturl()


class TracedRequest(Protocol):
    """What the tracer reads of a finished request (the engine's ``RequestHandle`` has it).

    A protocol rather than an import of the engine, which imports this module: no import cycle.
    """

    @property
    def req(self) -> SimRequest: ...
    @property
    def wall_arrival_ns(self) -> int: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def trace_headers(self) -> dict[str, str]: ...
    @property
    def id_prefix(self) -> str: ...


class RequestTracer:
    def __init__(self, endpoint: str, provider: TracerProvider | None = None) -> None:
        if provider is None:
            provider = TracerProvider(
                resource=Resource.create(
                    {
                        "vllm.instrumenting_module_name": "vllm.llm_engine",
                        "vllm.process_id": os.getpid(),
                    }
                )
            )
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
        self.provider = provider
        self.tracer = provider.get_tracer("vllm.llm_engine")

    def record(self, handle: TracedRequest, now: float) -> None:
        req = handle.req
        context = _PROPAGATOR.extract(handle.trace_headers) if handle.trace_headers else None
        # Monotonic timestamps -> wall clock, anchored at the request's wall-clock arrival.
        end_ns = handle.wall_arrival_ns + int(((req.finished_at or now) - req.arrival) * 1e9)
        span = self.tracer.start_span(
            "llm_request", context=context, kind=SpanKind.SERVER, start_time=handle.wall_arrival_ns
        )
        attrs: dict[str, float | int | str] = {
            # vLLM records the OpenAI response id the client sees: what joins a gateway's span by id.
            "gen_ai.request.id": handle.id_prefix + req.request_id,
            "gen_ai.usage.prompt_tokens": req.prompt_tokens,
            "gen_ai.usage.completion_tokens": req.output_tokens,
            "gen_ai.latency.e2e": (req.finished_at or now) - req.arrival,
        }
        for key in ("temperature", "top_p", "max_tokens", "n"):
            if handle.params.get(key) is not None:
                attrs[f"gen_ai.request.{key}"] = handle.params[key]
        if req.first_scheduled is not None:
            attrs["gen_ai.latency.time_in_queue"] = req.first_scheduled - req.arrival
            attrs["gen_ai.latency.time_in_model_inference"] = (req.finished_at or now) - req.first_scheduled
        if req.first_token is not None:
            attrs["gen_ai.latency.time_to_first_token"] = req.first_token - req.arrival
            if req.first_scheduled is not None:
                attrs["gen_ai.latency.time_in_model_prefill"] = req.first_token - req.first_scheduled
            if req.last_token is not None:
                attrs["gen_ai.latency.time_in_model_decode"] = req.last_token - req.first_token
        span.set_attributes(attrs)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()
