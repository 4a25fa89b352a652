"""The simulator with real peers: Prometheus scraping it, the load generator saturating it, spans sent."""

import asyncio
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import Prometheus, simulator

from observer.load.generator import LoadConfig, run_load
from observer.netutil import free_port

pytestmark = pytest.mark.integration


def test_real_prometheus_scrapes_the_simulator():
    with simulator("--model", "m-prom") as (base, _):
        httpx.post(base + "/v1/completions", json={"prompt": "hello " * 20, "max_tokens": 3}, timeout=30)
        target = base.removeprefix("http://")
        prom = Prometheus([{"job_name": "vllm", "static_configs": [{"targets": [target]}]}])
        try:
            up = prom.wait_for('up{job="vllm"}', lambda r: r and r[0]["value"][1] == "1")
            assert up[0]["metric"]["instance"] == target
            res = prom.wait_for('vllm:generation_tokens_total{model_name="m-prom",engine="0"}')
            assert float(res[0]["value"][1]) >= 1
            hist = prom.wait_for("sum(vllm:time_to_first_token_seconds_count)")
            assert float(hist[0]["value"][1]) >= 1
            kv = prom.query("vllm:kv_cache_usage_perc")
            assert kv and 0 <= float(kv[0]["value"][1]) <= 1
        finally:
            prom.stop()


SATURATION_ARGS = (
    "--num-gpu-blocks",
    "192",
    "--block-size",
    "16",
    "--max-num-seqs",
    "64",
    "--max-num-batched-tokens",
    "2048",
)


async def _load_and_watch(base: str, rps: float, duration: float) -> tuple[object, dict]:
    """Run the load generator while sampling the simulator's gauges; returns (summary, peaks)."""
    cfg = LoadConfig(
        target=base,
        rps=rps,
        duration=duration,
        users=20,
        mix={"chat": 1.0},
        ignore_eos=True,
        grace_s=12,
        seed=7,
    )
    peaks = {"kv": 0.0, "waiting": 0.0, "preemptions": 0.0}
    load = asyncio.create_task(run_load(cfg))
    async with httpx.AsyncClient() as client:
        while not load.done():
            text = (await client.get(base + "/metrics")).text
            for line in text.splitlines():
                if line.startswith("vllm:kv_cache_usage_perc{"):
                    peaks["kv"] = max(peaks["kv"], float(line.rsplit(" ", 1)[1]))
                elif line.startswith("vllm:num_requests_waiting{"):
                    peaks["waiting"] = max(peaks["waiting"], float(line.rsplit(" ", 1)[1]))
                elif line.startswith("vllm:num_preemptions_total{"):
                    peaks["preemptions"] = float(line.rsplit(" ", 1)[1])
            await asyncio.sleep(0.1)
    return load.result(), peaks


def test_saturation_appears_under_overload_and_not_under_light_load():
    with simulator(*SATURATION_ARGS) as (base, _):
        light, light_peaks = asyncio.run(_load_and_watch(base, rps=1.0, duration=3))
    with simulator(*SATURATION_ARGS) as (base, _):
        heavy, heavy_peaks = asyncio.run(_load_and_watch(base, rps=40.0, duration=3))
    assert light.success > 0 and heavy.success > 0
    assert light.error == 0 and heavy.error == 0
    assert light_peaks["waiting"] == 0
    assert light_peaks["kv"] < 0.6
    assert heavy_peaks["kv"] >= 0.95, heavy_peaks
    assert heavy_peaks["waiting"] > 0, heavy_peaks
    assert heavy.ttft["p95"] > 3 * light.ttft["p95"], (heavy.ttft, light.ttft)


class _OtlpSink(BaseHTTPRequestHandler):
    spans: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    _OtlpSink.spans.append((rs.resource, ss.scope, span))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def test_llm_request_spans_like_vllm_with_gateway_parent():
    port = free_port()
    sink = ThreadingHTTPServer(("127.0.0.1", port), _OtlpSink)
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    _OtlpSink.spans = []
    try:
        endpoint = f"http://127.0.0.1:{port}"
        with simulator("--model", "traced", "--otlp-traces-endpoint", endpoint) as (base, _):
            cfg = LoadConfig(
                target=base,
                rps=20,
                duration=0.5,
                max_requests=4,
                users=5,
                mix={"chat": 1.0},
                ignore_eos=True,
                otlp_traces_endpoint=endpoint,
            )
            summary = asyncio.run(run_load(cfg))
            assert summary.success == summary.sent > 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_OtlpSink.spans) < 2 * summary.sent:
            time.sleep(0.1)
    finally:
        sink.shutdown()
        sink.server_close()
    engine = [(r, s, sp) for r, s, sp in _OtlpSink.spans if sp.name == "llm_request"]
    gateway = {sp.span_id: sp for _, _, sp in _OtlpSink.spans if sp.name == "chat traced"}
    assert len(engine) == summary.sent and len(gateway) == summary.sent
    for resource, scope, span in engine:
        assert scope.name == "vllm.llm_engine"
        assert span.kind == span.SPAN_KIND_SERVER
        a = _attrs(span)
        for key in (
            "gen_ai.request.id",
            "gen_ai.usage.prompt_tokens",
            "gen_ai.usage.completion_tokens",
            "gen_ai.latency.time_in_queue",
            "gen_ai.latency.time_to_first_token",
            "gen_ai.latency.e2e",
            "gen_ai.latency.time_in_model_prefill",
            "gen_ai.latency.time_in_model_decode",
            "gen_ai.latency.time_in_model_inference",
        ):
            assert key in a, key
        assert "gen_ai.response.model" not in a  # V1 does not set it
        assert a["gen_ai.latency.e2e"] >= a["gen_ai.latency.time_to_first_token"] > 0
        # Parent is the gateway span, via W3C traceparent: one trace per request.
        parent = gateway[span.parent_span_id]
        assert parent.trace_id == span.trace_id
        pa = _attrs(parent)
        assert pa["user.id"].startswith("u") and pa["department"]
        assert pa["gen_ai.usage.output_tokens"] == a["gen_ai.usage.completion_tokens"]
        assert any(kv.key == "vllm.process_id" for kv in resource.attributes)
