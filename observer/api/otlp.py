"""``POST /v1/traces``: OTLP/HTTP trace export (protobuf or JSON, optionally gzip).

Responses follow the OTLP/HTTP specification: 200 (with partial success when some spans were
rejected), 400/415 for bodies that will never be accepted, 413 for bodies over a limit, and the
retryable 429 (memory budget exhausted) and 503 (store unavailable), both with Retry-After.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from observer.api.common import Access, authorized, context, read_body
from observer.collector.otlp import JSON, PROTOBUF, OtlpError, error_body, media_type, success_body
from observer.store.db import StoreUnavailable

router = APIRouter()


@router.post("/v1/traces")
async def traces(request: Request) -> Response:
    ctx = context(request)
    cfg, collector = ctx.settings.collector, ctx.collector
    kind = JSON
    try:
        kind = media_type(request.headers.get("content-type"))
        if not authorized(ctx, request, Access.WRITE):
            raise OtlpError(401, "missing or wrong bearer token", "unauthorized")
        if not ctx.schema.ready and not await run_in_threadpool(ctx.schema.ensure):
            raise StoreUnavailable("database not reachable")
        expansion = cfg.protobuf_expansion if kind == PROTOBUF else cfg.json_expansion
        encoding = request.headers.get("content-encoding")
        # Decoding and mapping are CPU-bound under the GIL: more at once (ingest_slots) only adds memory.
        # JSON decoding is pure Python (protobuf's JSON mapping): one JSON body at a time, so a slow one
        # delays other JSON senders, not the protobuf traffic.
        async with (
            read_body(ctx, request, cfg.max_body_bytes, expansion, encoding) as body,
            ctx.json_slot if kind == JSON else contextlib.nullcontext(),
            ctx.ingest_slots,
        ):
            result = await run_in_threadpool(collector.ingest, body, kind)
    except OtlpError as exc:
        collector.m_requests.labels(code=str(exc.status)).inc()
        collector.m_rejected.labels(reason=exc.reason).inc()
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.status in (429, 503):
            headers["Retry-After"] = str(cfg.retry_after_s)
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
