"""Per-batch cost of one trace that keeps growing, in the collector (``TraceCollector.ingest``).

Every batch re-reads and re-resolves the whole trace it touches, so a trace's batches cost more as
it grows, up to ``collector.max_spans_per_trace``. Three shapes, each sent in batches of --batch
spans until the cap is reached, then --extra batches beyond it (refused):

* ``session``: an agent session: one app span, then call + engine child pairs under it;
* ``nested``: calls nested in calls (every other span a link), the deepest shape the join walks;
* ``links``: link-only spans (no GenAI attribute) chained under one root.

Printed, per database: the median CPU milliseconds of the collector process (not the PostgreSQL
server's) of the first 5 batches and of the last 5 under the cap, their ratio, the rows written by
the last batch, and the median of the refused batches.

    python benchmarks/collector_trace_growth.py [--batch 20] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import temporary_database

from observer.collector.ingest import TraceCollector
from observer.config import CollectorSettings
from observer.store.db import Store

NOW = time.time_ns()


def make_span(trace: bytes, parent: bytes | None, kind: str) -> Span:
    attrs: dict[str, object] = {}
    name = "hop"
    if kind == "call":
        name, attrs = "chat m", {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 10}
    elif kind == "engine":
        name, attrs = "llm_request", {"gen_ai.usage.prompt_tokens": 10, "gen_ai.latency.e2e": 0.5}
    s = Span(trace_id=trace, span_id=os.urandom(8), name=name, start_time_unix_nano=NOW)
    s.end_time_unix_nano = NOW + 10**9
    if parent:
        s.parent_span_id = parent
    for k, v in attrs.items():
        value = AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=str(v))
        if isinstance(v, float):
            value = AnyValue(double_value=v)
        s.attributes.append(KeyValue(key=k, value=value))
    return s


def batches(shape: str, size: int, total: int):
    trace = os.urandom(16)
    root = make_span(trace, None, "link")
    pending, last = [root], root.span_id
    while total > 0:
        if shape == "session":
            c = make_span(trace, root.span_id, "call")
            pending += [c, make_span(trace, c.span_id, "engine")]
        else:
            kind = "call" if shape == "nested" and len(pending) % 2 == 0 else "link"
            s = make_span(trace, last, kind)
            pending.append(s)
            last = s.span_id
        if len(pending) >= size:
            yield pending
            total -= len(pending)
            pending = []


def run(url: str, shape: str, size: int, cap: int, extra: int) -> str:
    store = Store(url)
    store.migrate()
    collector = TraceCollector(store, CollectorSettings(max_spans_per_trace=cap), CollectorRegistry())
    timings, rows, refused_ms = [], 0, []
    for spans in batches(shape, size, cap + extra * size):
        req = ExportTraceServiceRequest()
        req.resource_spans.add().scope_spans.add().spans.extend(spans)
        payload = req.SerializeToString()
        started = time.process_time()  # this process's CPU: a busy shared machine inflates it little
        result = collector.ingest(payload, "application/x-protobuf")
        ms = (time.process_time() - started) * 1000
        if result.rejected == len(spans):
            refused_ms.append(ms)
        else:
            timings.append(ms)
            rows = result.requests
    store.engine.dispose()
    first, last = statistics.median(timings[:5]), statistics.median(timings[-5:])
    return (
        f"{shape:8s} first {first:7.1f} ms CPU  at cap {last:7.1f} ms  x{last / first:5.1f}  "
        f"rows written by the last batch {rows:5d}  refused batches {statistics.median(refused_ms):5.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--cap", type=int, default=CollectorSettings().max_spans_per_trace)
    ap.add_argument("--extra", type=int, default=10)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = ap.parse_args()
    for backend in args.backends:
        print(f"== {backend}, batches of {args.batch} spans, cap {args.cap} spans per trace")
        for shape in ("session", "nested", "links"):
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    print(run(f"sqlite:///{tmp}/o.db", shape, args.batch, args.cap, args.extra), flush=True)
            else:
                with temporary_database() as url:
                    print(run(url, shape, args.batch, args.cap, args.extra), flush=True)


if __name__ == "__main__":
    main()
