"""A small app as companies write them: the OpenAI SDK, instrumented with OpenTelemetry's official
``openai-v2`` instrumentation (and optionally the httpx one, as ``opentelemetry-instrument`` gives),
baggage copied onto spans, exporting OTLP/HTTP to ``observer serve``. The README recipe, runnable.

Runs a fixed plan of calls against an OpenAI-compatible server and prints one JSON line per call with
what the app knows (user, department, model, outcome, usage when the server returned it).

    python tests/clients/openai_app.py --base-url http://127.0.0.1:8000/v1 \
        --otlp http://127.0.0.1:4318/v1/traces --model acme/chat-8b [--no-httpx] [--plan small]
"""

from __future__ import annotations

import argparse
import json
import sys

import openai
from opentelemetry import baggage, context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.processor.baggage import ALLOW_ALL_BAGGAGE_KEYS, BaggageSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

MESSAGES = [{"role": "user", "content": "Summarize our travel policy in two sentences."}]


def setup(otlp: str, with_httpx: bool) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "assistant-app"}))
    # Baggage entries (user.id, department) become attributes of every span started under them.
    provider.add_span_processor(BaggageSpanProcessor(ALLOW_ALL_BAGGAGE_KEYS))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp)))
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    if with_httpx:
        HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return provider


def plan(model: str, prefix: str = "user") -> list[dict]:
    """Users set by baggage for some calls and on the app's own span for others; streams with and
    without usage; one stream the user abandons; one call naming a model nobody serves."""
    calls = []
    for i in range(6):
        calls.append(
            {
                "user": f"{prefix}-{i % 3}",
                "department": ["legal", "sales", "research"][i % 3],
                "via": "baggage" if i % 2 == 0 else "span",
                "model": model,
                "stream": i in (2, 3),
                "include_usage": i == 3,
            }
        )
    calls.append(
        {
            "user": f"{prefix}-9",
            "department": "legal",
            "via": "span",
            "model": model,
            "stream": True,
            "abandon": True,
        }
    )
    calls.append({"user": f"{prefix}-8", "department": "sales", "via": "baggage", "model": "no-such-model"})
    return calls


def run_call(client: openai.OpenAI, tracer: trace.Tracer, call: dict) -> dict:
    token = None
    if call["via"] == "baggage":
        ctx = baggage.set_baggage("user.id", call["user"])
        ctx = baggage.set_baggage("department", call["department"], context=ctx)
        token = context.attach(ctx)
    result = {**call, "outcome": "success", "input_tokens": None, "output_tokens": None, "id": None}
    try:
        with tracer.start_as_current_span("POST /ask", kind=trace.SpanKind.SERVER) as app_span:
            if call["via"] == "span":
                app_span.set_attributes({"user.id": call["user"], "department": call["department"]})
            try:
                kwargs: dict = {"model": call["model"], "messages": MESSAGES, "max_tokens": 24}
                if call.get("stream"):
                    kwargs["stream"] = True
                    if call.get("include_usage"):
                        kwargs["stream_options"] = {"include_usage": True}
                    stream = client.chat.completions.create(**kwargs)
                    for n, chunk in enumerate(stream):
                        result["id"] = chunk.id
                        if chunk.usage:
                            result["input_tokens"] = chunk.usage.prompt_tokens
                            result["output_tokens"] = chunk.usage.completion_tokens
                        if call.get("abandon") and n >= 1:
                            stream.close()  # the user closed the tab
                            # openai-v2 does not mark this: the app says so on its own span.
                            app_span.set_attribute("error.type", "cancelled")
                            result["outcome"] = "abort"
                            break
                else:
                    resp = client.chat.completions.create(**kwargs)
                    result["id"] = resp.id
                    result["input_tokens"] = resp.usage.prompt_tokens
                    result["output_tokens"] = resp.usage.completion_tokens
            except openai.NotFoundError:
                result["outcome"] = "error"
    finally:
        if token is not None:
            context.detach(token)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--otlp", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--no-httpx", action="store_true", help="no traceparent reaches the engine")
    ap.add_argument("--user-prefix", default="user")
    args = ap.parse_args()
    provider = setup(args.otlp, with_httpx=not args.no_httpx)
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0)
    tracer = trace.get_tracer("assistant-app")
    for call in plan(args.model, args.user_prefix):
        print(json.dumps(run_call(client, tracer, call)), flush=True)
    provider.force_flush()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
