"""The simulator seen from outside: OpenAI API shapes, vLLM /metrics exposition, errors."""

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import scrape, simulator

from observer.catalog import VLLM_TTFT_BUCKETS, VLLM_V1


@pytest.fixture(scope="module")
def sim():
    with simulator("--model", "acme/llm-8b", "--speed-factor", "0.2") as (base, _proc):
        yield base


def test_models_health_version(sim):
    assert httpx.get(sim + "/health").status_code == 200
    models = httpx.get(sim + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "acme/llm-8b"
    assert httpx.get(sim + "/version").json()["version"]


def test_chat_non_streaming_has_usage(sim):
    body = {
        "model": "acme/llm-8b",
        "messages": [{"role": "user", "content": "hi " * 40}],
        "max_tokens": 7,
        "ignore_eos": True,
    }
    r = httpx.post(sim + "/v1/chat/completions", json=body, timeout=30).json()
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["choices"][0]["message"]["role"] == "assistant" and r["choices"][0]["message"]["content"]
    assert r["usage"]["completion_tokens"] == 7
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + 7


def test_chat_streaming_sse(sim):
    body = {
        "messages": [{"role": "user", "content": "stream please"}],
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", sim + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


def test_completions_streaming_and_plain(sim):
    r = httpx.post(
        sim + "/v1/completions", json={"prompt": "abc " * 10, "max_tokens": 3, "ignore_eos": True}, timeout=30
    ).json()
    assert r["object"] == "text_completion" and r["usage"]["completion_tokens"] == 3
    body = {"prompt": [1, 2, 3, 4], "max_tokens": 2, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", sim + "/v1/completions", json=body, timeout=30) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert len([t for t in texts if t]) == 2 and events[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": []}, 400, "messages"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": [{"content": "no role"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "7"}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 40000}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "other"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(sim, body, status, param):
    r = httpx.post(sim + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == status and err["param"] == param and err["message"]
    assert err["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


def test_invalid_json_and_context_overflow(sim):
    r = httpx.post(
        sim + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(sim + "/v1/completions", json={"prompt": "x" * 200_000, "max_tokens": 10})
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]


def test_metrics_exposition_matches_vllm_v1(sim):
    # One finished request so histograms have observations.
    httpx.post(
        sim + "/v1/completions",
        json={"prompt": "warm up " * 30, "max_tokens": 4, "ignore_eos": True},
        timeout=30,
    )
    resp = httpx.get(sim + "/metrics")
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    for s in VLLM_V1:
        base = s.sample_base if s.type == "counter" else s.name
        assert base in families, f"{s.name} missing"
        fam = families[base]
        assert fam.type == s.type, s.name
        for sample in fam.samples:
            if sample.name.endswith("_created"):
                continue
            assert sample.labels.get("model_name", "acme/llm-8b") == "acme/llm-8b"
            assert sample.labels.get("engine") == "0"
    # Default buckets exactly as vLLM's (reference 1.2).
    ttft_le = [
        float(s.labels["le"])
        for s in families["vllm:time_to_first_token_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    assert tuple(ttft_le) == VLLM_TTFT_BUCKETS
    # Pre-created finish reasons, _created series as single-process V1 has them.
    m = scrape(sim + "/metrics")
    reasons = {dict(k)["finished_reason"] for k in m["vllm:request_success_total"]}
    assert reasons == {"stop", "length", "abort", "error", "repetition"}
    assert "vllm:prompt_tokens_created" in m
    info = next(iter(m["vllm:cache_config_info"]))
    assert dict(info)["block_size"] == "16" and dict(info)["num_gpu_blocks"] == "2048"
    assert sum(m["vllm:generation_tokens_total"].values()) >= 4
    assert "process_cpu_seconds_total" in m


def test_client_disconnect_counts_as_abort(sim):
    before = scrape(sim + "/metrics")["vllm:request_success_total"]
    key = next(k for k in before if dict(k)["finished_reason"] == "abort")
    body = {
        "messages": [{"role": "user", "content": "long"}],
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", sim + "/v1/chat/completions", json=body, timeout=30) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i > 3:
                break
    for _ in range(100):
        after = scrape(sim + "/metrics")
        if after["vllm:request_success_total"][key] == before[key] + 1:
            break
        import time

        time.sleep(0.05)
    assert after["vllm:request_success_total"][key] == before[key] + 1
    assert sum(after["vllm:num_requests_running"].values()) == 0
