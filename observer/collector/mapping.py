"""One OTLP span -> one privacy-safe span record, with every value read from it validated.

Only attributes named in ``MappingRules.wanted`` are ever read out of a span; content attributes
(``gen_ai.prompt*``, ``gen_ai.completion*``, ``gen_ai.input.messages``, ``gen_ai.output.messages``,
``llm.<provider>.messages``...) and span events are never materialized, so they cannot reach the
database or a log line.

A span plays one of three roles in a request (``observer.collector.join`` puts them together):
* **engine**: vLLM's ``llm_request`` (``gen_ai.latency.*``, the legacy token names);
* **call**: a GenAI client or gateway call (OpenTelemetry GenAI conventions: the OpenAI SDK's
  ``chat <model>``, LiteLLM's ``litellm_request``): model, usage, finish reasons, response id;
* **link**: any other span. Only its place in the trace and who it was for (user, department)
  are kept: the app's own request span is usually where the user is set, and the HTTP client span
  between a GenAI span and the engine is what connects them.

Numbers come from outside: a value that is not finite or out of range is dropped from the record
(and reported, so the collector counts it), never allowed to fail the batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from observer.config import DEPARTMENT_ATTRIBUTES, USER_ATTRIBUTES

ENGINE, CALL, LINK = "engine", "call", "link"

# What a span and a request both carry: who, how much, how fast, how it ended.
VALUE_COLUMNS = (
    "user_id",
    "department",
    "session_id",
    "conversation_id",
    "input_tokens",
    "output_tokens",
    "ttft_s",
    "tpot_s",
    "queue_s",
    "prefill_s",
    "decode_s",
    "e2e_s",
    "outcome",  # success | error | abort; None where the span does not say
    "finish_reason",
    "error_type",
)
# The columns of one stored span (table ``spans``), in order.
SPAN_COLUMNS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "role",
    "call_id",  # engine: gen_ai.request.id; call: gen_ai.response.id (the OpenAI response id)
    "model",  # engine: the model it says it served; call: the model the caller asked for
    "response_model",  # call: the model the server answered with
    "service",
    *VALUE_COLUMNS,
    "started_at",
    "ended_at",
)

_ENGINE_MARKERS = ("gen_ai.latency.e2e", "gen_ai.latency.time_to_first_token", "gen_ai.latency.time_in_queue")
_CALL_MARKERS = (
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)
# GenAI operations that contain model calls but are not one (agents, tools). Any other operation
# name with GenAI call attributes is a call: gateways invent their own (LiteLLM says "acompletion").
_CONTAINER_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})
_WANTED_BASE = frozenset(
    {
        *_ENGINE_MARKERS,
        *_CALL_MARKERS,
        "gen_ai.operation.name",
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
        "finished_reason",
        "error.type",
        "session.id",
        "service.name",
    }
)
_ABORT_WORDS = frozenset({"abort", "aborted", "cancelled", "canceled", "client_disconnect", "disconnected"})

MAX_TOKENS = 2**31 - 1  # what the INTEGER columns hold on every database
MAX_SECONDS = 7 * 86_400.0  # no single LLM request lasts a week: anything longer is a broken clock


class InvalidSpan(ValueError):
    """The span cannot be used at all (broken ids, no start time); its batchmates still can."""


@dataclass(frozen=True)
class MappingRules:
    user_attributes: tuple[str, ...] = USER_ATTRIBUTES
    department_attributes: tuple[str, ...] = DEPARTMENT_ATTRIBUTES
    pseudonymize_key: bytes | None = None
    wanted: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        keys = _WANTED_BASE | frozenset(self.user_attributes) | frozenset(self.department_attributes)
        object.__setattr__(self, "wanted", keys)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values[:16]]
    if kind in ("kvlist_value", "bytes_value", None):
        return None  # never needed, and could carry content
    return getattr(v, kind)


def wanted_attributes(kvs: Iterable[Any], wanted: frozenset[str]) -> dict[str, Any]:
    """Only the named attributes, decoded; everything else (content included) is never read."""
    return {kv.key: _value(kv.value) for kv in kvs if kv.key in wanted}


def _ts(nanos: int) -> datetime | None:
    if not nanos:
        return None
    try:
        return datetime.fromtimestamp(nanos / 1e9, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        raise InvalidSpan("timestamp out of range") from None


class _Reader:
    """Reads typed values out of the wanted attributes and remembers which ones it had to drop."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.a = attrs
        self.dropped: list[str] = []

    def _number(self, key: str) -> float | None:
        v = self.a.get(key)
        if isinstance(v, bool) or v is None:
            return None
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                self.dropped.append(key)
                return None
        if not isinstance(v, int | float):
            self.dropped.append(key)
            return None
        return float(v)

    def tokens(self, *keys: str) -> int | None:
        for key in keys:
            v = self._number(key)
            if v is None:
                continue
            if not math.isfinite(v) or v < 0 or v > MAX_TOKENS or v != int(v):
                self.dropped.append(key)
                continue
            return int(v)
        return None

    def seconds(self, key: str) -> float | None:
        v = self._number(key)
        if v is None:
            return None
        if not math.isfinite(v) or v < 0 or v > MAX_SECONDS:
            self.dropped.append(key)
            return None
        return v

    def text(self, *keys: str, limit: int = 128) -> str | None:
        for key in keys:
            v = self.a.get(key)
            if v is None or isinstance(v, list):
                continue
            s = clean_text(str(v), limit)
            if s:
                return s
        return None


def clean_text(value: str, limit: int) -> str:
    """No NUL or control characters (PostgreSQL refuses NUL; logs and CSVs choke on the rest)."""
    if len(value) <= limit and value.isprintable():
        return value.strip()  # the common case, at C speed
    return "".join(ch for ch in value[: limit * 2] if ch >= " " and ch != "\x7f")[:limit].strip()


def finish_reason(value: Any) -> str | None:
    """The first finish reason, from an array or from the JSON-encoded string LiteLLM sends."""
    if isinstance(value, str) and value.startswith("["):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, list):
        value = next((v for v in value if v not in (None, "")), None)
    return clean_text(str(value), 32) or None if value is not None else None


def pseudonymize(user_id: str, key: bytes | None) -> str:
    if key is None:
        return user_id
    return "h:" + hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


def span_role(span: Span, a: dict[str, Any]) -> str:
    if span.name == "llm_request" or any(k in a for k in _ENGINE_MARKERS):
        return ENGINE
    if a.get("gen_ai.operation.name") in _CONTAINER_OPERATIONS:
        return LINK
    return CALL if any(k in a for k in _CALL_MARKERS) else LINK


def _outcome(failed: bool, error_type: str | None, finish: str | None) -> str | None:
    if (error_type or "").lower() in _ABORT_WORDS or (finish or "").lower() in _ABORT_WORDS:
        return "abort"
    if error_type or failed:
        return "error"
    return None


@functools.lru_cache(maxsize=256)
def _resource_values(
    items: tuple[tuple[str, Any], ...], rules: MappingRules
) -> tuple[str | None, str | None]:
    res = _Reader(dict(items))
    return res.text("service.name"), res.text(*rules.department_attributes)


def resource_values(resource: dict[str, Any], rules: MappingRules) -> tuple[str | None, str | None]:
    """(service.name, department) of a resource: the same for every span of a batch, read once."""
    try:
        return _resource_values(tuple(sorted(resource.items())), rules)
    except TypeError:  # an unhashable (array) value: no caching for this odd resource
        return _resource_values.__wrapped__(tuple(sorted(resource.items())), rules)


def span_to_record(
    span: Span, resource: dict[str, Any], rules: MappingRules
) -> tuple[dict[str, Any], list[str]]:
    """The span's record and the attributes dropped as invalid. Raises InvalidSpan."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise InvalidSpan("trace_id must be 16 bytes and span_id 8 bytes")
    if span.parent_span_id and len(span.parent_span_id) != 8:
        raise InvalidSpan("parent_span_id must be 8 bytes")
    started, ended = _ts(span.start_time_unix_nano), _ts(span.end_time_unix_nano)
    if started is None:
        raise InvalidSpan("span without start_time_unix_nano")
    if ended is not None and ended < started:
        ended = None  # a broken clock: keep the start, drop the end
    a = wanted_attributes(span.attributes, rules.wanted)
    r = _Reader(a)
    service, resource_department = resource_values(resource, rules)
    role = span_role(span, a)
    user = r.text(*rules.user_attributes)
    error_type = r.text("error.type")
    finish = finish_reason(a.get("gen_ai.response.finish_reasons")) or r.text("finished_reason", limit=32)
    failed = span.status.code == Status.STATUS_CODE_ERROR
    record: dict[str, Any] = {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() if span.parent_span_id else None,
        "role": role,
        "service": service,
        "user_id": pseudonymize(user, rules.pseudonymize_key) if user else None,
        "department": r.text(*rules.department_attributes) or resource_department,
        "session_id": r.text("session.id"),
        "conversation_id": r.text("gen_ai.conversation.id"),
        "started_at": started,
        "ended_at": ended,
    }
    if role == ENGINE:
        out = r.tokens("gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens")
        decode = r.seconds("gen_ai.latency.time_in_model_decode")
        record.update(
            call_id=r.text("gen_ai.request.id"),
            model=r.text("gen_ai.response.model", "gen_ai.request.model", limit=256),
            input_tokens=r.tokens("gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
            output_tokens=out,
            ttft_s=r.seconds("gen_ai.latency.time_to_first_token"),
            queue_s=r.seconds("gen_ai.latency.time_in_queue"),
            prefill_s=r.seconds("gen_ai.latency.time_in_model_prefill"),
            decode_s=decode,
            e2e_s=r.seconds("gen_ai.latency.e2e"),
            tpot_s=(decode / (out - 1)) if decode is not None and out and out > 1 else None,
            outcome=_outcome(failed, error_type, finish),
            finish_reason=finish,
            error_type=error_type,
        )
    elif role == CALL:
        outcome = _outcome(failed, error_type, finish) or "success"
        duration = (ended - started).total_seconds() if ended is not None else None
        record.update(
            call_id=r.text("gen_ai.response.id"),
            model=r.text("gen_ai.request.model", limit=256),
            response_model=r.text("gen_ai.response.model", limit=256),
            input_tokens=r.tokens("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
            output_tokens=r.tokens("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
            ttft_s=r.seconds("gen_ai.response.time_to_first_chunk"),
            e2e_s=duration if duration is not None and duration <= MAX_SECONDS else None,
            outcome=outcome,
            finish_reason=finish,
            error_type=error_type,
        )
    else:
        # A link says only where it sits and whom it was for; an abandoned HTTP call still tells.
        record.update(outcome="abort" if _outcome(False, error_type, None) == "abort" else None)
    return {c: record.get(c) for c in SPAN_COLUMNS}, r.dropped
