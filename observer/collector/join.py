"""Span records -> request records: a request is a trace-level thing.

One user request shows up as several spans: an app span -> a GenAI client span -> an HTTP client
span -> the engine's ``llm_request``; or app -> gateway (LiteLLM) -> engine; or an engine span in a
trace of its own. The rules, applied to whatever spans have arrived so far:

1. Every **call** span (GenAI client/gateway call) belongs to the request of its outermost call
   ancestor-or-self: nested calls (app SDK -> gateway) collapse into one request.
2. Every **engine** span joins its nearest call ancestor, however many other spans lie between;
   failing that, the call whose response id equals its request id (a gateway that did not forward
   ``traceparent``, or forwarded the caller's); failing that, it is a request of its own.
3. Who and which team: the request's call spans (outermost first), its engine spans, then the
   ancestors of its root, nearest first (the app's own request span, baggage copied onto spans).

``resolve`` is a pure function of the set of spans, so arrival order, batching and re-sends cannot
change its result; the store re-resolves a trace whenever a span of it arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from observer.collector.mapping import CALL, ENGINE, VALUE_COLUMNS

Key = tuple[str, str]  # (trace_id, span_id)

# The columns of one request row written by the resolver (table ``requests``).
REQUEST_COLUMNS = (
    "trace_id",
    "request_key",
    "gateway_span_id",
    "engine_span_id",
    "engine_request_id",
    "model",
    "model_verified",
    "service",
    *VALUE_COLUMNS,
    "started_at",
    "ended_at",
    "settled",
)
_IDENTITY = ("user_id", "department", "session_id", "conversation_id")
_ENGINE_LATENCY = ("ttft_s", "tpot_s", "queue_s", "prefill_s", "decode_s", "e2e_s")
MAX_DEPTH = 256  # hostile parent chains (or loops) stop here


@dataclass
class Request:
    root: dict[str, Any]
    calls: list[dict[str, Any]] = field(default_factory=list)  # outermost first
    engines: list[dict[str, Any]] = field(default_factory=list)
    ancestors: list[dict[str, Any]] = field(default_factory=list)  # of the root, nearest first
    between: list[dict[str, Any]] = field(default_factory=list)  # links between its engines and calls
    chain_complete: bool = False  # the root's ancestors all arrived, up to the trace's root span

    @property
    def key(self) -> Key:
        return (self.root["trace_id"], self.root["span_id"])

    @property
    def members(self) -> list[Key]:
        return [(s["trace_id"], s["span_id"]) for s in (*self.calls, *self.engines)]


def _first(spans: Iterable[dict[str, Any]], col: str) -> Any:
    return next((s[col] for s in spans if s.get(col) is not None), None)


class _Trace:
    """Parent lookups over the spans at hand, cycle-safe."""

    def __init__(self, spans: list[dict[str, Any]]) -> None:
        self.by_key: dict[Key, dict[str, Any]] = {(s["trace_id"], s["span_id"]): s for s in spans}
        # Per span: (the outermost call among it and its ancestors, its depth). Memoized so a chain
        # of N nested calls resolves in O(N), not O(N x depth).
        self._top: dict[Key, tuple[dict[str, Any] | None, int]] = {}

    def ancestors(self, span: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The ancestors present, nearest first, and whether the chain reached a root span."""
        out: list[dict[str, Any]] = []
        seen = {(span["trace_id"], span["span_id"])}
        cur = span
        while len(out) < MAX_DEPTH:
            parent = cur.get("parent_span_id")
            if not parent:
                return out, True
            key = (cur["trace_id"], parent)
            if key in seen or key not in self.by_key:
                return out, False  # a loop, or a parent that has not arrived (yet)
            seen.add(key)
            cur = self.by_key[key]
            out.append(cur)
        return out, False

    def _walk(self, span: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
        path: list[dict[str, Any]] = []
        seen: set[Key] = set()
        cur: dict[str, Any] | None = span
        top: dict[str, Any] | None = None
        depth = -1
        while cur is not None:
            key = (cur["trace_id"], cur["span_id"])
            if key in self._top:
                top, depth = self._top[key]
                break
            if key in seen:
                break  # a loop: the walk ends where it closes
            seen.add(key)
            path.append(cur)
            parent = cur.get("parent_span_id")
            cur = self.by_key.get((cur["trace_id"], parent)) if parent else None
        for s in reversed(path):  # from the topmost span down to ``span``
            depth += 1
            if top is None and s["role"] == CALL:
                top = s
            self._top[(s["trace_id"], s["span_id"])] = (top, depth)
        return self._top[(span["trace_id"], span["span_id"])]

    def call_root(self, call: dict[str, Any]) -> dict[str, Any]:
        """The outermost call among ``call`` and its ancestors: nested calls are one request."""
        return self._walk(call)[0] or call

    def depth(self, span: dict[str, Any]) -> int:
        return self._walk(span)[1]


def resolve(spans: list[dict[str, Any]]) -> list[Request]:
    """Group the spans of one or more traces into requests (deterministic; see the module doc)."""
    # A re-sent span is the same span: the last copy wins (the store's upsert keeps the same one).
    unique = {(s["trace_id"], s["span_id"]): s for s in spans}
    spans = [unique[k] for k in sorted(unique)]
    trace = _Trace(spans)
    by_response: dict[str, dict[str, Any]] = {}
    for s in spans:
        if s["role"] == CALL and s.get("call_id"):
            by_response.setdefault(s["call_id"], s)  # sorted input: the same winner every time
    requests: dict[Key, Request] = {}

    def request_of(root: dict[str, Any]) -> Request:
        key = (root["trace_id"], root["span_id"])
        if key not in requests:
            requests[key] = Request(root)
        return requests[key]

    for s in spans:
        if s["role"] == CALL:
            request_of(trace.call_root(s)).calls.append(s)
    orphans = []
    for s in spans:
        if s["role"] != ENGINE:
            continue
        ancestors, _ = trace.ancestors(s)
        nearest = next((i for i, a in enumerate(ancestors) if a["role"] == CALL), None)
        if nearest is None:
            orphans.append(s)
            continue
        req = request_of(trace.call_root(ancestors[nearest]))
        req.engines.append(s)
        req.between.extend(ancestors[:nearest])  # e.g. the HTTP client span an abort shows on
    orphan_ids = {id(s) for s in orphans}
    for s in orphans:
        # By response id only onto a call with no engine half of its own: an engine span cannot claim
        # (and add its tokens to) a call that its own engine already answered.
        call = by_response.get(s["call_id"]) if s.get("call_id") else None
        req = request_of(trace.call_root(call)) if call is not None else None
        if req is None or any(id(e) not in orphan_ids for e in req.engines):
            req = request_of(s)
        req.engines.append(s)
    for req in requests.values():
        req.calls.sort(key=trace.depth)
        req.ancestors, req.chain_complete = trace.ancestors(req.root)
    return [requests[k] for k in sorted(requests)]


def to_row(req: Request, served_by_service: dict[str, str] | None = None) -> dict[str, Any]:
    """One request row: engine numbers first (measured where the work happened), then the calls'."""
    calls, engines, root = req.calls, req.engines, req.root
    inner_first = list(reversed(calls))
    identity_sources = [*calls, *engines, *req.ancestors]
    row: dict[str, Any] = {c: _first(identity_sources, c) for c in _IDENTITY}
    service = _first(engines, "service")
    model = _first(engines, "model") or _first(inner_first, "response_model")
    verified = model is not None
    if model is None and service and served_by_service and service in served_by_service:
        model, verified = served_by_service[service], True
    if model is None:
        # The name the caller asked for; an engine that served the call accepted it (vLLM answers
        # 404 to a model it does not serve), a call with no engine half is only the caller's word.
        model = _first(inner_first, "model")
        verified = model is not None and bool(engines)
    outcomes = [s.get("outcome") for s in (*calls, *engines, *req.between, *req.ancestors)]
    if "abort" in outcomes:
        outcome = "abort"
    elif calls:
        outcome = calls[0]["outcome"] or ("error" if "error" in outcomes else "success")
    else:
        outcome = "error" if "error" in outcomes else "success"
    if engines:
        inp = max((e["input_tokens"] for e in engines if e.get("input_tokens") is not None), default=None)
        outs = [e["output_tokens"] for e in engines if e.get("output_tokens") is not None]
        out = sum(outs) if outs else None  # n > 1: one engine span per sequence
    else:
        inp = out = None
    members = [*calls, *engines]
    row.update(
        trace_id=root["trace_id"],
        request_key=root["span_id"],
        gateway_span_id=root["span_id"] if root["role"] == CALL else None,
        engine_span_id=engines[0]["span_id"] if engines else None,
        engine_request_id=_first(engines, "call_id") or _first(calls, "call_id"),
        model=model,
        model_verified=verified,
        service=service,
        input_tokens=inp if inp is not None else _first(inner_first, "input_tokens"),
        output_tokens=out if out is not None else _first(inner_first, "output_tokens"),
        outcome=outcome,
        finish_reason=_first(inner_first, "finish_reason") or _first(engines, "finish_reason"),
        error_type=_first(calls, "error_type") or _first(engines, "error_type"),
        started_at=min(s["started_at"] for s in members),
        ended_at=max((s["ended_at"] for s in members if s.get("ended_at") is not None), default=None),
        # Settled: nothing that could still arrive would change who or what this request is.
        settled=bool(calls and engines and req.chain_complete),
    )
    for col in _ENGINE_LATENCY:
        row[col] = _first(engines, col)
    if row["ttft_s"] is None:
        row["ttft_s"] = _first(inner_first, "ttft_s")
    if row["e2e_s"] is None:
        row["e2e_s"] = _first(inner_first, "e2e_s")
    return {c: row.get(c) for c in REQUEST_COLUMNS}
