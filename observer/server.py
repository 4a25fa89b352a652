"""``observer serve``: the OTLP receiver, the request store, /metrics, the JSON API and the scheduler.

Nothing here blocks the event loop on the database: ingestion and queries run in the threadpool,
scheduler jobs in APScheduler's threads.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import PROCESS_COLLECTOR, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from observer.alerting import webhook
from observer.analytics.service import AnalyticsService, FeedbackError
from observer.collector.ingest import Collector, utcnow
from observer.collector.otlp import JSON, OtlpError, decompress, error_body, media_type, success_body
from observer.config import Settings
from observer.exposition import CONTENT_TYPE
from observer.store.db import Store, StoreUnavailable

log = logging.getLogger("observer.serve")


class _Schema:
    """Migrations run at start; if the database is down then, they are retried by the scheduler."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ready = False

    def ensure(self) -> bool:
        if not self.ready:
            try:
                self.store.migrate()
                self.ready = True
            except StoreUnavailable as exc:
                log.warning("database unavailable, will retry: %s", exc)
        return self.ready


def create_app(settings: Settings, db_url: str | None = None) -> FastAPI:
    store = Store(db_url or settings.store.url, settings.store.sqlite_busy_timeout_s)
    registry = CollectorRegistry()
    registry.register(PROCESS_COLLECTOR)
    collector = Collector(store, settings.collector, registry)
    schema = _Schema(store)
    analytics = AnalyticsService(store, settings)
    analytics.register(registry)
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    )
    cfg = settings.collector

    def count_job() -> None:
        if schema.ensure():
            collector.count_finished()

    def retention_job() -> None:
        if schema.ensure():
            try:
                n = store.delete_older_than(utcnow() - timedelta(days=settings.store.retention_days))
                collector.m_deleted.inc(n)
            except Exception as exc:  # keep the scheduler alive; the next run tries again
                log.warning("retention cleanup failed: %s", exc)

    def analytics_job() -> None:
        if schema.ensure():
            try:
                analytics.refresh()
            except Exception as exc:  # a failed refresh is retried next interval; gauges keep old values
                log.warning("analytics refresh failed: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(schema.ensure)
        scheduler.add_job(count_job, "interval", seconds=1, id="count-finished-requests")
        scheduler.add_job(
            retention_job, "interval", seconds=settings.store.cleanup_interval_s, id="retention"
        )
        scheduler.add_job(
            analytics_job,
            "interval",
            seconds=settings.analytics.refresh_interval_s,
            id="analytics-refresh",
            next_run_time=datetime.now(),
        )
        scheduler.start()
        yield
        scheduler.shutdown(wait=True)
        await run_in_threadpool(count_job)  # count what finished before we stop
        store.engine.dispose()

    app = FastAPI(title="LLM Observer", lifespan=lifespan)
    app.state.store, app.state.collector, app.state.settings = store, collector, settings
    app.state.analytics = analytics

    def _authorized(request: Request) -> bool:
        if not cfg.auth_token:
            return True
        supplied = request.headers.get("authorization", "")
        return hmac.compare_digest(supplied.encode(), f"Bearer {cfg.auth_token}".encode())

    async def _read_capped(request: Request, cap: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise OtlpError(413, f"request body over the {cap}-byte limit", "too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise OtlpError(413, f"request body over the {cap}-byte limit", "too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        kind = JSON
        try:
            kind = media_type(request.headers.get("content-type"))
            if not _authorized(request):
                raise OtlpError(401, "missing or wrong bearer token", "unauthorized")
            if not schema.ready and not await run_in_threadpool(schema.ensure):
                raise StoreUnavailable("database not reachable")
            raw = await _read_capped(request, cfg.max_body_bytes)
            body = decompress(raw, request.headers.get("content-encoding"), cfg.max_body_bytes)
            result = await run_in_threadpool(collector.ingest, body, kind)
        except OtlpError as exc:
            collector.m_requests.labels(code=str(exc.status)).inc()
            collector.m_rejected.labels(reason=exc.reason).inc()
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return Response(error_body(kind, exc.status, exc.message), exc.status, headers, media_type=kind)
        except StoreUnavailable:
            collector.m_requests.labels(code="503").inc()
            return Response(
                error_body(kind, 503, "request store unavailable; retry later"),
                503,
                {"Retry-After": str(cfg.retry_after_s)},
                media_type=kind,
            )
        collector.m_requests.labels(code="200").inc()
        return Response(success_body(kind, result.rejected, result.message), 200, media_type=kind)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> Response:
        ok = await run_in_threadpool(store.ping)
        body = {"status": "ok" if ok else "degraded", "store": "up" if ok else "down", "schema": schema.ready}
        return JSONResponse(
            body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"}
        )

    @app.get("/api/v1/requests")
    async def requests(
        limit: int = Query(100, ge=1, le=1000), model: str | None = None, department: str | None = None
    ) -> Response:
        """Recent request records (no content exists to return; user ids as stored)."""
        try:
            rows = await run_in_threadpool(store.recent, limit, model, department)
        except Exception:
            return JSONResponse({"error": "store unavailable"}, 503, {"Retry-After": str(cfg.retry_after_s)})
        for row in rows:
            for key in ("started_at", "ended_at"):
                if row.get(key) is not None:
                    row[key] = row[key].isoformat() + "Z"
        return JSONResponse({"requests": rows})

    def _day(value: str | None) -> date | None:
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise OtlpError(400, f"date must be YYYY-MM-DD, got {value!r}", "bad_query") from None

    async def _analytics(fn) -> Response:
        try:
            return await run_in_threadpool(fn)
        except OtlpError as exc:
            return JSONResponse({"error": exc.message}, exc.status)
        except StoreUnavailable:
            return JSONResponse({"error": "store unavailable"}, 503, {"Retry-After": str(cfg.retry_after_s)})

    @app.get("/api/v1/analytics/summary")
    async def analytics_summary(date: str | None = None) -> Response:
        """DAU, WAU, MAU, stickiness, new users, retention, cohorts, departments, feedback, cost."""
        return await _analytics(lambda: JSONResponse(analytics.summary(_day(date)).to_dict()))

    @app.get("/api/v1/analytics/cohorts")
    async def analytics_cohorts(date: str | None = None, format: str = "json") -> Response:
        def run() -> Response:
            day = _day(date) or analytics.today()
            if format == "csv":
                return PlainTextResponse(analytics.csv("cohorts", day), media_type="text/csv")
            return JSONResponse({"cohorts": analytics.analytics.cohorts(until=day)})

        return await _analytics(run)

    @app.get("/api/v1/analytics/departments")
    async def analytics_departments(
        date: str | None = None, window_days: int = Query(30, ge=1, le=366), format: str = "json"
    ) -> Response:
        def run() -> Response:
            day = _day(date) or analytics.today()
            if format == "csv":
                return PlainTextResponse(analytics.csv("departments", day), media_type="text/csv")
            rows = analytics.analytics.departments(day, window_days)
            return JSONResponse({"departments": [r.__dict__ for r in rows], "window_days": window_days})

        return await _analytics(run)

    @app.get("/api/v1/analytics/cost")
    async def analytics_cost(date: str | None = None, window_days: int = Query(30, ge=1, le=366)) -> Response:
        return await _analytics(lambda: JSONResponse(analytics.cost(_day(date), window_days).to_dict()))

    @app.post("/api/v1/feedback")
    async def feedback(request: Request) -> Response:
        """Thumbs up/down for a request (request_id or trace_id, rating, optional reason code)."""
        if not _authorized(request):
            return JSONResponse({"error": "missing or wrong bearer token"}, 401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object"}, 400)
        try:
            result = await run_in_threadpool(analytics.add_feedback, body)
        except FeedbackError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except Exception:
            return JSONResponse({"error": "store unavailable"}, 503, {"Retry-After": str(cfg.retry_after_s)})
        return JSONResponse(result, 201)

    @app.post("/api/v1/alerts/webhook")
    async def alerts_webhook(request: Request) -> Response:
        """Alertmanager webhook (version 4): every notification goes into the incident log."""
        if not _authorized(request):
            return JSONResponse({"error": "missing or wrong bearer token"}, 401)
        try:
            rows = webhook.parse(await request.json())
        except (ValueError, webhook.WebhookError) as exc:
            return JSONResponse({"error": str(exc) or "body must be JSON"}, 400)
        try:
            await run_in_threadpool(webhook.store, store.engine, rows)
        except Exception:
            return JSONResponse({"error": "store unavailable"}, 503, {"Retry-After": str(cfg.retry_after_s)})
        return JSONResponse({"stored": len(rows)})

    @app.get("/api/v1/alerts")
    async def alerts_history(
        limit: int = Query(100, ge=1, le=1000), status: str | None = None, alertname: str | None = None
    ) -> Response:
        """The incident log, newest first."""
        try:
            rows = await run_in_threadpool(webhook.history, store.engine, limit, status, alertname)
        except Exception:
            return JSONResponse({"error": "store unavailable"}, 503, {"Retry-After": str(cfg.retry_after_s)})
        return JSONResponse({"alerts": rows})

    return app
