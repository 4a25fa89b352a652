"""Hostile numbers and strings inside otherwise valid spans, on both databases: a value that cannot be
true is dropped from its row and counted; the span's batchmates are stored and counted exactly once;
no metric ever holds inf, NaN or a negative; nothing raises (a raise would be a 500: OTLP would drop
the whole batch)."""

from __future__ import annotations

import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from observer.collector.ingest import TraceCollector
from observer.config import CollectorSettings
from observer.store.db import ENGINE_FIRST, Store

PROTOBUF = "application/x-protobuf"
NUMERIC_KEYS = [
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.latency.e2e",
    "gen_ai.latency.time_to_first_token",
    "gen_ai.latency.time_in_queue",
    "gen_ai.latency.time_in_model_prefill",
    "gen_ai.latency.time_in_model_decode",
]
STRING_KEYS = [
    "user.id",
    "department",
    "gen_ai.request.model",
    "gen_ai.response.finish_reasons",
    "error.type",
]

hostile_numbers = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, -1, -1e-9, 2**31, 2**63 - 1, -(2**63), 1e308, 10**7]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=12),  # "1e400", "NaN", "-5" arrive as strings too
)
hostile_strings = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["\x00", "a\x00b", "=cmd|' /C calc'!A0", "\u202e", "x" * 5000, "[", '["stop"', "[1,2]"]),
)


def anyvalue(v) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[anyvalue(x) for x in v]))
    return AnyValue(string_value=v)


def request_spans(n: int, attrs: dict | None = None) -> list[Span]:
    """n requests, call span + engine child; the first engine span gets the hostile attributes."""
    spans = []
    now = time.time_ns()
    for i in range(n):
        trace_id, call_id = os.urandom(16), os.urandom(8)
        call = Span(
            trace_id=trace_id,
            span_id=call_id,
            name="chat",
            start_time_unix_nano=now,
            end_time_unix_nano=now + 10**9,
        )
        call.attributes.extend(
            [
                KeyValue(key="gen_ai.request.model", value=anyvalue("acme/chat-8b")),
                KeyValue(key="user.id", value=anyvalue(f"u{i}")),
            ]
        )
        engine = Span(
            trace_id=trace_id,
            span_id=os.urandom(8),
            parent_span_id=call_id,
            name="llm_request",
            start_time_unix_nano=now,
            end_time_unix_nano=now + 10**9,
        )
        base = {
            "gen_ai.usage.prompt_tokens": 10,
            "gen_ai.usage.completion_tokens": 5,
            "gen_ai.latency.e2e": 0.5,
        }
        extra = attrs if (attrs is not None and i == 0) else {}
        for k, v in {**base, **extra}.items():
            (call if k in STRING_KEYS else engine).attributes.append(KeyValue(key=k, value=anyvalue(v)))
        spans += [call, engine]
    return spans


def body(spans: list[Span]) -> bytes:
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.extend(spans)
    return req.SerializeToString()


def metric_values(registry: CollectorRegistry) -> list[tuple[str, float]]:
    return [
        (s.name, s.value) for m in registry.collect() for s in m.samples if not s.name.endswith("_created")
    ]


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.migrate()
    yield s
    s.engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    numbers=st.dictionaries(st.sampled_from(NUMERIC_KEYS), hostile_numbers, min_size=1, max_size=5),
    strings=st.dictionaries(st.sampled_from(STRING_KEYS), hostile_strings, max_size=3),
)
def test_hostile_values_never_fail_the_batch_or_poison_metrics(store, numbers, strings):
    registry = CollectorRegistry()
    collector = TraceCollector(store, CollectorSettings(join_grace_s=0), registry)
    before = store.count()
    result = collector.ingest(body(request_spans(5, {**numbers, **strings})), PROTOBUF)
    assert result.rejected == 0 and result.requests == 5
    assert store.count() == before + 5  # the hostile request and its 4 batchmates
    counted = 0
    while n := collector.count_finished():
        counted += n
    assert counted == 5
    assert sum(v for name, v in metric_values(registry) if name == "llm_usage_requests_total") == 5
    for name, value in metric_values(registry):
        assert math.isfinite(value) and value >= 0, (name, value)
    for row in store.recent(limit=5):
        for col in ENGINE_FIRST:  # every measured number of a row
            v = row[col]
            assert v is None or (math.isfinite(v) and v >= 0), (col, v)
        for col in ("user_id", "department", "model", "finish_reason", "error_type"):
            assert row[col] is None or "\x00" not in row[col]


def test_dropped_values_are_counted_by_attribute(store):
    registry = CollectorRegistry()
    collector = TraceCollector(store, CollectorSettings(), registry)
    collector.ingest(
        body(request_spans(2, {"gen_ai.usage.prompt_tokens": -3, "gen_ai.latency.e2e": math.inf})), PROTOBUF
    )
    for key in ("gen_ai.usage.prompt_tokens", "gen_ai.latency.e2e"):
        assert registry.get_sample_value("observer_collector_values_dropped_total", {"attribute": key}) == 1


def test_spans_from_the_far_past_or_future_are_rejected_alone(store):
    collector = TraceCollector(store, CollectorSettings(), CollectorRegistry())
    good = request_spans(3)
    stale = request_spans(1)
    future = request_spans(1)
    for s in stale:
        s.start_time_unix_nano = 1  # 1970
    for s in future:
        s.start_time_unix_nano = s.end_time_unix_nano = 18_000_000_000 * 10**9  # 2540
    result = collector.ingest(body(good + stale + future), PROTOBUF)
    assert result.rejected == 4 and "retention window or in the future" in result.message
    assert result.requests == 3 and store.count() == 3


def test_a_trace_keeps_at_most_its_cap_of_spans_and_other_traces_are_untouched(store):
    """An endless (or hostile) trace cannot make every batch that touches it cost more than the last."""
    collector = TraceCollector(store, CollectorSettings(max_spans_per_trace=16), CollectorRegistry())
    trace_id, now = os.urandom(16), time.time_ns()
    flood = [
        Span(
            trace_id=trace_id,
            span_id=os.urandom(8),
            parent_span_id=os.urandom(8),
            name="db.query",
            start_time_unix_nano=now,
            end_time_unix_nano=now + 1,
        )
        for _ in range(30)
    ]
    first = collector.ingest(body(flood[:10] + request_spans(1)), PROTOBUF)
    assert first.rejected == 0
    second = collector.ingest(body(flood[10:] + request_spans(2)), PROTOBUF)
    assert second.rejected == 14 and "max_spans_per_trace" in second.message  # 10 + 6 kept, 14 refused
    assert second.requests == 2 and store.count() == 3  # the batchmates' requests are all there
