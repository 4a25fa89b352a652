"""Collector ingest: sustained 512-span OTLP/protobuf batches into `observer serve`.

Shape `vllm` (default): 256 engine `llm_request` spans, half of them children of gateway spans that
are in the batch too (128 gateway spans), plus 128 engine spans of other requests = 512 spans, 384
requests. Shape `split3`: every request is 3 spans across 2 batches (the app's request span with the
user and the GenAI call span in one batch, the engine span in the next, as a BatchSpanProcessor in
the app and one in the engine would send them): 510 spans, 170 requests per batch. Every batch has
fresh trace and request ids. Reported: spans/s accepted, p99 export latency, RSS of the server
(start, peak, end), for SQLite and PostgreSQL; and the pure protobuf decode rate of the same
payloads as the ceiling. Target: >= 10,000 spans/s on SQLite with 2 cores, memory flat.

    python benchmarks/collector.py [--duration 60] [--senders 3] [--backends sqlite postgresql]
        [--shape vllm|split3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import observer_server, scrape, temporary_database

MARKER = os.urandom(8)  # trace ids start with it
PREVIOUS = os.urandom(8)  # split3: the engine spans of the previous batch's requests
ID_MARK = MARKER.hex().encode()  # request ids carry it, so each send has fresh ids too
PREV_ID_MARK = PREVIOUS.hex().encode()


def _kv(k: str, v) -> KeyValue:
    if isinstance(v, float):
        return KeyValue(key=k, value=AnyValue(double_value=v))
    if isinstance(v, int):
        return KeyValue(key=k, value=AnyValue(int_value=v))
    return KeyValue(key=k, value=AnyValue(string_value=v))


def template_batch() -> bytes:
    """One 512-span batch; trace ids start with MARKER so each send can make them unique."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", "vllm"))
    ss = rs.scope_spans.add()
    ss.scope.name = "vllm.llm_engine"
    t0 = time.time_ns()
    for i in range(256):
        trace_id = MARKER + i.to_bytes(8, "big")
        engine = Span(
            trace_id=trace_id,
            span_id=(i + 1).to_bytes(8, "big"),
            name="llm_request",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=t0,
            end_time_unix_nano=t0 + 2_000_000_000,
        )
        engine.attributes.extend(
            [
                _kv("gen_ai.request.id", f"cmpl-{MARKER.hex()}-{i}"),
                _kv("gen_ai.usage.prompt_tokens", 500 + i),
                _kv("gen_ai.usage.completion_tokens", 120),
                _kv("gen_ai.latency.time_in_queue", 0.05),
                _kv("gen_ai.latency.time_to_first_token", 0.3),
                _kv("gen_ai.latency.e2e", 2.0),
                _kv("gen_ai.latency.time_in_model_prefill", 0.2),
                _kv("gen_ai.latency.time_in_model_decode", 1.6),
                _kv("gen_ai.latency.time_in_model_inference", 1.8),
            ]
        )
        if i % 2 == 0:  # half have a gateway parent, which is in the batch too
            gw_id = (10_000 + i).to_bytes(8, "big")
            engine.parent_span_id = gw_id
            gw = Span(
                trace_id=trace_id,
                span_id=gw_id,
                name="chat acme/chat-8b",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=t0 - 5_000_000,
                end_time_unix_nano=t0 + 2_010_000_000,
            )
            gw.attributes.extend(
                [
                    _kv("gen_ai.operation.name", "chat"),
                    _kv("gen_ai.request.model", "acme/chat-8b"),
                    _kv("gen_ai.usage.input_tokens", 500 + i),
                    _kv("gen_ai.usage.output_tokens", 120),
                    _kv("user.id", f"user-{i % 97}"),
                    _kv("department", ("legal", "sales", "eng")[i % 3]),
                    _kv("session.id", f"s-{i}"),
                ]
            )
            ss.spans.append(gw)
        ss.spans.append(engine)
    assert len(ss.spans) == 384, len(ss.spans)
    # 128 more engine spans of requests without a gateway, to make 512
    for i in range(128):
        sp = Span()
        sp.CopyFrom(ss.spans[1])
        sp.trace_id = MARKER + (1000 + i).to_bytes(8, "big")
        sp.span_id = (20_000 + i).to_bytes(8, "big")
        sp.ClearField("parent_span_id")
        ss.spans.append(sp)
    return req.SerializeToString()


def split3_batch() -> bytes:
    """170 requests' app + call spans (fresh ids) and the engine spans of the previous 170 requests."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", "assistant-app"))
    ss = rs.scope_spans.add()
    engines = req.resource_spans.add()
    engines.resource.attributes.append(_kv("service.name", "vllm"))
    es = engines.scope_spans.add()
    t0 = time.time_ns()
    for i in range(170):
        app_id, call_id, http_id = (i + 1).to_bytes(8, "big"), (1000 + i).to_bytes(8, "big"), (2000 + i)
        app = Span(
            trace_id=MARKER + i.to_bytes(8, "big"),
            span_id=app_id,
            name="POST /ask",
            start_time_unix_nano=t0,
            end_time_unix_nano=t0 + 2_100_000_000,
        )
        app.attributes.extend(
            [_kv("user.id", f"user-{i % 97}"), _kv("department", ("legal", "sales")[i % 2])]
        )
        call = Span(
            trace_id=app.trace_id,
            span_id=call_id,
            parent_span_id=app_id,
            name="chat acme/chat-8b",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=t0,
            end_time_unix_nano=t0 + 2_000_000_000,
        )
        call.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", "acme/chat-8b"),
                _kv("gen_ai.response.id", f"chatcmpl-{MARKER.hex()}-{i}"),
            ]
        )
        ss.spans.extend([app, call])
        engine = Span(
            trace_id=PREVIOUS + i.to_bytes(8, "big"),
            span_id=http_id.to_bytes(8, "big"),
            parent_span_id=call_id,
            name="llm_request",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=t0,
            end_time_unix_nano=t0 + 2_000_000_000,
        )
        engine.attributes.extend(
            [
                _kv("gen_ai.request.id", f"chatcmpl-{PREVIOUS.hex()}-{i}"),
                _kv("gen_ai.usage.prompt_tokens", 500),
                _kv("gen_ai.usage.completion_tokens", 120),
                _kv("gen_ai.latency.time_to_first_token", 0.3),
                _kv("gen_ai.latency.e2e", 2.0),
            ]
        )
        es.spans.append(engine)
    return req.SerializeToString()


def decode_rate(payload: bytes, seconds: float = 3.0) -> float:
    n = 0
    spans = sum(
        len(ss.spans)
        for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
        for ss in rs.scope_spans
    )
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ExportTraceServiceRequest.FromString(payload)
        n += 1
    return n * spans / (time.perf_counter() - start)


def fresh(payload: bytes, previous: list[bytes]) -> bytes:
    """The template with new trace and request ids; split3's engine half reuses the last batch's."""
    new = os.urandom(8)
    body = payload.replace(PREVIOUS, previous[0]).replace(PREV_ID_MARK, previous[0].hex().encode())
    body = body.replace(MARKER, new).replace(ID_MARK, new.hex().encode())
    previous[0] = new
    return body


def run_backend(
    name: str, db_url: str, payload: bytes, duration: float, senders: int, per_batch: int
) -> dict:
    latencies: list[float] = []
    accepted = [0]
    errors = [0]
    rss: list[float] = []
    stop = threading.Event()
    with observer_server("serve", "--db", db_url, ready_path="/healthz") as (base, _):

        def send() -> None:
            previous = [os.urandom(8)]
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    body = fresh(payload, previous)
                    t = time.perf_counter()
                    r = client.post(
                        "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
                    )
                    latencies.append(time.perf_counter() - t)
                    if r.status_code == 200:
                        accepted[0] += per_batch
                    else:
                        errors[0] += 1

        threads = [threading.Thread(target=send, daemon=True) for _ in range(senders)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        while time.perf_counter() - start < duration:
            time.sleep(1)
            rss.append(scrape(base + "/metrics")["process_resident_memory_bytes"][()])
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "backend": name,
        "spans_per_s": accepted[0] / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "errors": errors[0],
        "rss_start_mib": rss[min(2, len(rss) - 1)] / 2**20,
        "rss_peak_mib": max(rss) / 2**20,
        "rss_end_mib": rss[-1] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--senders", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--shape", choices=["vllm", "split3"], default="vllm")
    args = ap.parse_args()
    if args.shape == "vllm":
        payload, per_batch, what = template_batch(), 512, "512 spans (128 gateway + 256 engine, half joined)"
    else:
        payload, per_batch, what = (
            split3_batch(),
            510,
            "510 spans (170 app + 170 call + 170 engine of the last batch)",
        )
    ceiling = decode_rate(payload)
    print(f"batch: {what}, {len(payload) / 1024:.0f} KiB protobuf")
    print(f"pure protobuf decode: {ceiling:,.0f} spans/s (the ceiling)")
    for backend in args.backends:
        if backend == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
            r = run_backend("sqlite", url, payload, args.duration, args.senders, per_batch)
        else:
            with temporary_database() as url:
                r = run_backend("postgresql", url, payload, args.duration, args.senders, per_batch)
        print(
            f"{r['backend']:>10}: {r['spans_per_s']:,.0f} spans/s "
            f"({r['spans_per_s'] / ceiling:.1%} of the decode ceiling), "
            f"export latency p50 {r['p50_ms']:.0f} ms "
            f"p99 {r['p99_ms']:.0f} ms, errors {r['errors']}, RSS start {r['rss_start_mib']:.0f} MiB "
            f"peak {r['rss_peak_mib']:.0f} MiB end {r['rss_end_mib']:.0f} MiB over {args.duration:.0f} s"
        )


if __name__ == "__main__":
    main()
