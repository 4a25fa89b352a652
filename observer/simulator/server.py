"""OpenAI-compatible HTTP front end of the simulator, shaped like ``vllm serve``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE streaming and plain, with
``usage``), ``GET /v1/models``, ``GET /health``, ``GET /version``, ``GET /metrics``.
Errors use OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import generate_latest

from observer.config import SimulatorSettings
from observer.exposition import add_health_and_metrics
from observer.simulator.engine import Engine, RequestHandle, count_tokens
from observer.simulator.tracing import RequestTracer

SIMULATED_VLLM_VERSION = "0.32.0"  # the release whose /metrics shape it copies (tests diff them)

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


MAX_N = 128  # choices per request; vLLM has no fixed cap, this bounds one request's engine work
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_STOP_STRINGS = 16


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
        raise ApiError("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(f"'stop' accepts at most {MAX_STOP_STRINGS} strings", "stop")
    return tuple(x for x in stops if x)


def _logprobs_request(body: dict, chat: bool) -> int | None:
    """Top-k logprobs asked for (0 = only the sampled token's), or None when not asked (``null``)."""
    if chat:
        wanted = body.get("logprobs")
        if wanted not in (None, True, False):
            raise ApiError("'logprobs' must be a boolean", "logprobs")
        top = _number(body, "top_logprobs", 0, MAX_LOGPROBS, integer=True)
        if top is not None and not wanted:
            raise ApiError("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        return (top or 0) if wanted else None
    return _number(body, "logprobs", 0, MAX_LOGPROBS, integer=True)


def _word_offset(handle: RequestHandle) -> int:
    return int(handle.req.request_id[:4], 16)


def _token_text(handle: RequestHandle, index: int) -> str:
    """The text of output token ``index``; the token that completed a stop string is cut before it."""
    word = _WORDS[(_word_offset(handle) + index) % len(_WORDS)]
    if handle.stop_text is not None and index == handle.stop_token - 1:
        return word[: handle.stop_cut]
    return word


def _visible_tokens(handle: RequestHandle) -> int:
    return handle.req.output_tokens


def _apply_stop(handle: RequestHandle, stops: tuple[str, ...], limit: int, min_tokens: int) -> None:
    """Find where the deterministic output first contains a stop string and end the request there
    with finish_reason "stop" and stop_reason = that string, as vLLM does (text cut before it)."""
    offset = _word_offset(handle)
    text = ""
    for i in range(limit):
        word = _WORDS[(offset + i) % len(_WORDS)]
        before = len(text)
        text += word
        if i + 1 < min_tokens:
            continue
        hits = [(text.find(s, max(0, before - len(s) + 1)), s) for s in stops]
        hits = [(pos, s) for pos, s in hits if pos != -1]
        if hits:
            pos, stop = min(hits)
            handle.req.eos_after = i + 1
            handle.stop_text, handle.stop_token, handle.stop_cut = stop, i + 1, max(0, pos - before)
            return


def _finish(handle: RequestHandle) -> dict[str, Any]:
    reason = handle.finished_reason
    stop_reason = (
        handle.stop_text if reason == "stop" and handle.req.output_tokens == handle.stop_token else None
    )
    return {"finish_reason": reason, "stop_reason": stop_reason}


def _finish_fields(handle: RequestHandle) -> str:
    f = _finish(handle)
    reason, stop = json.dumps(f["finish_reason"]), json.dumps(f["stop_reason"])
    return f'"logprobs":null,"finish_reason":{reason},"stop_reason":{stop}'


def _logprob(handle: RequestHandle, index: int, rank: int) -> float:
    """A deterministic plausible log-probability (the simulator samples nothing)."""
    return -round(0.05 + 0.37 * ((_word_offset(handle) + 7 * index) % 11) / 11 + 1.3 * rank, 4)


def _logprobs_block(handle: RequestHandle, start: int, end: int, chat: bool) -> dict[str, Any] | None:
    top = handle.logprobs
    if top is None:
        return None
    offset = _word_offset(handle)
    alternatives = [
        [_WORDS[(offset + t + 1 + k) % len(_WORDS)] for k in range(top)] for t in range(start, end)
    ]
    if chat:
        return {
            "content": [
                {
                    "token": _token_text(handle, t),
                    "logprob": _logprob(handle, t, 0),
                    "bytes": list(_token_text(handle, t).encode()),
                    "top_logprobs": [
                        {"token": alt, "logprob": _logprob(handle, t, k + 1), "bytes": list(alt.encode())}
                        for k, alt in enumerate(alternatives[t - start])
                    ],
                }
                for t in range(start, end)
            ]
        }
    offsets, pos = [], sum(len(_token_text(handle, t)) for t in range(start))
    for t in range(start, end):
        offsets.append(pos)
        pos += len(_token_text(handle, t))
    return {
        "tokens": [_token_text(handle, t) for t in range(start, end)],
        "token_logprobs": [_logprob(handle, t, 0) for t in range(start, end)],
        "top_logprobs": [
            {_token_text(handle, t): _logprob(handle, t, 0)}
            | {alt: _logprob(handle, t, k + 1) for k, alt in enumerate(alternatives[t - start])}
            for t in range(start, end)
        ],
        "text_offset": offsets,
    }


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

    # vLLM serves its metrics with the classic text format content type, as observer does.
    add_health_and_metrics(app, lambda: generate_latest(engine.metrics.registry))

    @app.get("/version")
    async def version() -> dict:
        return {"version": SIMULATED_VLLM_VERSION}

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

    def _admit(
        body: dict, request: Request, text: str, prompt_tokens: int, chat: bool
    ) -> list[RequestHandle]:
        """Validate sampling parameters as vLLM does and submit one engine request per choice (``n``)."""
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
        n = _number(body, "n", 1, MAX_N, integer=True) or 1
        min_tokens = _number(body, "min_tokens", 0, settings.max_model_len, integer=True) or 0
        if body.get("stream") not in (None, True, False):
            raise ApiError("'stream' must be a boolean", "stream")
        if body.get("stream_options") and not body.get("stream"):
            raise ApiError("Stream options can only be defined when `stream=True`.", "stream_options")
        stops = _stop_strings(body.get("stop"))
        logprobs = _logprobs_request(body, chat)
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
        trace_headers = {k: v for k, v in request.headers.items() if k in ("traceparent", "tracestate")}
        params = {
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "max_tokens": max_tokens,
            "n": n,
        }
        limit = max_tokens or settings.max_model_len - prompt_tokens
        # vLLM fans a request with n > 1 out into n engine requests (one span and one finish each) that
        # share one prompt; the choices wake one event so a stream waits on all of them at once.
        shared = asyncio.Event()
        handles = []
        for index in range(n):
            seed_text = text if index == 0 else f"{text}\x00{index}"
            eos_after = 10**9 if body.get("ignore_eos") else max(engine.eos_after(seed_text), min_tokens)
            handle = engine.submit(
                prompt_text=text,
                prompt_tokens=prompt_tokens,
                max_tokens=limit,
                eos_after=eos_after,
                params=params,
                trace_headers=trace_headers,
                max_tokens_set=max_tokens is not None,
            )
            handle.id_prefix = "chatcmpl-" if chat else "cmpl-"
            handle.ready = shared
            handle.index = index
            handle.logprobs = logprobs
            if stops:
                _apply_stop(handle, stops, min(limit, handle.req.eos_after), min_tokens)
            handles.append(handle)
        return handles

    def _usage(handles: list[RequestHandle]) -> dict:
        prompt = handles[0].req.prompt_tokens  # one prompt, however many choices
        completion = sum(h.req.output_tokens for h in handles)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _complete(handles: list[RequestHandle]) -> None:
        ready = handles[0].ready
        try:
            while not all(h.done for h in handles):
                await ready.wait()
                ready.clear()
        finally:
            for h in handles:
                engine.abort(h)  # no-op for finished ones

    async def _stream_one(handle: RequestHandle, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        """The hot path (n = 1, no logprobs, no stop strings): pre-encoded words, one join per wake."""
        rid = handle.id_prefix + handle.req.request_id
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
        offset = _word_offset(handle)
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
            tail = head + ('"delta":{},' if chat else '"text":"",') + _finish_fields(handle) + "}]}\n\n"
            if include_usage:
                tail += (
                    f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
                    f'"model":{model_json},"choices":[],"usage":{json.dumps(_usage([handle]))}}}\n\n'
                )
            yield tail + "data: [DONE]\n\n"
        finally:
            engine.abort(handle)  # client went away mid-stream (no-op once finished)

    async def _stream_many(
        handles: list[RequestHandle], chat: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        """n > 1, logprobs or stop strings: one chunk per choice and token, choices interleaved."""
        rid = handles[0].id_prefix + handles[0].req.request_id
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def chunk(choice: dict) -> str:
            event = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": settings.model,
                "choices": [choice],
            }
            return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"

        sent = [0] * len(handles)
        finished = [False] * len(handles)
        ready = handles[0].ready
        try:
            if chat:
                yield "".join(
                    chunk(
                        {
                            "index": h.index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
                    for h in handles
                )
            while not all(finished):
                await ready.wait()
                ready.clear()
                out = []
                for i, h in enumerate(handles):
                    produced = _visible_tokens(h)
                    for t in range(sent[i], produced):
                        piece = _token_text(h, t)
                        body = {"content": piece} if chat else None
                        choice: dict[str, Any] = {"index": h.index}
                        if chat:
                            choice["delta"] = body
                        else:
                            choice["text"] = piece
                        choice["logprobs"] = _logprobs_block(h, t, t + 1, chat)
                        choice["finish_reason"] = None
                        out.append(chunk(choice))
                    sent[i] = produced
                    if h.done and not finished[i]:
                        finished[i] = True
                        end: dict[str, Any] = {"index": h.index}
                        if chat:
                            end["delta"] = {}
                        else:
                            end["text"] = ""
                        end.update(_finish(h))
                        out.append(chunk(end))
                if out:
                    yield "".join(out)
            if include_usage:
                event = {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": settings.model,
                    "choices": [],
                    "usage": _usage(handles),
                }
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:
                engine.abort(h)

    async def _handle(request: Request, chat: bool) -> Response:
        body = await _parse(request)
        if chat:
            text, prompt_tokens = _message_text(body.get("messages"))
        else:
            text, prompt_tokens = _prompt_text(body.get("prompt"))
        handles = _admit(body, request, text, prompt_tokens, chat)
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
            first = handles[0]
            if len(handles) == 1 and first.logprobs is None and first.stop_text is None:
                stream = _stream_one(first, chat, include_usage)
            else:
                stream = _stream_many(handles, chat, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream")
        await _complete(handles)
        choices = []
        for h in handles:
            out = "".join(_token_text(h, t) for t in range(_visible_tokens(h)))
            choice: dict[str, Any] = {
                "index": h.index,
                "logprobs": _logprobs_block(h, 0, _visible_tokens(h), chat),
            }
            if chat:
                choice["message"] = {"role": "assistant", "content": out}
            else:
                choice["text"] = out
            choice.update(_finish(h))
            choices.append(choice)
        return JSONResponse(
            {
                "id": handles[0].id_prefix + handles[0].req.request_id,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": settings.model,
                "choices": choices,
                "usage": _usage(handles),
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _handle(request, chat=False)

    return app
