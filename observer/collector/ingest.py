"""One OTLP export request -> request records in the store, and the counting of finished ones."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from observer.catalog import COLLECTOR_SELF, make_metric
from observer.collector.mapping import (
    InvalidSpan,
    MappingRules,
    merge_partials,
    span_to_partial,
    wanted_attributes,
)
from observer.collector.otlp import decode
from observer.collector.usage import DepartmentFolder, UsageMetrics
from observer.config import CollectorSettings
from observer.store.db import Store, StoreUnavailable

log = logging.getLogger("observer.collector")


@dataclass
class IngestResult:
    spans: int
    requests: int
    rejected: int
    message: str


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Collector:
    def __init__(self, store: Store, settings: CollectorSettings, registry: CollectorRegistry) -> None:
        self.store = store
        self.settings = settings
        key = settings.pseudonymize_key.encode() if settings.pseudonymize_key else None
        self.rules = MappingRules(tuple(settings.department_attributes), key)
        self.usage = UsageMetrics(registry, DepartmentFolder(settings.departments, settings.top_departments))
        m = {s.name: make_metric(s, registry) for s in COLLECTOR_SELF}
        self.m_received = m["observer_collector_spans_received_total"]
        self.m_rejected = m["observer_collector_spans_rejected_total"]
        self.m_requests = m["observer_collector_export_requests_total"]
        self.m_duration = m["observer_collector_export_duration_seconds"]
        self.m_pending = m["observer_collector_requests_pending"]
        self.m_store_up = m["observer_store_up"]
        self.m_deleted = m["observer_store_rows_deleted_total"]
        self.m_store_up.set(1)

    def ingest(self, body: bytes, kind: str) -> IngestResult:
        """Decode, map, merge and store. Raises OtlpError (4xx) or StoreUnavailable (503)."""
        start = time.perf_counter()
        request = decode(body, kind)
        wanted = self.rules.wanted
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        spans = rejected = 0
        first_error = ""
        for rs in request.resource_spans:
            resource = wanted_attributes(rs.resource.attributes, wanted)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans += 1
                    try:
                        partial = span_to_partial(span, resource, self.rules)
                    except InvalidSpan as exc:
                        rejected += 1
                        first_error = first_error or str(exc)
                        continue
                    if partial is None:
                        continue  # not an LLM span: accepted, nothing to store
                    key = (partial["trace_id"], partial["request_key"])
                    merged[key] = merge_partials(merged[key], partial) if key in merged else partial
        self.m_received.inc(spans)
        if rejected:
            self.m_rejected.labels(reason="invalid_span").inc(rejected)
        try:
            self.store.upsert(list(merged.values()), utcnow())
        except StoreUnavailable:
            self.m_store_up.set(0)
            self.m_rejected.labels(reason="store_unavailable").inc(spans)
            raise
        self.m_store_up.set(1)
        self.m_duration.observe(time.perf_counter() - start)
        message = f"{rejected} spans rejected: {first_error}" if rejected else ""
        return IngestResult(spans, len(merged), rejected, message)

    def count_finished(self) -> int:
        """Move finished requests into the usage metrics (scheduler job, every second)."""
        try:
            rows = self.store.take_countable(utcnow(), self.settings.join_grace_s)
            self.m_pending.set(self.store.pending())
        except StoreUnavailable as exc:
            self.m_store_up.set(0)
            log.warning("store unavailable while counting requests: %s", exc)
            return 0
        self.usage.count(rows)
        return len(rows)
