"""Bounded-cardinality usage metrics from request records: model, folded department, outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from observer.catalog import USAGE, make_metric
from observer.store.db import Counted, TokenDelta

OTHER = "other"
UNKNOWN = "unknown"


class Folder:
    """Label values that keep their name: the configured ones always, then the first ``top_n`` others
    learned (from the store at start, then as seen); everything else folds into "other". First-seen,
    not a moving top-N, so label sets never churn."""

    def __init__(self, always: Iterable[str], top_n: int) -> None:
        self._always = frozenset(always)
        self._learned: set[str] = set()
        self._top_n = top_n
        self._lock = threading.Lock()

    def learn(self, values: Iterable[str]) -> None:
        for v in values:
            self.admit(v)

    def admit(self, value: str) -> bool:
        if value in self._always or value in self._learned:
            return True
        with self._lock:
            if len(self._learned) < self._top_n:
                self._learned.add(value)
                return True
        return False

    def __call__(self, value: str | None, trusted: bool = True) -> str:
        """The label for ``value``; an untrusted value keeps its name only if already known."""
        if not value:
            return UNKNOWN
        if value in self._always or value in self._learned:
            return value
        return value if trusted and self.admit(value) else OTHER


class UsageMetrics:
    def __init__(self, registry: CollectorRegistry, departments: Folder, models: Folder) -> None:
        m = {s.name: make_metric(s, registry) for s in USAGE}
        self.metrics = m
        self.fold_department = departments
        self.fold_model = models
        self.requests = m["llm_usage_requests_total"]
        self.tokens = m["llm_usage_tokens_total"]
        self.ttft = m["llm_usage_time_to_first_token_seconds"]
        self.tpot = m["llm_usage_time_per_output_token_seconds"]
        self.e2e = m["llm_usage_e2e_request_latency_seconds"]

    def count(self, rows: list[Counted]) -> None:
        for r in rows:
            # A model name only a caller typed (no engine confirmed it) never becomes a new label.
            model = self.fold_model(r.model, trusted=r.model_verified)
            dept = self.fold_department(r.department)
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

    def count_tokens(self, deltas: list[TokenDelta]) -> None:
        """Tokens that reached already-counted requests (a late engine half): added, never removed."""
        for d in deltas:
            model = self.fold_model(d.model, trusted=d.model_verified)
            dept = self.fold_department(d.department)
            if d.input_tokens:
                self.tokens.labels(model=model, department=dept, direction="input").inc(d.input_tokens)
            if d.output_tokens:
                self.tokens.labels(model=model, department=dept, direction="output").inc(d.output_tokens)
