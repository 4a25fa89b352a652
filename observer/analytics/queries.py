"""Adoption metrics, read from the rollup tables only (never the raw rows).

Definitions (the ones product analytics use; say them on every dashboard):
* DAU / WAU / MAU at date D: distinct users active on D / in D-6..D / in D-29..D.
* Stickiness: mean DAU over D-29..D divided by MAU (a day-of-week-neutral DAU/MAU; > 0.5 = habit).
* New users on D: users whose first activity is D.
* Month-to-month retention at D: of the users active in the calendar month before D's month, the
  share also active in D's month up to D (``retention_m2m``); ``retention_m2m_complete`` is the same
  for the last two complete months.
* Cohort matrix: users grouped by the month of their first activity; cell k = share of the cohort
  active in the k-th month after it (k = 0 is 1.0 by definition).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, and_, func, select

from observer.store.models import DepartmentDay, Feedback, User, UserDay, UserMonth

UD = UserDay.__table__.c
UM = UserMonth.__table__.c
U = User.__table__.c
DD = DepartmentDay.__table__.c
FB = Feedback.__table__.c


def month_key(d: date) -> str:
    return d.strftime("%Y-%m")


def add_months(month: str, k: int) -> str:
    y, m = map(int, month.split("-"))
    m += k
    y += (m - 1) // 12
    m = (m - 1) % 12 + 1
    return f"{y:04d}-{m:02d}"


@dataclass
class DepartmentRow:
    department: str
    active_users: int
    requests: int
    input_tokens: int
    output_tokens: int
    errors: int


@dataclass
class Summary:
    date: str
    dau: int
    wau: int
    mau: int
    stickiness: float | None
    new_users: int
    retention_m2m: float | None
    retention_m2m_complete: float | None
    cohorts: list[dict] = field(default_factory=list)
    departments: list[dict] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)
    cost: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Analytics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _scalar(self, query) -> int:
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one() or 0

    def active_users(self, day: date, window_days: int) -> int:
        lo = day - timedelta(days=window_days - 1)
        if window_days == 1:
            return self._scalar(select(func.count()).where(UD.day == day))
        return self._scalar(select(func.count(UD.user_id.distinct())).where(UD.day >= lo, UD.day <= day))

    def stickiness(self, day: date) -> float | None:
        lo = day - timedelta(days=29)
        with self.engine.connect() as conn:
            user_days = conn.execute(select(func.count()).where(UD.day >= lo, UD.day <= day)).scalar_one()
            mau = conn.execute(
                select(func.count(UD.user_id.distinct())).where(UD.day >= lo, UD.day <= day)
            ).scalar_one()
        return (user_days / 30) / mau if mau else None

    def new_users(self, day: date) -> int:
        return self._scalar(select(func.count()).where(U.first_day == day))

    def _retention(self, prev_month: str, month: str, until: date | None = None) -> float | None:
        # Joins on the primary keys, driven from the smaller set. Both planners need this shape:
        # an IN over user-days runs unhashed on PostgreSQL at 100k users (38 s), a correlated
        # EXISTS makes SQLite probe every user's history (2.7 s); this is tens of ms on both.
        um = UserMonth.__table__
        with self.engine.connect() as conn:
            prev = conn.execute(select(func.count()).where(UM.month == prev_month)).scalar_one()
            if not prev:
                return None
            if until is None:
                later = um.alias("later")
                joined = um.join(later, and_(later.c.user_id == UM.user_id, later.c.month == month))
                kept_q = select(func.count()).select_from(joined).where(UM.month == prev_month)
            else:  # month to date: distinct users of this month's days up to D
                first = date(int(month[:4]), int(month[5:]), 1)
                current = select(UD.user_id).where(UD.day >= first, UD.day <= until).distinct().subquery()
                joined = current.join(um, and_(UM.month == prev_month, UM.user_id == current.c.user_id))
                kept_q = select(func.count()).select_from(joined)
            kept = conn.execute(kept_q).scalar_one()
        return kept / prev

    def retention_m2m(self, day: date) -> float | None:
        month = month_key(day)
        return self._retention(add_months(month, -1), month, until=day)

    def retention_m2m_complete(self, day: date) -> float | None:
        last_complete = add_months(month_key(day), -1)
        return self._retention(add_months(last_complete, -1), last_complete)

    def cohorts(self, months: int = 12, until: date | None = None) -> list[dict]:
        """[{cohort, size, retention: [1.0, r1, r2, ...]}] for the last ``months`` cohorts."""
        until = until or datetime.now(UTC).date()
        first = add_months(month_key(until), -(months - 1))
        with self.engine.connect() as conn:
            sizes = dict(
                conn.execute(
                    select(U.first_month, func.count()).where(U.first_month >= first).group_by(U.first_month)
                ).all()
            )
            cells = conn.execute(
                select(U.first_month, UM.month, func.count())
                .join(UserMonth.__table__, UM.user_id == U.user_id)
                .where(U.first_month >= first, UM.month <= month_key(until))
                .group_by(U.first_month, UM.month)
            ).all()
        grid: dict[str, dict[str, int]] = {}
        for cohort, month, n in cells:
            grid.setdefault(cohort, {})[month] = n
        out = []
        for cohort in sorted(sizes):
            size = sizes[cohort]
            row, k = [], 0
            while add_months(cohort, k) <= month_key(until):
                row.append(round(grid.get(cohort, {}).get(add_months(cohort, k), 0) / size, 4))
                k += 1
            out.append({"cohort": cohort, "size": size, "retention": row})
        return out

    def departments(self, day: date, window_days: int = 30) -> list[DepartmentRow]:
        lo = day - timedelta(days=window_days - 1)
        with self.engine.connect() as conn:
            dept = func.coalesce(
                UD.department, "unknown"
            )  # one object: one bind parameter in SELECT and GROUP BY
            active = dict(
                conn.execute(
                    select(dept, func.count(UD.user_id.distinct()))
                    .where(UD.day >= lo, UD.day <= day)
                    .group_by(dept)
                ).all()
            )
            volume = conn.execute(
                select(
                    DD.department,
                    func.sum(DD.requests),
                    func.sum(DD.input_tokens),
                    func.sum(DD.output_tokens),
                    func.sum(DD.errors),
                )
                .where(DD.day >= lo, DD.day <= day)
                .group_by(DD.department)
            ).all()
        rows = [
            DepartmentRow(d, active.get(d, 0), int(n or 0), int(i or 0), int(o or 0), int(e or 0))
            for d, n, i, o, e in volume
        ]
        return sorted(rows, key=lambda r: (-r.active_users, -r.requests, r.department))

    def tokens(self, day: date, window_days: int) -> tuple[int, int]:
        lo = day - timedelta(days=window_days - 1)
        with self.engine.connect() as conn:
            i, o = conn.execute(
                select(
                    func.coalesce(func.sum(DD.input_tokens), 0), func.coalesce(func.sum(DD.output_tokens), 0)
                ).where(DD.day >= lo, DD.day <= day)
            ).one()
        return int(i), int(o)

    def feedback(self, day: date, window_days: int = 30) -> list[dict]:
        lo = datetime.combine(day - timedelta(days=window_days - 1), datetime.min.time())
        hi = datetime.combine(day + timedelta(days=1), datetime.min.time())
        model = func.coalesce(FB.model, "unknown")
        dept = func.coalesce(FB.department, "unknown")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(model, dept, FB.rating, func.count())
                .where(FB.created_at >= lo, FB.created_at < hi)
                .group_by(model, dept, FB.rating)
            ).all()
        agg: dict[tuple[str, str], dict[str, int]] = {}
        for m, d, rating, n in rows:
            agg.setdefault((m, d), {"up": 0, "down": 0})["up" if rating > 0 else "down"] += n
        return [
            {
                "model": m,
                "department": d,
                "up": v["up"],
                "down": v["down"],
                "up_ratio": round(v["up"] / (v["up"] + v["down"]), 4),
            }
            for (m, d), v in sorted(agg.items())
        ]

    def summary(self, day: date) -> Summary:
        return Summary(
            date=day.isoformat(),
            dau=self.active_users(day, 1),
            wau=self.active_users(day, 7),
            mau=self.active_users(day, 30),
            stickiness=_round(self.stickiness(day)),
            new_users=self.new_users(day),
            retention_m2m=_round(self.retention_m2m(day)),
            retention_m2m_complete=_round(self.retention_m2m_complete(day)),
            cohorts=self.cohorts(until=day),
            departments=[asdict(r) for r in self.departments(day)],
            feedback=self.feedback(day),
        )


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
