"""LLM Serving: is serving healthy and where is the bottleneck."""

from __future__ import annotations

from alerts.promql import histogram_quantile
from alerts.recording import slo_windows
from dashboards.lib import (
    ENGINE,
    ORANGE,
    RED,
    RI,
    Board,
    Panel,
    Q,
    Row,
    burn_thresholds,
    column,
    engine_variables,
    percentiles,
    stat,
    timeseries,
)
from observer.config import Settings

UID = "llm-serving"
E = ENGINE


def _ratio_by(by: str, bad: str, total: str) -> str:
    """A ratio aggregated from counts: sum the numerators and the denominators, then divide."""
    return f"sum by ({by}) ({bad}{{{E}}}) / sum by ({by}) ({total}{{{E}}})"


def build(s: Settings) -> Board:
    slo, d = s.slo, s.dashboards
    budget, err_budget = 1 - slo.ttft_objective, 1 - slo.error_objective
    pages = [w for w in slo.burn_windows if w.severity == "critical"] or slo.burn_windows
    page_factor = min(w.factor for w in pages)
    kv = [(slo.kv_cache_warning_ratio, ORANGE), (slo.kv_cache_critical_ratio, RED)]
    failed = f'finished_reason=~"{"|".join(("error", "abort"))}"'
    overview = Row(
        "Overview",
        [
            stat(
                "Engines down",
                "Engines not answering their probe (llm_engine_up == 0). Above 0: see LLMEngineDown and the "
                "reason in the probe errors panel below.",
                "short",
                'count(llm_engine_up{job=~"$job",instance=~"$instance"} == 0) or vector(0)',
                thresholds=[(1, RED)],
            ),
            stat(
                "Request rate",
                "Finished requests per second across the selected engines.",
                "reqps",
                f"sum(rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                bad=None,
            ),
            stat(
                "Error + abort ratio",
                f"Share of requests ending in error or abort. Orange above the objective's budget ({err_budget:.2%}), "
                f"red at the fastest page burn ({page_factor:g}x). Aborts usually mean clients gave up while queueing.",
                "percentunit",
                f"sum(rate(llm_requests_finished_total{{{E},{failed}}}[{RI}])) / "
                f"sum(rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                thresholds=[(err_budget, ORANGE), (page_factor * err_budget, RED)],
            ),
            stat(
                "TTFT p95",
                f"Time to first token, 95th percentile: the same expression as the recorded series the alerts read. "
                f"Target: {slo.ttft_target_s:g}s.",
                "s",
                f"max({'llm:time_to_first_token_seconds:p95_5m'}{{{E}}})",
                thresholds=[(slo.ttft_target_s * d.near_target_fraction, ORANGE), (slo.ttft_target_s, RED)],
            ),
            stat(
                "KV cache (max)",
                "Fullest KV cache among the selected engines. Near 100% new requests wait for blocks.",
                "percentunit",
                f"max(llm_kv_cache_usage_ratio{{{E}}})",
                thresholds=kv,
                min=0,
                max=1,
            ),
            stat(
                "Waiting requests",
                "Requests queued in the schedulers. A sustained value above "
                f"{slo.queue_waiting_threshold:g} means demand exceeds capacity.",
                "short",
                f"sum(llm_requests_waiting{{{E}}})",
                thresholds=[(d.waiting_requests_notice, ORANGE), (slo.queue_waiting_threshold, RED)],
            ),
        ],
    )
    throughput = Row(
        "Throughput and request sizes",
        [
            timeseries(
                "Token throughput: prompt vs generation",
                "Prompt tokens/s measure prefill speed, generation tokens/s decode speed. Prompt up with generation "
                "flat: longer prompts (RAG, tools).",
                "count:tok/s",
                [
                    Q(f"sum by (model) (rate(llm_prompt_tokens_total{{{E}}}[{RI}]))", "{{model}} prompt"),
                    Q(
                        f"sum by (model) (rate(llm_generation_tokens_total{{{E}}}[{RI}]))",
                        "{{model}} generation",
                    ),
                ],
            ),
            timeseries(
                "Finished requests by reason",
                "stop = the model ended, length = max_tokens hit, abort = client gave up, error = engine failed. "
                "Growing abort with rising TTFT = users timing out in the queue.",
                "reqps",
                [
                    Q(
                        f"sum by (finished_reason) (rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                        "{{finished_reason}}",
                    )
                ],
                stack=True,
            ),
            timeseries(
                "Request size: prompt tokens",
                "Prompt tokens per request, p50/p95/p99. A rising p95 makes prefill dearer and TTFT longer.",
                "count:tok",
                [
                    Q(histogram_quantile(q, "llm_request_prompt_tokens", E, RI), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
            ),
            timeseries(
                "Request size: generated tokens",
                "Generated tokens per request, p50/p95/p99. Longer answers hold KV blocks longer.",
                "count:tok",
                [
                    Q(histogram_quantile(q, "llm_request_generation_tokens", E, RI), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
            ),
        ],
    )
    scheduler = Row(
        "Scheduler and KV cache",
        [
            timeseries(
                "Running vs waiting",
                "Running = in the batch; waiting = queued. A surge of waiting while running is flat at its "
                "maximum is overload: add replicas or shed load.",
                "short",
                [
                    Q(f"sum by (instance) (llm_requests_running{{{E}}})", "{{instance}} running"),
                    Q(f"sum by (instance) (llm_requests_waiting{{{E}}})", "{{instance}} waiting"),
                ],
            ),
            timeseries(
                "KV cache usage",
                "Fraction of KV blocks in use, with the alert thresholds. Near 100% requests wait for blocks and "
                "get preempted; TTFT rises with the queue.",
                "percentunit",
                [Q(f"max by (instance, model) (llm_kv_cache_usage_ratio{{{E}}})", "{{instance}} {{model}}")],
                thresholds=kv,
                threshold_lines=True,
                min=0,
                max=1,
            ),
            timeseries(
                "Preemptions",
                "Requests evicted from the KV cache and recomputed, per second. Every preemption repeats a "
                "prefill: throughput drops while latency rises.",
                "count:/s",
                [Q(f"sum by (instance) (rate(llm_preemptions_total{{{E}}}[{RI}]))", "{{instance}}")],
                thresholds=[(slo.preemptions_per_second_threshold, RED)],
                threshold_lines=True,
            ),
            timeseries(
                "Prefix cache hit rate",
                "Share of prompt tokens served from the prefix cache. A drop means prompts stopped sharing "
                "prefixes (system prompt change, cache too small): prefill gets dearer.",
                "percentunit",
                [
                    Q(
                        f"sum by (model) (rate(llm_prefix_cache_hits_total{{{E}}}[{RI}])) / "
                        f"sum by (model) (rate(llm_prefix_cache_queries_total{{{E}}}[{RI}]))",
                        "{{model}}",
                    )
                ],
                bad=None,
                min=0,
                max=1,
            ),
        ],
    )
    latency = Row(
        "Latency",
        [
            percentiles(
                "Time to first token",
                "TTFT p50/p95/p99 with the SLO target. Peaks mean queueing or expensive prefill (long prompts) "
                "or cold starts. TTFT spiking while KV sits near 100% = requests waiting for blocks.",
                "llm_time_to_first_token_seconds",
                E,
                thresholds=[(slo.ttft_target_s, RED)],
                threshold_lines=True,
            ),
            Panel(
                "heatmap",
                "TTFT distribution",
                "Requests per second in each TTFT bucket over time. Two bands = two populations (e.g. short chat "
                "vs long RAG prompts).",
                "s",
                [
                    Q(
                        f"sum by (le) (rate(llm_time_to_first_token_seconds_bucket{{{E}}}[{RI}]))",
                        "{{le}}",
                        fmt="heatmap",
                    )
                ],
                bad=None,
            ),
            percentiles(
                "Inter-token latency",
                "Gap between generated tokens (per step), p50/p95/p99, with the target. Up = decode is slow: "
                "batch too large, preemptions, throttled GPU.",
                "llm_inter_token_latency_seconds",
                E,
                thresholds=[(slo.itl_p95_target_s, RED)],
                threshold_lines=True,
            ),
            percentiles(
                "End-to-end latency",
                "Arrival to last token, p50/p95/p99. E2E up with TPOT flat = the time goes before the first token "
                "(queueing, long prompts); TPOT up too = GPU/KV/batching is the limit.",
                "llm_e2e_request_latency_seconds",
                E,
                bad=None,
            ),
            timeseries(
                "Queue / prefill / decode (p95)",
                "Where a request's time goes. Queue dominates under overload; prefill under long prompts; decode "
                "under long answers or slow GPUs.",
                "s",
                [
                    Q(histogram_quantile(0.95, m, E, RI), label)
                    for m, label in (
                        ("llm_request_queue_time_seconds", "queue"),
                        ("llm_request_prefill_time_seconds", "prefill"),
                        ("llm_request_decode_time_seconds", "decode"),
                    )
                ],
                bad=None,
            ),
            percentiles(
                "Time per output token (per request)",
                "Mean decode time per generated token of each request, p50/p95: what a streaming user feels as "
                "typing speed.",
                "llm_time_per_output_token_seconds",
                E,
                (0.5, 0.95),
                bad=None,
                may_be_empty="engines before vLLM 0.11 (and TGI/SGLang mappings without it) have no per-request TPOT",
            ),
        ],
    )
    windows = slo_windows(s)
    shortest, longest = windows[0], windows[-1]
    slo_row = Row(
        "SLO",
        [
            timeseries(
                "TTFT SLO burn rate",
                f"How fast the TTFT error budget ({budget:.2%} of requests slower than {slo.ttft_target_s:g}s) is "
                f"spent, over the shortest ({shortest}) and longest ({longest}) burn windows; 1 = exactly on "
                "budget. Lines: "
                + ", ".join(
                    f"{w.factor:g}x {'pages' if w.severity == 'critical' else 'opens a ticket'}"
                    for w in slo.burn_windows
                )
                + ". Summed over replicas from counts.",
                "suffix:x",
                [
                    Q(
                        f"{_ratio_by('model', f'llm:ttft_slow_requests:rate{w}', f'llm:ttft_requests:rate{w}')} / {budget:g}",
                        f"{{{{model}}}} {w}",
                    )
                    for w in dict.fromkeys((shortest, longest))
                ],
                thresholds=burn_thresholds(slo.burn_windows),
                threshold_lines=True,
            ),
            timeseries(
                "Error ratio",
                f"Share of requests ending in error or abort ({shortest} and {longest}), with the objective's "
                "budget as a line. Aggregated over replicas from counts.",
                "percentunit",
                [
                    Q(
                        _ratio_by("model", f"llm:requests_failed:rate{w}", f"llm:requests:rate{w}"),
                        f"{{{{model}}}} {w}",
                    )
                    for w in dict.fromkeys((shortest, longest))
                ],
                thresholds=[(err_budget, RED)],
                threshold_lines=True,
            ),
        ],
    )
    link = {
        "title": "Serve ${__value.raw} only",
        "url": f"/d/{UID}?${{__url_time_range}}&${{job:queryparam}}&var-model=${{__value.raw}}",
        "targetBlank": False,
    }
    per_model = Row(
        "Per model",
        [
            Panel(
                "table",
                "Models",
                "One row per model: request rate, generated tokens/s, TTFT p95, fullest KV cache, waiting "
                "requests. Click a model to open this board for it alone.",
                "short",
                [
                    Q(
                        f"sum by (model) (rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                        instant=True,
                        fmt="table",
                    ),
                    Q(
                        f"sum by (model) (rate(llm_generation_tokens_total{{{E}}}[{RI}]))",
                        instant=True,
                        fmt="table",
                    ),
                    Q(
                        percentiles("", "", "llm_time_to_first_token_seconds", E, (0.95,))
                        .queries[0]
                        .expr.replace("sum by (le)", "sum by (model, le)"),
                        instant=True,
                        fmt="table",
                    ),
                    Q(f"max by (model) (llm_kv_cache_usage_ratio{{{E}}})", instant=True, fmt="table"),
                    Q(f"sum by (model) (llm_requests_waiting{{{E}}})", instant=True, fmt="table"),
                ],
                w=24,
                bad=None,
                transformations=[
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "Value #A": "requests/s",
                                "Value #B": "generated tok/s",
                                "Value #C": "TTFT p95",
                                "Value #D": "KV cache",
                                "Value #E": "waiting",
                            },
                        },
                    },
                ],
                overrides=[
                    column("model", "string", links=[link]),
                    column("requests/s", "reqps"),
                    column("generated tok/s", "count:tok/s"),
                    column("TTFT p95", "s"),
                    column("KV cache", "percentunit"),
                    column("waiting", "short"),
                ],
            ),
        ],
    )
    return Board(
        UID,
        "LLM Serving",
        "Is serving healthy and where is the bottleneck: throughput, request sizes, scheduler, KV cache, latency "
        "split, SLOs. Engines of every kind and version, normalized by the engine exporter.",
        ["llm-observer", "serving"],
        [overview, throughput, scheduler, latency, slo_row, per_model],
        engine_variables(),
        alertmanager_uid=d.alertmanager_datasource_uid,
    )
