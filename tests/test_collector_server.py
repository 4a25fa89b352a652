"""observer serve with real senders: the OpenTelemetry SDK's OTLP exporter, JSON, gzip, fuzzing,
a database that goes away, both SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import create_engine, text
from support import TcpProxy, observer_server, scrape

pytestmark = pytest.mark.integration


def serve(db_url: str, *args: str, env: dict | None = None):
    return observer_server("serve", "--db", db_url, *args, ready_path="/healthz", env=env)


def make_requests(n: int, secret: str = "", user_prefix: str = "user", department: str = "legal"):
    """Gateway + engine spans for n requests, recorded by the real SDK (children end first)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    gateway = provider.get_tracer("gateway")
    engine = provider.get_tracer("vllm.llm_engine")
    for i in range(n):
        with gateway.start_as_current_span("chat acme/chat-8b", kind=SpanKind.CLIENT) as g:
            g.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "acme/chat-8b",
                    "gen_ai.usage.input_tokens": 100 + i,
                    "gen_ai.usage.output_tokens": 20,
                    "gen_ai.response.finish_reasons": ["stop"],
                    "user.id": f"{user_prefix}-{i % 3}",
                    "department": department,
                }
            )
            if secret:
                g.set_attributes(
                    {
                        "gen_ai.prompt": secret,
                        "gen_ai.input.messages": secret,
                        "gen_ai.output.messages": secret,
                        "gen_ai.completion": secret,
                    }
                )
                g.add_event("gen_ai.user.message", {"content": secret})
            with engine.start_as_current_span("llm_request", kind=SpanKind.SERVER) as e:
                e.set_attributes(
                    {
                        "gen_ai.request.id": f"cmpl-{i}",
                        "gen_ai.usage.prompt_tokens": 100 + i,
                        "gen_ai.usage.completion_tokens": 20,
                        "gen_ai.latency.time_in_queue": 0.01,
                        "gen_ai.latency.time_to_first_token": 0.2,
                        "gen_ai.latency.e2e": 0.8,
                        "gen_ai.latency.time_in_model_prefill": 0.05,
                        "gen_ai.latency.time_in_model_decode": 0.6,
                    }
                )
    spans = memory.get_finished_spans()
    provider.shutdown()
    return spans


def rows(db_url: str) -> list[dict]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        out = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM requests ORDER BY input_tokens"))]
    engine.dispose()
    return out


def wait_counted(base: str, n: float, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = scrape(base + "/metrics")
        if sum(m.get("llm_usage_requests_total", {}).values()) >= n:
            return m
        time.sleep(0.2)
    raise AssertionError(f"usage counter never reached {n}: {m.get('llm_usage_requests_total')}")


def test_sdk_exporter_children_first_then_resend_is_idempotent(db_url):
    spans = make_requests(6)
    with serve(db_url) as (base, _):
        exporter = OTLPSpanExporter(endpoint=base + "/v1/traces")
        engine_spans = [s for s in spans if s.name == "llm_request"]
        gateway_spans = [s for s in spans if s.name != "llm_request"]
        assert exporter.export(engine_spans) == SpanExportResult.SUCCESS  # children arrive first
        assert exporter.export(gateway_spans[:3]) == SpanExportResult.SUCCESS
        assert exporter.export(spans) == SpanExportResult.SUCCESS  # a retry of everything
        assert exporter.export(gateway_spans[3:]) == SpanExportResult.SUCCESS
        exporter.shutdown()
        m = wait_counted(base, 6)
        time.sleep(1.5)  # one more counting cycle: nothing may be counted twice
        m = scrape(base + "/metrics")
        assert m["llm_usage_requests_total"] == {
            (("department", "legal"), ("model", "acme/chat-8b"), ("outcome", "success")): 6.0
        }
        tokens = m["llm_usage_tokens_total"]
        assert tokens[(("department", "legal"), ("direction", "input"), ("model", "acme/chat-8b"))] == sum(
            100 + i for i in range(6)
        )
        assert m["llm_usage_time_to_first_token_seconds_count"][(("model", "acme/chat-8b"),)] == 6
        api = httpx.get(base + "/api/v1/requests", params={"limit": 10}).json()["requests"]
        assert len(api) == 6
    stored = rows(db_url)
    assert len(stored) == 6  # one row per request, not per span, not per send
    for r in stored:
        assert r["gateway_span_id"] and r["engine_span_id"]
        assert (r["model"], r["department"], r["outcome"], r["ttft_s"], r["e2e_s"]) == (
            "acme/chat-8b",
            "legal",
            "success",
            0.2,
            0.8,
        )
        assert r["user_id"].startswith("user-")
        assert r["tpot_s"] == pytest.approx(0.6 / 19)


def _json_payload(spans) -> bytes:
    """The OTLP/JSON encoding (hex ids, integer enums, camelCase) of SDK spans."""
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    data = json_format.MessageToDict(encode_spans(spans))
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        import base64

                        sp[key] = base64.b64decode(sp[key]).hex()
                sp["kind"] = {"SPAN_KIND_CLIENT": 3, "SPAN_KIND_SERVER": 2}.get(sp.get("kind"), 1)
                sp["someFutureField"] = {"ignored": True}  # unknown fields MUST be ignored
    return json.dumps(data).encode()


def test_json_and_gzip_and_error_codes(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    spans = make_requests(2)
    with serve(db) as (base, _):
        body = _json_payload(spans)
        r = httpx.post(
            base + "/v1/traces",
            content=gzip.compress(body),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json() == {}  # full success: partial_success left unset
        # malformed bodies: 400 with a reason, never a 5xx
        for ctype, payload in (
            ("application/x-protobuf", b"\xff\xff\xff garbage"),
            ("application/json", b"{not json"),
            ("application/json", b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}'),
        ):
            r = httpx.post(base + "/v1/traces", content=payload, headers={"Content-Type": ctype})
            assert r.status_code == 400, (payload, r.text)
        r = httpx.post(base + "/v1/traces", content=b"x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        r = httpx.post(
            base + "/v1/traces",
            content=b"\x1f\x8b broken",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 400
        # invalid spans -> partial success, the valid ones kept
        bad = json.loads(_json_payload(make_requests(1)))
        bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "abcd"
        r = httpx.post(base + "/v1/traces", json=bad)
        assert r.status_code == 200
        assert (
            r.json()["partialSuccess"]["rejectedSpans"] == "1"
            or r.json()["partialSuccess"]["rejectedSpans"] == 1
        )
        assert "8 bytes" in r.json()["partialSuccess"]["errorMessage"]
        wait_counted(base, 2)
    assert {r["input_tokens"] for r in rows(db)} >= {100, 101}


def test_body_cap_applies_after_decompression_and_auth(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    env = {
        "OBSERVER_COLLECTOR__MAX_BODY_BYTES": "65536",
        "OBSERVER_COLLECTOR__AUTH_TOKEN": "s3cret",
        "OBSERVER_COLLECTOR__METRICS_TOKEN": "prom",  # with auth on, /metrics needs its own token
    }
    with serve(db, env=env) as (base, _):
        headers = {"Content-Type": "application/x-protobuf", "Authorization": "Bearer s3cret"}
        bomb = gzip.compress(b"\0" * 1_000_000)  # 1 KiB on the wire, 1 MB inflated
        r = httpx.post(base + "/v1/traces", content=bomb, headers={**headers, "Content-Encoding": "gzip"})
        assert r.status_code == 413
        assert httpx.post(base + "/v1/traces", content=b"\0" * 70_000, headers=headers).status_code == 413
        r = httpx.post(base + "/v1/traces", content=b"", headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        exporter = OTLPSpanExporter(endpoint=base + "/v1/traces", headers={"Authorization": "Bearer s3cret"})
        assert exporter.export(make_requests(1)) == SpanExportResult.SUCCESS
        m = scrape(base + "/metrics", {"Authorization": "Bearer prom"})
        assert m["observer_collector_spans_rejected_total"][(("reason", "too_large"),)] == 2
        assert m["observer_collector_spans_rejected_total"][(("reason", "unauthorized"),)] == 1


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'o.db'}"
    with serve(db) as (base, _), httpx.Client(base_url=base, timeout=10) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: (
                st.lists(c, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "resourceSpans",
                            "scopeSpans",
                            "spans",
                            "traceId",
                            "spanId",
                            "name",
                            "attributes",
                            "key",
                            "value",
                            "startTimeUnixNano",
                            "x",
                        ]
                    ),
                    c,
                    max_size=4,
                )
            ),
            max_leaves=30,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    ctype=st.sampled_from(["application/x-protobuf", "application/json"]),
    gz=st.booleans(),
)
def test_fuzzed_bodies_never_get_a_5xx(fuzz_server, body, ctype, gz):
    headers = {"Content-Type": ctype}
    if gz:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    r = fuzz_server.post("/v1/traces", content=body, headers=headers)
    assert r.status_code < 500, r.text


def test_database_down_mid_stream_then_back(pg_url):
    """PostgreSQL unreachable -> 503 + Retry-After; the SDK exporter retries; every request lands once."""
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    proxy.start()
    proxied = pg_url.replace(f":{port}/", f":{proxy.port}/")
    try:
        with serve(proxied, env={"OBSERVER_COLLECTOR__RETRY_AFTER_S": "1"}) as (base, _):
            exporter = OTLPSpanExporter(endpoint=base + "/v1/traces", timeout=30)
            assert exporter.export(make_requests(3, user_prefix="before")) == SpanExportResult.SUCCESS
            proxy.stop()
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            probe = encode_spans(make_requests(1, user_prefix="probe")).SerializeToString()
            r = httpx.post(
                base + "/v1/traces", content=probe, headers={"Content-Type": "application/x-protobuf"}
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert httpx.get(base + "/healthz").status_code == 503
            result: list = []
            sender = threading.Thread(
                target=lambda: result.append(exporter.export(make_requests(4, user_prefix="during")))
            )
            sender.start()  # retries with backoff while the database is away
            time.sleep(2.5)
            proxy.start()
            sender.join(timeout=40)
            assert result == [SpanExportResult.SUCCESS]
            assert exporter.export(make_requests(2, user_prefix="after")) == SpanExportResult.SUCCESS
            exporter.shutdown()
            m = scrape(base + "/metrics")
            assert m["observer_collector_export_requests_total"][(("code", "503"),)] >= 2
            wait_counted(base, 9)
    finally:
        proxy.stop()
    stored = rows(pg_url)
    assert len(stored) == 9
    assert len({(r["trace_id"], r["request_key"]) for r in stored}) == 9
    assert sorted(r["user_id"].split("-")[0] for r in stored).count("during") == 4


def test_sqlite_locked_by_another_process_then_released(tmp_path):
    """A backup holding SQLite's write lock -> 503 + Retry-After; the SDK retries; rows land once."""
    import sqlite3

    db = tmp_path / "o.db"
    env = {"OBSERVER_STORE__SQLITE_BUSY_TIMEOUT_S": "0.3", "OBSERVER_COLLECTOR__RETRY_AFTER_S": "1"}
    with serve(f"sqlite:///{db}", env=env) as (base, _):
        exporter = OTLPSpanExporter(endpoint=base + "/v1/traces", timeout=30)
        assert exporter.export(make_requests(2, user_prefix="before")) == SpanExportResult.SUCCESS
        lock = sqlite3.connect(db, timeout=5, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            probe = encode_spans(make_requests(1, user_prefix="probe")).SerializeToString()
            r = httpx.post(
                base + "/v1/traces", content=probe, headers={"Content-Type": "application/x-protobuf"}
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            result: list = []
            sender = threading.Thread(
                target=lambda: result.append(exporter.export(make_requests(3, user_prefix="during")))
            )
            sender.start()
            time.sleep(2)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        sender.join(timeout=40)
        assert result == [SpanExportResult.SUCCESS]
        wait_counted(base, 5)
    users = sorted(r["user_id"].split("-")[0] for r in rows(f"sqlite:///{db}"))
    assert users == ["before"] * 2 + ["during"] * 3


def test_planted_secret_prompt_is_in_no_file_and_no_log(tmp_path):
    secret = "PLANTED-SECRET-PROMPT-4f2a9c"
    db_file = tmp_path / "o.db"
    with serve(f"sqlite:///{db_file}") as (base, proc):
        exporter = OTLPSpanExporter(endpoint=base + "/v1/traces")
        assert exporter.export(make_requests(3, secret=secret)) == SpanExportResult.SUCCESS
        # and a malformed JSON body carrying it: the 400 reason must not echo it back
        r = httpx.post(
            base + "/v1/traces",
            json={
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {"traceId": "00" * 16, "spanId": "01" * 8, "startTimeUnixNano": secret}
                                ]
                            }
                        ]
                    }
                ]
            },
        )
        assert r.status_code == 400 and secret not in r.text
        wait_counted(base, 3)
        assert secret not in httpx.get(base + "/api/v1/requests").text
        assert secret not in httpx.get(base + "/metrics").text
        exporter.shutdown()
    log = Path(proc.log.name).read_bytes()
    assert secret.encode() not in log
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert len(rows(f"sqlite:///{db_file}")) == 3


def test_pseudonymized_user_ids(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    with serve(db, env={"OBSERVER_COLLECTOR__PSEUDONYMIZE_KEY": "k"}) as (base, _):
        assert (
            OTLPSpanExporter(endpoint=base + "/v1/traces").export(make_requests(3))
            == SpanExportResult.SUCCESS
        )
        wait_counted(base, 3)
    users = {r["user_id"] for r in rows(db)}
    assert len(users) == 3 and all(u.startswith("h:") and "user" not in u for u in users)


def test_departments_beyond_top_n_fold_into_other(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    env = {"OBSERVER_COLLECTOR__TOP_DEPARTMENTS": "1", "OBSERVER_COLLECTOR__DEPARTMENTS": "[finance]"}
    with serve(db, env=env) as (base, _):
        exporter = OTLPSpanExporter(endpoint=base + "/v1/traces")
        for dept in ("legal", "sales", "finance", "hr"):
            assert exporter.export(make_requests(1, department=dept)) == SpanExportResult.SUCCESS
        m = wait_counted(base, 4)
    departments = {dict(k)["department"]: v for k, v in m["llm_usage_requests_total"].items()}
    assert departments == {"legal": 1, "finance": 1, "other": 2}
    assert {r["department"] for r in rows(db)} == {"legal", "sales", "finance", "hr"}  # the store keeps truth


def test_retention_deletes_old_raw_rows(db_url):
    from datetime import datetime, timedelta

    from observer.store.db import Store

    store = Store(db_url)
    store.migrate()
    now = datetime(2026, 11, 1)
    old = {
        "trace_id": "a" * 32,
        "request_key": "b" * 16,
        "gateway_span_id": "b" * 16,
        "started_at": now - timedelta(days=40),
    }
    new = {
        "trace_id": "c" * 32,
        "request_key": "d" * 16,
        "gateway_span_id": "d" * 16,
        "started_at": now - timedelta(days=1),
    }
    store.upsert([old, new], now)
    assert store.delete_older_than(now - timedelta(days=30)) == 1
    assert store.count() == 1
    store.engine.dispose()
