"""OTLP/HTTP trace export decoding and responses, per the OTLP specification.

protobuf (``application/x-protobuf``) and JSON (``application/json``, hex ids, integer enums,
unknown fields ignored), optionally gzip-compressed; the body cap applies after decompression.
Error texts never quote the payload: a malformed body could be somebody's prompt.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
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
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > cap:
            raise OtlpError(413, f"request body over the {cap}-byte limit", "too_large")
        return body
    if encoding != "gzip":
        raise OtlpError(415, f"unsupported Content-Encoding {encoding!r} (gzip only)", "malformed")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, cap + 1)
    except zlib.error:
        raise OtlpError(400, "body is not valid gzip", "malformed") from None
    if len(out) > cap or d.unconsumed_tail:
        raise OtlpError(413, f"request body over the {cap}-byte limit after decompression", "too_large")
    if not d.eof:
        raise OtlpError(400, "gzip stream is truncated", "malformed")
    return out


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
                except ValueError:
                    raise OtlpError(400, f"{key} is not a hex string", "malformed") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def decode(body: bytes, kind: str) -> ExportTraceServiceRequest:
    if kind == PROTOBUF:
        try:
            return ExportTraceServiceRequest.FromString(body)
        except (DecodeError, RuntimeError, ValueError):
            raise OtlpError(
                400, "body is not a valid ExportTraceServiceRequest protobuf", "malformed"
            ) from None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OtlpError(400, f"body is not valid JSON ({type(exc).__name__})", "malformed") from None
    if not isinstance(data, dict):
        raise OtlpError(400, "OTLP JSON body must be an object", "malformed")
    _hex_ids_to_base64(data)
    try:
        return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
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
    code = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}.get(status, 2)  # google.rpc.Code
    if kind == PROTOBUF:
        return status_pb2.Status(code=code, message=message).SerializeToString()
    return json.dumps({"code": code, "message": message}).encode()
