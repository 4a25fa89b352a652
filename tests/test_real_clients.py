"""Real clients, not hand-built spans: the OpenAI SDK with OpenTelemetry's openai-v2 (+ httpx)
instrumentation and baggage, against the simulator, exporting to a real ``observer serve``.

Exactly one row per call, whichever spans reach the collector (engine spans on or off, traceparent
forwarded or not), with model, user, department, tokens and outcome right; the usage counters sum to
the calls made, and a model name nobody serves does not become a label value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import observer_server, scrape, simulator
from test_collector_server import rows as rows_in
from test_collector_server import wait_counted as collector_wait_counted

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "clients" / "openai_app.py"
MODEL = "acme/chat-8b"
# Joined requests are counted at once; a request still missing a half waits this long (spans are
# flushed every ~5 s by a BatchSpanProcessor, later on a loaded machine).
FAST_GRACE = {"OBSERVER_COLLECTOR__JOIN_GRACE_S": "8"}


def run_app(base: str, otlp: str, *extra: str, model: str = MODEL) -> list[dict]:
    out = subprocess.run(
        [sys.executable, str(APP), "--base-url", base + "/v1", "--otlp", otlp, "--model", model, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def wait_counted(base: str, n: int, timeout: float = 60) -> dict:
    collector_wait_counted(base, n, timeout)
    time.sleep(1.5)  # and nothing more comes: the sums below must be exact, not at least
    return scrape(base + "/metrics")


def by_call(calls: list[dict], rows: list[dict]) -> list[tuple[dict, dict]]:
    """Pair each call with its row: by the OpenAI response id, or for the failed call by its model."""
    pairs = []
    for call in calls:
        if call["id"]:
            match = [r for r in rows if r["engine_request_id"] == call["id"]]
        else:
            match = [r for r in rows if r["model"] == call["model"] and r["outcome"] == "error"]
        assert len(match) == 1, (call, rows)
        pairs.append((call, match[0]))
    return pairs


@pytest.fixture
def collector(tmp_path):
    db = f"sqlite:///{tmp_path}/observer.db"
    with observer_server("serve", "--db", db, ready_path="/healthz", env=FAST_GRACE) as (base, _):
        yield base, db


def wait_rows(db: str, calls: list[dict], engine_spans: bool, timeout: float = 60) -> list[dict]:
    """The rows once every call is in and, with engine spans on, every served call has its engine half."""
    deadline = time.monotonic() + timeout
    while True:
        rows = rows_in(db)
        joined = sum(1 for r in rows if r["engine_span_id"])
        served = sum(1 for c in calls if c["outcome"] == "success")
        if (
            len(rows) == len(calls) and (joined == served or not engine_spans)
        ) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def check(calls: list[dict], base: str, db: str, engine_spans: bool) -> None:
    rows = wait_rows(db, calls, engine_spans)
    m = wait_counted(base, len(calls))
    assert len(rows) == len(calls), [(r["model"], r["user_id"], r["outcome"]) for r in rows]
    for call, row in by_call(calls, rows):
        assert row["user_id"] == call["user"], (call, row)
        assert row["department"] == call["department"], (call, row)
        assert row["model"] == call["model"]
        assert row["outcome"] == call["outcome"], (call, row)
        if call["input_tokens"] is not None:  # the server returned usage to the app
            assert (row["input_tokens"], row["output_tokens"]) == (
                call["input_tokens"],
                call["output_tokens"],
            )
        elif call["outcome"] == "success":
            # A stream without usage: only the engine half can tell the tokens.
            assert (row["output_tokens"] is not None) == engine_spans, row
        if call["outcome"] == "success":
            assert (row["engine_span_id"] is not None) == engine_spans, (call, row)
        # An abandoned stream: vLLM drops a disconnected request before recording anything (no span),
        # so its row stands on the app's spans alone, still one row, still an abort.
    counted = m["llm_usage_requests_total"]
    assert sum(counted.values()) == len(calls)
    models = {dict(labels)["model"] for labels in counted}
    assert models == {MODEL, "other"}  # "no-such-model" was only ever the caller's word


def test_openai_sdk_with_httpx_instrumentation_and_engine_spans(collector):
    base, db = collector
    with simulator("--model", MODEL, "--otlp-traces-endpoint", base + "/v1/traces") as (sim, _):
        calls = run_app(sim, base + "/v1/traces")
        assert len(calls) == 8
        check(calls, base, db, engine_spans=True)


def test_engine_spans_off(collector):
    base, db = collector
    with simulator("--model", MODEL) as (sim, _):
        check(run_app(sim, base + "/v1/traces"), base, db, engine_spans=False)


def test_no_traceparent_reaches_the_engine_so_halves_join_by_response_id(collector):
    """Without the httpx instrumentation nothing injects traceparent: each engine span starts a
    trace of its own, and only the OpenAI response id ties it to the app's call."""
    base, db = collector
    with simulator("--model", MODEL, "--otlp-traces-endpoint", base + "/v1/traces") as (sim, _):
        calls = run_app(sim, base + "/v1/traces", "--no-httpx")
        check(calls, base, db, engine_spans=True)


# --- LiteLLM proxy -------------------------------------------------------------------------------------

LITELLM_CAPTURE = Path(__file__).parent / "fixtures" / "clients" / "litellm-1.100.5"


def rebased_capture() -> list[bytes]:
    """The captured bodies with their timestamps moved to now (the collector refuses stale spans)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    requests = [
        ExportTraceServiceRequest.FromString(p.read_bytes()) for p in sorted(LITELLM_CAPTURE.glob("*.pb"))
    ]
    spans = [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    shift = time.time_ns() - 60_000_000_000 - min(s.start_time_unix_nano for s in spans)
    for s in spans:
        s.start_time_unix_nano += shift
        s.end_time_unix_nano += shift
    return [r.SerializeToString() for r in requests]


def captured_prompts() -> list[str]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    out = []
    for p in LITELLM_CAPTURE.glob("*.pb"):
        for rs in ExportTraceServiceRequest.FromString(p.read_bytes()).resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out += [kv.value.string_value for kv in s.attributes if kv.key == "gen_ai.input.messages"]
    assert out, "the capture should carry the prompts LiteLLM exports by default"
    return out


def test_litellm_capture_joins_in_any_order_with_user_team_and_engine(tmp_path):
    """Replays spans captured from a real LiteLLM proxy (see the capture's README), every arrival order."""
    from itertools import permutations

    from prometheus_client import CollectorRegistry

    from observer.collector.ingest import TraceCollector
    from observer.config import CollectorSettings
    from observer.store.db import Store

    bodies = rebased_capture()
    results = []
    for n, order in enumerate(permutations(bodies)):
        store = Store(f"sqlite:///{tmp_path}/replay-{n}.db")
        store.migrate()
        collector = TraceCollector(store, CollectorSettings(), CollectorRegistry())
        for body in (*order, order[0]):  # and a re-send
            collector.ingest(body, "application/x-protobuf")
        rows = sorted(store.recent(), key=lambda r: r["user_id"])
        results.append([{k: v for k, v in r.items()} for r in rows])
        store.engine.dispose()
    assert all(r == results[0] for r in results)
    rows = results[0]
    assert [(r["user_id"], r["department"]) for r in rows] == [("alice", "legal"), ("carol", "research")]
    for r in rows:
        assert r["engine_span_id"] is not None and r["model"] == MODEL and r["model_verified"]
        assert (r["input_tokens"], r["output_tokens"], r["finish_reason"], r["outcome"]) == (
            10,
            8,
            "length",
            "success",
        )
        assert r["ttft_s"] is not None  # measured by the engine
    stored_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("replay-*"))
    for prompt in captured_prompts():
        assert prompt.encode() not in stored_bytes


LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {api_base}
      api_key: unused
litellm_settings:
  callbacks: ["otel"]
general_settings:
  custom_auth: litellm_custom_auth.user_api_key_auth
"""


@pytest.fixture(scope="module")
def litellm_bin() -> Path:
    script = Path(__file__).resolve().parents[1] / "scripts" / "litellm_venv.sh"
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, f"could not install LiteLLM: {out.stderr[-2000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


def test_litellm_proxy_in_front_of_the_engine(collector, litellm_bin, tmp_path):
    """A real LiteLLM proxy (otel callback, teams from its auth hook) in front of the simulator: one row
    per call with the end user and the team, joined with the engine half by the response id."""
    import shutil

    import httpx
    from support import Process, wait_http

    from observer.netutil import free_port

    base, db = collector
    with simulator("--model", MODEL, "--otlp-traces-endpoint", base + "/v1/traces") as (sim, _):
        (tmp_path / "config.yaml").write_text(LITELLM_CONFIG.format(model=MODEL, api_base=sim + "/v1"))
        shutil.copy(Path(__file__).parent / "clients" / "litellm_custom_auth.py", tmp_path)
        port = free_port()
        env = {
            "USE_OTEL_LITELLM_REQUEST_SPAN": "true",  # else the GenAI attributes are lost (see README)
            "OTEL_EXPORTER": "otlp_http",
            "OTEL_ENDPOINT": base + "/v1/traces",
            "OTEL_SERVICE_NAME": "litellm-gateway",
            "PYTHONPATH": str(tmp_path),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        cmd = [str(litellm_bin / "litellm"), "--config", str(tmp_path / "config.yaml"), "--host", "127.0.0.1"]
        proxy = Process([*cmd, "--port", str(port)], "litellm", env=env, cwd=str(tmp_path))
        try:
            wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180, proc=proxy.proc)
            calls = [("alice", "legal", False), ("bob", "legal", True), ("carol", "research", False)]
            calls.append(("dave", "research", True))
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for user, team, stream in calls:
                    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
                    body |= {"user": user, "stream": stream}
                    r = client.post(
                        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer sk-{team}"}
                    )
                    assert r.status_code == 200, r.text
            wait_counted(base, len(calls), timeout=60)
        finally:
            proxy.stop()
    rows = sorted(rows_in(db), key=lambda r: r["user_id"] or "")
    assert [(r["user_id"], r["department"]) for r in rows] == [(u, t) for u, t, _ in calls]
    assert all(r["engine_span_id"] and r["model"] == MODEL and r["output_tokens"] for r in rows), rows
