"""One OTLP export request -> spans in the store, resolved into requests; counting finished ones."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from observer.catalog import COLLECTOR_SELF, make_metric
from observer.collector.mapping import InvalidSpan, MappingRules, span_to_record, wanted_attributes
from observer.collector.otlp import decode
from observer.collector.usage import Folder, UsageMetrics
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


class TraceCollector:
    """The trace receiver's logic: decode, validate, store, resolve, count (``observer serve`` wires it)."""

    def __init__(
        self,
        store: Store,
        settings: CollectorSettings,
        registry: CollectorRegistry,
        retention_days: int = 30,
    ) -> None:
        self.store = store
        self.settings = settings
        self.max_age = timedelta(days=retention_days)
        key = settings.pseudonymize_key.encode() if settings.pseudonymize_key else None
        self.rules = MappingRules(tuple(settings.user_attributes), tuple(settings.department_attributes), key)
        # Label folding survives restarts: the names kept are recomputed from the store, so junk sent
        # after a restart cannot take the places of real departments and models.
        # (learned on the first counting pass, once the schema surely exists).
        self.usage = UsageMetrics(
            registry,
            Folder(settings.departments, settings.top_departments),
            Folder(settings.models, settings.top_models),
        )
        self.served_by_service: dict[str, str] = {}
        self._served_lock = threading.Lock()
        self._learned = False
        m = {s.name: make_metric(s, registry) for s in COLLECTOR_SELF}
        self.m_received = m["observer_collector_spans_received_total"]
        self.m_rejected = m["observer_collector_spans_rejected_total"]
        self.m_dropped = m["observer_collector_values_dropped_total"]
        self.m_requests = m["observer_collector_export_requests_total"]
        self.m_duration = m["observer_collector_export_duration_seconds"]
        self.m_pending = m["observer_collector_requests_pending"]
        self.m_store_up = m["observer_store_up"]
        self.m_deleted = m["observer_store_rows_deleted_total"]
        self.m_store_up.set(1)
        self._last_prune = 0.0

    def ingest(self, body: bytes, kind: str) -> IngestResult:
        """Decode, validate, store and resolve. Raises OtlpError (4xx) or StoreUnavailable (503).

        A span that cannot be used is rejected alone (OTLP partial success); a value that cannot be
        trusted (inf, negative, beyond any real request) is dropped from its record and counted."""
        start = time.perf_counter()
        request = decode(body, kind)
        now = utcnow()
        oldest, newest = now - self.max_age, now + timedelta(seconds=self.settings.max_clock_skew_s)
        wanted = self.rules.wanted
        records: list[dict[str, Any]] = []
        spans = rejected = 0
        first_error = ""
        dropped: dict[str, int] = {}
        for rs in request.resource_spans:
            resource = wanted_attributes(rs.resource.attributes, wanted)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans += 1
                    try:
                        record, bad = span_to_record(span, resource, self.rules)
                        if not oldest <= record["started_at"] <= newest:
                            raise InvalidSpan("start time outside the retention window or in the future")
                    except InvalidSpan as exc:
                        rejected += 1
                        first_error = first_error or str(exc)
                        continue
                    for key in bad:
                        dropped[key] = dropped.get(key, 0) + 1
                    records.append(record)
        self.m_received.inc(spans)
        if rejected:
            self.m_rejected.labels(reason="invalid_span").inc(rejected)
        for key, n in dropped.items():
            self.m_dropped.labels(attribute=key).inc(n)
        try:
            rows, too_many = self.store.ingest_spans(
                records, now, self.served_by_service, self.settings.max_spans_per_trace
            )
        except StoreUnavailable:
            self.m_store_up.set(0)
            self.m_rejected.labels(reason="store_unavailable").inc(spans)
            raise
        if too_many:
            rejected += too_many
            self.m_rejected.labels(reason="trace_too_large").inc(too_many)
            first_error = first_error or (
                f"trace over collector.max_spans_per_trace ({self.settings.max_spans_per_trace} spans)"
            )
        self._learn_served(rows)
        self.m_store_up.set(1)
        self.m_duration.observe(time.perf_counter() - start)
        message = f"{rejected} spans rejected: {first_error}" if rejected else ""
        return IngestResult(spans, len(rows), rejected, message)

    def _learn_served(self, rows: list[dict[str, Any]]) -> None:
        """Which model each engine service serves: names engine-only requests (vLLM V1 spans carry
        no model) after the first request of that engine joined a call that said which."""
        learned = {
            r["service"]: r["model"] for r in rows if r["service"] and r["model"] and r["model_verified"]
        }
        if learned and any(self.served_by_service.get(k) != v for k, v in learned.items()):
            with self._served_lock:
                self.served_by_service = {**self.served_by_service, **learned}

    def _learn_from_store(self) -> None:
        s = self.settings
        self.usage.fold_department.learn(self.store.top_values("department", s.top_departments))
        self.usage.fold_model.learn(self.store.top_values("model", s.top_models, verified_only=True))
        with self._served_lock:
            self.served_by_service = {**self.store.served_models_by_service(), **self.served_by_service}
        self._learned = True

    def count_finished(self) -> int:
        """Move settled requests into the usage metrics (scheduler job, every second)."""
        now = utcnow()
        try:
            if not self._learned:
                self._learn_from_store()
            rows = self.store.take_countable(now, self.settings.join_grace_s)
            deltas = self.store.take_token_deltas(now, self.settings.join_window_s)
            self.m_pending.set(self.store.pending())
            if time.monotonic() - self._last_prune > 60:
                self._last_prune = time.monotonic()
                cutoff = now - timedelta(seconds=self.settings.join_window_s)
                self.m_deleted.inc(self.store.delete_spans_before(cutoff))
        except StoreUnavailable as exc:
            self.m_store_up.set(0)
            log.warning("store unavailable while counting requests: %s", exc)
            return 0
        self.usage.count(rows)
        self.usage.count_tokens(deltas)
        return len(rows)
