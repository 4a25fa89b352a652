"""`model` and `department` on the usage metrics are client-controlled strings: they stay bounded,
and junk sent after a restart cannot take the places of the names that were really in use."""

from __future__ import annotations

import os
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from observer.collector.ingest import TraceCollector
from observer.config import CollectorSettings
from observer.store.db import Store

PROTOBUF = "application/x-protobuf"


def kv(k: str, v) -> KeyValue:
    return KeyValue(key=k, value=AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v))


def body(calls: list[tuple[str, str, bool]]) -> bytes:
    """One call span per (model, department, served): served calls get an engine child span."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for model, department, served in calls:
        trace_id, call_id = os.urandom(16), os.urandom(8)
        attrs = [kv("gen_ai.request.model", model), kv("department", department), kv("user.id", "u")]
        ss.spans.append(
            Span(
                trace_id=trace_id,
                span_id=call_id,
                name="chat",
                start_time_unix_nano=now,
                end_time_unix_nano=now + 10**9,
                attributes=attrs,
            )
        )
        if served:
            ss.spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=os.urandom(8),
                    parent_span_id=call_id,
                    name="llm_request",
                    start_time_unix_nano=now,
                    end_time_unix_nano=now + 10**9,
                    attributes=[kv("gen_ai.usage.prompt_tokens", 5), kv("gen_ai.usage.completion_tokens", 3)],
                )
            )
    return req.SerializeToString()


def label_values(registry: CollectorRegistry, label: str) -> set[str]:
    out = set()
    for metric in registry.collect():
        if metric.name == "llm_usage_requests":
            out |= {s.labels[label] for s in metric.samples if s.name.endswith("_total")}
    return out


def total(registry: CollectorRegistry) -> float:
    return sum(
        registry.get_sample_value("llm_usage_requests_total", s.labels) or 0
        for m in registry.collect()
        if m.name == "llm_usage_requests"
        for s in m.samples
        if s.name.endswith("_total")
    )


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/labels.db")
    s.migrate()
    yield s
    s.engine.dispose()


def collector(store: Store, **settings) -> tuple[TraceCollector, CollectorRegistry]:
    registry = CollectorRegistry()
    return TraceCollector(store, CollectorSettings(join_grace_s=0, **settings), registry), registry


def test_made_up_models_fold_into_other(store):
    c, registry = collector(store, top_models=5)
    c.ingest(body([("acme/chat-8b", "legal", True)] * 3), PROTOBUF)
    junk = [(f"made-up-{i}", "legal", False) for i in range(200)]  # 404s: no engine ever served them
    c.ingest(body(junk), PROTOBUF)
    assert c.count_finished() == 203
    assert label_values(registry, "model") == {"acme/chat-8b", "other"}
    assert total(registry) == 203  # folded, never dropped


def test_even_engine_confirmed_models_are_capped(store):
    c, registry = collector(store, top_models=5, models=["acme/chat-8b"])
    c.ingest(body([(f"m-{i}", "legal", True) for i in range(200)]), PROTOBUF)
    c.count_finished()
    models = label_values(registry, "model")
    assert len(models - {"other"}) <= 5 and "other" in models


def test_after_a_restart_junk_cannot_crowd_out_real_names(store):
    c, _ = collector(store, top_models=2, top_departments=2)
    real = [("acme/chat-8b", "legal", True)] * 5 + [("acme/code-34b", "research", True)] * 4
    c.ingest(body(real), PROTOBUF)
    c.count_finished()
    # Restart: a new process, then junk arrives before any real request.
    c2, registry = collector(store, top_models=2, top_departments=2)
    junk = [(f"junk-{i}", f"dept-{i}", True) for i in range(50)]
    c2.ingest(body(junk + real), PROTOBUF)
    c2.count_finished()
    assert label_values(registry, "model") == {"acme/chat-8b", "acme/code-34b", "other"}
    assert label_values(registry, "department") == {"legal", "research", "other"}
