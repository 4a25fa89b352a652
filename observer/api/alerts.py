"""``POST /api/v1/alerts/webhook`` (Alertmanager, webhook token) and ``GET /api/v1/alerts`` (read token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from observer.alerting import webhook
from observer.api.common import Access, context, error_response, read_json_object, require
from observer.collector.otlp import OtlpError

router = APIRouter()


@router.post("/api/v1/alerts/webhook", dependencies=[Depends(require(Access.WEBHOOK))])
async def alerts_webhook(request: Request) -> Response:
    """Alertmanager webhook (version 4): every notification goes into the incident log."""
    ctx = context(request)
    try:
        rows = webhook.parse(await read_json_object(ctx, request), ctx.settings.collector.max_clock_skew_s)
        await run_in_threadpool(webhook.store, ctx.store.engine, rows)
    except OtlpError as exc:
        return error_response(ctx, exc)
    except webhook.WebhookError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    except DBAPIError:
        return error_response(ctx, OtlpError(503, "store unavailable", "store"))
    return JSONResponse({"stored": len(rows)})


@router.get("/api/v1/alerts", dependencies=[Depends(require(Access.READ))])
async def alerts_history(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    status: str | None = Query(None, pattern="^(firing|resolved)$"),
    alertname: str | None = Query(None, max_length=128),
) -> Response:
    """The incident log, newest first."""
    ctx = context(request)
    try:
        rows = await run_in_threadpool(webhook.history, ctx.store.engine, limit, status, alertname)
    except DBAPIError:
        return error_response(ctx, OtlpError(503, "store unavailable", "store"))
    return JSONResponse({"alerts": rows})
