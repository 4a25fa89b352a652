"""OTLP/HTTP trace export decoding and responses, per the OTLP specification.

protobuf (``application/x-protobuf``) and JSON (``application/json``, hex ids, integer enums,
unknown fields ignored), optionally gzip-compressed; the body cap applies after decompression.
Error texts never quote the payload: a malformed body could be somebody's prompt.

Parse cost is bounded before the expensive step: :class:`BodyReader` inflates gzip incrementally
with an output cap, the span count of a protobuf body is read from the wire format before the full
decode (:func:`count_spans`), and JSON nesting is checked without recursion (:func:`check_depth`).
:data:`LIMITS` holds the limits; ``observer serve`` sets them from its settings at start.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'')


class OtlpError(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


@dataclass
class DecodeLimits:
    max_spans: int = 20_000
    max_json_depth: int = 64
    # protobuf's JSON mapping converts ~30k objects/s in pure Python: 700k `{}` took 24 s of GIL
    max_json_nodes: int = 100_000


LIMITS = DecodeLimits()


def configure(max_spans: int, max_json_depth: int, max_json_nodes: int = 100_000) -> None:
    LIMITS.max_spans, LIMITS.max_json_depth, LIMITS.max_json_nodes = max_spans, max_json_depth, max_json_nodes


class BodyReader:
    """Accumulates a request body chunk by chunk, inflating gzip as it arrives, never past ``cap``.

    ``feed`` returns how many decompressed bytes the chunk added, so the caller can charge them to
    its memory budget before the next chunk is read; a gzip bomb stops at cap + 1 inflated bytes.
    """

    def __init__(self, encoding: str | None, cap: int) -> None:
        encoding = (encoding or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise OtlpError(415, f"unsupported Content-Encoding {encoding!r} (gzip only)", "malformed")
        self.cap = cap
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        self._parts: list[bytes] = []
        self.size = 0

    def _too_large(self) -> OtlpError:
        after = " after decompression" if self._inflate is not None else ""
        return OtlpError(413, f"request body over the {self.cap}-byte limit{after}", "too_large")

    def feed(self, chunk: bytes) -> int:
        if self._inflate is None:
            out = chunk
        else:
            if self._inflate.eof:
                if chunk:
                    raise OtlpError(400, "data after the end of the gzip stream", "malformed")
                return 0
            try:
                out = self._inflate.decompress(chunk, self.cap - self.size + 1)
            except zlib.error:
                raise OtlpError(400, "body is not valid gzip", "malformed") from None
            if self._inflate.unconsumed_tail:
                raise self._too_large()
        self.size += len(out)
        if self.size > self.cap:
            raise self._too_large()
        if out:
            self._parts.append(out)
        return len(out)

    def finish(self) -> bytes:
        if self._inflate is not None and not self._inflate.eof:
            raise OtlpError(400, "gzip stream is truncated", "malformed")
        body = b"".join(self._parts)
        self._parts = []
        return body


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise OtlpError(400, "body is not a valid ExportTraceServiceRequest protobuf", "malformed")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int, budget: list[int]):
    """(field number, start, end) of each length-delimited field in buf[start:end]; others skipped."""
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise OtlpError(413, "too many messages in one request", "too_large")
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise OtlpError(400, "body is not a valid ExportTraceServiceRequest protobuf", "malformed")
            yield key >> 3, pos, pos + length
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise OtlpError(400, "body is not a valid ExportTraceServiceRequest protobuf", "malformed")


def count_spans(body: bytes, limit: int) -> int:
    """Spans in a protobuf ExportTraceServiceRequest, read from the wire without decoding them.

    Walks request -> resource_spans (field 1) -> scope_spans (field 2) -> spans (field 2) and stops
    with 413 past ``limit`` spans or past a few times that many fields (filler between the spans);
    a full decode of millions of tiny messages would take ~90 bytes of memory per wire byte.
    """
    spans = 0
    budget = [4 * limit + 10_000]
    for field, rs_start, rs_end in _fields(body, 0, len(body), budget):
        if field != 1:
            continue
        for f2, ss_start, ss_end in _fields(body, rs_start, rs_end, budget):
            if f2 != 2:
                continue
            for f3, _, _ in _fields(body, ss_start, ss_end, budget):
                if f3 == 2:
                    spans += 1
                    if spans > limit:
                        raise OtlpError(413, f"more than {limit} spans in one request", "too_large")
    return spans


def check_depth(data: Any, limit: int, max_nodes: int | None = None) -> None:
    """Nesting deeper than ``limit`` (400), or more than ``max_nodes`` objects and arrays (413), is
    refused before anything recursive or slow walks the document."""
    stack = [(data, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            raise OtlpError(413, f"more than {max_nodes} JSON objects and arrays in one request", "too_large")
        if depth > limit:
            raise OtlpError(400, f"JSON nested deeper than {limit} levels", "malformed")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))


def _json_spans(data: dict[str, Any]) -> int:
    def items(node: Any, *keys: str) -> list[Any]:
        for key in keys:
            if isinstance(node.get(key), list):
                return node[key]
        return []

    n = 0
    for rs in items(data, "resourceSpans", "resource_spans"):
        if isinstance(rs, dict):
            for ss in items(rs, "scopeSpans", "scope_spans"):
                if isinstance(ss, dict):
                    n += len(items(ss, "spans"))
    return n


def media_type(content_type: str | None) -> str:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if kind == JSON:
        return JSON
    raise OtlpError(
        415, f"unsupported Content-Type {kind or '(none)'!r}: use {PROTOBUF} or {JSON}", "malformed"
    )


def decompress(body: bytes, encoding: str | None, cap: int) -> bytes:
    """A whole body at once (see :class:`BodyReader` for the streaming form)."""
    reader = BodyReader(encoding, cap)
    reader.feed(body)
    return reader.finish()


def _hex_ids_to_base64(root: Any) -> None:
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_FIELDS and isinstance(value, str):
                    try:
                        node[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
                    except ValueError:
                        raise OtlpError(400, f"{key} is not a hex string", "malformed") from None
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))


def decode(body: bytes, kind: str) -> ExportTraceServiceRequest:
    if kind == PROTOBUF:
        count_spans(body, LIMITS.max_spans)
        try:
            return ExportTraceServiceRequest.FromString(body)
        except (DecodeError, RuntimeError, ValueError, RecursionError):
            raise OtlpError(
                400, "body is not a valid ExportTraceServiceRequest protobuf", "malformed"
            ) from None
    try:
        data = json.loads(body)
    except RecursionError:
        raise OtlpError(400, f"JSON nested deeper than {LIMITS.max_json_depth} levels", "malformed") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OtlpError(400, f"body is not valid JSON ({type(exc).__name__})", "malformed") from None
    if not isinstance(data, dict):
        raise OtlpError(400, "OTLP JSON body must be an object", "malformed")
    check_depth(data, LIMITS.max_json_depth, LIMITS.max_json_nodes)
    if _json_spans(data) > LIMITS.max_spans:
        raise OtlpError(413, f"more than {LIMITS.max_spans} spans in one request", "too_large")
    _hex_ids_to_base64(data)
    try:
        return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, RecursionError) as exc:
        # json_format quotes offending values; they could be content, so quotes are blanked.
        reason = _QUOTED.sub("'…'", str(exc).splitlines()[0])[:300]
        raise OtlpError(400, f"invalid OTLP JSON: {reason}", "malformed") from None


def success_body(kind: str, rejected: int = 0, message: str = "") -> bytes:
    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if kind == PROTOBUF:
        return resp.SerializeToString()
    return json.dumps(json_format.MessageToDict(resp)).encode()


def error_body(kind: str, status: int, message: str) -> bytes:
    code = {400: 3, 401: 16, 403: 7, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}.get(
        status, 2
    )  # google.rpc.Code
    if kind == PROTOBUF:
        return status_pb2.Status(code=code, message=message).SerializeToString()
    return json.dumps({"code": code, "message": message}).encode()
