"""Spans -> span records -> request records: the mapping, the trace-level join, privacy by construction."""

import random
from itertools import permutations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from observer.collector.join import resolve, to_row
from observer.collector.mapping import MappingRules, pseudonymize, span_to_record

RULES = MappingRules(department_attributes=("department", "team"))
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


def record(span, resource=None, rules=RULES):
    rec, dropped = span_to_record(span, resource or {}, rules)
    assert dropped == []
    return rec


def span(span_id, parent=None, name="op", trace=TRACE, **attrs):
    return Span(
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent or b"",
        name=name,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 1_000_000_000,
        attributes=[kv(k, v) for k, v in attrs.items()],
    )


def rows_of(spans):
    return [to_row(r) for r in resolve([record(s) for s in spans])]


def test_engine_span_maps_vllm_attributes():
    r = record(engine_span())
    assert r["role"] == "engine" and r["parent_span_id"] == GW_ID.hex() and r["call_id"] == "cmpl-1"
    assert (r["input_tokens"], r["output_tokens"]) == (121, 41)
    assert (r["queue_s"], r["ttft_s"], r["prefill_s"], r["decode_s"], r["e2e_s"]) == (0.5, 0.9, 0.3, 1.4, 2.3)
    assert r["tpot_s"] == 1.4 / 40
    assert r["model"] is None and r["outcome"] is None  # vLLM V1 sets neither


def test_gateway_span_maps_genai_conventions():
    r = record(gateway_span())
    assert r["role"] == "call"
    assert (r["model"], r["user_id"], r["department"], r["session_id"]) == (
        "acme/chat-8b",
        "alice@example.com",
        "legal",
        "s-1",
    )
    assert (r["outcome"], r["finish_reason"], r["e2e_s"]) == ("success", "stop", 2.5)


def test_halves_join_to_one_request_in_any_order_and_resend():
    parts = [gateway_span(), engine_span()]
    results = [rows_of([*order, order[0]]) for order in permutations(parts)]
    assert results[0] == results[1] and len(results[0]) == 1
    r = results[0][0]
    assert r["model"] == "acme/chat-8b" and r["department"] == "legal"  # from the call
    assert r["input_tokens"] == 121 and r["e2e_s"] == 2.3 and r["ttft_s"] == 0.9  # from the engine
    assert r["gateway_span_id"] == GW_ID.hex() and r["engine_span_id"] == ENGINE_ID.hex()
    assert r["settled"] and r["model_verified"]  # an engine served the name the caller asked for


def test_engine_without_parent_is_its_own_request_and_gateway_alone_is_a_request():
    (r,) = rows_of([engine_span(parent=None)])
    assert r["request_key"] == ENGINE_ID.hex() and r["model"] is None and not r["settled"]
    (g,) = rows_of([gateway_span(**{"gen_ai.provider.name": "openai"})])
    assert g["engine_span_id"] is None and g["outcome"] == "success" and not g["model_verified"]


# The shape the OpenAI SDK with openai-v2 + httpx instrumentation gives (real-clients.md): the app's
# request span carries the user, the GenAI span the model, an HTTP client span sits before the engine.
APP, CHAT, HTTP, ENGINE = b"\x0a" * 8, b"\x0b" * 8, b"\x0c" * 8, b"\x0d" * 8


def sdk_trace(engine_parent=HTTP, user_on="app"):
    app = span(
        APP, name="POST /ask", **({"user.id": "bob", "department": "sales"} if user_on == "app" else {})
    )
    chat = span(
        CHAT,
        APP,
        name="chat acme/chat-8b",
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "acme/chat-8b",
            "gen_ai.response.model": "acme/chat-8b",
            "gen_ai.response.id": "chatcmpl-7",
            "gen_ai.response.finish_reasons": ["stop"],
        },
    )
    http = span(HTTP, CHAT, name="POST", **{"http.request.method": "POST"})
    engine = span(
        ENGINE,
        engine_parent,
        name="llm_request",
        **{
            "gen_ai.request.id": "chatcmpl-7",
            "gen_ai.usage.prompt_tokens": 30,
            "gen_ai.usage.completion_tokens": 12,
            "gen_ai.latency.e2e": 0.4,
            "gen_ai.latency.time_to_first_token": 0.1,
        },
    )
    return [app, chat, http, engine]


def test_engine_joins_its_nearest_call_ancestor_through_http_spans_in_any_order():
    spans = sdk_trace()
    expected = rows_of(spans)
    assert len(expected) == 1
    r = expected[0]
    assert (r["request_key"], r["engine_span_id"]) == (CHAT.hex(), ENGINE.hex())
    assert (r["user_id"], r["department"], r["model"]) == ("bob", "sales", "acme/chat-8b")
    assert (r["input_tokens"], r["output_tokens"], r["finish_reason"]) == (30, 12, "stop")
    assert r["settled"]
    for order in permutations(spans):
        assert rows_of(list(order)) == expected


def test_until_the_http_span_arrives_the_response_id_joins_and_without_it_two_unsettled_rows():
    app, chat, _http, engine = sdk_trace()
    (joined,) = rows_of([app, chat, engine])
    assert joined["engine_span_id"] == ENGINE.hex() and joined["user_id"] == "bob"
    engine.attributes[0].value.string_value = "chatcmpl-other"
    rows = rows_of([app, chat, engine])
    assert len(rows) == 2 and not any(r["settled"] for r in rows)


def test_engine_in_a_trace_of_its_own_joins_by_response_id():
    app, chat, http, _ = sdk_trace()
    orphan = sdk_trace(engine_parent=None)[3]
    orphan.trace_id = bytes(range(16, 32))
    (r,) = rows_of([app, chat, http, orphan])
    assert r["trace_id"] == TRACE.hex() and r["engine_span_id"] == ENGINE.hex() and r["user_id"] == "bob"


def test_nested_calls_collapse_and_gateway_keys_give_user_and_team():
    """App SDK call -> LiteLLM's litellm_request -> engine: one request, LiteLLM's user and team."""
    litellm = span(
        b"\x0e" * 8,
        HTTP,
        name="litellm_request",
        **{
            "gen_ai.request.model": "acme/chat-8b",
            "gen_ai.usage.input_tokens": 30,
            "gen_ai.usage.output_tokens": 12,
            "gen_ai.response.finish_reasons": '["length"]',  # LiteLLM sends a JSON-encoded string
            "llm.user": "carol",
            "metadata.user_api_key_team_alias": "research",
        },
    )
    app, chat, http, engine = sdk_trace(engine_parent=b"\x0e" * 8, user_on=None)
    rules = MappingRules()  # the defaults: LiteLLM's keys included
    recs = [span_to_record(s, {}, rules)[0] for s in (app, chat, http, litellm, engine)]
    (r,) = [to_row(x) for x in resolve(recs)]
    assert r["request_key"] == CHAT.hex()  # the outermost call is the request
    assert (r["user_id"], r["department"], r["finish_reason"]) == ("carol", "research", "length")


def test_an_abort_anywhere_makes_the_request_an_abort():
    app, chat, http, engine = sdk_trace()
    http.attributes.append(kv("error.type", "cancelled"))
    (r,) = rows_of([app, chat, http, engine])
    assert r["outcome"] == "abort"


def test_parent_loops_do_not_hang():
    a = span(b"\x01" * 8, b"\x02" * 8, **{"gen_ai.request.model": "m"})
    b = span(b"\x02" * 8, b"\x01" * 8, **{"gen_ai.request.model": "m"})
    assert len(rows_of([a, b])) >= 1


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(8)), st.lists(st.integers(0, 7), max_size=4))
def test_join_is_order_and_resend_independent(order, resends):
    """Two requests' spans, in any order, some sent twice: always the same rows."""
    spans = sdk_trace()
    other = sdk_trace()
    for s in other:
        s.trace_id = bytes(range(32, 48))
    both = spans + other
    expected = rows_of(both)
    shuffled = [both[i] for i in order] + [both[i] for i in resends]
    assert rows_of(shuffled) == expected and len(expected) == 2


def test_outcomes():
    assert record(gateway_span(**{"error.type": "timeout"}))["outcome"] == "error"
    assert record(gateway_span(**{"error.type": "cancelled"}))["outcome"] == "abort"
    s = gateway_span()
    s.status.code = Status.STATUS_CODE_ERROR
    assert record(s)["outcome"] == "error"


def test_department_from_other_keys_and_resource():
    s = gateway_span()
    del s.attributes[6]  # department
    assert record(s, {"team": "platform"})["department"] == "platform"


def test_other_spans_are_links_that_keep_only_place_and_identity():
    s = span(GW_ID, name="GET /health", **{"http.method": "GET", "user.id": "dave"})
    r = record(s)
    assert r["role"] == "link" and r["user_id"] == "dave" and r["model"] is None
    agent = span(GW_ID, **{"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "m"})
    assert record(agent)["role"] == "link"  # an agent contains calls, it is not one


def test_hostile_numbers_are_dropped_not_fatal():
    s = gateway_span(**{"gen_ai.usage.input_tokens": float("inf"), "gen_ai.usage.output_tokens": -5})
    rec, dropped = span_to_record(s, {}, RULES)
    assert rec["input_tokens"] is None and rec["output_tokens"] is None
    assert sorted(dropped) == ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"]
    e = engine_span()
    e.attributes.append(kv("gen_ai.usage.prompt_tokens", 2**40))
    e.attributes.append(kv("gen_ai.latency.e2e", float("nan")))
    rec, dropped = span_to_record(e, {}, RULES)
    assert rec["e2e_s"] is None and "gen_ai.latency.e2e" in dropped


def test_nul_and_control_characters_never_reach_the_store():
    r = record(gateway_span(department="le\x00gal\x1b", **{"user.id": "a\x00b"}))
    assert (r["department"], r["user_id"]) == ("legal", "ab")


def test_content_attributes_are_never_read():
    secret = "TOP-SECRET-PROMPT-" + str(random.random())
    s = gateway_span(
        **{
            "gen_ai.prompt": secret,
            "gen_ai.input.messages": secret,
            "gen_ai.completion": secret,
            "gen_ai.output.messages": secret,
            "gen_ai.system_instructions": secret,
            "llm.openai.messages": secret,
        }
    )
    s.events.add(name="gen_ai.content.prompt", attributes=[kv("gen_ai.prompt", secret)])
    assert secret not in repr(record(s))


def test_pseudonymization_is_keyed_and_stable_whatever_the_source():
    a = pseudonymize("alice", b"k1")
    assert a == pseudonymize("alice", b"k1") and a != pseudonymize("alice", b"k2")
    assert "alice" not in a and a.startswith("h:")
    rules = MappingRules(pseudonymize_key=b"key")
    assert record(gateway_span(), rules=rules)["user_id"] == pseudonymize("alice@example.com", b"key")
    litellm = gateway_span(**{"user.id": "", "llm.user": "erin"})
    assert record(litellm, rules=rules)["user_id"] == pseudonymize("erin", b"key")
