"""``GET /healthz`` (liveness and store reachability, always open) and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest
from starlette.concurrency import run_in_threadpool

from observer.api.common import Access, context, require
from observer.exposition import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", dependencies=[Depends(require(Access.METRICS))])
async def metrics(request: Request) -> Response:
    ctx = context(request)
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE)


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    ctx = context(request)
    ok = await run_in_threadpool(ctx.store.ping)
    body = {"status": "ok" if ok else "degraded", "store": "up" if ok else "down", "schema": ctx.schema.ready}
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})
