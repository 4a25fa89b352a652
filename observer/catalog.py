"""The metric catalog: every metric this project exports, in one place.

Exporters register from it (``make_metric`` / ``family``), dashboards and alert rules are checked
against it (a test fails when a query names a metric not defined here or in the recording rules),
and a convention test holds our own names to Prometheus practice (base units, ``_total`` on
counters, ``_info`` for descriptive labels).

Two kinds of entries:
  * ``owned`` metrics follow our conventions (``llm_*``, ``gpu_*``, ``observer_*``).
  * ``foreign`` metrics copy someone else's schema byte for byte (vLLM's ``vllm:*`` in the simulator,
    dcgm-exporter's ``DCGM_FI_*`` in compat mode); their names are not ours to fix, so the
    convention test skips them, but they still live here so nothing is exported undeclared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

MetricType = Literal["counter", "gauge", "histogram", "info"]

# Base units (Prometheus naming guide) plus the dimensionless ones we use as suffixes.
BASE_UNITS = {"seconds", "bytes", "joules", "watts", "celsius", "hertz", "ratio", "tokens", "blocks"}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""  # one of BASE_UNITS, or "" for counts/states
    buckets: tuple[float, ...] | None = None
    schema: str = "llm"  # llm | gpu | observer | vllm | dcgm
    owned: bool = True

    @property
    def sample_base(self) -> str:
        """Name as prometheus_client wants it at construction (no ``_total``/``_info`` suffix)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        if self.type == "info" and self.name.endswith("_info"):
            return self.name[: -len("_info")]
        return self.name


# --- vLLM default buckets (vllm/v1/metrics/loggers.py; identical since ~0.8) ----------------------
VLLM_REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
VLLM_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
VLLM_ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
VLLM_ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
VLLM_PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
VLLM_NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
# CacheConfig fields as vllm:cache_config_info labels in 0.32 (tests/fixtures/engines/real/).
VLLM_CACHE_CONFIG_LABELS = (
    "_block_size_resolved",
    "block_size",
    "cache_dtype",
    "cache_hit_alignment_tokens",
    "effective_attention_block_size",
    "enable_mamba_shared_prefix_checkpoint",
    "enable_prefix_caching",
    "engine",
    "gpu_memory_utilization",
    "hash_block_size",
    "is_attention_free",
    "kv_cache_dtype_skip_layers",
    "kv_cache_layout",
    "kv_cache_max_concurrency",
    "kv_cache_memory_bytes",
    "kv_cache_size_tokens",
    "kv_offloading_backend",
    "kv_offloading_size",
    "kv_sharing_fast_prefill",
    "mamba_block_size",
    "mamba_cache_dtype",
    "mamba_cache_mode",
    "mamba_page_size_padded",
    "mamba_ssm_cache_dtype",
    "num_cpu_blocks",
    "num_gpu_blocks",
    "num_gpu_blocks_override",
    "prefix_cache_retention_interval",
    "prefix_caching_hash_algo",
    "prefix_match_unit",
    "replayssm_buffer_len",
    "skip_page_size_padded",
    "sliding_window",
    "swa_bounded_replay",
    "use_kda_recoverssm",
    "use_replayssm",
    "user_specified_block_size",
)


def vllm_request_tokens_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series capped at max_model_len (vllm/v1/metrics/buckets.py)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(out)
            out.append(value)
        exponent += 1


_V = ("model_name", "engine")


def _vllm(name: str, type_: MetricType, help_: str, extra: Sequence[str] = (), buckets=None) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels=(*_V, *extra), buckets=buckets, schema="vllm", owned=False)


# The vLLM V1 families the simulator emits, names/help/labels/buckets as vLLM 0.32 has them (a test diffs
# the simulator's /metrics against a real 0.32 capture).
VLLM_V1: tuple[MetricSpec, ...] = (
    _vllm("vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    _vllm("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    _vllm("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    _vllm("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine."),
    _vllm("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed."),
    _vllm("vllm:generation_tokens_total", "counter", "Number of generation tokens processed."),
    _vllm(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        ("finished_reason",),
    ),
    _vllm(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    _vllm(
        "vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens."
    ),
    _vllm(
        "vllm:iteration_tokens_total",
        "histogram",
        "Histogram of number of tokens per engine_step.",
        buckets=VLLM_ITERATION_TOKENS_BUCKETS,
    ),
    _vllm(
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
        buckets=VLLM_TTFT_BUCKETS,
    ),
    _vllm(
        "vllm:inter_token_latency_seconds",
        "histogram",
        "Histogram of inter-token latency in seconds.",
        buckets=VLLM_ITL_BUCKETS,
    ),
    _vllm(
        "vllm:request_time_per_output_token_seconds",
        "histogram",
        "Histogram of time_per_output_token_seconds per request.",
        buckets=VLLM_ITL_BUCKETS,
    ),
    _vllm(
        "vllm:e2e_request_latency_seconds",
        "histogram",
        "Histogram of e2e request latency in seconds.",
        buckets=VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    _vllm(
        "vllm:request_queue_time_seconds",
        "histogram",
        "Histogram of time spent in WAITING phase for request.",
        buckets=VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    _vllm(
        "vllm:request_inference_time_seconds",
        "histogram",
        "Histogram of time spent in RUNNING phase for request.",
        buckets=VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    _vllm(
        "vllm:request_prefill_time_seconds",
        "histogram",
        "Histogram of time spent in PREFILL phase for request.",
        buckets=VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    _vllm(
        "vllm:request_decode_time_seconds",
        "histogram",
        "Histogram of time spent in DECODE phase for request.",
        buckets=VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    # request token histograms: buckets depend on max_model_len, filled in by the simulator.
    _vllm("vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed.", buckets=()),
    _vllm(
        "vllm:request_generation_tokens",
        "histogram",
        "Number of generation tokens processed.",
        buckets=(),
    ),
    _vllm(
        "vllm:request_params_max_tokens",
        "histogram",
        "Histogram of the max_tokens request parameter.",
        buckets=(),
    ),
    _vllm(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
        "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
        "Sum of all reasons equals vllm:num_requests_waiting.",
        ("reason",),
    ),
    _vllm(
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
        "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        ("sleep_state",),
    ),
    _vllm(
        "vllm:external_prefix_cache_queries_total",
        "counter",
        "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number "
        "of queried tokens.",
    ),
    _vllm(
        "vllm:external_prefix_cache_hits_total",
        "counter",
        "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of "
        "cached tokens.",
    ),
    _vllm(
        "vllm:mm_cache_queries_total",
        "counter",
        "Multi-modal cache queries, in terms of number of queried items.",
    ),
    _vllm(
        "vllm:mm_cache_hits_total", "counter", "Multi-modal cache hits, in terms of number of cached items."
    ),
    _vllm("vllm:prompt_tokens_by_source_total", "counter", "Number of prompt tokens by source.", ("source",)),
    _vllm("vllm:prompt_tokens_cached_total", "counter", "Number of cached prompt tokens (local + external)."),
    _vllm(
        "vllm:prompt_tokens_cached_by_source_total",
        "counter",
        "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded "
        "to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at "
        "admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
        ("source",),
    ),
    # No engine label: rejected before an engine is chosen.
    MetricSpec(
        "vllm:admission_rejections_total",
        "counter",
        "Number of admission attempts rejected by a queue limit, by reason.",
        labels=("model_name", "reason"),
        schema="vllm",
        owned=False,
    ),
    _vllm(
        "vllm:request_max_num_generation_tokens",
        "histogram",
        "Histogram of maximum number of requested generation tokens.",
        buckets=(),
    ),
    _vllm(
        "vllm:request_params_n",
        "histogram",
        "Histogram of the n request parameter.",
        buckets=VLLM_PARAMS_N_BUCKETS,
    ),
    _vllm(
        "vllm:request_num_preemptions",
        "histogram",
        "Histogram of the number of times a request was preempted.",
        buckets=VLLM_NUM_PREEMPTIONS_BUCKETS,
    ),
    _vllm(
        "vllm:request_prefill_kv_computed_tokens",
        "histogram",
        "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
        buckets=(),
    ),
    # vLLM emulates Info with a gauge (multiprocess mode); its labels are CacheConfig fields (0.32).
    MetricSpec(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
        labels=VLLM_CACHE_CONFIG_LABELS,
        schema="vllm",
        owned=False,
    ),
)


# --- normalized engine schema (engine exporter output) ---------------------------------------------
_E = ("model", "dp_rank")


def _llm(name: str, type_: MetricType, help_: str, extra=(), unit="", buckets=None) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels=(*_E, *extra), unit=unit, buckets=buckets, schema="llm")


ENGINE: tuple[MetricSpec, ...] = (
    MetricSpec(
        "llm_engine_up",
        "gauge",
        "Whether the engine answered the probe with metrics the exporter could read (1) or not (0).",
        schema="llm",
    ),
    MetricSpec(
        "llm_engine_scrape_duration_seconds",
        "gauge",
        "Time the probe spent fetching and normalizing the engine's metrics.",
        unit="seconds",
        schema="llm",
    ),
    MetricSpec(
        "llm_engine_probe_error",
        "gauge",
        "Set to 1 with the reason the last probe failed (timeout, refused, http_status, parse_error, "
        "unknown_engine, body_too_large, too_many_series, connect_error).",
        labels=("reason",),
        schema="llm",
    ),
    MetricSpec(
        "llm_engine_info",
        "gauge",
        "Engine identity: kind (an engine of the exporter's registry), schema generation and model.",
        labels=("kind", "schema", "model", "dp_rank"),
        schema="llm",
    ),
    _llm("llm_requests_running", "gauge", "Requests in the engine's running batch."),
    _llm("llm_requests_waiting", "gauge", "Requests queued for KV-cache capacity or a batch slot."),
    _llm(
        "llm_requests_waiting_by_reason",
        "gauge",
        "Waiting requests by why they wait (vLLM: capacity = no KV blocks, deferred = held back by policy).",
        extra=("reason",),
    ),
    _llm(
        "llm_admission_rejections_total",
        "counter",
        "Requests refused at admission (load shedding, HTTP 429/503), by reason; never started.",
        extra=("reason",),
    ),
    _llm(
        "llm_engine_sleeping",
        "gauge",
        "Whether the engine is in sleep mode, weights offloaded (1) or awake (0).",
    ),
    _llm("llm_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use (0-1).", unit="ratio"),
    _llm(
        "llm_kv_cache_capacity_tokens",
        "gauge",
        "KV-cache capacity in tokens (vLLM kv_cache_size_tokens, else blocks x block size).",
        unit="tokens",
    ),
    _llm(
        "llm_prompt_tokens_total",
        "counter",
        "Prompt tokens of requests, cached or computed (every engine: all prompt tokens).",
        unit="tokens",
    ),
    _llm("llm_prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache."),
    _llm("llm_generation_tokens_total", "counter", "Generated (decode) tokens.", unit="tokens"),
    _llm("llm_preemptions_total", "counter", "Requests preempted because the KV cache ran out."),
    _llm(
        "llm_requests_finished_total",
        "counter",
        "Finished requests by reason (stop, length, abort, error, ...).",
        extra=("finished_reason",),
    ),
    _llm("llm_prefix_cache_queries_total", "counter", "Tokens looked up in the prefix cache."),
    _llm("llm_prefix_cache_hits_total", "counter", "Tokens found in the prefix cache."),
    _llm(
        "llm_spec_decode_draft_tokens_total",
        "counter",
        "Speculative decoding: draft tokens proposed.",
        unit="tokens",
    ),
    _llm(
        "llm_spec_decode_accepted_tokens_total",
        "counter",
        "Speculative decoding: draft tokens accepted by the target model.",
        unit="tokens",
    ),
    _llm(
        "llm_time_to_first_token_seconds",
        "histogram",
        "Arrival to first output token (queueing + prefill).",
        unit="seconds",
    ),
    _llm(
        "llm_inter_token_latency_seconds",
        "histogram",
        "Gap between successive output tokens, one observation per engine step.",
        unit="seconds",
    ),
    _llm(
        "llm_time_per_output_token_seconds",
        "histogram",
        "Per-request mean time per output token after the first (TPOT); TGI's mean includes prefill.",
        unit="seconds",
    ),
    _llm("llm_e2e_request_latency_seconds", "histogram", "Arrival to last token.", unit="seconds"),
    _llm(
        "llm_request_queue_time_seconds", "histogram", "Time waiting before first scheduled.", unit="seconds"
    ),
    _llm(
        "llm_request_prefill_time_seconds",
        "histogram",
        "First scheduled to first token.",
        unit="seconds",
    ),
    _llm("llm_request_decode_time_seconds", "histogram", "First token to last token.", unit="seconds"),
    _llm("llm_request_prompt_tokens", "histogram", "Prompt tokens per finished request.", unit="tokens"),
    _llm(
        "llm_request_generation_tokens",
        "histogram",
        "Generated tokens per finished request.",
        unit="tokens",
    ),
)

ENGINE_EXPORTER_SELF: tuple[MetricSpec, ...] = (
    MetricSpec(
        "observer_engine_exporter_probes_total",
        "counter",
        "Probes served, by result (success or failure).",
        labels=("result",),
        schema="observer",
    ),
    MetricSpec(
        "observer_engine_exporter_probe_failures_total",
        "counter",
        "Failed probes by reason.",
        labels=("reason",),
        schema="observer",
    ),
    MetricSpec(
        "observer_engine_exporter_probe_duration_seconds",
        "histogram",
        "Probe duration (fetch + parse + normalize + render).",
        unit="seconds",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        schema="observer",
    ),
    MetricSpec(
        "observer_engine_exporter_probes_in_flight",
        "gauge",
        "Probes currently running.",
        schema="observer",
    ),
    MetricSpec(
        "observer_engine_exporter_targets_refused_total",
        "counter",
        "Probe targets refused by the allow-list (SSRF guard).",
        schema="observer",
    ),
)


# --- usage from traces (observer serve) -------------------------------------------------------------
# Bounded labels only: model, folded department, outcome. Users never become labels.
USAGE_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
USAGE_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)

USAGE: tuple[MetricSpec, ...] = (
    MetricSpec(
        "llm_usage_requests_total",
        "counter",
        "LLM requests seen in traces, by model, department (top-N, rest folded into other) and outcome.",
        labels=("model", "department", "outcome"),
        schema="llm",
    ),
    MetricSpec(
        "llm_usage_tokens_total",
        "counter",
        "Tokens of LLM requests seen in traces, by direction (input or output).",
        labels=("model", "department", "direction"),
        schema="llm",
    ),
    MetricSpec(
        "llm_usage_time_to_first_token_seconds",
        "histogram",
        "TTFT of requests as recorded in their spans (engine span preferred).",
        labels=("model",),
        unit="seconds",
        buckets=USAGE_SECONDS_BUCKETS,
        schema="llm",
    ),
    MetricSpec(
        "llm_usage_time_per_output_token_seconds",
        "histogram",
        "Per-request time per output token after the first, from spans.",
        labels=("model",),
        unit="seconds",
        buckets=USAGE_TPOT_BUCKETS,
        schema="llm",
    ),
    MetricSpec(
        "llm_usage_e2e_request_latency_seconds",
        "histogram",
        "End-to-end request latency from spans.",
        labels=("model",),
        unit="seconds",
        buckets=USAGE_SECONDS_BUCKETS,
        schema="llm",
    ),
)

COLLECTOR_SELF: tuple[MetricSpec, ...] = (
    MetricSpec(
        "observer_collector_spans_received_total",
        "counter",
        "Spans received on /v1/traces (accepted or not).",
        schema="observer",
    ),
    MetricSpec(
        "observer_collector_spans_rejected_total",
        "counter",
        "Spans rejected, by reason (malformed, too_large, unauthorized, store_unavailable, invalid_span,"
        " trace_too_large).",
        labels=("reason",),
        schema="observer",
    ),
    MetricSpec(
        "observer_collector_values_dropped_total",
        "counter",
        "Span attribute values dropped as invalid (not finite, negative, out of range), by attribute;"
        " the span itself is kept.",
        labels=("attribute",),
        schema="observer",
    ),
    MetricSpec(
        "observer_collector_export_requests_total",
        "counter",
        "OTLP export requests by HTTP status code.",
        labels=("code",),
        schema="observer",
    ),
    MetricSpec(
        "observer_collector_export_duration_seconds",
        "histogram",
        "Time to decode, map and store one OTLP export request.",
        unit="seconds",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        schema="observer",
    ),
    MetricSpec(
        "observer_collector_requests_pending",
        "gauge",
        "Request records stored but not yet counted (waiting for their other half or the grace time).",
        schema="observer",
    ),
    MetricSpec(
        "observer_store_up",
        "gauge",
        "Whether the last store operation succeeded (1) or the database was unreachable (0).",
        schema="observer",
    ),
    MetricSpec(
        "observer_store_rows_deleted_total",
        "counter",
        "Raw request rows deleted by the retention job.",
        schema="observer",
    ),
)


# --- business analytics (observer serve, from the rollup tables) -----------------------------------
# Windows are fixed ("1d", "7d", "30d"); departments are the top N by active users plus "other".


def _biz(name: str, help_: str, labels: tuple[str, ...] = (), unit: str = "") -> MetricSpec:
    return MetricSpec(name, "gauge", help_, labels=labels, unit=unit, schema="llm")


ANALYTICS: tuple[MetricSpec, ...] = (
    _biz(
        "llm_active_users", "Distinct users active in the window ending today (DAU, WAU, MAU).", ("window",)
    ),
    _biz(
        "llm_active_users_by_department",
        "Distinct active users by department in the window.",
        ("department", "window"),
    ),
    _biz(
        "llm_department_tokens",
        "Tokens used by department in the window, by direction.",
        ("department", "direction", "window"),
        unit="tokens",
    ),
    _biz(
        "llm_users_stickiness_ratio",
        "Mean DAU over the last 30 days divided by MAU (above 0.5 means a daily habit).",
        unit="ratio",
    ),
    _biz(
        "llm_users_retention_m2m_ratio",
        "Share of last calendar month's active users active this month so far.",
        unit="ratio",
    ),
    _biz(
        "llm_users_retention_m2m_complete_ratio",
        "Month-to-month retention between the last two complete months.",
        unit="ratio",
    ),
    _biz("llm_new_users", "Users whose first request was today."),
    _biz(
        "llm_cohort_retention_ratio",
        "Share of a monthly cohort (month of first use) active k months later.",
        ("cohort", "months_since"),
        unit="ratio",
    ),
    _biz(
        "llm_feedback_up_ratio",
        "Share of thumbs-up among feedback in the last 30 days.",
        ("model", "department"),
        unit="ratio",
    ),
    _biz(
        "llm_feedback_responses", "Feedback responses in the last 30 days.", ("model", "department", "rating")
    ),
    _biz(
        "llm_cost_self_hosted",
        "Self-hosted cost in the window: GPU-hours plus energy (in the labelled currency).",
        ("currency", "window"),
    ),
    _biz(
        "llm_cost_public_api_equivalent",
        "What the window's tokens would have cost on the reference public API.",
        ("currency", "window"),
    ),
    _biz("llm_cost_savings", "Public-API-equivalent cost minus self-hosted cost.", ("currency", "window")),
    _biz(
        "llm_cost_per_million_tokens",
        "Cost per 1M tokens (input + output), self-hosted versus the public API.",
        ("kind", "currency"),
    ),
    _biz(
        "llm_cost_by_department",
        "Self-hosted cost charged back to departments by their share of tokens.",
        ("department", "currency", "window"),
    ),
)


# --- GPU (NVML) ----------------------------------------------------------------------------------
_G = ("gpu", "uuid")


def _gpu(name: str, type_: MetricType, help_: str, extra=(), unit="") -> MetricSpec:
    return MetricSpec(name, type_, help_, labels=(*_G, *extra), unit=unit, schema="gpu")


GPU: tuple[MetricSpec, ...] = (
    _gpu(
        "gpu_info",
        "gauge",
        "GPU identity (value 1).",
        extra=("name", "pci_bus_id", "driver_version", "cuda_version", "mig_mode", "hostname"),
    ),
    _gpu("gpu_up", "gauge", "Whether the GPU answered NVML in the last sample (1) or is lost (0)."),
    _gpu("gpu_utilization_ratio", "gauge", "Fraction of time a kernel was running (0-1).", unit="ratio"),
    _gpu(
        "gpu_memory_utilization_ratio",
        "gauge",
        "Fraction of time device memory was read or written (0-1).",
        unit="ratio",
    ),
    _gpu("gpu_memory_used_bytes", "gauge", "Framebuffer memory in use.", unit="bytes"),
    _gpu("gpu_memory_total_bytes", "gauge", "Framebuffer memory installed.", unit="bytes"),
    _gpu("gpu_power_watts", "gauge", "Power draw.", unit="watts"),
    _gpu("gpu_power_limit_watts", "gauge", "Enforced power limit.", unit="watts"),
    _gpu("gpu_energy_joules_total", "counter", "Energy consumed since the driver loaded.", unit="joules"),
    _gpu("gpu_temperature_celsius", "gauge", "GPU core temperature.", unit="celsius"),
    _gpu("gpu_memory_temperature_celsius", "gauge", "HBM temperature.", unit="celsius"),
    _gpu("gpu_sm_clock_hertz", "gauge", "SM clock.", unit="hertz"),
    _gpu("gpu_memory_clock_hertz", "gauge", "Memory clock.", unit="hertz"),
    _gpu(
        "gpu_throttle_active",
        "gauge",
        "Whether a clock-throttle reason (power, thermal, sync_boost, ...) is active (1) or not (0).",
        extra=("reason",),
    ),
    _gpu(
        "gpu_xid_errors_total",
        "counter",
        "XID error events by code, counted since the exporter started.",
        extra=("xid",),
    ),
    _gpu(
        "gpu_ecc_errors_total",
        "counter",
        "ECC errors since the driver loaded (volatile), by type (corrected, uncorrected).",
        extra=("type",),
    ),
    _gpu("gpu_pcie_replay_errors_total", "counter", "PCIe replay counter."),
    _gpu(
        "gpu_process_memory_used_bytes",
        "gauge",
        'Device memory used by a compute process; processes past the per-GPU cap fold into process="other".',
        extra=("pid", "process"),
        unit="bytes",
    ),
    MetricSpec(
        "gpu_mig_info",
        "gauge",
        "MIG instance identity (value 1).",
        labels=("gpu", "uuid", "mig_uuid", "gpu_instance_id", "compute_instance_id", "profile"),
        schema="gpu",
    ),
    MetricSpec(
        "gpu_mig_memory_used_bytes",
        "gauge",
        "Memory used by a MIG instance.",
        labels=("gpu", "uuid", "mig_uuid", "gpu_instance_id"),
        unit="bytes",
        schema="gpu",
    ),
    MetricSpec(
        "gpu_mig_memory_total_bytes",
        "gauge",
        "Memory of a MIG instance.",
        labels=("gpu", "uuid", "mig_uuid", "gpu_instance_id"),
        unit="bytes",
        schema="gpu",
    ),
    _gpu("gpu_memory_reserved_bytes", "gauge", "Framebuffer memory the driver reserves.", unit="bytes"),
    _gpu(
        "gpu_encoder_utilization_ratio",
        "gauge",
        "Fraction of time the video encoder was busy (0-1).",
        unit="ratio",
    ),
    _gpu(
        "gpu_decoder_utilization_ratio",
        "gauge",
        "Fraction of time the video decoder was busy (0-1).",
        unit="ratio",
    ),
    _gpu(
        "gpu_remapped_rows_total",
        "counter",
        "HBM rows remapped after memory errors, by type (correctable, uncorrectable).",
        extra=("type",),
    ),
    _gpu(
        "gpu_row_remap_pending", "gauge", "Whether a row remap waits for the next GPU reset (1) or not (0)."
    ),
    _gpu("gpu_row_remap_failure", "gauge", "Whether a row remap has failed (1): the GPU needs service."),
    _gpu(
        "gpu_nvlink_bytes_total",
        "counter",
        "NVLink data bytes over all links since the driver loaded, by direction (rx, tx).",
        extra=("direction",),
        unit="bytes",
    ),
    _gpu(
        "gpu_profiling_supported",
        "gauge",
        "Whether NVML GPM profiling (the *_active_ratio metrics) works on this GPU (1, Hopper+) or not (0).",
    ),
    _gpu(
        "gpu_graphics_active_ratio",
        "gauge",
        "Fraction of time the graphics/compute engine was active, from NVML GPM (0-1).",
        unit="ratio",
    ),
    _gpu("gpu_sm_active_ratio", "gauge", "Fraction of SMs busy, from NVML GPM (0-1).", unit="ratio"),
    _gpu(
        "gpu_tensor_active_ratio",
        "gauge",
        "Fraction of time the SMs ran tensor-core instructions, from NVML GPM (0-1).",
        unit="ratio",
    ),
    _gpu(
        "gpu_dram_active_ratio",
        "gauge",
        "Fraction of peak device-memory bandwidth used, from NVML GPM (0-1).",
        unit="ratio",
    ),
    _gpu(
        "gpu_pcie_throughput_bytes_per_second",
        "gauge",
        "PCIe traffic by direction (tx from the GPU, rx to it), from NVML GPM.",
        extra=("direction",),
    ),
    MetricSpec(
        "gpu_mig_activity_ratio",
        "gauge",
        "MIG GPU-instance activity from NVML GPM (graphics, sm, tensor, dram), 0-1.",
        labels=("gpu", "uuid", "mig_uuid", "gpu_instance_id", "activity"),
        unit="ratio",
        schema="gpu",
    ),
    MetricSpec(
        "gpu_exporter_last_collect_success",
        "gauge",
        "Whether the last collect cycle reached NVML (1) or the driver failed and re-inits next cycle (0).",
        schema="gpu",
    ),
    MetricSpec(
        "gpu_exporter_last_collect_timestamp_seconds",
        "gauge",
        "Unix time of the last completed collect cycle.",
        unit="seconds",
        schema="gpu",
    ),
    MetricSpec(
        "gpu_exporter_collect_duration_seconds",
        "gauge",
        "Duration of the last collect cycle.",
        unit="seconds",
        schema="gpu",
    ),
    MetricSpec(
        "gpu_exporter_nvml_errors_total",
        "counter",
        "NVML call failures by call and error class (not_supported, gpu_is_lost, timeout, ...).",
        labels=("call", "error"),
        schema="gpu",
    ),
    MetricSpec(
        "gpu_exporter_devices",
        "gauge",
        "GPUs NVML reported in the last cycle.",
        schema="gpu",
    ),
)

# dcgm-exporter's label template (render_metrics.go); MIG instances add GPU_I_PROFILE, GPU_I_ID after
# modelName, and "Hostname" is "hostname" with --dcgm-hostname-label hostname.
_D = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION")


def _dcgm(name: str, help_: str, type_: MetricType = "gauge", extra=()) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels=(*_D, *extra), schema="dcgm", owned=False)


# dcgm-exporter's etc/default-counters.csv (4.x up to 4.5.3-4.8.2), in its order, help byte for byte;
# units are NVIDIA's. DCGM_FI_DEV_VGPU_LICENSE_STATUS is not here: blank (dropped) outside vGPU guests.
DCGM: tuple[MetricSpec, ...] = (
    _dcgm("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
    _dcgm("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz)."),
    _dcgm("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C)."),
    _dcgm("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
    _dcgm("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    _dcgm(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        type_="counter",
    ),
    _dcgm("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", type_="counter"),
    _dcgm("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    _dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)."),
    _dcgm("DCGM_FI_DEV_ENC_UTIL", "Encoder utilization (in %)."),
    _dcgm("DCGM_FI_DEV_DEC_UTIL", "Decoder utilization (in %)."),
    _dcgm(
        "DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", extra=("err_code", "err_msg")
    ),
    _dcgm("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    _dcgm("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    _dcgm("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB)."),
    _dcgm(
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "Total number of NVLink bandwidth counters for all lanes.",
        type_="counter",
    ),
    _dcgm(
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "Number of remapped rows for uncorrectable errors",
        type_="counter",
    ),
    _dcgm(
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "Number of remapped rows for correctable errors",
        type_="counter",
    ),
    _dcgm("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed"),
    _dcgm("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active."),
    _dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "Ratio of cycles the tensor (HMMA) pipe is active."),
    _dcgm(
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
    ),
    _dcgm(
        "DCGM_FI_PROF_PCIE_TX_BYTES",
        "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads"
        " - in bytes per second.",
    ),
    _dcgm(
        "DCGM_FI_PROF_PCIE_RX_BYTES",
        "The rate of data received over the PCIe bus - including both protocol headers and data payloads"
        " - in bytes per second.",
    ),
)


CATALOG: tuple[MetricSpec, ...] = (
    *VLLM_V1,
    *ENGINE,
    *ENGINE_EXPORTER_SELF,
    *USAGE,
    *COLLECTOR_SELF,
    *ANALYTICS,
    *GPU,
    *DCGM,
)
_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}


def spec(name: str) -> MetricSpec:
    """Look a metric up by its exposed name; KeyError names the missing metric."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in the catalog (observer/catalog.py)") from None


def all_specs() -> tuple[MetricSpec, ...]:
    return CATALOG


def exposed_series_names(s: MetricSpec) -> set[str]:
    """Every sample name a metric produces (what a PromQL query can name)."""
    if s.type == "histogram":
        return {f"{s.name}_bucket", f"{s.name}_sum", f"{s.name}_count", s.name}
    return {s.name}


def make_metric(
    s: MetricSpec,
    registry: CollectorRegistry,
    extra_labels: Iterable[str] = (),
    buckets: Sequence[float] | None = None,
):
    """Register a live prometheus_client metric built from its catalog entry."""
    labels = (*s.labels, *extra_labels)
    if s.type == "counter":
        return Counter(s.sample_base, s.help, labels, registry=registry)
    if s.type == "gauge":
        return Gauge(s.name, s.help, labels, registry=registry)
    if s.type == "histogram":
        b = buckets if buckets is not None else s.buckets
        if not b:
            raise ValueError(f"{s.name}: histogram needs buckets")
        return Histogram(s.name, s.help, labels, buckets=b, registry=registry)
    raise ValueError(f"{s.name}: use family() for {s.type} metrics")


def family(s: MetricSpec, labels: Sequence[str] | None = None) -> Metric:
    """A metric family for a custom collector (values added by the caller)."""
    names = list(s.labels if labels is None else labels)
    if s.type == "counter":
        return CounterMetricFamily(s.name, s.help, labels=names)
    if s.type == "gauge":
        return GaugeMetricFamily(s.name, s.help, labels=names)
    if s.type == "histogram":
        return HistogramMetricFamily(s.name, s.help, labels=names)
    return InfoMetricFamily(s.sample_base, s.help, labels=names)
