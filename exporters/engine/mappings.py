"""One mapping table per engine: engine metric names -> the normalized ``llm_*`` schema.

Each :class:`Concept` names a catalog metric and its sources in order of preference. The first
alternative present in an exposition wins and the others are ignored, which is how an engine that
exposes both an old and a new name for one thing (vLLM 0.10: ``gpu_cache_usage_perc`` and
``kv_cache_usage_perc``; 0.11: ``time_per_output_token_seconds`` and ``inter_token_latency_seconds``)
yields the concept once. Sources come from reference/vllm-metrics.md section 5.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Source:
    name: str  # family name as exposed (histograms: the base name, without _bucket/_sum/_count)
    kind: Kind
    # Only samples whose labels have these values (e.g. Triton's request_type="waiting").
    match: tuple[tuple[str, str], ...] = ()
    # Labels to set on the output (e.g. finished_reason for engines that have no such label).
    set_labels: tuple[tuple[str, str], ...] = ()
    # Take one component of a histogram as a counter (TGI's token-count histograms: "_sum").
    component: str = ""
    # Engine labels copied to the output unchanged (beyond model/dp_rank).
    keep_labels: tuple[str, ...] = ()

    def sample_names(self) -> tuple[str, ...]:
        if self.component:
            return (self.name + self.component,)
        if self.kind == "histogram":
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        return (self.name,)


@dataclass(frozen=True)
class Concept:
    target: str  # catalog name
    alternatives: tuple[tuple[Source, ...], ...]
    # How series that collapse onto one output (labels we drop, e.g. SGLang tp_rank) combine.
    combine: Literal["sum", "max"] = "sum"


def one(*sources: Source) -> tuple[Source, ...]:
    return sources


@dataclass(frozen=True)
class EngineMapping:
    kind: str  # vllm | sglang | tgi | llama.cpp | trtllm
    model_label: str | None
    dp_label: str | None
    concepts: tuple[Concept, ...]
    markers: tuple[str, ...] = field(default=())  # substrings that identify this engine's exposition

    def wanted(self) -> set[str]:
        return {
            name
            for c in self.concepts
            for alt in c.alternatives
            for src in alt
            for name in src.sample_names()
        }


def _c(name: str) -> Source:
    return Source(name, "counter")


def _g(name: str) -> Source:
    return Source(name, "gauge")


def _h(name: str) -> Source:
    return Source(name, "histogram")


VLLM = EngineMapping(
    kind="vllm",
    model_label="model_name",
    dp_label="engine",
    markers=("vllm:",),
    concepts=(
        Concept("llm_requests_running", (one(_g("vllm:num_requests_running")),)),
        Concept("llm_requests_waiting", (one(_g("vllm:num_requests_waiting")),)),
        Concept(
            "llm_kv_cache_usage_ratio",
            (one(_g("vllm:kv_cache_usage_perc")), one(_g("vllm:gpu_cache_usage_perc"))),
            combine="max",
        ),
        Concept("llm_prompt_tokens_total", (one(_c("vllm:prompt_tokens_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("vllm:generation_tokens_total")),)),
        Concept("llm_preemptions_total", (one(_c("vllm:num_preemptions_total")),)),
        Concept(
            "llm_requests_finished_total",
            (one(Source("vllm:request_success_total", "counter", keep_labels=("finished_reason",))),),
        ),
        Concept(
            "llm_prefix_cache_queries_total",
            (one(_c("vllm:prefix_cache_queries_total")), one(_c("vllm:gpu_prefix_cache_queries_total"))),
        ),
        Concept(
            "llm_prefix_cache_hits_total",
            (one(_c("vllm:prefix_cache_hits_total")), one(_c("vllm:gpu_prefix_cache_hits_total"))),
        ),
        Concept("llm_time_to_first_token_seconds", (one(_h("vllm:time_to_first_token_seconds")),)),
        Concept(
            "llm_inter_token_latency_seconds",
            (one(_h("vllm:inter_token_latency_seconds")), one(_h("vllm:time_per_output_token_seconds"))),
        ),
        Concept(
            "llm_time_per_output_token_seconds", (one(_h("vllm:request_time_per_output_token_seconds")),)
        ),
        Concept("llm_e2e_request_latency_seconds", (one(_h("vllm:e2e_request_latency_seconds")),)),
        Concept(
            "llm_request_queue_time_seconds",
            (one(_h("vllm:request_queue_time_seconds")), one(_h("vllm:time_in_queue_requests"))),
        ),
        Concept("llm_request_prefill_time_seconds", (one(_h("vllm:request_prefill_time_seconds")),)),
        Concept("llm_request_decode_time_seconds", (one(_h("vllm:request_decode_time_seconds")),)),
    ),
)

SGLANG = EngineMapping(
    kind="sglang",
    model_label="model_name",
    dp_label="dp_rank",
    markers=("sglang:",),
    concepts=(
        # Scheduler gauges are reported per TP rank with the same value: combine with max.
        Concept("llm_requests_running", (one(_g("sglang:num_running_reqs")),), combine="max"),
        Concept("llm_requests_waiting", (one(_g("sglang:num_queue_reqs")),), combine="max"),
        Concept("llm_kv_cache_usage_ratio", (one(_g("sglang:token_usage")),), combine="max"),
        Concept("llm_prompt_tokens_total", (one(_c("sglang:prompt_tokens_total")),), combine="max"),
        Concept("llm_generation_tokens_total", (one(_c("sglang:generation_tokens_total")),), combine="max"),
        Concept("llm_preemptions_total", (one(_c("sglang:num_retracted_requests_total")),), combine="max"),
        # SGLang counts all finished requests and, separately, aborted ones; it has no other reasons.
        Concept(
            "llm_requests_finished_total",
            (
                one(
                    Source(
                        "sglang:num_requests_total", "counter", set_labels=(("finished_reason", "finished"),)
                    ),
                    Source(
                        "sglang:num_aborted_requests_total",
                        "counter",
                        set_labels=(("finished_reason", "abort"),),
                    ),
                ),
            ),
            combine="max",
        ),
        Concept("llm_time_to_first_token_seconds", (one(_h("sglang:time_to_first_token_seconds")),)),
        Concept("llm_inter_token_latency_seconds", (one(_h("sglang:inter_token_latency_seconds")),)),
        Concept(
            "llm_time_per_output_token_seconds", (one(_h("sglang:request_time_per_output_token_seconds")),)
        ),
        Concept("llm_e2e_request_latency_seconds", (one(_h("sglang:e2e_request_latency_seconds")),)),
        Concept("llm_request_queue_time_seconds", (one(_h("sglang:queue_time_seconds")),)),
    ),
)

TGI = EngineMapping(
    kind="tgi",
    model_label=None,
    dp_label=None,
    markers=("tgi_",),
    concepts=(
        Concept("llm_requests_running", (one(_g("tgi_batch_current_size")),)),
        Concept("llm_requests_waiting", (one(_g("tgi_queue_size")),)),
        Concept(
            "llm_prompt_tokens_total",
            (one(Source("tgi_request_input_length", "histogram", component="_sum")),),
        ),
        Concept(
            "llm_generation_tokens_total",
            (one(Source("tgi_request_generated_tokens", "histogram", component="_sum")),),
        ),
        Concept(
            "llm_requests_finished_total",
            (
                one(
                    Source("tgi_request_success", "counter", set_labels=(("finished_reason", "success"),)),
                    Source("tgi_request_failure", "counter", set_labels=(("finished_reason", "error"),)),
                ),
            ),
        ),
        Concept("llm_time_per_output_token_seconds", (one(_h("tgi_request_mean_time_per_token_duration")),)),
        Concept("llm_e2e_request_latency_seconds", (one(_h("tgi_request_duration")),)),
        Concept("llm_request_queue_time_seconds", (one(_h("tgi_request_queue_duration")),)),
    ),
)

LLAMA_CPP = EngineMapping(
    kind="llama.cpp",
    model_label=None,
    dp_label=None,
    markers=("llamacpp:",),
    concepts=(
        Concept("llm_requests_running", (one(_g("llamacpp:requests_processing")),)),
        Concept("llm_requests_waiting", (one(_g("llamacpp:requests_deferred")),)),
        Concept("llm_kv_cache_usage_ratio", (one(_g("llamacpp:kv_cache_usage_ratio")),)),
        Concept("llm_prompt_tokens_total", (one(_c("llamacpp:prompt_tokens_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("llamacpp:tokens_predicted_total")),)),
    ),
)

TRTLLM = EngineMapping(
    kind="trtllm",
    model_label="model_name",
    dp_label=None,
    markers=("trtllm_", "trtllm:"),
    concepts=(
        Concept("llm_requests_running", (one(_g("trtllm_num_requests_running")),)),
        Concept("llm_requests_waiting", (one(_g("trtllm_num_requests_waiting")),)),
        Concept("llm_kv_cache_usage_ratio", (one(_g("trtllm_kv_cache_utilization")),), combine="max"),
        Concept("llm_prompt_tokens_total", (one(_c("trtllm_prompt_tokens_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("trtllm_generation_tokens_total")),)),
        Concept(
            "llm_requests_finished_total",
            (one(Source("trtllm_request_success_total", "counter", keep_labels=("finished_reason",))),),
        ),
        Concept("llm_time_to_first_token_seconds", (one(_h("trtllm_time_to_first_token_seconds")),)),
        Concept("llm_inter_token_latency_seconds", (one(_h("trtllm_time_per_output_token_seconds")),)),
        Concept("llm_e2e_request_latency_seconds", (one(_h("trtllm_e2e_request_latency_seconds")),)),
        Concept("llm_request_queue_time_seconds", (one(_h("trtllm_request_queue_time_seconds")),)),
        Concept("llm_request_prefill_time_seconds", (one(_h("trtllm_request_prefill_time_seconds")),)),
        Concept("llm_request_decode_time_seconds", (one(_h("trtllm_request_decode_time_seconds")),)),
    ),
)

# Detection order matters only if an exposition carried several engines' names (it shouldn't).
ENGINES: tuple[EngineMapping, ...] = (VLLM, SGLANG, TRTLLM, LLAMA_CPP, TGI)
