"""The analytics facade used by `observer serve` (scheduler job, API, gauges) and `observer analytics`."""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import or_, select

from observer.analytics.cost import CostReport, cost_report, measured_energy_kwh
from observer.analytics.queries import Analytics, Summary
from observer.analytics.rollup import RefreshResult, Rollups, local_day
from observer.catalog import ANALYTICS, family
from observer.config import Settings
from observer.store.db import Store
from observer.store.models import Feedback, Request

OTHER = "other"
WINDOWS = {"1d": 1, "7d": 7, "30d": 30}


def _fold_top(ranked: list[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """Bounded labels: the first n (already ranked) keep their name, the rest sum into "other"."""
    folded = ranked[:n]
    if ranked[n:]:
        folded.append((OTHER, sum(value for _, value in ranked[n:])))
    return folded


class FeedbackError(ValueError):
    pass


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting like a formula gets a leading apostrophe
    (OWASP "CSV injection"). Numbers stay numbers, so a negative count is still -3."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _SafeWriter:
    def __init__(self, buf: io.StringIO) -> None:
        self._writer = csv.writer(buf)

    def writerow(self, row: list[Any]) -> None:
        self._writer.writerow([csv_cell(v) for v in row])


class AnalyticsService:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.rollups = Rollups(store.engine, settings.analytics.timezone, settings.store.retention_days)
        self.analytics = Analytics(store.engine)
        self._gauges: list[GaugeMetricFamily] = []
        self._lock = threading.Lock()

    def today(self) -> date:
        return local_day(datetime.now(UTC).replace(tzinfo=None), self.rollups.tz)

    def refresh(self, now: datetime | None = None) -> RefreshResult:
        result = self.rollups.refresh(now)
        self.update_gauges()
        return result

    # --- reports ---------------------------------------------------------------------------------
    def summary(self, day: date | None = None, with_cost: bool = True) -> Summary:
        day = day or self.today()
        s = self.analytics.summary(day)
        if with_cost:
            s.cost = self.cost(day).to_dict()
        return s

    def cost(self, day: date | None = None, window_days: int = 30) -> CostReport:
        day = day or self.today()
        cfg = self.settings.cost
        i, o = self.analytics.tokens(day, window_days)
        depts = [
            (d.department, d.input_tokens, d.output_tokens)
            for d in self.analytics.departments(day, window_days)
        ]
        energy = measured_energy_kwh(cfg.prometheus_url, window_days) if cfg.prometheus_url else None
        return cost_report(cfg, window_days, i, o, depts, energy)

    def csv(self, table: str, day: date | None = None) -> str:
        day = day or self.today()
        buf = io.StringIO()
        w = _SafeWriter(buf)  # department and model names come from callers' spans
        if table == "departments":
            w.writerow(["department", "active_users", "requests", "input_tokens", "output_tokens", "errors"])
            for r in self.analytics.departments(day):
                w.writerow(
                    [r.department, r.active_users, r.requests, r.input_tokens, r.output_tokens, r.errors]
                )
        elif table == "cohorts":
            cohorts = self.analytics.cohorts(until=day)
            width = max((len(c["retention"]) for c in cohorts), default=0)
            w.writerow(["cohort", "size", *[f"month_{k}" for k in range(width)]])
            for c in cohorts:
                w.writerow([c["cohort"], c["size"], *c["retention"]])
        elif table == "cost":
            w.writerow(
                [
                    "department",
                    "input_tokens",
                    "output_tokens",
                    "token_share",
                    "self_hosted_cost",
                    "public_api_cost",
                ]
            )
            for d in self.cost(day).by_department:
                w.writerow(
                    [
                        d["department"],
                        d["input_tokens"],
                        d["output_tokens"],
                        d["token_share"],
                        d["self_hosted_cost"],
                        d["public_api_cost"],
                    ]
                )
        elif table == "daily":
            w.writerow(["date", "dau", "wau", "mau", "stickiness", "new_users"])
            s = self.analytics
            w.writerow(
                [
                    day.isoformat(),
                    s.active_users(day, 1),
                    s.active_users(day, 7),
                    s.active_users(day, 30),
                    s.stickiness(day),
                    s.new_users(day),
                ]
            )
        else:
            raise ValueError(f"unknown table {table!r} (departments, cohorts, cost, daily)")
        return buf.getvalue()

    # --- feedback ----------------------------------------------------------------------------------
    def add_feedback(self, body: dict[str, Any]) -> dict[str, Any]:
        ref = body.get("request_id") or body.get("trace_id")
        if not isinstance(ref, str) or not ref or len(ref) > 128 or not ref.isprintable():
            raise FeedbackError("'request_id' or 'trace_id' (a printable string) is required")
        rating = body.get("rating")
        ratings = {"up": 1, "down": -1, 1: 1, -1: -1, "+1": 1, "-1": -1}
        # Only hashable scalars can be looked up (`rating: []` raised TypeError, answered as an outage).
        if not isinstance(rating, str | int) or isinstance(rating, bool) or rating not in ratings:
            raise FeedbackError("'rating' must be 'up' or 'down' (or 1 / -1)")
        reason = body.get("reason")
        if reason is not None and (
            not isinstance(reason, str) or reason not in self.settings.analytics.feedback_reasons
        ):
            raise FeedbackError(f"'reason' must be one of {self.settings.analytics.feedback_reasons}")
        keep = self.settings.analytics.feedback_keep_comments
        comment = body.get("comment") if keep and isinstance(body.get("comment"), str) else None
        if comment is not None:
            comment = comment.replace("\x00", "")  # PostgreSQL text refuses NUL
        r = Request.__table__.c
        with self.store.engine.begin() as conn:
            match = conn.execute(
                select(r.model, r.department)
                .where(or_(r.trace_id == ref, r.engine_request_id == ref))
                .limit(1)
            ).first()
            conn.execute(
                Feedback.__table__.insert().values(
                    request_ref=ref,
                    rating=ratings[rating],
                    reason=reason,
                    comment=comment[:2000] if comment else None,
                    model=match[0] if match else None,
                    department=match[1] if match else None,
                    created_at=datetime.now(UTC).replace(tzinfo=None),
                )
            )
        return {"matched": match is not None, "comment_stored": comment is not None}

    # --- gauges ------------------------------------------------------------------------------------
    def update_gauges(self, day: date | None = None) -> None:
        day = day or self.today()
        a = self.analytics
        cfg = self.settings
        fams = {s.name: s for s in ANALYTICS}
        out: list[GaugeMetricFamily] = []

        g = family(fams["llm_active_users"])
        for label, n in WINDOWS.items():
            g.add_metric([label], a.active_users(day, n))
        out.append(g)

        top_n = cfg.analytics.top_departments
        by_window = {label: a.departments(day, n) for label, n in WINDOWS.items()}
        g = family(fams["llm_active_users_by_department"])
        for label in WINDOWS:
            for dept, users in _fold_top([(r.department, r.active_users) for r in by_window[label]], top_n):
                g.add_metric([dept, label], users)
        out.append(g)

        g = family(fams["llm_department_tokens"])
        rows = by_window["30d"]
        for direction in ("input", "output"):
            pairs = [(r.department, getattr(r, f"{direction}_tokens")) for r in rows]
            for dept, tokens in _fold_top(pairs, top_n):
                g.add_metric([dept, direction, "30d"], tokens)
        out.append(g)

        for name, value in (
            ("llm_users_stickiness_ratio", a.stickiness(day)),
            ("llm_users_retention_m2m_ratio", a.retention_m2m(day)),
            ("llm_users_retention_m2m_complete_ratio", a.retention_m2m_complete(day)),
            ("llm_new_users", a.new_users(day)),
        ):
            g = family(fams[name])
            if value is not None:
                g.add_metric([], value)
            out.append(g)

        g = family(fams["llm_cohort_retention_ratio"])
        for c in a.cohorts(months=12, until=day):
            for k, share in enumerate(c["retention"]):
                g.add_metric([c["cohort"], str(k)], share)
        out.append(g)

        # Feedback by model and department, departments folded like the others.
        known = {r.department for r in rows[:top_n]}
        votes: dict[tuple[str, str], list[int]] = {}
        for f in a.feedback(day):
            key = (f["model"], f["department"] if f["department"] in known else OTHER)
            v = votes.setdefault(key, [0, 0])
            v[0] += f["up"]
            v[1] += f["down"]
        up = family(fams["llm_feedback_up_ratio"])
        responses = family(fams["llm_feedback_responses"])
        for (model, dept), (n_up, n_down) in sorted(votes.items()):
            up.add_metric([model, dept], n_up / (n_up + n_down))
            responses.add_metric([model, dept, "up"], n_up)
            responses.add_metric([model, dept, "down"], n_down)
        out += [up, responses]

        report = self.cost(day)
        cur = report.currency
        for name, value, labels in (
            ("llm_cost_self_hosted", report.self_hosted_cost, [cur, "30d"]),
            ("llm_cost_public_api_equivalent", report.public_api_cost, [cur, "30d"]),
            ("llm_cost_savings", report.savings, [cur, "30d"]),
        ):
            g = family(fams[name])
            g.add_metric(labels, value)
            out.append(g)
        g = family(fams["llm_cost_per_million_tokens"])
        for kind, value in (
            ("self_hosted", report.self_hosted_per_million_tokens),
            ("public_api", report.public_api_per_million_tokens),
        ):
            if value is not None:
                g.add_metric([kind, cur], value)
        out.append(g)
        g = family(fams["llm_cost_by_department"])
        costs = [(d["department"], d["self_hosted_cost"]) for d in report.by_department]
        for dept, value in _fold_top(costs, top_n):
            g.add_metric([dept, cur, "30d"], value)
        out.append(g)
        with self._lock:
            self._gauges = out

    def collector(self) -> Collector:
        service = self

        class _Gauges(Collector):
            def collect(self) -> Iterator[GaugeMetricFamily]:
                with service._lock:
                    yield from service._gauges

        return _Gauges()

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self.collector())
