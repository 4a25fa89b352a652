"""Analytics at scale: 10M requests from 100k users over 365 days, on SQLite and PostgreSQL.

Reports: load time (not a target), the initial rollup over all days, the incremental daily
refresh after one more day of requests arrives, and the DAU / WAU / MAU / stickiness / retention /
cohort-matrix / departments query times (median of 5). Targets: daily refresh < 10 s, every query
< 1 s. Users follow the synthetic company's habits (observer/load/population.py).

    python benchmarks/analytics.py [--requests 10000000] [--users 100000] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import temporary_database

from observer.analytics.service import AnalyticsService
from observer.config import Settings
from observer.load.population import Population
from observer.store.db import Store

START = date(2025, 11, 4)  # a Tuesday: the day added for the daily refresh is a weekday
DAYS = 365
MODELS = ("acme/chat-8b", "acme/code-32b", "acme/rag-70b")
COLUMNS = (
    "trace_id",
    "request_key",
    "gateway_span_id",
    "user_id",
    "department",
    "model",
    "input_tokens",
    "output_tokens",
    "outcome",
    "started_at",
    "updated_at",
    "counted",
)


def day_rows(day_index: int, per_day: int, population: Population, rng: random.Random, first_id: int):
    day = START + timedelta(days=day_index)
    weekday = day.weekday() < 5
    active = [u for u in population.users if u.active_on(day, population.seed)]
    weights = [u.habit.requests_weight for u in active]
    n = per_day if weekday else per_day // 4
    users = rng.choices(active, weights=weights, k=n) if active else []
    base = datetime(day.year, day.month, day.day, 7)
    written = datetime(day.year, day.month, day.day, 23, 59)
    rows = []
    for i, u in enumerate(users):
        rid = first_id + i
        started = base + timedelta(seconds=rng.randrange(13 * 3600))
        rows.append(
            (
                f"{rid:032x}",
                f"{rid:016x}",
                f"{rid:016x}",
                u.user_id,
                u.department,
                MODELS[rid % 3],
                rng.randint(50, 4000),
                rng.randint(20, 800),
                "error" if rid % 97 == 0 else "success",
                started,
                written,
                True,
            )
        )
    return rows


def load(store: Store, rows) -> None:
    if store.dialect == "postgresql":
        with store.engine.raw_connection() as raw:
            with raw.cursor() as cur, cur.copy(f"COPY requests ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            raw.commit()
    else:
        with store.engine.raw_connection() as raw:
            raw.executemany(
                f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [(*r[:9], r[9].isoformat(" "), r[10].isoformat(" "), 1) for r in rows],
            )
            raw.commit()


def timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(url: str, name: str, requests: int, users: int) -> None:
    store = Store(url)
    store.migrate()
    settings = Settings.model_validate({"store": {"url": url, "retention_days": 400}})
    svc = AnalyticsService(store, settings)
    population = Population(users, seed=7)
    rng = random.Random(7)
    per_day = int(requests / (DAYS * (5 / 7 + 2 / 7 / 4)))
    t0 = time.perf_counter()
    next_id, total = 1, 0
    for d in range(DAYS):
        rows = day_rows(d, per_day, population, rng, next_id)
        load(store, rows)
        next_id += len(rows)
        total += len(rows)
    load_s = time.perf_counter() - t0
    print(f"[{name}] loaded {total:,} requests from {users:,} users over {DAYS} days in {load_s:.0f} s")

    result = svc.rollups.refresh(now=datetime.combine(START + timedelta(days=DAYS), datetime.min.time()))
    print(f"[{name}] initial rollup: {len(result.days)} days in {result.seconds:.1f} s")

    # One more day arrives (its rows written after the watermark), then the daily refresh.
    rows = day_rows(DAYS, per_day, population, rng, next_id)
    load(store, rows)
    day = START + timedelta(days=DAYS)
    result = svc.rollups.refresh(now=datetime.combine(day + timedelta(days=1), datetime.min.time()))
    print(
        f"[{name}] incremental daily refresh ({len(rows):,} new requests, days {result.days}): "
        f"{result.seconds:.2f} s (target < 10 s)"
    )

    a = svc.analytics
    queries = {
        "DAU": lambda: a.active_users(day, 1),
        "WAU": lambda: a.active_users(day, 7),
        "MAU": lambda: a.active_users(day, 30),
        "stickiness": lambda: a.stickiness(day),
        "retention m2m": lambda: a.retention_m2m(day),
        "retention matrix (12 cohorts)": lambda: a.cohorts(12, until=day),
        "departments (30 d)": lambda: a.departments(day, 30),
    }
    values = {k: fn() for k, fn in queries.items() if k in ("DAU", "WAU", "MAU", "stickiness")}
    print(
        f"[{name}] as of {day}: DAU {values['DAU']:,}, WAU {values['WAU']:,}, MAU {values['MAU']:,}, "
        f"stickiness {values['stickiness']:.2f}"
    )
    for label, fn in queries.items():
        print(f"[{name}]   {label:<30} {timed(fn) * 1000:8.1f} ms (target < 1000 ms)")
    with store.engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM user_days")).scalar()
    print(f"[{name}] rollup size: {n:,} user-day rows")
    store.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = ap.parse_args()
    for backend in args.backends:
        if backend == "sqlite":
            run(f"sqlite:///{tempfile.mkdtemp()}/analytics.db", "sqlite", args.requests, args.users)
        else:
            with temporary_database() as url:
                run(url, "postgresql", args.requests, args.users)


if __name__ == "__main__":
    main()
