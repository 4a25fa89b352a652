"""``GET /api/v1/requests`` and ``GET /api/v1/analytics/*``: the read-only JSON/CSV API (read token).

Query values are checked before they reach a query: dates within [today - 10 years, today + 1 day]
(400 otherwise, instead of a date overflow deep in a rollup walk), ``format`` json or csv.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from observer.api.common import Access, Context, context, require, unavailable
from observer.collector.otlp import OtlpError
from observer.store.db import StoreUnavailable

router = APIRouter(dependencies=[Depends(require(Access.READ))])
OLDEST_DAYS = 3660  # reports reach back at most this far (cohorts are monthly over a few years)
Format = Literal["json", "csv"]


@router.get("/api/v1/requests")
async def requests(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    model: str | None = None,
    department: str | None = None,
) -> Response:
    """Recent request records (no content exists to return; user ids as stored)."""
    ctx = context(request)
    try:
        rows = await run_in_threadpool(ctx.store.recent, limit, model, department)
    except Exception:
        return unavailable(ctx)
    for row in rows:
        for key in ("started_at", "ended_at"):
            if row.get(key) is not None:
                row[key] = row[key].isoformat() + "Z"
    return JSONResponse({"requests": rows})


def _day(ctx: Context, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise OtlpError(400, "date must be YYYY-MM-DD", "bad_query")
    today = ctx.analytics.today()
    if not today - timedelta(days=OLDEST_DAYS) <= day <= today + timedelta(days=1):
        raise OtlpError(400, f"date must be within {OLDEST_DAYS} days before today and tomorrow", "bad_query")
    return day


async def _run(ctx: Context, request: Request, fn: Callable[[], Response]) -> Response:
    try:
        return await run_in_threadpool(fn)
    except OtlpError as exc:
        return JSONResponse({"error": exc.message}, exc.status)
    except StoreUnavailable:
        return unavailable(ctx)


@router.get("/api/v1/analytics/summary")
async def analytics_summary(request: Request, date: str | None = None) -> Response:
    """DAU, WAU, MAU, stickiness, new users, retention, cohorts, departments, feedback, cost."""
    ctx = context(request)
    return await _run(ctx, request, lambda: JSONResponse(ctx.analytics.summary(_day(ctx, date)).to_dict()))


@router.get("/api/v1/analytics/cohorts")
async def analytics_cohorts(request: Request, date: str | None = None, format: Format = "json") -> Response:
    ctx = context(request)

    def run() -> Response:
        day = _day(ctx, date) or ctx.analytics.today()
        if format == "csv":
            return PlainTextResponse(ctx.analytics.csv("cohorts", day), media_type="text/csv")
        return JSONResponse({"cohorts": ctx.analytics.analytics.cohorts(until=day)})

    return await _run(ctx, request, run)


@router.get("/api/v1/analytics/departments")
async def analytics_departments(
    request: Request,
    date: str | None = None,
    window_days: int = Query(30, ge=1, le=366),
    format: Format = "json",
) -> Response:
    ctx = context(request)

    def run() -> Response:
        day = _day(ctx, date) or ctx.analytics.today()
        if format == "csv":
            return PlainTextResponse(ctx.analytics.csv("departments", day), media_type="text/csv")
        rows = ctx.analytics.analytics.departments(day, window_days)
        return JSONResponse({"departments": [r.__dict__ for r in rows], "window_days": window_days})

    return await _run(ctx, request, run)


@router.get("/api/v1/analytics/cost")
async def analytics_cost(
    request: Request, date: str | None = None, window_days: int = Query(30, ge=1, le=366)
) -> Response:
    ctx = context(request)
    return await _run(
        ctx, request, lambda: JSONResponse(ctx.analytics.cost(_day(ctx, date), window_days).to_dict())
    )
