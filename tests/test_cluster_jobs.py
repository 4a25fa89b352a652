"""Scheduled jobs run once per cluster: several replicas refreshing the rollups at the same moment on
one PostgreSQL recompute each changed day once, and the rollups equal the raw rows exactly."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from observer.analytics.rollup import LATE_COMMIT_S, Rollups
from observer.store.cluster import cluster_lock
from observer.store.db import Store

REPLICAS = 4


def _rows(day: date, tick: int, n: int) -> list[dict]:
    """n requests on ``day`` by a handful of users in two departments (fresh keys per tick)."""
    start = datetime(day.year, day.month, day.day, 9)
    return [
        {
            "trace_id": f"{tick:04d}{day:%Y%m%d}{i:020d}",
            "request_key": f"{i:016d}",
            "started_at": start + timedelta(minutes=i),
            "user_id": f"user-{(i + tick) % 7}",
            "department": ("legal", "sales")[i % 2],
            "model": "acme/chat-8b",
            "input_tokens": 100 + i,
            "output_tokens": 10 + tick,
            "outcome": "error" if i % 5 == 0 else "success",
        }
        for i in range(n)
    ]


def _expected(store: Store) -> tuple[list, list]:
    with store.engine.connect() as conn:
        users = conn.execute(
            text(
                "SELECT CAST(started_at AS DATE), user_id, count(*), sum(input_tokens), sum(output_tokens) "
                "FROM requests GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).all()
        depts = conn.execute(
            text(
                "SELECT CAST(started_at AS DATE), department, count(*), "
                "sum(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END), sum(input_tokens), "
                "sum(output_tokens), count(DISTINCT user_id) FROM requests GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).all()
    return [tuple(r) for r in users], [tuple(r) for r in depts]


def _rollups(store: Store) -> tuple[list, list]:
    with store.engine.connect() as conn:
        users = conn.execute(
            text("SELECT day, user_id, requests, input_tokens, output_tokens FROM user_days ORDER BY 1, 2")
        ).all()
        depts = conn.execute(
            text(
                "SELECT day, department, sum(requests), sum(errors), sum(input_tokens), "
                "sum(output_tokens), max(active_users) FROM department_days GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).all()
    return [tuple(r) for r in users], [tuple(r) for r in depts]


def test_concurrent_refreshes_run_once_per_tick_and_are_exact(pg_url):
    writer = Store(pg_url)
    writer.migrate()
    # One store (own connection pool) per replica, as separate processes would have.
    replicas = [Store(pg_url) for _ in range(REPLICAS)]
    rollups = [Rollups(s.engine, "UTC", retention_days=30) for s in replicas]
    recomputed: Counter = Counter()
    for r in rollups:
        inner = r.recompute_day

        def counting(day: date, inner=inner) -> None:
            recomputed[day] += 1
            time.sleep(0.05)  # a real day takes a while; the others must find the lock taken
            inner(day)

        r.recompute_day = counting
    today = datetime.now(UTC).date()
    for tick in range(3):
        days = [today - timedelta(days=d) for d in (tick, tick + 1)]  # two days change per tick
        now = datetime.now(UTC).replace(tzinfo=None)
        writer.upsert([row for d in days for row in _rows(d, tick, 20)], now)
        recomputed.clear()
        results: list = [None] * REPLICAS
        barrier = threading.Barrier(REPLICAS)

        def refresh(i: int, barrier: threading.Barrier = barrier, results: list = results) -> None:
            barrier.wait()
            results[i] = rollups[i].refresh()

        threads = [threading.Thread(target=refresh, args=(i,)) for i in range(REPLICAS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ran = [r for r in results if r.ran]
        # Exactly one replica did the work; any other that got the lock after it found nothing new.
        assert sum(1 for r in ran if r.days) == 1, results
        assert sum(1 for r in results if not r.ran) >= 1, results  # the lock was really contended
        assert all(n == 1 for n in recomputed.values()), (tick, recomputed)
        assert set(days) <= set(recomputed), (tick, days, recomputed, results)
        assert _rollups(writer) == _expected(writer), tick
    for s in (writer, *replicas):
        s.engine.dispose()


def test_a_row_committed_late_below_the_watermark_is_still_rolled_up(pg_url):
    """A replica stamps a row, then waits for a lock; the refresh runs meanwhile. The row commits with a
    stamp older than the newest row the refresh saw: the next refresh must still roll it up."""
    store = Store(pg_url)
    store.migrate()
    rollups = Rollups(store.engine, "UTC", retention_days=30)
    now = datetime.now(UTC).replace(tzinfo=None)
    today = now.date()
    store.upsert(_rows(today, 0, 3), now)
    assert rollups.refresh().days == [today]
    late = _rows(today - timedelta(days=1), 1, 2)  # yesterday's, stamped before the refresh
    store.upsert(late, now - timedelta(seconds=LATE_COMMIT_S / 4))
    store.upsert(_rows(today, 2, 1), datetime.now(UTC).replace(tzinfo=None))  # later activity
    assert today - timedelta(days=1) in rollups.refresh().days
    assert _rollups(store) == _expected(store)
    store.engine.dispose()


def test_the_cluster_lock_is_exclusive_and_dies_with_its_holder(pg_url):
    store, other = Store(pg_url), Store(pg_url)
    with cluster_lock(store.engine, "retention") as mine:
        assert mine
        with cluster_lock(other.engine, "retention") as theirs:
            assert not theirs  # another replica skips this tick
        with cluster_lock(other.engine, "rollups") as unrelated:
            assert unrelated  # one lock per job
    with cluster_lock(other.engine, "retention") as theirs:
        assert theirs  # released when the holder finished
    # A replica killed while holding the lock: the server frees it with the connection.
    code = (
        "import sys, time; from observer.store.db import Store; from observer.store.cluster import "
        f"cluster_lock\nwith cluster_lock(Store({pg_url!r}).engine, 'retention') as m:\n"
        "    print(m, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with cluster_lock(store.engine, "retention") as mine:
            assert not mine
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while True:
            with cluster_lock(store.engine, "retention") as mine:
                if mine:
                    break
            assert time.monotonic() < deadline, "a dead replica's lock was never released"
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait(10)
    for s in (store, other):
        s.engine.dispose()
