"""``POST /api/v1/feedback``: thumbs up/down for a request."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from observer.analytics.service import FeedbackError
from observer.api.common import authorized, context, unavailable

router = APIRouter()


@router.post("/api/v1/feedback")
async def feedback(request: Request) -> Response:
    """Thumbs up/down for a request (request_id or trace_id, rating, optional reason code)."""
    ctx = context(request)
    if not authorized(ctx, request):
        return JSONResponse({"error": "missing or wrong bearer token"}, 401)
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "body must be JSON"}, 400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "body must be a JSON object"}, 400)
    try:
        result = await run_in_threadpool(ctx.analytics.add_feedback, body)
    except FeedbackError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    except Exception:
        return unavailable(ctx)
    return JSONResponse(result, 201)
