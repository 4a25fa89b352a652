"""What every router shares: the application context and the error responses."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from observer.analytics.service import AnalyticsService
from observer.collector.ingest import Collector
from observer.collector.otlp import OtlpError
from observer.config import Settings
from observer.store.db import Store, StoreUnavailable


@dataclass
class Context:
    """The objects one ``observer serve`` process shares between its routers and scheduler jobs."""

    settings: Settings
    store: Store
    collector: Collector
    analytics: AnalyticsService
    registry: CollectorRegistry
    schema: Any  # observer.server.Schema (kept loose: the server module imports the routers)


def context(request: Request) -> Context:
    return request.app.state.ctx


def authorized(ctx: Context, request: Request) -> bool:
    token = ctx.settings.collector.auth_token
    if not token:
        return True
    supplied = request.headers.get("authorization", "")
    return hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())


async def read_capped(request: Request, cap: int) -> bytes:
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


def unavailable(ctx: Context) -> JSONResponse:
    return JSONResponse(
        {"error": "store unavailable"}, 503, {"Retry-After": str(ctx.settings.collector.retry_after_s)}
    )


__all__ = ["Context", "StoreUnavailable", "authorized", "context", "read_capped", "unavailable"]
