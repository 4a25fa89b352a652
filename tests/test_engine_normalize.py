"""Fixtures from every known engine version -> exact normalized values."""

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.engine.normalize import UnknownEngine, normalize, render_probe
from exporters.engine.parse import ParseError
from observer.catalog import spec

FIXTURES = Path(__file__).parent / "fixtures" / "engines"


def probe_fixture(name: str, model: str = "") -> dict[tuple[str, frozenset], float]:
    text = render_probe(normalize((FIXTURES / name).read_text(), default_model=model), True, 0.01)
    out = {}
    for fam in text_string_to_metric_families(text):  # the output must parse with the reference parser
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def v(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


def names(m):
    return {n for n, _ in m}


L8 = {"model": "meta-llama/Llama-3.1-8B-Instruct", "dp_rank": "0"}


def test_vllm_v0_0_6():
    m = probe_fixture("vllm-0.6-v0.txt")
    assert v(m, "llm_engine_info", kind="vllm", schema="v0", **L8) == 1
    assert v(m, "llm_requests_running", **L8) == 12
    assert v(m, "llm_requests_waiting", **L8) == 3
    assert v(m, "llm_kv_cache_usage_ratio", **L8) == 0.87  # from the old gpu_cache_usage_perc
    assert v(m, "llm_preemptions_total", **L8) == 5
    assert v(m, "llm_prompt_tokens_total", **L8) == 120345
    assert v(m, "llm_requests_finished_total", finished_reason="stop", **L8) == 90
    # V0's per-token histogram becomes inter-token latency, buckets kept.
    assert v(m, "llm_inter_token_latency_seconds_bucket", le="0.025", **L8) == 3000
    assert v(m, "llm_inter_token_latency_seconds_sum", **L8) == 140.2
    assert v(m, "llm_time_to_first_token_seconds_bucket", le="1.0", **L8) == 95
    # V0 cache_config_info has no engine label; the capacity still lands on rank 0.
    assert v(m, "llm_kv_cache_capacity_tokens", **L8) == 7000 * 16
    # Dropped: swapped, cpu cache, throughput gauges, hit-rate gauge (no equivalent concept).
    assert not any("swap" in n or "throughput" in n for n in names(m))


def test_vllm_v1_0_8_old_names():
    m = probe_fixture("vllm-0.8-v1.txt")
    q = {"model": "Qwen/Qwen2.5-Coder-32B-Instruct", "dp_rank": "0"}
    assert v(m, "llm_engine_info", kind="vllm", schema="v1", **q) == 1
    assert v(m, "llm_kv_cache_usage_ratio", **q) == 0.25
    assert v(m, "llm_prefix_cache_queries_total", **q) == 800
    assert v(m, "llm_prefix_cache_hits_total", **q) == 200
    assert v(m, "llm_requests_finished_total", finished_reason="abort", **q) == 1
    assert v(m, "llm_inter_token_latency_seconds_count", **q) == 1990
    assert v(m, "llm_request_queue_time_seconds_sum", **q) == 0.4
    assert "llm_time_per_output_token_seconds_count" not in names(m)  # 0.8 has no per-request TPOT


def test_vllm_0_10_data_parallel_both_names_emitted_once():
    m = probe_fixture("vllm-0.10-dp.txt")
    e0 = {"model": "zai-org/GLM-4.5", "dp_rank": "0"}
    e1 = {"model": "zai-org/GLM-4.5", "dp_rank": "1"}
    assert v(m, "llm_requests_running", **e0) == 10 and v(m, "llm_requests_running", **e1) == 6
    # Both KV names and both prefix-cache names present: each concept once per rank, not doubled.
    assert [k for k in m if k[0] == "llm_kv_cache_usage_ratio"].__len__() == 2
    assert v(m, "llm_kv_cache_usage_ratio", **e0) == 0.5
    assert v(m, "llm_prefix_cache_queries_total", **e0) == 5000
    assert v(m, "llm_prefix_cache_hits_total", **e1) == 600
    assert v(m, "llm_time_to_first_token_seconds_count", **e1) == 2
    assert v(m, "llm_kv_cache_capacity_tokens", **e0) == 40000 * 16
    assert v(m, "llm_kv_cache_capacity_tokens", **e1) == 39000 * 16
    assert not any(n.endswith("_created") for n in names(m))
    assert v(m, "llm_engine_info", kind="vllm", schema="v1", **e1) == 1


def test_vllm_0_11_current_names_and_unknown_metrics_ignored():
    m = probe_fixture("vllm-0.11.txt")
    q = {"model": "Qwen/Qwen3-0.6B", "dp_rank": "0"}
    assert v(m, "llm_requests_running", **q) == 3
    assert v(m, "llm_kv_cache_usage_ratio", **q) == 0.0123
    assert v(m, "llm_requests_finished_total", finished_reason="length", **q) == 10
    assert v(m, "llm_inter_token_latency_seconds_count", **q) == 490  # not 980: old name ignored
    assert v(m, "llm_time_per_output_token_seconds_sum", **q) == 0.1
    assert v(m, "llm_request_prefill_time_seconds_sum", **q) == 0.15
    assert v(m, "llm_request_decode_time_seconds_bucket", le="0.3", **q) == 2
    assert v(m, "llm_kv_cache_capacity_tokens", **q) == 16000
    assert not any("sleep" in n or n.startswith(("http_", "python_")) for n in names(m))


def test_sglang_tp_ranks_collapse_and_reasons():
    m = probe_fixture("sglang-0.5.txt")
    assert v(m, "llm_engine_info", kind="sglang", schema="v1", **L8) == 1
    assert v(m, "llm_requests_running", **L8) == 7  # same value on two TP ranks: not 14
    assert v(m, "llm_requests_waiting", **L8) == 2
    assert v(m, "llm_kv_cache_usage_ratio", **L8) == 0.61
    assert v(m, "llm_prompt_tokens_total", **L8) == 10240
    assert v(m, "llm_preemptions_total", **L8) == 1
    assert v(m, "llm_requests_finished_total", finished_reason="finished", **L8) == 64
    assert v(m, "llm_requests_finished_total", finished_reason="abort", **L8) == 3
    assert v(m, "llm_time_to_first_token_seconds_bucket", le="0.1", **L8) == 50
    assert v(m, "llm_e2e_request_latency_seconds_sum", **L8) == 150


def test_tgi_without_model_label_uses_the_probe_parameter():
    m = probe_fixture("tgi-3.txt", model="bigscience/bloom")
    t = {"model": "bigscience/bloom", "dp_rank": "0"}
    assert v(m, "llm_engine_info", kind="tgi", schema="v1", **t) == 1
    assert v(m, "llm_requests_running", **t) == 5
    assert v(m, "llm_requests_waiting", **t) == 1
    assert v(m, "llm_prompt_tokens_total", **t) == 33000  # sum of the input-length histogram
    assert v(m, "llm_generation_tokens_total", **t) == 9900
    assert v(m, "llm_requests_finished_total", finished_reason="success", **t) == 110
    assert v(m, "llm_requests_finished_total", finished_reason="error", **t) == 10  # both err kinds
    assert v(m, "llm_e2e_request_latency_seconds_bucket", le="5.0", **t) == 100
    assert v(m, "llm_time_per_output_token_seconds_count", **t) == 110


def test_llama_cpp():
    m = probe_fixture("llamacpp.txt", model="gguf")
    assert v(m, "llm_engine_info", kind="llama.cpp", schema="v1", model="gguf", dp_rank="0") == 1
    assert v(m, "llm_generation_tokens_total", model="gguf", dp_rank="0") == 512


def test_every_normalized_name_is_in_the_catalog():
    for fixture in FIXTURES.iterdir():
        for name in {n for n, _ in probe_fixture(fixture.name, model="x")}:
            base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            spec(name if name.endswith("_total") or name == base else base)


def test_garbage_and_unknown_engines():
    with pytest.raises(ParseError, match="line 1"):
        normalize("<html><body>502 Bad Gateway</body></html>")
    with pytest.raises(ParseError, match="not a number"):
        normalize('vllm:num_requests_running{model_name="a"} many\n')
    with pytest.raises(ParseError, match="label"):
        normalize('vllm:num_requests_running{model_name="a} 1\n')
    with pytest.raises(UnknownEngine):
        normalize("# TYPE node_load1 gauge\nnode_load1 0.5\n")


def test_label_escapes_round_trip():
    text = 'vllm:num_requests_running{engine="0",model_name="we\\"ird\\\\name"} 2\n'
    out = render_probe(normalize(text), True, 0.0)
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    assert fams["llm_requests_running"].samples[0].labels["model"] == 'we"ird\\name'


def test_tensorrt_llm():
    m = probe_fixture("trtllm.txt")
    t = {"model": "nvidia/Llama-3.1-8B-FP8", "dp_rank": "0"}
    assert v(m, "llm_engine_info", kind="trtllm", schema="v1", **t) == 1
    assert (v(m, "llm_requests_running", **t), v(m, "llm_requests_waiting", **t)) == (9, 4)
    assert v(m, "llm_kv_cache_usage_ratio", **t) == 0.72
    assert v(m, "llm_requests_finished_total", finished_reason="length", **t) == 2
    assert v(m, "llm_time_to_first_token_seconds_bucket", le="0.1", **t) == 28
    assert v(m, "llm_inter_token_latency_seconds_count", **t) == 992
