"""vLLM V1 ``/metrics`` for the simulator: names, help, labels and buckets from the catalog.

prometheus_client renders exactly what vLLM's own prometheus_client does (sorted labels,
``_total``, ``_created`` series in single-process mode), so a scraper cannot tell them apart.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from observer.catalog import VLLM_V1, make_metric, spec, vllm_request_tokens_buckets
from observer.simulator.scheduler import Batch, SimRequest, StepOutcome

# vLLM pre-creates one series per reason (0.18+ list), so rates exist before the first failure.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class VllmMetrics:
    def __init__(
        self,
        model: str,
        engine: int,
        max_model_len: int,
        cache_config: dict[str, str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        if registry is None:
            # vLLM's /metrics carries the default process/python collectors too.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        token_buckets = vllm_request_tokens_buckets(max_model_len)
        labels = {"model_name": model, "engine": str(engine)}

        def m(name: str):
            s = spec(name)
            buckets = token_buckets if s.type == "histogram" and not s.buckets else None
            return make_metric(s, self.registry, buckets=buckets)

        metrics = {s.name: m(s.name) for s in VLLM_V1 if s.name != "vllm:cache_config_info"}

        def bind(name: str):
            return metrics[name].labels(**labels)

        self.running = bind("vllm:num_requests_running")
        self.waiting = bind("vllm:num_requests_waiting")
        self.kv_usage = bind("vllm:kv_cache_usage_perc")
        self.preemptions = bind("vllm:num_preemptions_total")
        self.prompt_tokens = bind("vllm:prompt_tokens_total")
        self.generation_tokens = bind("vllm:generation_tokens_total")
        self.prefix_queries = bind("vllm:prefix_cache_queries_total")
        self.prefix_hits = bind("vllm:prefix_cache_hits_total")
        self.iteration_tokens = bind("vllm:iteration_tokens_total")
        self.ttft = bind("vllm:time_to_first_token_seconds")
        self.itl = bind("vllm:inter_token_latency_seconds")
        self.tpot = bind("vllm:request_time_per_output_token_seconds")
        self.e2e = bind("vllm:e2e_request_latency_seconds")
        self.queue = bind("vllm:request_queue_time_seconds")
        self.inference = bind("vllm:request_inference_time_seconds")
        self.prefill = bind("vllm:request_prefill_time_seconds")
        self.decode = bind("vllm:request_decode_time_seconds")
        self.req_prompt_tokens = bind("vllm:request_prompt_tokens")
        self.req_generation_tokens = bind("vllm:request_generation_tokens")
        self.req_max_tokens = bind("vllm:request_params_max_tokens")
        self.req_max_generation = bind("vllm:request_max_num_generation_tokens")
        self.req_params_n = bind("vllm:request_params_n")
        self.req_preemptions = bind("vllm:request_num_preemptions")
        self.req_prefill_computed = bind("vllm:request_prefill_kv_computed_tokens")
        self.prompt_tokens_cached = bind("vllm:prompt_tokens_cached_total")
        by_source = metrics["vllm:prompt_tokens_by_source_total"]
        self.prompt_computed = by_source.labels(source="local_compute", **labels)
        self.prompt_cache_hit = by_source.labels(source="local_cache_hit", **labels)
        by_source.labels(source="external_kv_transfer", **labels)
        cached_by_source = metrics["vllm:prompt_tokens_cached_by_source_total"]
        self.cached_device = cached_by_source.labels(source="device", **labels)
        for source in ("host", "p2p", "disk", "external_unspecified"):
            cached_by_source.labels(source=source, **labels)
        # Features the simulator does not have stay at 0, as a text-only vLLM without a KV connector
        # shows them: the families exist, so dashboards and the exporter see real vLLM's shape.
        for name in (
            "vllm:external_prefix_cache_queries_total",
            "vllm:external_prefix_cache_hits_total",
            "vllm:mm_cache_queries_total",
            "vllm:mm_cache_hits_total",
        ):
            bind(name)
        by_reason = metrics["vllm:num_requests_waiting_by_reason"]
        self.waiting_capacity = by_reason.labels(reason="capacity", **labels)
        by_reason.labels(reason="deferred", **labels).set(0)
        sleep = metrics["vllm:engine_sleep_state"]
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.labels(sleep_state=state, **labels).set(value)
        rejections = metrics["vllm:admission_rejections_total"]
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):  # no queue limit: always 0
            rejections.labels(model_name=model, reason=reason)
        success = metrics["vllm:request_success_total"]
        self.finished = {r: success.labels(finished_reason=r, **labels) for r in FINISH_REASONS}

        cache_info = make_metric(spec("vllm:cache_config_info"), self.registry)
        cache_info.labels(engine=str(engine), **cache_config).set(1)

    def on_step_idle(self) -> None:
        self.running.set(0)
        self.waiting.set(0)
        self.waiting_capacity.set(0)
        self.kv_usage.set(0)

    def on_step(self, batch: Batch, outcome: StepOutcome, running: int, waiting: int, kv: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)  # the simulator defers nothing: every waiter waits for capacity
        self.kv_usage.set(kv)
        if batch.preempted:
            self.preemptions.inc(len(batch.preempted))
        if batch.prefix_queries:
            self.prefix_queries.inc(batch.prefix_queries)
            self.prefix_hits.inc(batch.prefix_hits)
        if batch.num_tokens:
            self.iteration_tokens.observe(batch.num_tokens)
        if outcome.sampled:
            self.generation_tokens.inc(len(outcome.sampled))
        for req in outcome.first_tokens:
            self.prompt_tokens.inc(req.prompt_tokens)  # all prompt tokens, cached ones included
            if req.cached_tokens:
                self.prompt_tokens_cached.inc(req.cached_tokens)
                self.prompt_cache_hit.inc(req.cached_tokens)
                self.cached_device.inc(req.cached_tokens)
            self.prompt_computed.inc(req.prompt_tokens - req.cached_tokens)
            self.ttft.observe(req.first_token - req.arrival)
        observe_itl = self.itl.observe
        for gap in outcome.inter_token_gaps:
            observe_itl(gap)

    def on_finished(self, req: SimRequest, max_tokens_set: bool, params_n: int | None = 1) -> None:
        """One finished engine request; ``params_n`` is observed once per API request (its first choice)."""
        self.finished[req.finished_reason or "error"].inc()
        if req.finished_reason == "abort" and req.first_token is None:
            return  # never produced anything: vLLM records only the finish reason
        end = req.finished_at or req.last_token or req.arrival
        self.e2e.observe(end - req.arrival)
        self.req_prompt_tokens.observe(req.prompt_tokens)
        self.req_generation_tokens.observe(req.output_tokens)
        self.req_max_generation.observe(req.max_tokens)
        self.req_preemptions.observe(req.num_preemptions)
        self.req_prefill_computed.observe(req.prompt_tokens - req.cached_tokens)
        if params_n is not None:
            self.req_params_n.observe(params_n)
        if max_tokens_set:
            self.req_max_tokens.observe(req.max_tokens)
        if req.first_scheduled is not None:
            self.queue.observe(req.first_scheduled - req.arrival)
            self.inference.observe(end - req.first_scheduled)
            if req.first_token is not None:
                self.prefill.observe(req.first_token - req.first_scheduled)
        if req.first_token is not None and req.last_token is not None:
            decode = req.last_token - req.first_token
            self.decode.observe(decode)
            self.tpot.observe(decode / (req.output_tokens - 1) if req.output_tokens > 1 else 0.0)
