"""Bounded-cardinality usage metrics from request records: model, folded department, outcome."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from observer.catalog import USAGE, make_metric
from observer.store.db import Counted

OTHER = "other"
UNKNOWN = "unknown"


class DepartmentFolder:
    """Configured departments always keep their name; the first ``top_n`` others seen do too; the
    rest fold into "other". First-seen (not a moving top-N) so label sets never churn."""

    def __init__(self, always: list[str], top_n: int) -> None:
        self._always = set(always)
        self._seen: set[str] = set()
        self._top_n = top_n
        self._lock = threading.Lock()

    def __call__(self, department: str | None) -> str:
        if not department:
            return UNKNOWN
        if department in self._always or department in self._seen:
            return department
        with self._lock:
            if len(self._seen) < self._top_n:
                self._seen.add(department)
                return department
        return OTHER


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry, folder: DepartmentFolder) -> None:
        m = {s.name: make_metric(s, registry) for s in USAGE}
        self.metrics = m
        self.fold = folder
        self.requests = m["llm_usage_requests_total"]
        self.tokens = m["llm_usage_tokens_total"]
        self.ttft = m["llm_usage_time_to_first_token_seconds"]
        self.tpot = m["llm_usage_time_per_output_token_seconds"]
        self.e2e = m["llm_usage_e2e_request_latency_seconds"]

    def count(self, rows: list[Counted]) -> None:
        for r in rows:
            model = r.model or UNKNOWN
            dept = self.fold(r.department)
            self.requests.labels(model=model, department=dept, outcome=r.outcome or "success").inc()
            if r.input_tokens:
                self.tokens.labels(model=model, department=dept, direction="input").inc(r.input_tokens)
            if r.output_tokens:
                self.tokens.labels(model=model, department=dept, direction="output").inc(r.output_tokens)
            if r.ttft_s is not None:
                self.ttft.labels(model=model).observe(r.ttft_s)
            if r.tpot_s is not None:
                self.tpot.labels(model=model).observe(r.tpot_s)
            if r.e2e_s is not None:
                self.e2e.labels(model=model).observe(r.e2e_s)
