"""Incremental rollups: raw request rows -> user_days, user_months, users, department_days.

A refresh finds the company-time-zone days whose raw rows changed since the last refresh (new rows,
late spans for yesterday, a gateway half that arrived after its engine half) and recomputes exactly
those days from the raw rows. Recomputing a day is idempotent, so late data corrects the day it
belongs to and nothing is counted twice. Days older than the raw-row retention are never
recomputed (their raw rows may be partly gone); their rollups are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from observer.store.cluster import cluster_lock
from observer.store.models import DepartmentDay, Request, RollupState, User, UserDay, UserMonth
from observer.store.retry import with_deadlock_retry

UNKNOWN = "unknown"
_WATERMARK = "rollup_watermark"
# How long after its updated_at a request row may still commit: the ingest stamps it, then decodes,
# waits for the trace's lock behind other replicas, retries deadlocks. A row committed after a refresh
# with a stamp below that refresh's watermark would never be rolled up, so the watermark never passes
# now - LATE_COMMIT_S: the next refresh recomputes those days again (idempotent, usually just today).
LATE_COMMIT_S = 120.0


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day as naive UTC datetimes (DST-safe)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return (start.astimezone(UTC).replace(tzinfo=None), end.astimezone(UTC).replace(tzinfo=None))


def local_day(ts: datetime, tz: ZoneInfo) -> date:
    return ts.replace(tzinfo=UTC).astimezone(tz).date()


@dataclass
class RefreshResult:
    days: list[date]
    seconds: float
    ran: bool = True  # False: another replica held the cluster lock and refreshes this tick


class Rollups:
    def __init__(self, engine: Engine, timezone: str = "UTC", retention_days: int = 30) -> None:
        self.engine = engine
        self.tz = ZoneInfo(timezone)
        self.retention_days = retention_days
        self.dialect = engine.dialect.name

    def _insert(self, table):
        return pg_insert(table) if self.dialect == "postgresql" else sqlite_insert(table)

    # --- which days changed -------------------------------------------------------------------------
    def dirty_days(self, since: datetime | None, now: datetime | None = None) -> list[date]:
        """Days to recompute, never outside [today - retention, today + 1]: a raw row dated 1970 or
        2554 (a sender's broken clock) must not make a refresh walk hundreds of thousands of days."""
        today = local_day(now or datetime.now(UTC).replace(tzinfo=None), self.tz)
        oldest, newest = today - timedelta(days=self.retention_days), today + timedelta(days=1)
        r = Request.__table__.c
        q = select(r.started_at)
        if since is not None:
            q = q.where(r.updated_at > since)
        days: set[date] = set()
        with self.engine.connect() as conn:
            if since is None:  # first run: every day present
                lo, hi = conn.execute(select(func.min(r.started_at), func.max(r.started_at))).one()
                if lo is None:
                    return []
                d = max(local_day(lo, self.tz), oldest)
                last = min(local_day(hi, self.tz), newest)
                while d <= last:
                    days.add(d)
                    d += timedelta(days=1)
            else:
                # No DISTINCT: with it SQLite scans the whole started_at index instead of seeking on
                # updated_at (10 s instead of 0.1 s on 10M rows); the set de-duplicates.
                for (started,) in conn.execute(q):
                    day = local_day(started, self.tz)
                    if oldest <= day <= newest:
                        days.add(day)
        return sorted(days)

    def refresh(self, now: datetime | None = None) -> RefreshResult:
        """Recompute every day touched since the last refresh, once per cluster: replicas that find
        another one refreshing skip (``ran`` False). Returns the days recomputed."""
        start = time.perf_counter()
        with cluster_lock(self.engine, "rollups") as mine:
            if not mine:
                return RefreshResult([], time.perf_counter() - start, ran=False)
            return self._refresh(now, start)

    def _refresh(self, now: datetime | None, start: float) -> RefreshResult:
        now = now or datetime.now(UTC).replace(tzinfo=None)
        with self.engine.connect() as conn:
            watermark = conn.execute(
                select(RollupState.value).where(RollupState.name == _WATERMARK)
            ).scalar_one_or_none()
            # The raw rows' newest updated_at becomes the next watermark: rows written while we work
            # have a later updated_at and are picked up next time.
            newest = conn.execute(select(func.max(Request.__table__.c.updated_at))).scalar_one_or_none()
        if newest is None or (watermark is not None and newest <= watermark):
            return RefreshResult([], time.perf_counter() - start)
        oldest_allowed = local_day(now, self.tz) - timedelta(days=self.retention_days - 1)
        days = [d for d in self.dirty_days(watermark, now) if d >= oldest_allowed or watermark is None]
        for d in days:
            with_deadlock_retry(lambda d=d: self.recompute_day(d))
        # Rows stamped in the last LATE_COMMIT_S may still be committing (wall clock: the stamps are
        # the ingesting replica's clock, not ``now``); the watermark stays behind them.
        newest = min(newest, datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=LATE_COMMIT_S))
        with self.engine.begin() as conn:
            ins = self._insert(RollupState.__table__).values(name=_WATERMARK, value=newest)
            conn.execute(ins.on_conflict_do_update(index_elements=["name"], set_={"value": newest}))
        return RefreshResult(days, time.perf_counter() - start)

    # --- one day ----------------------------------------------------------------------------------------
    def recompute_day(self, day: date) -> None:
        lo, hi = day_bounds(day, self.tz)
        r = Request.__table__.c
        in_day = (r.started_at >= lo) & (r.started_at < hi)
        user_q = (
            select(
                r.user_id,
                func.max(r.department),
                func.count(),
                func.coalesce(func.sum(r.input_tokens), 0),
                func.coalesce(func.sum(r.output_tokens), 0),
            )
            .where(in_day, r.user_id.isnot(None))
            .group_by(r.user_id)
        )
        dept = func.coalesce(r.department, UNKNOWN)
        model = func.coalesce(r.model, UNKNOWN)
        dept_q = (
            select(
                dept,
                model,
                func.count(),
                func.sum(case((r.outcome == "error", 1), else_=0)),
                func.coalesce(func.sum(r.input_tokens), 0),
                func.coalesce(func.sum(r.output_tokens), 0),
                func.count(r.user_id.distinct()),
            )
            .where(in_day)
            .group_by(dept, model)
        )
        month = day.strftime("%Y-%m")
        with self.engine.begin() as conn:
            # Sorted by key: every writer takes the row locks of users/user_months in the same order,
            # so two refreshes (or a refresh and the CLI) cannot deadlock on PostgreSQL.
            users = sorted(conn.execute(user_q).all(), key=lambda u: u[0])
            depts = conn.execute(dept_q).all()
            conn.execute(delete(UserDay.__table__).where(UserDay.__table__.c.day == day))
            conn.execute(delete(DepartmentDay.__table__).where(DepartmentDay.__table__.c.day == day))
            if users:
                conn.execute(
                    UserDay.__table__.insert(),
                    [
                        {
                            "day": day,
                            "user_id": u,
                            "department": d,
                            "requests": n,
                            "input_tokens": i,
                            "output_tokens": o,
                        }
                        for u, d, n, i, o in users
                    ],
                )
                conn.execute(
                    self._insert(UserMonth.__table__).on_conflict_do_nothing(),
                    [{"month": month, "user_id": u} for u, *_ in users],
                )
                ins = self._insert(User.__table__)
                earlier = ins.excluded.first_day < User.__table__.c.first_day
                conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=["user_id"],
                        set_={
                            "first_day": case(
                                (earlier, ins.excluded.first_day), else_=User.__table__.c.first_day
                            ),
                            "first_month": case(
                                (earlier, ins.excluded.first_month), else_=User.__table__.c.first_month
                            ),
                            "department": func.coalesce(ins.excluded.department, User.__table__.c.department),
                        },
                    ),
                    [
                        {"user_id": u, "first_day": day, "first_month": month, "department": d}
                        for u, d, *_ in users
                    ],
                )
            if depts:
                conn.execute(
                    DepartmentDay.__table__.insert(),
                    [
                        {
                            "day": day,
                            "department": d,
                            "model": m,
                            "requests": n,
                            "errors": e,
                            "input_tokens": i,
                            "output_tokens": o,
                            "active_users": a,
                        }
                        for d, m, n, e, i, o, a in depts
                    ],
                )
