"""One mapping table per engine: engine metric names -> the normalized ``llm_*`` schema.

Everything the exporter knows about an engine lives in its :class:`EngineMapping` here: how to
recognise its exposition, where its Prometheus text is served, which label names the model and the
data-parallel rank, the concepts it maps, and hooks for what a table cannot say (vLLM's KV capacity
from ``cache_config_info`` labels, SGLang's aborts inside its request total). ``normalize.py`` has no
engine-specific code. Adding an engine = one mapping appended to :data:`ENGINES` + one fixture of its
newest version under ``tests/fixtures/engines/`` (a test checks both).

Each :class:`Concept` names a catalog metric and its sources in order of preference. The first
alternative present in an exposition wins and the others are ignored, which is how an engine that
exposes both an old and a new name for one thing (vLLM 0.10: ``gpu_cache_usage_perc`` and
``kv_cache_usage_perc``; 0.11: ``time_per_output_token_seconds`` and ``inter_token_latency_seconds``)
yields the concept once. Sources within one alternative are combined (summed), which is how
llama.cpp's computed + cached prompt tokens become one "all prompt tokens" counter.

Meanings every engine is held to (vLLM's, ``vllm/v1/metrics/loggers.py``; the real engines' captures in
tests/fixtures/engines show where each engine differs):
  * ``llm_prompt_tokens_total`` counts every prompt token, cached or computed (vLLM's meaning).
  * ``llm_requests_finished_total{finished_reason="error"}`` counts server-side failures only; client
    errors (validation, templates, HTTP 4xx) are not engine failures and are not counted; load shedding
    is ``llm_admission_rejections_total``; a client that went away is ``abort``.
  * ``llm_time_per_output_token_seconds`` is per request; ``llm_inter_token_latency_seconds`` per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

if TYPE_CHECKING:
    from exporters.engine.normalize import Normalized, Samples

Kind = Literal["counter", "gauge", "histogram"]
# Labels the exporter always sets from the engine's model / DP-rank labels (or the probe's ``model``).
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


@dataclass(frozen=True)
class Relabel:
    """Rewrite one engine label into an output label; ``values`` returns None to drop the sample
    (e.g. TGI's client-side ``validation`` failures are not engine errors)."""

    source: str
    target: str
    values: Callable[[str], str | None] = lambda v: v


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
    relabel: Relabel | None = None

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
    # How series that collapse onto one output combine (labels we drop, e.g. SGLang's is_streaming).
    # Labels listed in the mapping's ``replica_labels`` are copies, always combined with max.
    combine: Literal["sum", "max"] = "sum"


def one(*sources: Source) -> tuple[Source, ...]:
    return sources


# A hook reads the samples it asked for (``EngineMapping.hook_inputs``) and adds or fixes series.
Hook = Callable[["Samples", "Normalized", str], None]


@dataclass(frozen=True)
class EngineMapping:
    kind: str  # the name used in llm_engine_info{kind}, the probe's engine= parameter and errors
    title: str  # human name for help texts
    model_label: str | None
    dp_label: str | None
    concepts: tuple[Concept, ...]
    markers: tuple[str, ...] = field(default=())  # prefixes that identify this engine's exposition
    # Where the engine serves Prometheus text (TensorRT-LLM's /metrics is JSON).
    metrics_path: str = "/metrics"
    # Path with the probe's model, for engines that serve several models behind one port
    # (llama.cpp router mode answers /metrics only with ?model=).
    model_metrics_path: str | None = None
    # Model label values that mean "not named" (TensorRT-LLM's literal "undefined").
    unnamed_models: tuple[str, ...] = ()
    # Labels whose series are copies of one value (SGLang's per-TP-rank scheduler gauges): max, not sum.
    replica_labels: tuple[str, ...] = ()
    hook_inputs: tuple[str, ...] = ()  # extra sample names the hooks read
    hooks: tuple[Hook, ...] = ()  # run after the concepts, in order
    # Schema generation from the samples (vLLM: V0 has no engine label); default "v1".
    schema: Callable[[Samples], str] | None = None
    newest_fixture: str = ""  # tests/fixtures/engines/<file>: the newest version's exposition

    def wanted(self) -> frozenset[str]:
        names = {
            name
            for c in self.concepts
            for alt in c.alternatives
            for src in alt
            for name in src.sample_names()
        }
        return frozenset(names | set(self.hook_inputs))

    def model_name(self, raw: str | None, default_model: str) -> str:
        """The model label value: the engine's own unless it names none, then the probe's ``model``
        parameter, else empty (Prometheus then keeps the target's own ``model`` label, if any)."""
        if raw is None or raw in self.unnamed_models or raw == "":
            return default_model
        return raw


def _c(name: str) -> Source:
    return Source(name, "counter")


def _g(name: str) -> Source:
    return Source(name, "gauge")


def _h(name: str) -> Source:
    return Source(name, "histogram")


def _keep(name: str, kind: Kind, *labels: str) -> Source:
    return Source(name, kind, keep_labels=labels)


# --- vLLM ----------------------------------------------------------------------------------------

_VLLM_CACHE_INFO = "vllm:cache_config_info"
_VLLM_SLEEP = "vllm:engine_sleep_state"


def _vllm_schema(samples: Samples) -> str:
    any_labels = next((lbls for rows in samples.values() for lbls, _ in rows), {})
    return "v1" if "engine" in any_labels else "v0"


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # "None" until profiling finished


def _vllm_kv_capacity(samples: Samples, out: Normalized, default_model: str) -> None:
    """llm_kv_cache_capacity_tokens from cache_config_info: ``kv_cache_size_tokens`` (0.2x+, exact
    for hybrid and sliding-window models) or num_gpu_blocks x block_size (older releases)."""
    dest = {}
    for labels, _ in samples.get(_VLLM_CACHE_INFO, ()):
        capacity = _as_int(labels.get("kv_cache_size_tokens"))
        if capacity is None:
            blocks, size = _as_int(labels.get("num_gpu_blocks")), _as_int(labels.get("block_size"))
            if blocks is None or size is None:
                continue
            capacity = blocks * size
        rank = labels.get("engine", "0")
        # cache_config_info names no model: attribute it to the models served on that rank.
        for model in out.models_on_rank(rank) or {default_model}:
            dest[(("model", model), ("dp_rank", rank))] = float(capacity)
    out.add("llm_kv_cache_capacity_tokens", dest)


def _vllm_sleeping(samples: Samples, out: Normalized, default_model: str) -> None:
    """llm_engine_sleeping = 1 while the engine is in any sleep level (weights offloaded or discarded),
    from engine_sleep_state{sleep_state}: one series per state, 1 on the current one."""
    dest: dict = {}
    for labels, value in samples.get(_VLLM_SLEEP, ()):
        key = (
            ("model", out.model_of(labels.get("model_name"), default_model)),
            ("dp_rank", labels.get("engine", "0")),
        )
        asleep = value if labels.get("sleep_state", "awake") != "awake" else 0.0
        dest[key] = max(dest.get(key, 0.0), 1.0 if asleep > 0 else 0.0)
    out.add("llm_engine_sleeping", dest)


VLLM = EngineMapping(
    kind="vllm",
    title="vLLM",
    model_label="model_name",
    dp_label="engine",
    markers=("vllm:",),
    newest_fixture="vllm-0.33.txt",
    schema=_vllm_schema,
    hook_inputs=(_VLLM_CACHE_INFO, _VLLM_SLEEP),
    hooks=(_vllm_kv_capacity, _vllm_sleeping),
    concepts=(
        Concept("llm_requests_running", (one(_g("vllm:num_requests_running")),)),
        Concept("llm_requests_waiting", (one(_g("vllm:num_requests_waiting")),)),
        Concept(
            "llm_requests_waiting_by_reason",
            (one(_keep("vllm:num_requests_waiting_by_reason", "gauge", "reason")),),
        ),
        Concept(
            "llm_admission_rejections_total",
            (one(_keep("vllm:admission_rejections_total", "counter", "reason")),),
        ),
        Concept(
            "llm_kv_cache_usage_ratio",
            (one(_g("vllm:kv_cache_usage_perc")), one(_g("vllm:gpu_cache_usage_perc"))),
            combine="max",
        ),
        Concept("llm_prompt_tokens_total", (one(_c("vllm:prompt_tokens_total")),)),
        Concept("llm_prompt_tokens_cached_total", (one(_c("vllm:prompt_tokens_cached_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("vllm:generation_tokens_total")),)),
        Concept("llm_preemptions_total", (one(_c("vllm:num_preemptions_total")),)),
        Concept(
            "llm_requests_finished_total",
            (one(_keep("vllm:request_success_total", "counter", "finished_reason")),),
        ),
        Concept(
            "llm_prefix_cache_queries_total",
            (one(_c("vllm:prefix_cache_queries_total")), one(_c("vllm:gpu_prefix_cache_queries_total"))),
        ),
        Concept(
            "llm_prefix_cache_hits_total",
            (one(_c("vllm:prefix_cache_hits_total")), one(_c("vllm:gpu_prefix_cache_hits_total"))),
        ),
        Concept("llm_spec_decode_draft_tokens_total", (one(_c("vllm:spec_decode_num_draft_tokens_total")),)),
        Concept(
            "llm_spec_decode_accepted_tokens_total",
            (one(_c("vllm:spec_decode_num_accepted_tokens_total")),),
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
        Concept("llm_request_prompt_tokens", (one(_h("vllm:request_prompt_tokens")),)),
        Concept("llm_request_generation_tokens", (one(_h("vllm:request_generation_tokens")),)),
    ),
)


# --- SGLang --------------------------------------------------------------------------------------

_SGLANG_ABORTED = "sglang:num_aborted_requests_total"


def _sglang_aborts_once(samples: Samples, out: Normalized, default_model: str) -> None:
    """``num_requests_total`` counts every finished request, aborted ones included, and
    ``num_aborted_requests_total`` counts the aborted ones again: finished = total - aborted."""
    finished = out.series.get("llm_requests_finished_total", {})
    aborted: dict = {}
    for labels, value in samples.get(_SGLANG_ABORTED, ()):
        model = out.model_of(labels.get("model_name"), default_model)
        key = (("model", model), ("dp_rank", labels.get("dp_rank", "0")))
        aborted[key] = aborted.get(key, 0.0) + value
    for key, value in aborted.items():
        done = (*key, ("finished_reason", "finished"))
        if done in finished:
            finished[done] = max(0.0, finished[done] - value)
        finished[(*key, ("finished_reason", "abort"))] = value
    if aborted and "llm_requests_finished_total" not in out.targets:
        out.series["llm_requests_finished_total"] = finished
        out.targets.append("llm_requests_finished_total")


SGLANG = EngineMapping(
    kind="sglang",
    title="SGLang",
    model_label="model_name",
    dp_label="dp_rank",
    markers=("sglang:",),
    newest_fixture="sglang-0.5.23.txt",
    # Scheduler gauges come once per TP/PP/EP rank with the same value; request counters come from the
    # tokenizer process, split by is_streaming (0.5.x): summed.
    replica_labels=("tp_rank", "pp_rank", "moe_ep_rank"),
    hook_inputs=(_SGLANG_ABORTED,),
    hooks=(_sglang_aborts_once,),
    concepts=(
        Concept("llm_requests_running", (one(_g("sglang:num_running_reqs")),)),
        Concept("llm_requests_waiting", (one(_g("sglang:num_queue_reqs")),)),
        Concept("llm_kv_cache_usage_ratio", (one(_g("sglang:token_usage")),), combine="max"),
        Concept("llm_kv_cache_capacity_tokens", (one(_g("sglang:max_total_num_tokens")),)),
        Concept("llm_prompt_tokens_total", (one(_c("sglang:prompt_tokens_total")),)),
        Concept("llm_prompt_tokens_cached_total", (one(_c("sglang:cached_tokens_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("sglang:generation_tokens_total")),)),
        Concept("llm_preemptions_total", (one(_c("sglang:num_retracted_requests_total")),)),
        # SGLang tells finished from aborted, not stop from length: "finished" is stop or length.
        Concept(
            "llm_requests_finished_total",
            (
                one(
                    Source(
                        "sglang:num_requests_total", "counter", set_labels=(("finished_reason", "finished"),)
                    )
                ),
            ),
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


# --- TGI -----------------------------------------------------------------------------------------


def _tgi_failure_reason(err: str) -> str | None:
    """tgi_request_failure{err} -> finished_reason: only server-side failures are ``error``; a client
    that went away is ``abort``; validation/template (4xx) and overload (429) are not finishes."""
    if err in ("dropped", "cancelled"):
        return "abort"
    if err.startswith(("generation", "incomplete", "stream_serialization")):
        return "error"
    return None


TGI = EngineMapping(
    kind="tgi",
    title="TGI",
    model_label=None,
    dp_label=None,
    markers=("tgi_",),
    newest_fixture="tgi-3.3.txt",
    concepts=(
        Concept("llm_requests_running", (one(_g("tgi_batch_current_size")),)),
        Concept("llm_requests_waiting", (one(_g("tgi_queue_size")),)),
        Concept(
            "llm_admission_rejections_total",
            (
                one(
                    Source(
                        "tgi_request_failure",
                        "counter",
                        match=(("err", "overloaded"),),
                        set_labels=(("reason", "overloaded"),),
                    )
                ),
            ),
        ),
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
                    Source(
                        "tgi_request_failure",
                        "counter",
                        relabel=Relabel("err", "finished_reason", _tgi_failure_reason),
                    ),
                ),
            ),
        ),
        # TGI's per-request mean time per token divides by all generated tokens and its clock starts at
        # inference start, so it includes prefill (catalog help says so); no TTFT/ITL exist.
        Concept("llm_time_per_output_token_seconds", (one(_h("tgi_request_mean_time_per_token_duration")),)),
        Concept("llm_e2e_request_latency_seconds", (one(_h("tgi_request_duration")),)),
        Concept("llm_request_queue_time_seconds", (one(_h("tgi_request_queue_duration")),)),
        Concept("llm_request_prompt_tokens", (one(_h("tgi_request_input_length")),)),
        Concept("llm_request_generation_tokens", (one(_h("tgi_request_generated_tokens")),)),
    ),
)


# --- llama.cpp -----------------------------------------------------------------------------------

LLAMA_CPP = EngineMapping(
    kind="llama.cpp",
    title="llama.cpp",
    model_label=None,
    dp_label=None,
    markers=("llamacpp:",),
    newest_fixture="real/llamacpp-b11434-load.txt",
    model_metrics_path="/metrics?model={model}",
    concepts=(
        Concept("llm_requests_running", (one(_g("llamacpp:requests_processing")),)),
        Concept("llm_requests_waiting", (one(_g("llamacpp:requests_deferred")),)),
        # prompt_tokens_total excludes cache hits; the cached counter (2026-08+) adds them back so the
        # concept means all prompt tokens, as vLLM's does.
        Concept(
            "llm_prompt_tokens_total",
            (one(_c("llamacpp:prompt_tokens_total"), _c("llamacpp:prompt_tokens_cached_total")),),
        ),
        Concept("llm_prompt_tokens_cached_total", (one(_c("llamacpp:prompt_tokens_cached_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("llamacpp:tokens_predicted_total")),)),
        Concept(
            "llm_spec_decode_draft_tokens_total",
            (one(_c("llamacpp:spec_decode_num_draft_tokens_total")),),
        ),
        Concept(
            "llm_spec_decode_accepted_tokens_total",
            (one(_c("llamacpp:spec_decode_num_accepted_tokens_total")),),
        ),
    ),
)


# --- TensorRT-LLM --------------------------------------------------------------------------------

_TRTLLM_BLOCKS = "trtllm_kv_cache_max_blocks"
_TRTLLM_TOKENS_PER_BLOCK = "trtllm_kv_cache_tokens_per_block"


def _trtllm_finished_reason(reason: str) -> str | None:
    # A cancelled request is the client's (abort); a timed-out one is the server failing its budget.
    return {"cancelled": "abort", "timeout": "error", "timed_out": "error"}.get(reason, reason)


def _trtllm_server_error(http_code: str) -> str | None:
    return "error" if http_code.startswith("5") else None  # 4xx are the client's errors


def _trtllm_capacity(samples: Samples, out: Normalized, default_model: str) -> None:
    """llm_kv_cache_capacity_tokens = kv_cache_max_blocks x kv_cache_tokens_per_block."""
    per_block = {
        out.model_of(labels.get("model_name"), default_model): value
        for labels, value in samples.get(_TRTLLM_TOKENS_PER_BLOCK, ())
    }
    dest = {}
    for labels, blocks in samples.get(_TRTLLM_BLOCKS, ()):
        model = out.model_of(labels.get("model_name"), default_model)
        if model in per_block:
            dest[(("model", model), ("dp_rank", "0"))] = blocks * per_block[model]
    out.add("llm_kv_cache_capacity_tokens", dest)


TRTLLM = EngineMapping(
    kind="trtllm",
    title="TensorRT-LLM",
    model_label="model_name",
    dp_label=None,
    markers=("trtllm_", "trtllm:"),
    metrics_path="/prometheus/metrics",
    unnamed_models=("undefined",),
    newest_fixture="trtllm-1.2.txt",
    hook_inputs=(_TRTLLM_BLOCKS, _TRTLLM_TOKENS_PER_BLOCK),
    hooks=(_trtllm_capacity,),
    concepts=(
        Concept("llm_requests_running", (one(_g("trtllm_num_requests_running")),)),
        Concept("llm_requests_waiting", (one(_g("trtllm_num_requests_waiting")),)),
        Concept("llm_kv_cache_usage_ratio", (one(_g("trtllm_kv_cache_utilization")),), combine="max"),
        Concept("llm_prompt_tokens_total", (one(_c("trtllm_prompt_tokens_total")),)),
        Concept("llm_prompt_tokens_cached_total", (one(_c("trtllm_prompt_cached_tokens_total")),)),
        Concept("llm_generation_tokens_total", (one(_c("trtllm_generation_tokens_total")),)),
        Concept(
            "llm_requests_finished_total",
            (
                one(
                    Source(
                        "trtllm_request_success_total",
                        "counter",
                        relabel=Relabel("finished_reason", "finished_reason", _trtllm_finished_reason),
                    ),
                    Source(
                        "trtllm_request_error_total",
                        "counter",
                        relabel=Relabel("http_code", "finished_reason", _trtllm_server_error),
                    ),
                ),
            ),
        ),
        Concept(
            "llm_spec_decode_draft_tokens_total", (one(_c("trtllm_spec_decode_num_draft_tokens_total")),)
        ),
        Concept(
            "llm_spec_decode_accepted_tokens_total",
            (one(_c("trtllm_spec_decode_num_accepted_tokens_total")),),
        ),
        Concept("llm_time_to_first_token_seconds", (one(_h("trtllm_time_to_first_token_seconds")),)),
        # Per request: (last token - first token) / (tokens - 1), i.e. TPOT, not a per-step gap.
        Concept("llm_time_per_output_token_seconds", (one(_h("trtllm_time_per_output_token_seconds")),)),
        Concept("llm_e2e_request_latency_seconds", (one(_h("trtllm_e2e_request_latency_seconds")),)),
        Concept("llm_request_queue_time_seconds", (one(_h("trtllm_request_queue_time_seconds")),)),
        Concept("llm_request_prefill_time_seconds", (one(_h("trtllm_request_prefill_time_seconds")),)),
        Concept("llm_request_decode_time_seconds", (one(_h("trtllm_request_decode_time_seconds")),)),
    ),
)

# The registry. Detection order matters only if an exposition carried several engines' names.
ENGINES: tuple[EngineMapping, ...] = (VLLM, SGLANG, TRTLLM, LLAMA_CPP, TGI)
_BY_KIND = {e.kind: e for e in ENGINES}


def engine_names() -> tuple[str, ...]:
    """The engines the exporter knows, for help texts, CLI choices and error messages."""
    return tuple(e.kind for e in ENGINES)


def known_engines_text() -> str:
    return ", ".join(engine_names())


def by_kind(kind: str) -> EngineMapping:
    """The mapping for an engine name; ValueError lists the known ones."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown engine {kind!r}; known engines: {known_engines_text()}") from None


def metrics_paths(engine: str | None = None, model: str = "") -> tuple[str, ...]:
    """Paths to fetch, in order, until one answers Prometheus text: the named engine's own, or (engine
    unknown) ``/metrics`` first, then every other path a known engine uses, then the per-model paths
    (llama.cpp router mode) when the probe names a model."""
    engines = (by_kind(engine),) if engine else ENGINES
    plain = [e.metrics_path for e in sorted(engines, key=lambda e: e.metrics_path != "/metrics")]
    per_model = [
        e.model_metrics_path.format(model=quote(model, safe=""))
        for e in engines
        if e.model_metrics_path and model
    ]
    return tuple(dict.fromkeys(plain + per_model))
