"""``POST /v1/traces``: OTLP/HTTP trace export (protobuf or JSON, optionally gzip)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from observer.api.common import authorized, context, read_capped
from observer.collector.otlp import JSON, OtlpError, decompress, error_body, media_type, success_body
from observer.store.db import StoreUnavailable

router = APIRouter()


@router.post("/v1/traces")
async def traces(request: Request) -> Response:
    ctx = context(request)
    cfg, collector = ctx.settings.collector, ctx.collector
    kind = JSON
    try:
        kind = media_type(request.headers.get("content-type"))
        if not authorized(ctx, request):
            raise OtlpError(401, "missing or wrong bearer token", "unauthorized")
        if not ctx.schema.ready and not await run_in_threadpool(ctx.schema.ensure):
            raise StoreUnavailable("database not reachable")
        raw = await read_capped(request, cfg.max_body_bytes)
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
