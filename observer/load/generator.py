"""The bounded load generator: Poisson arrivals from a synthetic population, streamed requests.

Acts like an LLM gateway in front of the engine: each request runs inside an OpenTelemetry span
(``chat <model>``, kind CLIENT, GenAI semantic-convention attributes plus ``user.id`` and
``department``) whose context goes to the engine as a W3C ``traceparent``, so the engine's
``llm_request`` span becomes its child. Bounded by ``duration`` and ``max_requests``; in-flight
requests get a grace period after sending stops, then are cancelled and counted as incomplete.

Measured like ``vllm bench serve``: TTFT = send -> first content chunk; TPOT per request =
(E2E - TTFT) / (output tokens - 1); E2E = send -> last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observer.load.population import WORKLOADS, Population, build_prompt, parse_mix

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class LoadConfig:
    target: str
    model: str | None = None
    users: int = 50
    rps: float = 2.0
    duration: float = 30.0
    max_requests: int | None = None
    concurrency: int = 256
    mix: dict[str, float] = field(default_factory=lambda: {"chat": 0.6, "rag": 0.25, "code": 0.15})
    otlp_traces_endpoint: str | None = None
    seed: int = 1
    ignore_eos: bool = False
    grace_s: float = 30.0
    department_attribute: str = "department"
    # observer serve's base URL: synthetic users then rate some answers (POST /api/v1/feedback).
    feedback_url: str | None = None
    feedback_share: float = 0.2

    @classmethod
    def from_cli(cls, **opts: Any) -> LoadConfig:
        mix = parse_mix(opts.pop("mix"))
        cfg = cls(mix=mix, **{k: v for k, v in opts.items() if v is not None})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.rps <= 0:
            raise ValueError("--rps must be positive")
        if self.duration <= 0:
            raise ValueError("--duration must be positive")
        if self.users < 1 or self.concurrency < 1:
            raise ValueError("--users and --concurrency must be at least 1")
        if not self.target.startswith(("http://", "https://")):
            self.target = "http://" + self.target
        self.target = self.target.rstrip("/")


@dataclass
class RequestResult:
    workload: str
    outcome: str  # success | error | incomplete
    ttft: float | None = None
    e2e: float | None = None
    tpot: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), None for no data."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class Summary:
    duration_s: float
    sent: int
    success: int
    error: int
    incomplete: int
    ttft: dict[str, float | None]
    tpot: dict[str, float | None]
    e2e: dict[str, float | None]
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    errors: dict[str, int]
    by_workload: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        def fmt(d: dict[str, float | None]) -> str:
            return "  ".join(
                f"{k}={v * 1000:8.1f}ms" if v is not None else f"{k}=     n/a" for k, v in d.items()
            )

        lines = [
            f"duration {self.duration_s:.1f}s  sent {self.sent}  success {self.success}  "
            f"error {self.error}  incomplete {self.incomplete}",
            f"TTFT  {fmt(self.ttft)}",
            f"TPOT  {fmt(self.tpot)}",
            f"E2E   {fmt(self.e2e)}",
            f"throughput {self.requests_per_s:.2f} req/s  {self.output_tokens_per_s:.1f} output tok/s  "
            f"{self.total_tokens_per_s:.1f} total tok/s",
            "mix " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_workload.items())),
        ]
        if self.errors:
            lines.append("errors " + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())))
        return "\n".join(lines)


def summarize(results: list[RequestResult], duration: float) -> Summary:
    ok = [r for r in results if r.outcome == "success"]

    def pct(values: list[float]) -> dict[str, float | None]:
        return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}

    errors: dict[str, int] = {}
    by_workload: dict[str, int] = {}
    for r in results:
        by_workload[r.workload] = by_workload.get(r.workload, 0) + 1
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    out_tokens = sum(r.output_tokens for r in ok)
    total_tokens = out_tokens + sum(r.prompt_tokens for r in ok)
    duration = max(duration, 1e-9)
    return Summary(
        duration_s=duration,
        sent=len(results),
        success=len(ok),
        error=sum(r.outcome == "error" for r in results),
        incomplete=sum(r.outcome == "incomplete" for r in results),
        ttft=pct([r.ttft for r in ok if r.ttft is not None]),
        tpot=pct([r.tpot for r in ok if r.tpot is not None]),
        e2e=pct([r.e2e for r in ok if r.e2e is not None]),
        requests_per_s=len(ok) / duration,
        output_tokens_per_s=out_tokens / duration,
        total_tokens_per_s=total_tokens / duration,
        errors=errors,
        by_workload=by_workload,
    )


def _tracer(endpoint: str | None) -> tuple[trace.Tracer, TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "llm-gateway"}))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        from observer.simulator.tracing import traces_url

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    return provider.get_tracer("observer.load"), provider


async def _one_request(
    client: httpx.AsyncClient,
    cfg: LoadConfig,
    model: str,
    tracer: trace.Tracer,
    population: Population,
    rng: random.Random,
) -> RequestResult:
    user = population.pick(rng)
    kind = rng.choices(list(cfg.mix), weights=list(cfg.mix.values()), k=1)[0]
    prompt, max_tokens = build_prompt(WORKLOADS[kind], rng)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": user.user_id,
    }
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    result = RequestResult(workload=kind, outcome="incomplete")
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "vllm",
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": max_tokens,
                "user.id": user.user_id,
                cfg.department_attribute: user.department,
                "session.id": f"{user.user_id}-s{rng.randrange(1000)}",
                "llm.workload": kind,
            }
        )
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers)
        start = time.perf_counter()
        last = start
        chunks = 0
        finish_reason = None
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    result.outcome, result.error = "error", f"http_{resp.status_code}"
                else:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        payload = line[6:]
                        if payload == "[DONE]":
                            if finish_reason is not None:
                                result.outcome = "success"
                            break
                        event = json.loads(payload)
                        if event.get("usage"):
                            result.prompt_tokens = event["usage"].get("prompt_tokens", 0)
                            result.output_tokens = event["usage"].get("completion_tokens", 0)
                        for choice in event.get("choices") or ():
                            if (choice.get("delta") or {}).get("content"):
                                now = time.perf_counter()
                                if result.ttft is None:
                                    result.ttft = now - start
                                last = now
                                chunks += 1
                            if choice.get("finish_reason"):
                                finish_reason = choice["finish_reason"]
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            result.outcome, result.error = "error", type(exc).__name__
        except asyncio.CancelledError:
            result.outcome, result.error = "incomplete", "cancelled"
            span.set_attribute("error.type", "cancelled")
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            return result
        if result.outcome == "success":
            result.output_tokens = result.output_tokens or chunks
            result.e2e = last - start
            if result.output_tokens > 1 and result.ttft is not None:
                result.tpot = (result.e2e - result.ttft) / (result.output_tokens - 1)
            span.set_attributes(
                {
                    "gen_ai.response.model": model,
                    "gen_ai.usage.input_tokens": result.prompt_tokens,
                    "gen_ai.usage.output_tokens": result.output_tokens,
                    "gen_ai.response.finish_reasons": [finish_reason or "stop"],
                }
            )
        else:
            result.error = result.error or "stream_ended_early"
            span.set_attribute("error.type", result.error)
            span.set_status(Status(StatusCode.ERROR, result.error))
        trace_id = f"{span.get_span_context().trace_id:032x}"
    if cfg.feedback_url and result.outcome == "success" and rng.random() < cfg.feedback_share:
        # Most answers that get rated are liked; slow ones less so.
        liked = rng.random() < (0.85 if (result.ttft or 0) < 2 else 0.5)
        body = {
            "trace_id": trace_id,
            "rating": "up" if liked else "down",
            "reason": None if liked else "slow",
        }
        with contextlib.suppress(httpx.HTTPError):  # best effort, like a real UI's thumbs button
            await client.post(cfg.feedback_url.rstrip("/") + "/api/v1/feedback", json=body)
    return result


async def resolve_model(client: httpx.AsyncClient) -> str:
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def run_load(cfg: LoadConfig) -> Summary:
    population = Population(cfg.users, seed=cfg.seed)
    rng = random.Random(cfg.seed)
    tracer, provider = _tracer(cfg.otlp_traces_endpoint)
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    timeout = httpx.Timeout(connect=5.0, read=max(60.0, cfg.grace_s), write=10.0, pool=None)
    results: list[RequestResult] = []
    async with httpx.AsyncClient(base_url=cfg.target, limits=limits, timeout=timeout) as client:
        model = cfg.model or await resolve_model(client)
        semaphore = asyncio.Semaphore(cfg.concurrency)
        tasks: set[asyncio.Task] = set()

        async def guarded() -> None:
            try:
                await semaphore.acquire()
            except asyncio.CancelledError:  # never got a slot before the grace period ended
                results.append(RequestResult(workload="queued", outcome="incomplete", error="cancelled"))
                return
            try:
                results.append(await _one_request(client, cfg, model, tracer, population, rng))
            finally:
                semaphore.release()

        start = time.perf_counter()
        deadline = start + cfg.duration
        sent = 0
        next_at = start
        while True:
            next_at += rng.expovariate(cfg.rps)
            if next_at >= deadline or (cfg.max_requests is not None and sent >= cfg.max_requests):
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            task = asyncio.create_task(guarded())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=cfg.grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - start
    provider.shutdown()
    return summarize(results, elapsed)
