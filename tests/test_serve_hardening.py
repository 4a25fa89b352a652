"""`observer serve` under attack (issue 13): auth, secrets, body and parse limits, memory, slow clients,
bad values, CSV injection, forged webhooks, rollup ranges. Every check runs against a real server
process; memory is the server's own RSS high-water mark (/proc/<pid>/status VmHWM)."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import insert
from support import observer_cmd, observer_server

from observer.alerting.webhook import fingerprint
from observer.analytics.rollup import Rollups
from observer.store.db import Store
from observer.store.models import Request

pytestmark = pytest.mark.integration

TOKENS = {"write": "w-token", "read": "r-token", "metrics": "m-token", "webhook": "h-token"}
ALL_TOKENS = {
    "OBSERVER_COLLECTOR__AUTH_TOKEN": TOKENS["write"],
    "OBSERVER_COLLECTOR__READ_TOKEN": TOKENS["read"],
    "OBSERVER_COLLECTOR__METRICS_TOKEN": TOKENS["metrics"],
    "OBSERVER_COLLECTOR__WEBHOOK_TOKEN": TOKENS["webhook"],
}
PB = {"Content-Type": "application/x-protobuf"}


def serve(tmp_path: Path, env: dict[str, str] | None = None, *args: str):
    return observer_server(
        "serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", *args, ready_path="/healthz", env=env
    )


def bearer(kind: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[kind]}"}


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def otlp_requests(departments: list[str], start: datetime | None = None) -> bytes:
    """One gateway span with its engine child per department: one stored request each."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    t0 = int((start or datetime.now(UTC)).timestamp() * 1e9)
    for i, dept in enumerate(departments):
        trace_id = (time.time_ns() + i).to_bytes(16, "big")
        gw = Span(
            trace_id=trace_id,
            span_id=(1000 + i).to_bytes(8, "big"),
            name="chat acme/chat-8b",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=t0,
            end_time_unix_nano=t0 + 1_000_000_000,
        )
        gw.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", "acme/chat-8b"),
                _kv("gen_ai.usage.input_tokens", 10),
                _kv("gen_ai.usage.output_tokens", 5),
                _kv("user.id", f"user-{i}"),
                _kv("department", dept),
            ]
        )
        engine = Span(
            trace_id=trace_id,
            span_id=(5000 + i).to_bytes(8, "big"),
            parent_span_id=gw.span_id,
            name="llm_request",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=t0 + 1_000_000,
            end_time_unix_nano=t0 + 900_000_000,
        )
        engine.attributes.extend(
            [
                _kv("gen_ai.request.id", f"cmpl-{trace_id.hex()}"),
                _kv("gen_ai.usage.prompt_tokens", 10),
                _kv("gen_ai.usage.completion_tokens", 5),
            ]
        )
        ss.spans.extend([gw, engine])
    return req.SerializeToString()


def peak_rss_mib(pid: int) -> float:
    """The process' RSS high-water mark since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def alert(status: str, labels: dict[str, str], ends: str = "0001-01-01T00:00:00Z", **extra) -> dict:
    body = {
        "status": status,
        "labels": labels,
        "annotations": {},
        "startsAt": "2026-01-01T10:00:00Z",
        "endsAt": ends,
        "fingerprint": fingerprint(labels),
    }
    body.update(extra)
    return {"version": "4", "status": status, "receiver": "observer", "alerts": [body]}


# --- auth ---------------------------------------------------------------------------------------


def test_every_endpoint_but_health_needs_its_own_token(tmp_path):
    routes = [
        ("POST", "/v1/traces", "write", {"content": otlp_requests(["eng"]), "headers": PB}),
        ("POST", "/api/v1/feedback", "write", {"json": {"trace_id": "t", "rating": "up"}}),
        ("GET", "/api/v1/requests", "read", {}),
        ("GET", "/api/v1/analytics/summary", "read", {}),
        ("GET", "/api/v1/analytics/departments?format=csv", "read", {}),
        ("GET", "/api/v1/alerts", "read", {}),
        ("GET", "/metrics", "metrics", {}),
        ("POST", "/api/v1/alerts/webhook", "webhook", {"json": alert("firing", {"alertname": "A"})}),
    ]
    with serve(tmp_path, ALL_TOKENS) as (base, _), httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/healthz").status_code == 200  # liveness probes carry no token
        for method, path, needed, kwargs in routes:
            headers = kwargs.pop("headers", {})
            for kind in TOKENS:
                r = client.request(method, path, headers={**headers, **bearer(kind)}, **kwargs)
                if kind == needed:
                    assert r.status_code < 300, (path, kind, r.status_code, r.text)
                else:
                    assert r.status_code == 401, (path, kind, r.status_code)
            r = client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        # A bad query parameter is not validated (and not described) before the caller is known.
        assert client.get("/api/v1/requests?limit=-5").status_code == 401


def test_a_write_token_alone_closes_reads_and_metrics_instead_of_opening_them(tmp_path):
    env = {"OBSERVER_COLLECTOR__AUTH_TOKEN": TOKENS["write"]}
    with serve(tmp_path, env) as (base, proc), httpx.Client(base_url=base, timeout=10) as client:
        for path in ("/api/v1/requests", "/api/v1/analytics/summary", "/api/v1/alerts", "/metrics"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=bearer("write")).status_code == 401, path
        # Without a webhook token, Alertmanager uses the write token.
        r = client.post(
            "/api/v1/alerts/webhook", json=alert("firing", {"alertname": "A"}), headers=bearer("write")
        )
        assert r.status_code == 200
    assert "those endpoints answer 401" in proc.output()


def _refused(env: dict[str, str], *args: str) -> str:
    """Run `observer serve` expecting it to refuse to start; returns its output."""
    out = subprocess.run(
        observer_cmd("serve", "--listen", "127.0.0.1:9", *args),
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0, out
    return out.stdout + out.stderr


def test_empty_numeric_and_comment_cut_tokens_refuse_to_start_without_echoing_them(tmp_path):
    # An unset ${VAR} gives "": that used to mean "no auth" silently.
    assert "auth_token" in _refused(
        {"OBSERVER_COLLECTOR__READ_TOKEN": "r", "OBSERVER_COLLECTOR__AUTH_TOKEN": ""}
    )
    assert "metrics_token" in _refused({"OBSERVER_COLLECTOR__METRICS_TOKEN": "  "})
    assert "auth_token" in _refused({}, "--auth-token", "")
    numeric = tmp_path / "numeric.yaml"
    numeric.write_text("collector:\n  auth_token: 98765432123\n")
    text = _refused({"OBSERVER_CONFIG": str(numeric)})
    assert "auth_token" in text and "98765432123" not in text
    cut = tmp_path / "cut.yaml"
    cut.write_text("collector:\n  webhook_token: Zq9ab #x7Kp\n")
    text = _refused({"OBSERVER_CONFIG": str(cut)})
    assert "webhook_token" in text and "' #'" in text and "Zq9ab" not in text and "x7Kp" not in text


def test_a_token_from_the_environment_is_taken_verbatim(tmp_path):
    env = {"OBSERVER_COLLECTOR__AUTH_TOKEN": "0123", "OBSERVER_COLLECTOR__READ_TOKEN": "a#b"}
    with serve(tmp_path, env) as (base, _):
        assert httpx.get(base + "/api/v1/alerts", headers={"Authorization": "Bearer a#b"}).status_code == 200
        r = httpx.post(
            base + "/api/v1/feedback",
            json={"trace_id": "t", "rating": 1},
            headers={"Authorization": "Bearer 0123"},
        )
        assert r.status_code == 201  # YAML would have read 0123 as the number 83


def test_database_password_is_never_printed(tmp_path):
    url = "postgresql://observer:hunter2secret@127.0.0.1:9/observer"
    proc = subprocess.Popen(
        observer_cmd("serve", "--listen", f"127.0.0.1:{_free_port()}", "--db", url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # start, fail to reach the database, log the retry
            lines.append(line)
            if "will retry" in line or len(lines) > 50:
                break
    finally:
        proc.terminate()
        lines.append(proc.communicate(timeout=20)[0])
    output = "".join(lines)
    assert "observer:***@127.0.0.1" in output and "hunter2secret" not in output
    bad = _refused({"OBSERVER_STORE__RETENTION_DAYS": "postgresql://u:hunter2secret@h/db"})
    assert "hunter2secret" not in bad and "retention_days" in bad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- bodies, parse cost, bad values ------------------------------------------------------------------


def test_bodies_are_capped_on_every_endpoint_and_bad_values_get_4xx(tmp_path):
    big = {"alerts": [], "padding": "x" * (2 * 1024 * 1024)}  # the API cap is 1 MiB

    def chunked(data: bytes):  # no Content-Length: the cap must hold while streaming
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    with serve(tmp_path) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        for path in ("/api/v1/alerts/webhook", "/api/v1/feedback"):
            assert client.post(path, json=big).status_code == 413, path
            r = client.post(
                path, content=chunked(json.dumps(big).encode()), headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 413, path
            deep = b"[" * 100_000 + b"]" * 100_000
            assert client.post(path, content=deep).status_code == 400, path
        deep_otlp = b'{"resourceSpans":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        r = client.post("/v1/traces", content=deep_otlp, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "deeper" in r.json()["message"]
        # AnyValue nesting inside a valid document: a kvlist 200 levels deep.
        value: dict = {"stringValue": "x"}
        for _ in range(200):
            value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
        doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "a", "value": value}]}}]}
        r = client.post("/v1/traces", json=doc)
        assert r.status_code == 400
        # A gzip bomb stops at the cap while inflating (39 KiB on the wire, 40 MiB inflated).
        bomb = gzip.compress(b'{"resourceSpans":[' + b"{}," * 14_000_000 + b"{}]}")
        assert len(bomb) < 100_000
        r = client.post(
            "/v1/traces",
            content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 413
        # Feedback with a rating that is not a scalar, NUL in ids; odd dates and formats.
        for body in (
            {"trace_id": "t", "rating": []},
            {"trace_id": "t", "rating": {}},
            {"trace_id": "a\x00b", "rating": "up"},
            {"trace_id": "t", "rating": "up", "reason": ["wrong"]},
            [1],
        ):
            assert client.post("/api/v1/feedback", json=body).status_code == 400, body
        for query in (
            "date=9999-12-31",
            "date=0001-01-01",
            "date=2024-1-1",
            "date=+12024-01-01",
            "format=xml",
            "date=1970-01-01",
            "window_days=100000",
            "date=%00",
        ):
            for path in (
                "/api/v1/analytics/summary",
                "/api/v1/analytics/cost",
                "/api/v1/analytics/departments",
                "/api/v1/analytics/cohorts",
            ):
                if query.startswith("format") and path.endswith(("summary", "cost")):
                    continue  # no such parameter there
                if query.startswith("window") and path.endswith(("summary", "cohorts")):
                    continue
                r = client.get(f"{path}?{query}")
                assert 400 <= r.status_code < 500, (path, query, r.status_code)
        assert client.get("/api/v1/requests", params={"department": "a\x00b"}).status_code == 400
        tomorrow = (date.today() + timedelta(days=1)).isoformat()
        assert client.get("/api/v1/analytics/summary", params={"date": tomorrow}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_forged_or_impossible_alert_notifications_are_refused(tmp_path):
    env = {
        "OBSERVER_COLLECTOR__WEBHOOK_TOKEN": TOKENS["webhook"],
        "OBSERVER_COLLECTOR__READ_TOKEN": TOKENS["read"],
    }
    labels = {"alertname": "LLMEngineDown", "severity": "critical", "instance": "gpu-1"}
    with (
        serve(tmp_path, env) as (base, _),
        httpx.Client(base_url=base, timeout=10, headers=bearer("webhook")) as c,
    ):
        assert c.post("/api/v1/alerts/webhook", json=alert("firing", labels)).status_code == 200
        now = datetime.now(UTC)
        ended = (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        future = (now + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
        forged = [
            httpx.post(base + "/api/v1/alerts/webhook", json=alert("resolved", labels, ended)),  # no token
            c.post(
                "/api/v1/alerts/webhook",
                json=alert("resolved", {**labels, "instance": "x"}, ended, fingerprint=fingerprint(labels)),
            ),
            c.post("/api/v1/alerts/webhook", json=alert("resolved", labels)),  # resolved without an end
            c.post(
                "/api/v1/alerts/webhook", json=alert("resolved", labels, "2025-01-01T00:00:00Z")
            ),  # before start
            c.post("/api/v1/alerts/webhook", json=alert("resolved", labels, future)),
            c.post(
                "/api/v1/alerts/webhook", json=alert("firing", labels, startsAt="9999-12-31T23:59:59-01:00")
            ),
            c.post("/api/v1/alerts/webhook", json=alert("firing", {"alertname": "A\x00"})),
        ]
        assert [r.status_code for r in forged] == [401, 400, 400, 400, 400, 400, 400]
        log = httpx.get(base + "/api/v1/alerts", headers=bearer("read")).json()["alerts"]
        assert [a["status"] for a in log] == ["firing"]  # the incident is still open
        assert c.post("/api/v1/alerts/webhook", json=alert("resolved", labels, ended)).status_code == 200
        log = httpx.get(base + "/api/v1/alerts", headers=bearer("read")).json()["alerts"]
        assert [a["status"] for a in log] == ["resolved", "firing"]


def test_csv_exports_do_not_carry_formulas(tmp_path):
    hostile = ['=HYPERLINK("http://x")', "+1+cmd", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain"]
    env = {"OBSERVER_ANALYTICS__REFRESH_INTERVAL_S": "1"}
    with serve(tmp_path, env) as (base, _), httpx.Client(base_url=base, timeout=10) as client:
        assert client.post("/v1/traces", content=otlp_requests(hostile), headers=PB).status_code == 200
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = client.get("/api/v1/analytics/departments", params={"format": "csv"}).text
            if "plain" in text:
                break
            time.sleep(0.5)
    import csv
    import io

    cells = [row[0] for row in csv.reader(io.StringIO(text))][1:]
    assert "plain" in cells and len(cells) == len(hostile), cells
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert '\'=HYPERLINK("http://x")' in cells and "'-2+3" in cells


# --- memory ---------------------------------------------------------------------------------------------


def _empty_attributes_body(mib: int) -> bytes:
    """One span with millions of empty attributes: ~30 bytes of decoded objects per wire byte."""

    def ld(tag: int, payload: bytes) -> bytes:
        n, varint = len(payload), b""
        while True:
            x, n = n & 0x7F, n >> 7
            varint += bytes([x | (0x80 if n else 0)])
            if not n:
                return bytes([tag]) + varint + payload

    return ld(0x0A, ld(0x12, ld(0x12, b"\x4a\x00" * (mib * 2**19))))


def test_memory_stays_bounded_under_bombs_and_concurrent_bodies(tmp_path):
    """The attacks of the review: a 39 KiB gzip JSON bomb took RSS from 101 MiB to 1.2 GiB, eight
    concurrent 0.2 MiB protobuf bodies to 3.2 GiB. Budget 128 MiB here: RSS must stay near it."""
    env = {"OBSERVER_COLLECTOR__INFLIGHT_BUDGET_BYTES": str(128 * 2**20)}
    json_objects = b'{"resourceSpans":[' + b"{}," * 700_000 + b"{}]}"  # 2 MiB of tiny objects
    many_spans = b"".join([b"\x0a\x06\x12\x04\x12\x00\x12\x00"] * 26_000)  # 0.2 MiB, 52k empty spans
    attrs = _empty_attributes_body(2)
    gz_bomb = gzip.compress(b'{"resourceSpans":[' + b"{}," * 2_700_000 + b"{}]}")
    with serve(tmp_path, env) as (base, proc):
        pid = proc.proc.pid
        time.sleep(1)
        baseline = rss_mib(pid)
        codes: list[int] = []
        health: list[int] = []

        def post(body: bytes, ctype: str, enc: str | None = None) -> None:
            headers = {"Content-Type": ctype, **({"Content-Encoding": enc} if enc else {})}
            with contextlib.suppress(httpx.HTTPError):
                codes.append(
                    httpx.post(base + "/v1/traces", content=body, headers=headers, timeout=60).status_code
                )

        attacks = (
            [(json_objects, "application/json", None)] * 12
            + [(many_spans, "application/x-protobuf", None)] * 16
            + [(attrs, "application/x-protobuf", None)] * 12
            + [(gz_bomb, "application/json", "gzip")] * 12
        )
        with ThreadPoolExecutor(24) as pool:
            for body, ctype, enc in attacks:
                pool.submit(post, body, ctype, enc)
            for _ in range(10):
                health.append(httpx.get(base + "/healthz", timeout=10).status_code)
                time.sleep(0.2)
        peak = peak_rss_mib(pid)
        assert all(c < 500 for c in codes), codes
        assert set(codes) <= {200, 400, 413, 429}, set(codes)
        assert 413 in codes and health == [200] * 10
        print(
            f"\nRSS baseline {baseline:.0f} MiB, peak {peak:.0f} MiB under {len(attacks)} hostile bodies: "
            f"{sorted(set(codes))}"
        )
        # 128 MiB budget + one decode in flight + the interpreter's own growth.
        assert peak - baseline < 400, (baseline, peak)
        # Still ingests normally afterwards.
        assert httpx.post(base + "/v1/traces", content=otlp_requests(["eng"]), headers=PB).status_code == 200


def test_over_budget_answers_429_with_retry_after(tmp_path):
    env = {
        "OBSERVER_COLLECTOR__INFLIGHT_BUDGET_BYTES": str(8 * 2**20),
        "OBSERVER_COLLECTOR__BODY_TIMEOUT_S": "20",
    }
    with serve(tmp_path, env) as (base, _):
        # Hold most of the budget with a body that is still arriving (bytes held are charged).
        held = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        held.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Content-Length: 7500000\r\n\r\n"
            + b" " * 6_000_000
        )
        time.sleep(1)
        # 90 KB of JSON is charged 90 KB x 48 = 4.3 MB once complete: over what is left of 8 MiB.
        r = httpx.post(
            base + "/v1/traces", content=b" " * 90_000 + b"{}", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        held.close()
        time.sleep(0.5)
        r = httpx.post(
            base + "/v1/traces", content=b" " * 90_000 + b"{}", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 200  # the budget was released with the connection
        too_big = b" " * 200_000 + b"{}"  # over the whole budget: never retryable
        r = httpx.post(base + "/v1/traces", content=too_big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_span_count_is_checked_before_decoding(tmp_path):
    env = {"OBSERVER_COLLECTOR__MAX_SPANS_PER_REQUEST": "100", "OBSERVER_COLLECTOR__MAX_JSON_NODES": "1000"}
    with serve(tmp_path, env) as (base, _):
        ok = otlp_requests([f"d{i}" for i in range(50)])  # 100 spans
        assert httpx.post(base + "/v1/traces", content=ok, headers=PB).status_code == 200
        over = otlp_requests([f"d{i}" for i in range(51)])
        r = httpx.post(base + "/v1/traces", content=over, headers=PB)
        assert r.status_code == 413
        r = httpx.post(base + "/v1/traces", content=over, headers={"Content-Type": "application/json"})
        assert r.status_code == 400  # protobuf bytes are not JSON; the JSON path counts too:
        doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{}] * 101}]}]}
        assert httpx.post(base + "/v1/traces", json=doc).status_code == 413
        # Parse cost: 700k empty objects took 24 s of pure-Python JSON mapping; now a node cap.
        t = time.perf_counter()
        r = httpx.post(base + "/v1/traces", json={"resourceSpans": [{}] * 1001})
        assert r.status_code == 413 and "objects and arrays" in r.json()["message"]
        assert time.perf_counter() - t < 5
        assert httpx.post(base + "/v1/traces", json={"resourceSpans": [{}] * 900}).status_code == 200


# --- slow clients -----------------------------------------------------------------------------------------


def test_slowloris_does_not_take_health_down(tmp_path):
    """1,100 connections trickling request heads; the review saw /healthz down for 40 s."""
    env = {"OBSERVER_COLLECTOR__HEADER_TIMEOUT_S": "3", "OBSERVER_COLLECTOR__MAX_CONNECTIONS": "500"}
    with serve(tmp_path, env) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        socks: list[socket.socket] = []
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-a: b\r\n")
                time.sleep(0.5)

        worker = threading.Thread(target=trickle, daemon=True)
        worker.start()
        latencies = []
        try:
            for _ in range(20):
                t = time.perf_counter()
                assert httpx.get(base + "/healthz", timeout=5).status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.25)
            time.sleep(3)
            closed = 0
            for s in socks:  # every trickler is cut at its head deadline (or evicted before)
                s.settimeout(0.01)
                try:
                    closed += s.recv(1) == b""
                except TimeoutError:
                    pass
                except OSError:
                    closed += 1
        finally:
            stop.set()
            worker.join()
            for s in socks:
                s.close()
        print(
            f"\n/healthz during a 1,100-connection slowloris: max {max(latencies) * 1000:.0f} ms, "
            f"{closed} trickling connections closed"
        )
        assert max(latencies) < 2.0
        assert closed >= 1000


def test_trickled_body_gets_408_and_huge_head_gets_431(tmp_path):
    env = {"OBSERVER_COLLECTOR__BODY_TIMEOUT_S": "2"}
    with serve(tmp_path, env) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /api/v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            t = time.monotonic()
            with contextlib.suppress(OSError):
                for _ in range(8):  # a byte every 0.4 s: trickling must not reset the deadline
                    s.sendall(b" ")
                    time.sleep(0.4)
            s.settimeout(10)
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
            assert time.monotonic() - t < 6
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 431")
        assert httpx.get(base + "/healthz").status_code == 200


# --- rollups ----------------------------------------------------------------------------------------------


def test_first_rollup_over_1970_and_2554_rows_walks_only_the_retention_window(db_url):
    store = Store(db_url)
    store.migrate()
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "trace_id": f"t{i}",
            "request_key": f"k{i}",
            "started_at": ts,
            "updated_at": now,
            "user_id": f"u{i}",
            "department": "d",
        }
        for i, ts in enumerate([datetime(1970, 1, 1), datetime(2554, 7, 1), now - timedelta(hours=1)])
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(Request.__table__), rows)
    rollups = Rollups(store.engine, "UTC", retention_days=30)
    t = time.perf_counter()
    result = rollups.refresh(now)
    elapsed = time.perf_counter() - t
    today = now.date()
    assert result.days and all(
        today - timedelta(days=30) <= d <= today + timedelta(days=1) for d in result.days
    )
    assert len(result.days) <= 32 and elapsed < 20, (len(result.days), elapsed)
    store.engine.dispose()


def test_concurrent_rollups_of_overlapping_users_do_not_deadlock(pg_url):
    store = Store(pg_url)
    store.migrate()
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "trace_id": f"t{d}-{u}",
            "request_key": f"k{d}-{u}",
            "started_at": now - timedelta(days=d, minutes=u),
            "updated_at": now,
            "user_id": f"u{(u * 7919 + d * 104729) % 400}",
            "department": "d",
        }
        for d in range(6)
        for u in range(400)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(Request.__table__), rows)
    rollups = Rollups(store.engine, "UTC", retention_days=30)
    days = [(now - timedelta(days=d)).date() for d in range(6)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(6):
                rollups.recompute_day(days[(i + offset) % 6])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [e for e in errors if "deadlock" in str(e).lower()], errors[:1]
    store.engine.dispose()


# --- properties -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("props")) as (base, _), httpx.Client(base_url=base, timeout=20) as c:
        yield c


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["summary", "cost", "departments", "cohorts"]),
    day=st.one_of(st.none(), st.text(max_size=14), st.dates(min_value=date(1, 1, 1)).map(str)),
    window=st.one_of(st.none(), st.integers(-10, 10**6).map(str), st.text(max_size=5)),
    fmt=st.one_of(st.none(), st.sampled_from(["json", "csv", "xml", ""])),
)
def test_analytics_queries_never_get_a_5xx(open_server, path, day, window, fmt):
    params = {k: v for k, v in {"date": day, "window_days": window, "format": fmt}.items() if v is not None}
    assert open_server.get(f"/api/v1/analytics/{path}", params=params).status_code < 500


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"trace_id": json_values, "rating": json_values},
            optional={"reason": json_values, "comment": json_values, "request_id": json_values},
        ),
    )
)
def test_feedback_bodies_never_get_a_5xx(open_server, body):
    assert open_server.post("/api/v1/feedback", json=body).status_code in (201, 400)


alert_strategy = st.fixed_dictionaries(
    {"labels": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4)},
    optional={
        "status": st.sampled_from(["firing", "resolved", "other"]) | json_values,
        "startsAt": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()) | json_values,
        "endsAt": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()) | json_values,
        "fingerprint": json_values,
        "annotations": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"alerts": st.lists(alert_strategy, max_size=4)},
            optional={"receiver": json_values, "status": json_values},
        ),
    )
)
def test_webhook_payloads_never_get_a_5xx(open_server, payload):
    assert open_server.post("/api/v1/alerts/webhook", json=payload).status_code in (200, 400)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    depth=st.integers(1, 3000),
    kind=st.sampled_from(["[", '{"a":', '{"kvlistValue":{"values":[{"key":"k","value":']),
)
def test_otlp_json_nesting_never_gets_a_5xx(open_server, depth, kind):
    closer = {"[": "]", '{"a":': "}", '{"kvlistValue":{"values":[{"key":"k","value":': "}]}}"}[kind]
    nested = kind * depth + "1" + closer * depth
    doc = '{"resourceSpans":[{"resource":{"attributes":[{"key":"x","value":' + nested + "}]}}]}"
    r = open_server.post("/v1/traces", content=doc, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), r.status_code


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
