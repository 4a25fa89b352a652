"""Fixtures from every known engine version -> exact normalized values."""

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import binary, observer_server

from exporters.engine.mappings import ENGINES, by_kind, known_engines_text, metrics_paths
from exporters.engine.normalize import NotPrometheusText, UnknownEngine, normalize, render_probe
from exporters.engine.parse import ParseError
from observer.catalog import ENGINE, ENGINE_EXPORTER_SELF, spec

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
    assert v(m, "llm_engine_sleeping", **q) == 0  # engine_sleep_state{sleep_state="awake"} 1
    assert not any(n.startswith(("http_", "python_")) for n in names(m))


def test_vllm_newest_sre_families():
    m = probe_fixture("vllm-0.33.txt")
    g0 = {"model": "openai/gpt-oss-120b", "dp_rank": "0"}
    g1 = {"model": "openai/gpt-oss-120b", "dp_rank": "1"}
    assert v(m, "llm_requests_waiting_by_reason", reason="capacity", **g0) == 7
    assert v(m, "llm_requests_waiting_by_reason", reason="deferred", **g0) == 2
    # admission_rejections_total has no engine label: rank 0.
    assert v(m, "llm_admission_rejections_total", reason="queue_full", **g0) == 17
    assert v(m, "llm_admission_rejections_total", reason="sleeping", **g0) == 3
    assert (v(m, "llm_engine_sleeping", **g0), v(m, "llm_engine_sleeping", **g1)) == (0, 1)
    assert v(m, "llm_prompt_tokens_total", **g0) == 900000  # vLLM's counter includes cached tokens
    assert v(m, "llm_prompt_tokens_cached_total", **g0) == 450000
    assert v(m, "llm_prompt_tokens_cached_total", **g1) == 20000
    assert v(m, "llm_spec_decode_draft_tokens_total", **g0) == 60000
    assert v(m, "llm_spec_decode_accepted_tokens_total", **g0) == 42000
    # kv_cache_size_tokens wins over num_gpu_blocks x block_size (36992 x 16 = 591872).
    assert v(m, "llm_kv_cache_capacity_tokens", **g1) == 1183744
    assert v(m, "llm_request_prompt_tokens_bucket", le="1000.0", **g0) == 1000
    assert v(m, "llm_request_prompt_tokens_sum", **g0) == 900000
    assert v(m, "llm_request_generation_tokens_count", **g0) == 1105
    assert v(m, "llm_requests_finished_total", finished_reason="error", **g0) == 1
    assert not any(n.endswith("_created") for n in names(m))


def test_vllm_real_0_32_capture_agrees_with_its_own_counters():
    """The real vLLM 0.32 capture (tests/fixtures/engines/real/README.md): every normalized value equals
    the engine's own sample it comes from."""
    raw = {}
    for fam in text_string_to_metric_families((FIXTURES / "real" / "vllm-0.32.0-load.txt").read_text()):
        for s in fam.samples:
            raw[(s.name, frozenset(s.labels.items()))] = s.value

    def r(name, **labels):
        return raw[(name, frozenset({"engine": "0", "model_name": "tiny-llama", **labels}.items()))]

    m = probe_fixture("real/vllm-0.32.0-load.txt")
    t = {"model": "tiny-llama", "dp_rank": "0"}
    assert v(m, "llm_engine_info", kind="vllm", schema="v1", **t) == 1
    assert v(m, "llm_requests_running", **t) == r("vllm:num_requests_running") == 7
    assert v(m, "llm_requests_waiting", **t) == r("vllm:num_requests_waiting") == 1
    assert v(m, "llm_requests_waiting_by_reason", reason="capacity", **t) == 1
    assert v(m, "llm_kv_cache_usage_ratio", **t) == r("vllm:kv_cache_usage_perc")
    assert v(m, "llm_kv_cache_capacity_tokens", **t) == 3072  # kv_cache_size_tokens (24 blocks x 128)
    assert v(m, "llm_engine_sleeping", **t) == 0
    assert v(m, "llm_prompt_tokens_total", **t) == r("vllm:prompt_tokens_total") == 4655
    # vLLM's prompt counter already includes cache hits: computed + cached by source adds up to it.
    computed = r("vllm:prompt_tokens_by_source_total", source="local_compute")
    assert computed + v(m, "llm_prompt_tokens_cached_total", **t) == 4655
    assert v(m, "llm_generation_tokens_total", **t) == r("vllm:generation_tokens_total")
    for reason in ("stop", "length", "abort", "error", "repetition"):
        expected = r("vllm:request_success_total", finished_reason=reason)
        assert v(m, "llm_requests_finished_total", finished_reason=reason, **t) == expected
    for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):  # no engine label upstream: rank 0
        assert v(m, "llm_admission_rejections_total", reason=reason, **t) == 0
    assert v(m, "llm_request_prompt_tokens_sum", **t) == r("vllm:request_prompt_tokens_sum")
    assert v(m, "llm_request_generation_tokens_count", **t) == 9
    assert v(m, "llm_time_to_first_token_seconds_count", **t) == r("vllm:time_to_first_token_seconds_count")


def test_sglang_0_5_old_tp_ranks_collapse_and_reasons():
    m = probe_fixture("sglang-0.5.txt")
    assert v(m, "llm_engine_info", kind="sglang", schema="v1", **L8) == 1
    assert v(m, "llm_requests_running", **L8) == 7  # same value on two TP ranks: not 14
    assert v(m, "llm_requests_waiting", **L8) == 2
    assert v(m, "llm_kv_cache_usage_ratio", **L8) == 0.61
    assert v(m, "llm_prompt_tokens_total", **L8) == 10240
    assert v(m, "llm_preemptions_total", **L8) == 1
    # 64 finished in all, 3 of them aborted: counted once each.
    assert v(m, "llm_requests_finished_total", finished_reason="finished", **L8) == 61
    assert v(m, "llm_requests_finished_total", finished_reason="abort", **L8) == 3
    assert v(m, "llm_time_to_first_token_seconds_bucket", le="0.1", **L8) == 50
    assert v(m, "llm_e2e_request_latency_seconds_sum", **L8) == 150


def test_sglang_newest_sums_is_streaming_and_counts_aborts_once():
    m = probe_fixture("sglang-0.5.23.txt")
    q = {"model": "Qwen/Qwen3-8B", "dp_rank": "0"}
    assert v(m, "llm_requests_running", **q) == 11  # two TP ranks, one value
    assert v(m, "llm_kv_cache_usage_ratio", **q) == 0.42
    assert v(m, "llm_kv_cache_capacity_tokens", **q) == 458752  # max_total_num_tokens, not doubled
    assert v(m, "llm_prompt_tokens_total", **q) == 42000  # streaming 30000 + not streaming 12000
    assert v(m, "llm_generation_tokens_total", **q) == 10000
    assert v(m, "llm_prompt_tokens_cached_total", **q) == 9500  # every cache_source and is_streaming
    assert v(m, "llm_preemptions_total", **q) == 2
    assert v(m, "llm_requests_finished_total", finished_reason="finished", **q) == 120 - 6
    assert v(m, "llm_requests_finished_total", finished_reason="abort", **q) == 6
    assert v(m, "llm_time_to_first_token_seconds_bucket", le="0.1", **q) == 80
    assert v(m, "llm_time_to_first_token_seconds_count", **q) == 120
    assert v(m, "llm_e2e_request_latency_seconds_sum", **q) == 250


def test_tgi_3_old_without_model_label_uses_the_probe_parameter():
    m = probe_fixture("tgi-3.txt", model="bigscience/bloom")
    t = {"model": "bigscience/bloom", "dp_rank": "0"}
    assert v(m, "llm_engine_info", kind="tgi", schema="v1", **t) == 1
    assert v(m, "llm_requests_running", **t) == 5
    assert v(m, "llm_requests_waiting", **t) == 1
    assert v(m, "llm_prompt_tokens_total", **t) == 33000  # sum of the input-length histogram
    assert v(m, "llm_generation_tokens_total", **t) == 9900
    assert v(m, "llm_requests_finished_total", finished_reason="success", **t) == 110
    # Only the generation failures are the server's; the 6 validation failures were the client's.
    assert v(m, "llm_requests_finished_total", finished_reason="error", **t) == 4
    assert v(m, "llm_e2e_request_latency_seconds_bucket", le="5.0", **t) == 100
    assert v(m, "llm_time_per_output_token_seconds_count", **t) == 110


def test_tgi_newest_errors_are_server_errors_and_overload_is_admission():
    m = probe_fixture("tgi-3.3.txt", model="tgi-model")
    t = {"model": "tgi-model", "dp_rank": "0"}
    finished = {
        dict(k)["finished_reason"]: val for (n, k), val in m.items() if n == "llm_requests_finished_total"
    }
    assert finished == {"success": 200, "error": 3 + 1 + 4, "abort": 5}  # no validation/template_error
    assert v(m, "llm_admission_rejections_total", reason="overloaded", **t) == 15
    assert v(m, "llm_request_prompt_tokens_bucket", le="1000.0", **t) == 190
    assert v(m, "llm_request_generation_tokens_sum", **t) == 21000
    assert v(m, "llm_prompt_tokens_total", **t) == 64000
    assert v(m, "llm_time_per_output_token_seconds_sum", **t) == 4.0


def test_llama_cpp_old():
    m = probe_fixture("llamacpp.txt", model="gguf")
    assert v(m, "llm_engine_info", kind="llama.cpp", schema="v1", model="gguf", dp_rank="0") == 1
    assert v(m, "llm_generation_tokens_total", model="gguf", dp_rank="0") == 512
    assert v(m, "llm_prompt_tokens_total", model="gguf", dp_rank="0") == 2048


def test_llama_cpp_real_b11434_prompt_tokens_include_cached():
    """Real llama-server b11434 under load (tests/fixtures/engines/real/README.md)."""
    m = probe_fixture("real/llamacpp-b11434-load.txt", model="tiny")
    t = {"model": "tiny", "dp_rank": "0"}
    # prompt_tokens_total 1926 excludes cache hits, prompt_tokens_cached_total 2281 counts them.
    assert v(m, "llm_prompt_tokens_total", **t) == 1926 + 2281  # all prompt tokens, as vLLM counts
    assert v(m, "llm_prompt_tokens_cached_total", **t) == 2281
    assert v(m, "llm_generation_tokens_total", **t) == 431
    assert (v(m, "llm_requests_running", **t), v(m, "llm_requests_waiting", **t)) == (4, 2)
    assert v(m, "llm_spec_decode_draft_tokens_total", **t) == 0
    assert not any(n.startswith("llm_kv_cache") for n in names(m))  # llama.cpp has no KV metric now
    idle = probe_fixture("real/llamacpp-b11434-idle.txt", model="tiny")
    assert v(idle, "llm_prompt_tokens_total", **t) == 0


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.kind)
def test_registry_one_table_per_engine(engine):
    """Adding an engine = one mapping + one fixture: every target is a catalog metric of the type its
    sources have, the newest version's fixture exists and is detected as this engine, and the known
    engines in errors come from the registry."""
    for concept in engine.concepts:
        s = spec(concept.target)
        for alternative in concept.alternatives:
            for source in alternative:
                kind = "counter" if source.component else source.kind
                assert kind == s.type, f"{engine.kind}: {source.name} ({kind}) -> {s.name} ({s.type})"
    assert engine.newest_fixture, f"{engine.kind} has no fixture of its newest version"
    newest = FIXTURES / engine.newest_fixture
    normalized = normalize(newest.read_text(), default_model="m")
    assert normalized.kind == engine.kind
    assert len(normalized.targets) >= 4, "the newest exposition maps to the normalized schema"
    for target in normalized.targets:
        spec(target)  # hook outputs too
    assert engine.kind in known_engines_text()
    assert engine.metrics_path in metrics_paths()
    assert metrics_paths(engine.kind, model="a b")[0] == engine.metrics_path
    with pytest.raises(ValueError, match=known_engines_text()):
        by_kind("nonesuch")


# Success without stop/length detail: SGLang says "finished", TGI "success"; failures are error/abort only.
FINISHED_VOCABULARY = {"stop", "length", "abort", "error", "repetition", "finished", "success"}


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.kind)
def test_newest_expositions_mean_the_same_thing(engine):
    """Tokens include cached ones, reasons come from one vocabulary (failures only error/abort)."""
    m = probe_fixture(engine.newest_fixture, model="m")
    prompt = {dict(k)["model"]: val for (n, k), val in m.items() if n == "llm_prompt_tokens_total"}
    cached = {dict(k)["model"]: val for (n, k), val in m.items() if n == "llm_prompt_tokens_cached_total"}
    assert prompt, "every engine reports prompt tokens"
    assert all(cached[model] <= prompt[model] for model in cached)
    reasons = {dict(k)["finished_reason"] for (n, k) in m if n == "llm_requests_finished_total"}
    assert reasons <= FINISHED_VOCABULARY


def test_fetch_paths_cover_trtllm_and_llama_cpp_router_mode():
    assert metrics_paths() == ("/metrics", "/prometheus/metrics")
    assert metrics_paths(model="org/m 1") == ("/metrics", "/prometheus/metrics", "/metrics?model=org%2Fm%201")
    assert metrics_paths("llama.cpp", model="m") == ("/metrics", "/metrics?model=m")
    assert metrics_paths("trtllm") == ("/prometheus/metrics",)
    with pytest.raises(NotPrometheusText):  # TensorRT-LLM's /metrics: JSON iteration stats
        normalize('[{"gpuMemUsage": 1, "iter": 3}]')


def test_every_normalized_name_is_in_the_catalog():
    engine_specs = {s.name: s for s in (*ENGINE, *ENGINE_EXPORTER_SELF)}
    fixtures = sorted(FIXTURES.rglob("*.txt"))
    samples: dict[str, str] = {}  # every output sample name -> a capture it came from
    kinds = set()  # the engines the captures were detected as
    for fixture in fixtures:
        for name, labels in probe_fixture(str(fixture.relative_to(FIXTURES)), model="x"):
            samples.setdefault(name, str(fixture.relative_to(FIXTURES)))
            kinds.update(value for key, value in labels if name == "llm_engine_info" and key == "kind")
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in samples}
    families = {f for f in families if f in samples or f + "_bucket" in samples}
    unknown = {f: samples.get(f) or samples[f + "_bucket"] for f in families if f not in engine_specs}
    assert not unknown, f"normalized names missing from the engine catalog: {unknown}"
    # Each family is rendered as its catalog type says: buckets exactly for histograms.
    for family in families:
        assert (engine_specs[family].type == "histogram") == (family + "_bucket" in samples), family
    # The captures cover every engine the mappings know, so no engine's names go unchecked.
    assert kinds == {e.kind for e in ENGINES}, kinds


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


def test_tensorrt_llm_old():
    m = probe_fixture("trtllm.txt")
    t = {"model": "nvidia/Llama-3.1-8B-FP8", "dp_rank": "0"}
    assert v(m, "llm_engine_info", kind="trtllm", schema="v1", **t) == 1
    assert (v(m, "llm_requests_running", **t), v(m, "llm_requests_waiting", **t)) == (9, 4)
    assert v(m, "llm_kv_cache_usage_ratio", **t) == 0.72
    assert v(m, "llm_requests_finished_total", finished_reason="length", **t) == 2
    assert v(m, "llm_time_to_first_token_seconds_bucket", le="0.1", **t) == 28
    # Per-request (last - first) / (n - 1): TPOT, not a per-step inter-token gap.
    assert v(m, "llm_time_per_output_token_seconds_count", **t) == 992
    assert "llm_inter_token_latency_seconds_count" not in names(m)


@pytest.mark.parametrize(("model", "expected"), [("llama-70b", "llama-70b"), ("", "")])
def test_tensorrt_llm_newest(model, expected):
    m = probe_fixture("trtllm-1.2.txt", model=model)
    t = {"model": expected, "dp_rank": "0"}  # "undefined" is no name: the probe's model, else none
    assert not any(dict(k).get("model") == "undefined" for _, k in m)
    finished = {
        dict(k)["finished_reason"]: val for (n, k), val in m.items() if n == "llm_requests_finished_total"
    }
    # cancelled -> abort; timeout and HTTP 5xx -> error; HTTP 400 is the client's.
    assert finished == {"stop": 70, "length": 20, "abort": 7, "error": 3 + 2 + 1}
    assert v(m, "llm_prompt_tokens_cached_total", **t) == 20480
    assert v(m, "llm_kv_cache_capacity_tokens", **t) == 4096 * 32
    assert v(m, "llm_time_per_output_token_seconds_count", **t) == 97
    assert v(m, "llm_spec_decode_accepted_tokens_total", **t) == 1800
    assert v(m, "llm_spec_decode_draft_tokens_total", **t) == 3000
    assert v(m, "llm_kv_cache_usage_ratio", **t) == 0.25


def promtool_check(text: str) -> str:
    """``promtool check metrics`` output (lint problems), empty when it accepts the exposition."""
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    return (result.stdout + result.stderr).strip() if result.returncode else ""


@pytest.mark.parametrize("fixture", sorted(str(f.relative_to(FIXTURES)) for f in FIXTURES.rglob("*.txt")))
def test_promtool_accepts_the_engine_exporter_output(fixture):
    text = render_probe(normalize((FIXTURES / fixture).read_text(), default_model="m"), True, 0.01)
    assert "_total" in text
    assert promtool_check(text) == ""
    failed = render_probe(None, False, 0.01, "timeout")
    assert promtool_check(failed) == ""


@pytest.mark.parametrize("mode", [(), ("--dcgm-compat",)], ids=["native", "dcgm"])
def test_promtool_accepts_the_gpu_exporter_output(mode):
    with observer_server("gpu-exporter", "--fake-gpus", "2", "--interval", "0.2", *mode) as (base, _):
        deadline = time.monotonic() + 10
        text = httpx.get(base + "/metrics", timeout=10).text
        while "_total" not in text and time.monotonic() < deadline:  # first sample not taken yet
            time.sleep(0.2)
            text = httpx.get(base + "/metrics", timeout=10).text
    assert "_total" in text  # counters are what promtool used to reject ("no help text")
    problems = promtool_check(text).splitlines()
    if mode:
        # dcgm-exporter's own names and camelCase labels, copied byte for byte so its dashboards work:
        # promtool's naming lint flags them, and nothing else may be flagged.
        foreign_lint = (
            "label names should be written in 'snake_case' not 'camelCase'",
            'counter metrics should have "_total" suffix',
            "metric name should not include type 'counter'",
        )
        problems = [p for p in problems if not (p.startswith("DCGM_FI_") and p.endswith(foreign_lint))]
    assert problems == []
