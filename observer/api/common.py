"""What every router shares: the application context, authorization, bounded body reading and errors.

Auth model (README "Security"): four bearer tokens, each for one kind of caller. Auth is on as soon
as one is set; then every endpoint except ``/healthz`` requires its token, and an endpoint whose
token is unset answers 401 (fail closed) instead of falling open.

Memory: every body is read through :class:`observer.collector.otlp.BodyReader` (gzip inflated
incrementally, capped) and charged, chunk by chunk, to one process-wide :class:`MemoryBudget` at
its worst-case in-memory size; the charge is held until the request is answered.
"""

from __future__ import annotations

import enum
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from observer.analytics.service import AnalyticsService
from observer.collector.ingest import TraceCollector
from observer.collector.otlp import BodyReader, OtlpError, check_depth
from observer.config import CollectorSettings, Settings
from observer.store.db import Store

log = logging.getLogger("observer.serve")


class Access(enum.Enum):
    WRITE = "write"  # OTLP ingestion, feedback
    READ = "read"  # the JSON/CSV API
    METRICS = "metrics"  # /metrics
    WEBHOOK = "webhook"  # Alertmanager's webhook


def accepted_token(cfg: CollectorSettings, access: Access) -> str | None:
    """The one token an endpoint of this kind accepts (None: no token can open it)."""
    if access is Access.WRITE:
        return cfg.auth_token
    if access is Access.READ:
        return cfg.read_token
    if access is Access.METRICS:
        return cfg.metrics_token or cfg.read_token
    return cfg.webhook_token or cfg.auth_token


def auth_enabled(cfg: CollectorSettings) -> bool:
    return any(t is not None for t in (cfg.auth_token, cfg.read_token, cfg.metrics_token, cfg.webhook_token))


class MemoryBudget:
    """Bytes that bodies in flight may occupy; all updates happen on the event loop (no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reservation(self) -> Reservation:
        return Reservation(self)


@dataclass
class Reservation:
    budget: MemoryBudget
    held: int = field(default=0)

    def grow(self, amount: int, retry_after_s: int) -> None:
        if amount <= 0:
            return
        if self.held + amount > self.budget.limit:
            raise OtlpError(413, "request body too large for the collector's memory budget", "too_large")
        if self.budget.used + amount > self.budget.limit:
            raise OtlpError(429, f"collector busy; retry in {retry_after_s}s", "busy")
        self.budget.used += amount
        self.held += amount

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


@dataclass
class Context:
    """The objects one ``observer serve`` process shares between its routers and scheduler jobs."""

    settings: Settings
    store: Store
    collector: TraceCollector
    analytics: AnalyticsService
    registry: CollectorRegistry
    schema: Any  # observer.server.Schema (kept loose: the server module imports the routers)
    budget: MemoryBudget
    ingest_slots: Any  # asyncio.Semaphore, made on the server's event loop
    json_slot: Any  # asyncio.Semaphore(1): JSON decoding is pure Python, one body at a time


def context(request: Request) -> Context:
    return request.app.state.ctx


def authorized(ctx: Context, request: Request, access: Access) -> bool:
    cfg = ctx.settings.collector
    if not auth_enabled(cfg):
        return True
    token = accepted_token(cfg, access)
    if token is None:
        return False
    supplied = request.headers.get("authorization", "")
    return hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())


def require(access: Access) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: 401 before any query parameter is validated or any body is read."""

    async def check(request: Request) -> None:
        if not authorized(context(request), request, access):
            raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return check


def unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or wrong bearer token"}, 401, {"WWW-Authenticate": "Bearer"})


def unavailable(ctx: Context) -> JSONResponse:
    return JSONResponse(
        {"error": "store unavailable"}, 503, {"Retry-After": str(ctx.settings.collector.retry_after_s)}
    )


def error_response(ctx: Context, exc: OtlpError) -> JSONResponse:
    retry = {"Retry-After": str(ctx.settings.collector.retry_after_s)} if exc.status in (429, 503) else None
    return JSONResponse({"error": exc.message}, exc.status, retry)


@asynccontextmanager
async def read_body(
    ctx: Context, request: Request, cap: int, expansion: float, encoding: str | None = None
) -> AsyncIterator[bytes]:
    """The request body, capped at ``cap`` bytes (after gzip) and charged to the memory budget.

    While the body arrives, the bytes held are charged; once it is complete, ``expansion`` x its size
    (what the decoded form may take) before it is handed over. The charge is held until the block
    exits. A gzip bomb is stopped at the cap while holding only cap bytes of the budget.
    Raises OtlpError: 413 (too large), 429 (budget exhausted), 400/415 (bad encoding).
    """
    cfg = ctx.settings.collector
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and encoding in (None, "identity") and int(declared) > cap:
        raise OtlpError(413, f"request body over the {cap}-byte limit", "too_large")
    reader = BodyReader(encoding, cap)
    reservation = ctx.budget.reservation()
    try:
        async for chunk in request.stream():
            reservation.grow(reader.feed(chunk), cfg.retry_after_s)
        body = reader.finish()
        reservation.grow(int(len(body) * (expansion - 1)), cfg.retry_after_s)
        yield body
    finally:
        reservation.release()


def parse_json(body: bytes, max_depth: int) -> Any:
    """A JSON document, or OtlpError 400: not JSON, or nested deeper than ``max_depth``."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise OtlpError(400, f"JSON nested deeper than {max_depth} levels", "malformed") from None
    except ValueError:
        raise OtlpError(400, "body must be JSON", "malformed") from None
    check_depth(data, max_depth)
    return data


async def read_json_object(ctx: Context, request: Request) -> dict[str, Any]:
    """A small JSON object body (webhook, feedback): capped, budgeted, depth-checked."""
    cfg = ctx.settings.collector
    async with read_body(ctx, request, cfg.max_api_body_bytes, cfg.json_expansion) as body:
        data = parse_json(body, cfg.max_json_depth)
    if not isinstance(data, dict):
        raise OtlpError(400, "body must be a JSON object", "malformed")
    return data
