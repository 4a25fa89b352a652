"""``observer serve``: the OTLP receiver, the request store, /metrics, the JSON API and the scheduler.

The routes live in :mod:`observer.api` (one router per area); this module builds the shared
objects, the scheduled jobs and the application. Nothing here blocks the event loop on the
database: ingestion and queries run in the threadpool, scheduler jobs in APScheduler's threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import PROCESS_COLLECTOR, CollectorRegistry
from starlette.concurrency import run_in_threadpool

from observer.analytics.service import AnalyticsService
from observer.api import alerts, analytics, feedback, health, otlp
from observer.api.common import Access, Context, MemoryBudget, accepted_token, auth_enabled
from observer.api.guard import BodyReadTimeout, BodyTimeout
from observer.collector import otlp as otlp_limits
from observer.collector.ingest import TraceCollector, utcnow
from observer.config import CollectorSettings, Settings
from observer.store.cluster import cluster_lock
from observer.store.db import Store, StoreUnavailable

log = logging.getLogger("observer.serve")


class Schema:
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


def _scheduler(ctx: Context) -> BackgroundScheduler:
    settings, store, collector, schema = ctx.settings, ctx.store, ctx.collector, ctx.schema
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    )

    def count_job() -> None:
        if schema.ensure():
            collector.count_finished()

    def retention_job() -> None:
        if schema.ensure():
            try:
                cutoff = utcnow() - timedelta(days=settings.store.retention_days)
                with cluster_lock(store.engine, "retention") as mine:  # one replica per tick
                    n = store.delete_older_than(cutoff) if mine else 0
                collector.m_deleted.inc(n)
            except Exception as exc:  # keep the scheduler alive; the next run tries again
                log.warning("retention cleanup failed: %s", exc)

    def analytics_job() -> None:
        if schema.ensure():
            try:
                ctx.analytics.refresh()
            except Exception as exc:  # a failed refresh is retried next interval; gauges keep old values
                log.warning("analytics refresh failed: %s", exc)

    scheduler.add_job(count_job, "interval", seconds=1, id="count-finished-requests")
    scheduler.add_job(retention_job, "interval", seconds=settings.store.cleanup_interval_s, id="retention")
    scheduler.add_job(
        analytics_job,
        "interval",
        seconds=settings.analytics.refresh_interval_s,
        id="analytics-refresh",
        next_run_time=datetime.now(),
    )
    return scheduler


def _log_auth(cfg: CollectorSettings) -> None:
    if not auth_enabled(cfg):
        log.warning("no tokens set: every endpoint answers anyone (fine on loopback only)")
        return
    closed = [a.value for a in Access if accepted_token(cfg, a) is None]
    if closed:
        log.warning("auth on; no token set for %s: those endpoints answer 401 to everyone", ", ".join(closed))


def create_app(settings: Settings, db_url: str | None = None) -> FastAPI:
    cfg = settings.collector
    store = Store(db_url or settings.store.url, settings.store.sqlite_busy_timeout_s)
    registry = CollectorRegistry()
    registry.register(PROCESS_COLLECTOR)
    collector = TraceCollector(store, cfg, registry, retention_days=settings.store.retention_days)
    service = AnalyticsService(store, settings)
    service.register(registry)
    otlp_limits.configure(cfg.max_spans_per_request, cfg.max_json_depth, cfg.max_json_nodes)
    budget = MemoryBudget(cfg.inflight_budget_bytes)
    ctx = Context(settings, store, collector, service, registry, Schema(store), budget, None, None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # SQLite has one writer at a time: a second concurrent ingest only waits on its lock (and answers
        # 503 once busy_timeout passes), so ingests into SQLite run one at a time.
        sqlite = store.engine.dialect.name == "sqlite"
        ctx.ingest_slots = asyncio.Semaphore(1 if sqlite else cfg.max_concurrent_ingests)
        ctx.json_slot = asyncio.Semaphore(1)
        _log_auth(cfg)
        await run_in_threadpool(ctx.schema.ensure)
        scheduler = _scheduler(ctx)
        scheduler.start()
        yield
        scheduler.shutdown(wait=True)
        if ctx.schema.ready:  # count what finished before we stop
            await run_in_threadpool(collector.count_finished)
        store.engine.dispose()

    app = FastAPI(title="LLM Observer", lifespan=lifespan)
    app.state.ctx = ctx
    app.state.store, app.state.collector, app.state.settings = store, collector, settings
    app.state.analytics = service
    for area in (otlp, analytics, feedback, alerts, health):
        app.include_router(area.router)
    app.add_middleware(BodyTimeout, timeout_s=cfg.body_timeout_s)

    @app.exception_handler(BodyReadTimeout)
    async def body_timeout(request: Request, exc: BodyReadTimeout) -> Response:
        return JSONResponse({"error": "request body not received in time"}, 408, {"Connection": "close"})

    return app
