"""``POST /api/v1/feedback``: thumbs up/down for a request (write token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from observer.analytics.service import FeedbackError
from observer.api.common import Access, context, error_response, read_json_object, require
from observer.collector.otlp import OtlpError
from observer.store.db import StoreUnavailable

router = APIRouter()


@router.post("/api/v1/feedback", dependencies=[Depends(require(Access.WRITE))])
async def feedback(request: Request) -> Response:
    """Thumbs up/down for a request (request_id or trace_id, rating, optional reason code)."""
    ctx = context(request)
    try:
        body = await read_json_object(ctx, request)
        result = await run_in_threadpool(ctx.analytics.add_feedback, body)
    except OtlpError as exc:
        return error_response(ctx, exc)
    except FeedbackError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    except StoreUnavailable:
        return error_response(ctx, OtlpError(503, "store unavailable", "store"))
    return JSONResponse(result, 201)
