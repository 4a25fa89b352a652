"""OpenAI-compatible HTTP front end of the simulator, shaped like ``vllm serve``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE streaming and plain, with
``usage``), ``GET /v1/models``, ``GET /health``, ``GET /version``, ``GET /metrics``.
Errors use OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import generate_latest

from observer.config import SimulatorSettings
from observer.simulator.engine import Engine, RequestHandle, count_tokens
from observer.simulator.tracing import RequestTracer

# vLLM serves its metrics with the classic text format content type.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIMULATED_VLLM_VERSION = "0.11.0"

_WORDS = (
    " the",
    " model",
    " serves",
    " tokens",
    " from",
    " a",
    " paged",
    " cache",
    ",",
    " and",
    " each",
    " step",
    " decodes",
    " one",
    " more",
    " for",
    " every",
    " running",
    " request",
    ".",
    " Latency",
    " depends",
    " on",
    " batch",
    " size",
    " prompt",
    " length",
    " queue",
    " depth",
    " GPU",
    " memory",
    " is",
    " the",
    " limit",
    " when",
    " blocks",
    " run",
    " out",
    " so",
    " requests",
    " wait",
    "\n",
)
# Each word pre-encoded as a JSON string once: streaming is the simulator's hot path.
_WORDS_JSON = tuple(json.dumps(w) for w in _WORDS)


class ApiError(Exception):
    def __init__(
        self, message: str, param: str | None = None, status: int = 400, type_: str = "BadRequestError"
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type = message, param, status, type_


def _error_response(err: ApiError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.status}}
    return JSONResponse(body, status_code=err.status)


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ApiError(f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}", key)
    if not lo <= value <= hi:
        raise ApiError(f"'{key}' must be between {lo} and {hi}, got {value}", key)
    return value


def _message_text(messages: Any) -> tuple[str, int]:
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list", "messages")
    parts: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(f"messages[{i}] must be an object with a 'role'", "messages")
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ApiError(f"messages[{i}].content must be a string or a list of parts", "messages")
        parts.append(f"<|{msg['role']}|>{content}")
    text = "".join(parts)
    # Chat templates add a few tokens per message plus the assistant header.
    return text, count_tokens(text) + 4 * len(messages) + 3


def _prompt_text(prompt: Any) -> tuple[str, int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError("'prompt' must not be empty", "prompt")
        return prompt, count_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt):
        return " ".join(map(str, prompt)), len(prompt)
    raise ApiError("'prompt' must be a string or a list of token ids (batches are not supported)", "prompt")


def create_app(settings: SimulatorSettings) -> FastAPI:
    tracer = RequestTracer(settings.otlp_traces_endpoint) if settings.otlp_traces_endpoint else None
    engine = Engine(settings, tracer=tracer)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="LLM Observer engine simulator (vLLM-compatible)", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": SIMULATED_VLLM_VERSION}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry), media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": settings.model,
                    "parent": None,
                    "max_model_len": settings.max_model_len,
                }
            ],
        }

    async def _parse(request: Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError("request body must be a JSON object")
        model = body.get("model", settings.model)
        if model != settings.model:
            raise ApiError(f"The model `{model}` does not exist.", "model", 404, "NotFoundError")
        return body

    def _admit(body: dict, request: Request, text: str, prompt_tokens: int, chat: bool) -> RequestHandle:
        max_key = (
            "max_completion_tokens"
            if chat and body.get("max_completion_tokens") is not None
            else "max_tokens"
        )
        max_tokens = _number(body, max_key, 1, settings.max_model_len, integer=True)
        for key, lo, hi in (
            ("temperature", 0, 2),
            ("top_p", 1e-9, 1),
            ("presence_penalty", -2, 2),
            ("frequency_penalty", -2, 2),
        ):
            _number(body, key, lo, hi)
        n = _number(body, "n", 1, 1, integer=True)
        min_tokens = _number(body, "min_tokens", 0, settings.max_model_len, integer=True) or 0
        if body.get("stream") not in (None, True, False):
            raise ApiError("'stream' must be a boolean", "stream")
        if prompt_tokens + (max_tokens or 1) > settings.max_model_len:
            raise ApiError(
                f"This model's maximum context length is {settings.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens or 0} in the completion). "
                "Please reduce the length of the messages or completion.",
                "messages" if chat else "prompt",
            )
        if not engine.scheduler.can_ever_fit(prompt_tokens):
            raise ApiError(f"prompt of {prompt_tokens} tokens does not fit in the KV cache", "messages")
        eos_after = 10**9 if body.get("ignore_eos") else max(engine.eos_after(text), min_tokens)
        trace_headers = {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}
        params = {
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "max_tokens": max_tokens,
            "n": n,
        }
        handle = engine.submit(
            prompt_text=text,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens or settings.max_model_len - prompt_tokens,
            eos_after=eos_after,
            params=params,
            trace_headers=trace_headers,
            max_tokens_set=max_tokens is not None,
        )
        handle.id_prefix = "chatcmpl-" if chat else "cmpl-"
        return handle

    def _usage(handle: RequestHandle) -> dict:
        r = handle.req
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.output_tokens,
            "total_tokens": r.prompt_tokens + r.output_tokens,
        }

    def _text(handle: RequestHandle, start: int, end: int) -> str:
        offset = int(handle.req.request_id[:4], 16)
        return "".join(_WORDS[(offset + i) % len(_WORDS)] for i in range(start, end))

    async def _complete(handle: RequestHandle) -> None:
        try:
            while not handle.done:
                await handle.ready.wait()
                handle.ready.clear()
        finally:
            if not handle.done:
                engine.abort(handle)

    async def _stream(handle: RequestHandle, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        rid = ("chatcmpl-" if chat else "cmpl-") + handle.req.request_id
        obj = "chat.completion.chunk" if chat else "text_completion"
        model_json = json.dumps(settings.model)
        head = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
            f'"model":{model_json},"choices":[{{"index":0,'
        )
        if chat:
            token_open, token_close = (
                head + '"delta":{"content":',
                '},"logprobs":null,"finish_reason":null}]}\n\n',
            )
        else:
            token_open, token_close = head + '"text":', ',"logprobs":null,"finish_reason":null}]}\n\n'
        offset = int(handle.req.request_id[:4], 16)
        sent = 0
        try:
            if chat:
                yield (
                    head
                    + '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
                )
            while True:
                await handle.ready.wait()
                handle.ready.clear()
                produced = handle.req.output_tokens
                if produced > sent:
                    yield "".join(
                        token_open + _WORDS_JSON[(offset + i) % len(_WORDS_JSON)] + token_close
                        for i in range(sent, produced)
                    )
                    sent = produced
                if handle.done:
                    break
            reason = json.dumps(handle.finished_reason)
            tail = (
                head
                + ('"delta":{},' if chat else '"text":"",')
                + f'"logprobs":null,"finish_reason":{reason}}}]}}\n\n'
            )
            if include_usage:
                tail += (
                    f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
                    f'"model":{json.dumps(settings.model)},"choices":[],"usage":{json.dumps(_usage(handle))}}}\n\n'
                )
            yield tail + "data: [DONE]\n\n"
        finally:
            if not handle.done:
                engine.abort(handle)  # client went away mid-stream: vLLM counts it as abort

    async def _handle(request: Request, chat: bool) -> Response:
        body = await _parse(request)
        if chat:
            text, prompt_tokens = _message_text(body.get("messages"))
        else:
            text, prompt_tokens = _prompt_text(body.get("prompt"))
        handle = _admit(body, request, text, prompt_tokens, chat)
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
            return StreamingResponse(_stream(handle, chat, include_usage), media_type="text/event-stream")
        await _complete(handle)
        out = _text(handle, 0, handle.req.output_tokens)
        rid = ("chatcmpl-" if chat else "cmpl-") + handle.req.request_id
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": handle.finished_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": out}
        else:
            choice["text"] = out
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": settings.model,
                "choices": [choice],
                "usage": _usage(handle),
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(request, chat=False)

    return app
