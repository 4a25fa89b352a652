"""Spans -> partial request records, with privacy enforced by construction.

Only attributes named in ``_WANTED`` are ever read out of a span; content attributes
(``gen_ai.prompt*``, ``gen_ai.completion*``, ``gen_ai.input.messages``, ``gen_ai.output.messages``,
``gen_ai.system_instructions``...) and span events are never materialized, so they cannot reach the
database or a log line.

Two kinds of spans make a request:
* the **engine** span (vLLM's ``llm_request``: ``gen_ai.latency.*``, legacy token names), whose
  parent, when a gateway propagated ``traceparent``, is the gateway span;
* the **gateway** span (GenAI semantic conventions, from a gateway or app: model, user,
  department, tokens, finish reasons, ``error.type``).
The request key is the gateway span id (the engine span's parent) or, with no gateway, the engine
span's own id; both halves land on the same row in whatever order they arrive.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# Columns the engine half is authoritative for, and those the gateway half is authoritative for.
# The same rule merges halves in memory (merge_partials) and in SQL (store.upsert).
ENGINE_FIRST = (
    "input_tokens",
    "output_tokens",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "queue_s",
    "prefill_s",
    "decode_s",
)
GATEWAY_FIRST = (
    "model",
    "user_id",
    "department",
    "session_id",
    "conversation_id",
    "outcome",
    "finish_reason",
    "error_type",
)
OWN_COLUMNS = ("gateway_span_id", "engine_span_id", "engine_request_id")
COLUMNS = ("trace_id", "request_key", *OWN_COLUMNS, *ENGINE_FIRST, *GATEWAY_FIRST, "started_at", "ended_at")

_ENGINE_MARKERS = ("gen_ai.latency.e2e", "gen_ai.latency.time_to_first_token", "gen_ai.latency.time_in_queue")
_GATEWAY_MARKERS = (
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)
_WANTED_BASE = frozenset(
    {
        *_ENGINE_MARKERS,
        *_GATEWAY_MARKERS,
        "gen_ai.request.id",
        "gen_ai.response.id",
        "gen_ai.response.model",
        "gen_ai.response.finish_reasons",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "gen_ai.latency.time_in_model_prefill",
        "gen_ai.latency.time_in_model_decode",
        "gen_ai.response.time_to_first_chunk",
        "gen_ai.conversation.id",
        "error.type",
        "user.id",
        "enduser.id",
        "user.hash",
        "session.id",
    }
)

_ABORT_REASONS = {"abort", "aborted", "cancelled", "canceled"}


class InvalidSpan(ValueError):
    pass


@dataclass(frozen=True)
class MappingRules:
    department_attributes: tuple[str, ...] = ("department",)
    pseudonymize_key: bytes | None = None

    @property
    def wanted(self) -> frozenset[str]:
        return _WANTED_BASE | frozenset(self.department_attributes)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind in ("kvlist_value", "bytes_value", None):
        return None  # never needed, and could carry content
    return getattr(v, kind)


def wanted_attributes(kvs: Iterable[Any], wanted: frozenset[str]) -> dict[str, Any]:
    """Only the named attributes, decoded; everything else (content included) is never read."""
    return {kv.key: _value(kv.value) for kv in kvs if kv.key in wanted}


def _ts(nanos: int) -> datetime | None:
    return datetime.fromtimestamp(nanos / 1e9, UTC).replace(tzinfo=None) if nanos else None


def _num(a: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = a.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                continue
    return None


def _int(a: dict[str, Any], *keys: str) -> int | None:
    v = _num(a, *keys)
    return None if v is None else int(v)


def _str(a: dict[str, Any], *keys: str, limit: int = 128) -> str | None:
    for k in keys:
        v = a.get(k)
        if v is not None and v != "":
            return str(v)[:limit]
    return None


def pseudonymize(user_id: str, key: bytes | None) -> str:
    if key is None:
        return user_id
    return "h:" + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


def span_to_partial(span: Span, resource: dict[str, Any], rules: MappingRules) -> dict[str, Any] | None:
    """A partial request record, or None for spans that are not LLM requests."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise InvalidSpan("trace_id must be 16 bytes and span_id 8 bytes")
    a = wanted_attributes(span.attributes, rules.wanted)
    is_engine = span.name == "llm_request" or any(k in a for k in _ENGINE_MARKERS)
    is_gateway = not is_engine and any(k in a for k in _GATEWAY_MARKERS)
    if not (is_engine or is_gateway):
        return None
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    started, ended = _ts(span.start_time_unix_nano), _ts(span.end_time_unix_nano)
    if started is None:
        raise InvalidSpan("span without start_time_unix_nano")
    record: dict[str, Any] = {"trace_id": trace_id, "started_at": started, "ended_at": ended}
    inp = _int(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    out = _int(a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    failed = span.status.code == Status.STATUS_CODE_ERROR
    if is_engine:
        parent = span.parent_span_id.hex() if len(span.parent_span_id) == 8 else None
        decode = _num(a, "gen_ai.latency.time_in_model_decode")
        record.update(
            request_key=parent or span_id,
            engine_span_id=span_id,
            engine_request_id=_str(a, "gen_ai.request.id"),
            model=_str(a, "gen_ai.response.model", "gen_ai.request.model", limit=256),
            input_tokens=inp,
            output_tokens=out,
            ttft_s=_num(a, "gen_ai.latency.time_to_first_token"),
            queue_s=_num(a, "gen_ai.latency.time_in_queue"),
            prefill_s=_num(a, "gen_ai.latency.time_in_model_prefill"),
            decode_s=decode,
            e2e_s=_num(a, "gen_ai.latency.e2e"),
            tpot_s=(decode / (out - 1)) if decode is not None and out and out > 1 else None,
            outcome="error" if failed else None,  # the gateway knows better; None = not said here
        )
        return record
    reasons = a.get("gen_ai.response.finish_reasons")
    finish = (
        str(reasons[0])[:32]
        if isinstance(reasons, list) and reasons
        else _str(a, "gen_ai.response.finish_reasons", limit=32)
    )
    error_type = _str(a, "error.type")
    if error_type or failed:
        outcome = "abort" if (error_type or "").lower() in _ABORT_REASONS else "error"
    elif finish and finish.lower() in _ABORT_REASONS:
        outcome = "abort"
    else:
        outcome = "success"
    user = _str(a, "user.id", "enduser.id", "user.hash")
    department = _str(a, *rules.department_attributes) or _str(resource, *rules.department_attributes)
    duration = (
        (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9 if span.end_time_unix_nano else None
    )
    record.update(
        request_key=span_id,
        gateway_span_id=span_id,
        model=_str(a, "gen_ai.response.model", "gen_ai.request.model", limit=256),
        user_id=pseudonymize(user, rules.pseudonymize_key) if user else None,
        department=department,
        session_id=_str(a, "session.id"),
        conversation_id=_str(a, "gen_ai.conversation.id"),
        input_tokens=inp,
        output_tokens=out,
        ttft_s=_num(a, "gen_ai.response.time_to_first_chunk"),
        e2e_s=duration,
        outcome=outcome,
        finish_reason=finish,
        error_type=error_type,
    )
    return record


def merge_partials(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Merge two halves of one request with the same rules as the SQL upsert."""
    out = dict(old)
    new_is_engine = new.get("engine_span_id") is not None
    new_is_gateway = new.get("gateway_span_id") is not None
    for col in COLUMNS:
        a, b = old.get(col), new.get(col)
        if col in ENGINE_FIRST:
            out[col] = (b if b is not None else a) if new_is_engine else (a if a is not None else b)
        elif col in GATEWAY_FIRST:
            out[col] = (b if b is not None else a) if new_is_gateway else (a if a is not None else b)
        elif col == "started_at":
            out[col] = min(x for x in (a, b) if x is not None)
        elif col == "ended_at":
            out[col] = max((x for x in (a, b) if x is not None), default=None)
        else:
            out[col] = b if b is not None else a
    return out
