"""Spans -> request records: the mapping, the join rules, privacy by construction."""

import random
from itertools import permutations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from observer.collector.mapping import MappingRules, merge_partials, pseudonymize, span_to_partial

RULES = MappingRules(("department", "team"))
TRACE = bytes(range(16))
GW_ID, ENGINE_ID = b"\x01" * 8, b"\x02" * 8
T0 = 1_790_000_000_000_000_000


def kv(key, value):
    if isinstance(value, list):
        return KeyValue(
            key=key, value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
        )
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def gateway_span(**extra):
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "acme/chat-8b",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 40,
        "gen_ai.response.finish_reasons": ["stop"],
        "user.id": "alice@example.com",
        "department": "legal",
        "session.id": "s-1",
        **extra,
    }
    return Span(
        trace_id=TRACE,
        span_id=GW_ID,
        name="chat acme/chat-8b",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 2_500_000_000,
        attributes=[kv(k, v) for k, v in attrs.items()],
    )


def engine_span(parent=GW_ID):
    attrs = {
        "gen_ai.request.id": "cmpl-1",
        "gen_ai.usage.prompt_tokens": 121,
        "gen_ai.usage.completion_tokens": 41,
        "gen_ai.latency.time_in_queue": 0.5,
        "gen_ai.latency.time_to_first_token": 0.9,
        "gen_ai.latency.e2e": 2.3,
        "gen_ai.latency.time_in_model_prefill": 0.3,
        "gen_ai.latency.time_in_model_decode": 1.4,
    }
    return Span(
        trace_id=TRACE,
        span_id=ENGINE_ID,
        parent_span_id=parent or b"",
        name="llm_request",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=T0 + 100_000_000,
        end_time_unix_nano=T0 + 2_400_000_000,
        attributes=[kv(k, v) for k, v in attrs.items()],
    )


def test_engine_span_maps_vllm_attributes():
    r = span_to_partial(engine_span(), {}, RULES)
    assert r["request_key"] == GW_ID.hex()  # keyed by its gateway parent
    assert (r["input_tokens"], r["output_tokens"]) == (121, 41)
    assert (r["queue_s"], r["ttft_s"], r["prefill_s"], r["decode_s"], r["e2e_s"]) == (0.5, 0.9, 0.3, 1.4, 2.3)
    assert r["tpot_s"] == 1.4 / 40
    assert r["model"] is None and r["outcome"] is None  # vLLM V1 sets neither


def test_gateway_span_maps_genai_conventions():
    r = span_to_partial(gateway_span(), {}, RULES)
    assert r["request_key"] == GW_ID.hex() and r["gateway_span_id"] == GW_ID.hex()
    assert (r["model"], r["user_id"], r["department"], r["session_id"]) == (
        "acme/chat-8b",
        "alice@example.com",
        "legal",
        "s-1",
    )
    assert (r["outcome"], r["finish_reason"], r["e2e_s"]) == ("success", "stop", 2.5)


def test_halves_merge_to_one_record_in_any_order():
    parts = [span_to_partial(gateway_span(), {}, RULES), span_to_partial(engine_span(), {}, RULES)]
    results = []
    for order in permutations(parts):
        merged = order[0]
        for p in order[1:]:
            merged = merge_partials(merged, p)
        merged = merge_partials(merged, order[0])  # a re-sent half changes nothing
        results.append(merged)
    assert results[0] == results[1]
    r = results[0]
    assert r["model"] == "acme/chat-8b" and r["department"] == "legal"  # from the gateway
    assert r["input_tokens"] == 121 and r["e2e_s"] == 2.3 and r["ttft_s"] == 0.9  # from the engine
    assert r["gateway_span_id"] == GW_ID.hex() and r["engine_span_id"] == ENGINE_ID.hex()


def test_engine_without_parent_is_its_own_request_and_gateway_alone_is_a_request():
    r = span_to_partial(engine_span(parent=None), {}, RULES)
    assert r["request_key"] == ENGINE_ID.hex()
    g = span_to_partial(gateway_span(**{"gen_ai.provider.name": "openai"}), {}, RULES)
    assert g.get("engine_span_id") is None and g["outcome"] == "success"


def test_outcomes():
    assert span_to_partial(gateway_span(**{"error.type": "timeout"}), {}, RULES)["outcome"] == "error"
    assert span_to_partial(gateway_span(**{"error.type": "cancelled"}), {}, RULES)["outcome"] == "abort"
    s = gateway_span()
    s.status.code = Status.STATUS_CODE_ERROR
    assert span_to_partial(s, {}, RULES)["outcome"] == "error"


def test_department_from_other_keys_and_resource():
    s = gateway_span()
    del s.attributes[6]  # department
    assert span_to_partial(s, {"team": "platform"}, RULES)["department"] == "platform"


def test_non_llm_spans_are_ignored():
    s = Span(
        trace_id=TRACE,
        span_id=GW_ID,
        name="GET /health",
        start_time_unix_nano=T0,
        attributes=[kv("http.method", "GET")],
    )
    assert span_to_partial(s, {}, RULES) is None


def test_content_attributes_are_never_read():
    secret = "TOP-SECRET-PROMPT-" + str(random.random())
    s = gateway_span(
        **{
            "gen_ai.prompt": secret,
            "gen_ai.input.messages": secret,
            "gen_ai.completion": secret,
            "gen_ai.output.messages": secret,
            "gen_ai.system_instructions": secret,
        }
    )
    s.events.add(name="gen_ai.content.prompt", attributes=[kv("gen_ai.prompt", secret)])
    r = span_to_partial(s, {}, RULES)
    assert secret not in repr(r)


def test_pseudonymization_is_keyed_and_stable():
    a = pseudonymize("alice", b"k1")
    assert a == pseudonymize("alice", b"k1") and a != pseudonymize("alice", b"k2")
    assert "alice" not in a and a.startswith("h:")
    r = span_to_partial(gateway_span(), {}, MappingRules(("department",), b"key"))
    assert r["user_id"] == pseudonymize("alice@example.com", b"key")
