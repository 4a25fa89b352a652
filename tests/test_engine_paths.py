"""The exporter finds each engine's Prometheus text where the engine serves it (registry paths), through
a real exporter process: TensorRT-LLM's /metrics is JSON and its text is at /prometheus/metrics, and
llama.cpp in router mode answers /metrics only with ?model=."""

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support import binary, observer_server

from observer.netutil import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
TRTLLM = (FIXTURES / "trtllm-1.2.txt").read_bytes()
LLAMA = (FIXTURES / "real" / "llamacpp-b11434-load.txt").read_bytes()


class _Engines(BaseHTTPRequestHandler):
    """Answers by port: which fake engine this server is (set per server class)."""

    protocol_version = "HTTP/1.1"
    kind = ""
    seen: list[str] = []

    def do_GET(self):
        type(self).seen.append(self.path)
        status, body, ctype = 404, b'{"detail":"Not Found"}', "application/json"
        if self.kind == "trtllm" and self.path == "/metrics":
            status, body = 200, json.dumps([{"iter": 7, "gpuMemUsage": 1 << 30}]).encode()
        elif self.kind == "trtllm" and self.path == "/prometheus/metrics":
            status, body, ctype = 200, TRTLLM, "text/plain; version=0.0.4"
        elif self.kind == "router" and self.path == "/metrics":
            status, body = 400, b'{"error":{"code":400,"message":"model name is missing from the request"}}'
        elif self.kind == "router" and self.path == "/metrics?model=tiny%2Fgguf":
            status, body, ctype = 200, LLAMA, "text/plain; version=0.0.4"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(kind: str):
    handler = type(f"_{kind}", (_Engines,), {"kind": kind, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture(scope="module")
def fleet():
    servers = {kind: _serve(kind) for kind in ("trtllm", "router")}
    with observer_server("engine-exporter") as (exporter, _):
        yield (
            exporter,
            {kind: (f"http://127.0.0.1:{s.server_address[1]}", h) for kind, (s, h) in servers.items()},
        )
    for server, _ in servers.values():
        server.shutdown()
        server.server_close()


def probe(exporter: str, target: str, **params: str) -> str:
    r = httpx.get(exporter + "/probe", params={"target": target, **params}, timeout=15)
    assert r.status_code == 200
    return r.text


def test_tensorrt_llm_text_is_found_behind_its_json_metrics(fleet):
    exporter, targets = fleet
    base, handler = targets["trtllm"]
    text = probe(exporter, base, model="llama-70b")
    assert "llm_engine_up 1.0" in text
    assert 'llm_engine_info{kind="trtllm",schema="v1",model="llama-70b",dp_rank="0"} 1.0' in text
    assert 'llm_requests_running{model="llama-70b",dp_rank="0"} 12.0' in text
    assert "undefined" not in text
    assert handler.seen[:2] == ["/metrics", "/prometheus/metrics"]
    handler.seen.clear()
    text = probe(exporter, base, engine="trtllm")  # the engine named: straight to its path
    assert handler.seen == ["/prometheus/metrics"]
    assert 'llm_requests_running{model="",dp_rank="0"} 12.0' in text  # no name: the target's label applies


def test_llama_cpp_router_mode_is_asked_with_the_model(fleet):
    exporter, targets = fleet
    base, handler = targets["router"]
    text = probe(exporter, base, model="tiny/gguf")
    assert "llm_engine_up 1.0" in text
    assert (
        'llm_prompt_tokens_total{model="tiny/gguf",dp_rank="0"} 4207.0' in text
    )  # 1926 computed + 2281 cached
    assert "/metrics?model=tiny%2Fgguf" in handler.seen
    failed = probe(exporter, base)  # no model: router mode has nothing to say, and the probe says why
    assert "llm_engine_up 0.0" in failed and "llm_engine_probe_error" in failed


def test_promtool_accepts_the_live_exporter_answers(fleet):
    exporter, targets = fleet
    for text in (
        probe(exporter, targets["trtllm"][0], model="m"),
        probe(exporter, targets["router"][0]),  # a failed probe's answer too
        httpx.get(exporter + "/metrics", timeout=10).text,  # the exporter's own health
    ):
        result = subprocess.run(
            [binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
