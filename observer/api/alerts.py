"""``POST /api/v1/alerts/webhook`` (Alertmanager) and ``GET /api/v1/alerts`` (the incident log)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from observer.alerting import webhook
from observer.api.common import authorized, context, unavailable

router = APIRouter()


@router.post("/api/v1/alerts/webhook")
async def alerts_webhook(request: Request) -> Response:
    """Alertmanager webhook (version 4): every notification goes into the incident log."""
    ctx = context(request)
    if not authorized(ctx, request):
        return JSONResponse({"error": "missing or wrong bearer token"}, 401)
    try:
        rows = webhook.parse(await request.json())
    except (ValueError, webhook.WebhookError) as exc:
        return JSONResponse({"error": str(exc) or "body must be JSON"}, 400)
    try:
        await run_in_threadpool(webhook.store, ctx.store.engine, rows)
    except Exception:
        return unavailable(ctx)
    return JSONResponse({"stored": len(rows)})


@router.get("/api/v1/alerts")
async def alerts_history(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    status: str | None = None,
    alertname: str | None = None,
) -> Response:
    """The incident log, newest first."""
    ctx = context(request)
    try:
        rows = await run_in_threadpool(webhook.history, ctx.store.engine, limit, status, alertname)
    except Exception:
        return unavailable(ctx)
    return JSONResponse({"alerts": rows})
