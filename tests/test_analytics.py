"""Analytics on a small hand-computed dataset, on SQLite and PostgreSQL.

Users and days (UTC unless a test says otherwise):
    2026-01-10  a, b          2026-02-05  a, d          2026-03-01  a
    2026-01-20  a, c          2026-02-06  b
Departments: a, b engineering; c sales; d legal.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
import sys
from datetime import date, datetime, timedelta

import httpx
import pytest
from support import Prometheus, observer_server, scrape

from observer.analytics.cost import cost_report
from observer.analytics.queries import add_months
from observer.analytics.service import AnalyticsService, FeedbackError
from observer.config import CostSettings, PublicApiPrice, Settings
from observer.store.db import Store

DEPT = {"a": "engineering", "b": "engineering", "c": "sales", "d": "legal"}
ACTIVITY = {
    "2026-01-10": "ab",
    "2026-01-20": "ac",
    "2026-02-05": "ad",
    "2026-02-06": "b",
    "2026-03-01": "a",
}
_ids = itertools.count(1)


def request_row(user: str, started: datetime, tokens=(100, 20), model="acme/chat-8b", outcome="success"):
    n = next(_ids)
    return {
        "trace_id": f"{n:032x}",
        "request_key": f"{n:016x}",
        "gateway_span_id": f"{n:016x}",
        "user_id": user,
        "department": DEPT.get(user),
        "model": model,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "outcome": outcome,
        "started_at": started,
    }


def service_for(url: str, tz: str = "UTC", **cost) -> AnalyticsService:
    settings = Settings.model_validate(
        {
            "analytics": {"timezone": tz, "top_departments": 20},
            "store": {"url": url, "retention_days": 400},
            "cost": cost,
        }
    )
    store = Store(url)
    store.migrate()
    return AnalyticsService(store, settings)


def load_dataset(svc: AnalyticsService, written_at=datetime(2026, 3, 2)) -> None:
    rows = []
    for day, users in ACTIVITY.items():
        for u in users:
            started = datetime.fromisoformat(day) + timedelta(hours=10)
            rows.append(request_row(u, started))
            if u == "a":  # a second request the same day: a user-day is still one user-day
                rows.append(request_row(u, started + timedelta(hours=2), tokens=(50, 10)))
    svc.store.upsert(rows, written_at)


@pytest.fixture
def svc(db_url):
    s = service_for(db_url)
    load_dataset(s)
    s.rollups.refresh(now=datetime(2026, 3, 2))
    yield s
    s.store.engine.dispose()


def test_dau_wau_mau_stickiness_new_users(svc):
    a = svc.analytics
    d = date(2026, 2, 6)
    assert a.active_users(d, 1) == 1  # b
    assert a.active_users(d, 7) == 3  # a, d on 02-05; b on 02-06
    assert a.active_users(d, 30) == 4  # window starts 01-08
    assert a.stickiness(d) == pytest.approx((7 / 30) / 4)  # 7 user-days in the window
    assert a.new_users(date(2026, 2, 5)) == 1  # d
    assert a.new_users(d) == 0


def test_month_to_month_retention(svc):
    a = svc.analytics
    assert a.retention_m2m(date(2026, 2, 6)) == pytest.approx(2 / 3)  # Jan {a,b,c} -> Feb so far {a,b}
    assert a.retention_m2m_complete(date(2026, 2, 6)) is None  # no December users
    assert a.retention_m2m_complete(date(2026, 3, 1)) == pytest.approx(2 / 3)  # Jan -> Feb
    assert a.retention_m2m(date(2026, 3, 1)) == pytest.approx(1 / 3)  # Feb {a,b,d} -> Mar so far {a}


def test_cohort_matrix(svc):
    cohorts = svc.analytics.cohorts(months=12, until=date(2026, 3, 1))
    assert cohorts == [
        {"cohort": "2026-01", "size": 3, "retention": [1.0, round(2 / 3, 4), round(1 / 3, 4)]},
        {"cohort": "2026-02", "size": 1, "retention": [1.0, 0.0]},
    ]


def test_departments_and_tokens(svc):
    rows = {r.department: r for r in svc.analytics.departments(date(2026, 2, 6), 30)}
    assert {k: v.active_users for k, v in rows.items()} == {"engineering": 2, "sales": 1, "legal": 1}
    # engineering in the window: a on 01-10, 01-20, 02-05 (2 requests each), b on 01-10 and 02-06
    assert rows["engineering"].requests == 8
    assert rows["engineering"].input_tokens == 3 * 150 + 2 * 100
    # everyone else: b twice, c once, d once
    assert svc.analytics.tokens(date(2026, 2, 6), 30) == (3 * 150 + 4 * 100, 3 * 30 + 4 * 20)


def test_summary_json_has_the_fixed_keys(svc):
    s = svc.summary(date(2026, 2, 6)).to_dict()
    for key in ("dau", "wau", "mau", "stickiness", "retention_m2m", "cohorts", "departments"):
        assert key in s
    assert (s["dau"], s["wau"], s["mau"]) == (1, 3, 4)
    assert s["cost"]["currency"] == "USD"


def test_late_data_corrects_yesterday(svc):
    a = svc.analytics
    d = date(2026, 2, 5)
    assert a.active_users(d, 1) == 2
    # b's request for 02-05 arrives on 02-07 (a late span): refresh recomputes 02-05 only.
    svc.store.upsert([request_row("b", datetime(2026, 2, 5, 18))], datetime(2026, 3, 3))
    result = svc.rollups.refresh(now=datetime(2026, 3, 3))
    assert result.days == [d]
    assert a.active_users(d, 1) == 3
    assert svc.rollups.refresh(now=datetime(2026, 3, 3)).days == []  # nothing new: nothing recomputed


def test_a_gateway_half_arriving_later_adds_the_user(svc):
    late = datetime(2026, 3, 1, 15)
    engine_half = {
        "trace_id": "e" * 32,
        "request_key": "f" * 16,
        "engine_span_id": "1" * 16,
        "started_at": late,
        "input_tokens": 5,
        "output_tokens": 5,
    }
    svc.store.upsert([engine_half], datetime(2026, 3, 3))
    svc.rollups.refresh(now=datetime(2026, 3, 3))
    assert svc.analytics.active_users(date(2026, 3, 1), 1) == 1  # no user known yet
    gateway_half = {
        "trace_id": "e" * 32,
        "request_key": "f" * 16,
        "gateway_span_id": "f" * 16,
        "started_at": late,
        "user_id": "c",
        "department": "sales",
    }
    svc.store.upsert([gateway_half], datetime(2026, 3, 4))
    svc.rollups.refresh(now=datetime(2026, 3, 4))
    assert svc.analytics.active_users(date(2026, 3, 1), 1) == 2


def test_day_boundaries_follow_the_company_time_zone(db_url):
    # 23:30 UTC on Jan 10 is 00:30 on Jan 11 in Berlin (UTC+1 in winter).
    rows = [request_row("a", datetime(2026, 1, 10, 23, 30)), request_row("b", datetime(2026, 1, 10, 12))]
    utc, berlin = service_for(db_url, "UTC"), None
    utc.store.upsert(rows, datetime(2026, 1, 12))
    utc.rollups.refresh(now=datetime(2026, 1, 12))
    assert utc.analytics.active_users(date(2026, 1, 10), 1) == 2
    berlin = service_for(db_url, "Europe/Berlin")
    berlin.rollups.recompute_day(date(2026, 1, 10))
    berlin.rollups.recompute_day(date(2026, 1, 11))
    assert berlin.analytics.active_users(date(2026, 1, 10), 1) == 1
    assert berlin.analytics.active_users(date(2026, 1, 11), 1) == 1
    utc.store.engine.dispose()
    berlin.store.engine.dispose()


def test_cost_arithmetic_by_hand():
    cfg = CostSettings(
        gpus=2,
        gpu_hour_price=3.0,
        electricity_per_kwh=0.2,
        assumed_gpu_power_watts=500,
        reference=PublicApiPrice(model="ref", input_per_million=2.5, output_per_million=10.0),
    )
    r = cost_report(
        cfg, 30, 10_000_000, 2_000_000, [("eng", 7_500_000, 1_500_000), ("sales", 2_500_000, 500_000)]
    )
    assert r.public_api_cost == 45.0  # 10 x 2.5 + 2 x 10
    assert r.gpu_hours == 1440 and r.gpu_cost == 4320.0  # 2 GPUs x 720 h x 3.0
    assert r.energy_kwh == 720.0 and r.energy_cost == 144.0 and r.energy_source == "assumed"
    assert r.self_hosted_cost == 4464.0
    assert r.self_hosted_per_million_tokens == 372.0  # 4464 / 12M tokens
    assert r.public_api_per_million_tokens == 3.75
    assert r.savings == -4419.0  # at this volume the GPUs cost more than the API would
    assert [d["self_hosted_cost"] for d in r.by_department] == [3348.0, 1116.0]  # 75% / 25%
    measured = cost_report(cfg, 30, 10_000_000, 2_000_000, [], energy_kwh=100.0)
    assert measured.energy_cost == 20.0 and measured.energy_source == "measured"
    amortized = CostSettings(gpu_purchase_price=35_040, amortization_years=4, hosting_per_gpu_hour=0.5)
    assert amortized.gpu_hour_cost == pytest.approx(35_040 / (4 * 8760) + 0.5)  # 1.0 + 0.5


def test_csv_exports(svc):
    rows = list(csv.DictReader(io.StringIO(svc.csv("departments", date(2026, 2, 6)))))
    assert {r["department"]: int(r["active_users"]) for r in rows} == {
        "engineering": 2,
        "sales": 1,
        "legal": 1,
    }
    cohorts = list(csv.reader(io.StringIO(svc.csv("cohorts", date(2026, 3, 1)))))
    assert cohorts[0] == ["cohort", "size", "month_0", "month_1", "month_2"]
    assert cohorts[1][:3] == ["2026-01", "3", "1.0"]
    with pytest.raises(ValueError):
        svc.csv("nope")


def test_feedback_is_validated_matched_and_free_text_dropped(svc):
    trace = svc.store.recent(1)[0]["trace_id"]
    assert svc.add_feedback({"trace_id": trace, "rating": "up", "comment": "my secret question"}) == {
        "matched": True,
        "comment_stored": False,
    }
    svc.add_feedback({"trace_id": trace, "rating": "down", "reason": "slow"})
    svc.add_feedback({"request_id": "unknown-id", "rating": -1})
    for bad in (
        {"rating": "up"},
        {"trace_id": trace, "rating": "meh"},
        {"trace_id": trace, "rating": True},
        {"trace_id": trace, "rating": "up", "reason": "free text reason"},
    ):
        with pytest.raises(FeedbackError):
            svc.add_feedback(bad)
    fb = {(f["model"], f["department"]): f for f in svc.analytics.feedback(date.today())}
    assert fb[("acme/chat-8b", "engineering")]["up_ratio"] == 0.5
    assert fb[("unknown", "unknown")]["down"] == 1
    with svc.store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM feedback WHERE comment IS NOT NULL").scalar() == 0


def test_department_gauges_fold_beyond_top_n(db_url):
    s = service_for(db_url)
    s.settings.analytics.top_departments = 1
    s.store.upsert([request_row(u, datetime.now() - timedelta(hours=1)) for u in "abcd"], datetime.now())
    s.refresh()
    fams = {f.name: f for f in s.collector().collect()}
    by_dept = {
        (x.labels["department"], x.labels["window"]): x.value
        for x in fams["llm_active_users_by_department"].samples
    }
    assert by_dept[("engineering", "1d")] == 2 and by_dept[("other", "1d")] == 2
    assert {x.labels["window"]: x.value for x in fams["llm_active_users"].samples} == {
        "1d": 4,
        "7d": 4,
        "30d": 4,
    }
    s.store.engine.dispose()


def test_add_months():
    assert add_months("2026-11", 2) == "2027-01" and add_months("2026-01", -1) == "2025-12"


def test_cli_json_and_gauges_in_a_real_prometheus(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = service_for(url)
    now = datetime.now()
    s.store.upsert([request_row(u, now - timedelta(minutes=5)) for u in "abc"], now)
    s.store.engine.dispose()
    out = subprocess.run(
        [sys.executable, "-m", "observer.cli", "analytics", "--db", url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(out.stdout)
    assert (data["dau"], data["mau"]) == (3, 3)
    assert {"dau", "wau", "mau", "stickiness", "retention_m2m", "cohorts", "departments"} <= set(data)
    text = subprocess.run(
        [sys.executable, "-m", "observer.cli", "analytics", "--db", url, "--no-refresh"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "DAU 3" in text
    with observer_server(
        "serve", "--db", url, ready_path="/healthz", env={"OBSERVER_ANALYTICS__REFRESH_INTERVAL_S": "1"}
    ) as (base, _):
        summary = httpx.get(base + "/api/v1/analytics/summary").json()
        assert summary["dau"] == 3
        assert httpx.get(base + "/api/v1/analytics/summary", params={"date": "bad"}).status_code == 400
        assert httpx.get(base + "/api/v1/analytics/departments", params={"format": "csv"}).text.startswith(
            "department,"
        )
        r = httpx.post(base + "/api/v1/feedback", json={"trace_id": summary and "x", "rating": "up"})
        assert r.status_code == 201
        assert httpx.post(base + "/api/v1/feedback", json={"rating": "sideways"}).status_code == 400
        prom = Prometheus(
            [{"job_name": "observer", "static_configs": [{"targets": [base.removeprefix("http://")]}]}]
        )
        try:
            dau = prom.wait_for('llm_active_users{window="1d"}')
            assert float(dau[0]["value"][1]) == 3
            assert prom.wait_for("llm_cost_per_million_tokens")
            assert prom.wait_for('llm_active_users_by_department{window="30d"}')
        finally:
            prom.stop()
        assert "llm_users_stickiness_ratio" in scrape(base + "/metrics")
