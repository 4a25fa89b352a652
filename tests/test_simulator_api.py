"""The simulator seen from outside: OpenAI API shapes, vLLM /metrics exposition, errors."""

import json
import time

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
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n"),
        (
            {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "stop": 7}, 400, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
        (
            {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
            400,
            "top_logprobs",
        ),
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
            assert sample.labels.get("engine", "0") == "0"
            assert ("engine" in sample.labels) == ("engine" in s.labels)  # admission_rejections has none
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


def test_client_disconnect_is_not_counted_as_abort(sim):
    """vLLM drops a disconnected request's state before recording stats: no finish reason moves."""
    before = scrape(sim + "/metrics")
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
    for _ in range(100):  # the engine frees the request when the stream's generator closes
        after = scrape(sim + "/metrics")
        if sum(after["vllm:num_requests_running"].values()) == 0:
            break
        time.sleep(0.05)
    assert sum(after["vllm:num_requests_running"].values()) == 0
    assert after["vllm:request_success_total"] == before["vllm:request_success_total"]
    assert after["vllm:e2e_request_latency_seconds_count"] == before["vllm:e2e_request_latency_seconds_count"]


def test_n_choices_are_separate_engine_requests(sim):
    before = scrape(sim + "/metrics")["vllm:request_success_total"]
    body = {"messages": [{"role": "user", "content": "three answers"}], "n": 3, "max_tokens": 4}
    r = httpx.post(sim + "/v1/chat/completions", json=body, timeout=30).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] and c["logprobs"] is None for c in r["choices"])
    assert (
        r["usage"]["completion_tokens"]
        == sum(4 if c["finish_reason"] == "length" else 0 for c in r["choices"])
        or r["usage"]["completion_tokens"] <= 12
    )
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    after = scrape(sim + "/metrics")["vllm:request_success_total"]
    assert sum(after.values()) - sum(before.values()) == 3  # one finish per choice, as vLLM counts

    stream = dict(body, stream=True, ignore_eos=True, stream_options={"include_usage": True})
    with httpx.stream("POST", sim + "/v1/chat/completions", json=stream, timeout=30) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    tokens = {}
    for e in events:
        for c in e["choices"]:
            if c["delta"].get("content"):
                tokens[c["index"]] = tokens.get(c["index"], 0) + 1
    assert tokens == {0: 4, 1: 4, 2: 4}
    assert events[-1]["usage"]["completion_tokens"] == 12


def test_stop_strings_end_the_output_before_the_stop(sim):
    probe = {"messages": [{"role": "user", "content": "stop test"}], "max_tokens": 100, "ignore_eos": True}
    full = httpx.post(sim + "/v1/chat/completions", json=probe, timeout=30).json()["choices"][0]
    words = full["message"]["content"].split()
    stop = words[3]
    r = httpx.post(
        sim + "/v1/chat/completions", json=dict(probe, stop=[stop, "zzz-never"]), timeout=30
    ).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert stop not in choice["message"]["content"]
    # Output words cycle through one vocabulary, so a 100-token answer (over two cycles) meets the stop
    # word before its end; the request ends at the token that completes it, its text cut before it.
    assert r["usage"]["completion_tokens"] < 100
    assert full["finish_reason"] == "length" and full["stop_reason"] is None


def test_logprobs_null_unless_asked(sim):
    base = {"messages": [{"role": "user", "content": "lp"}], "max_tokens": 3, "ignore_eos": True}
    plain = httpx.post(sim + "/v1/chat/completions", json=base, timeout=30).json()["choices"][0]
    assert plain["logprobs"] is None
    asked = dict(base, logprobs=True, top_logprobs=2)
    lp = httpx.post(sim + "/v1/chat/completions", json=asked, timeout=30).json()["choices"][0]["logprobs"]
    assert len(lp["content"]) == 3
    assert all(t["logprob"] < 0 and len(t["top_logprobs"]) == 2 for t in lp["content"])
    choice = httpx.post(sim + "/v1/chat/completions", json=asked, timeout=30).json()["choices"][0]
    assert "".join(t["token"] for t in choice["logprobs"]["content"]) == choice["message"]["content"]
    comp = {"prompt": "lp", "max_tokens": 2, "ignore_eos": True, "logprobs": 1, "stream": True}
    with httpx.stream("POST", sim + "/v1/completions", json=comp, timeout=30) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    blocks = [e["choices"][0]["logprobs"] for e in events if e["choices"] and e["choices"][0]["text"]]
    assert len(blocks) == 2 and all(len(b["top_logprobs"][0]) == 2 for b in blocks)
