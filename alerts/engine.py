"""Engine alerts (availability, KV cache, queue, latency, preemptions) and their promtool cases."""

from __future__ import annotations

import math

from alerts.model import Alert, Cases, engine_labels, hist, series
from alerts.promql import BY, quantile_record
from alerts.recording import engine_selector
from observer.catalog import VLLM_ITL_BUCKETS, VLLM_TTFT_BUCKETS
from observer.config import Settings

WHERE = "{{ $labels.model }} on {{ $labels.instance }}"


def alerts(s: Settings) -> list[Alert]:
    a, slo, E = s.alerting, s.slo, engine_selector(s)
    ttft_p95 = quantile_record("llm_time_to_first_token_seconds", 0.95)
    return [
        Alert(
            "LLMEngineDown",
            f"llm_engine_up{{{E}}} == 0",
            "critical",
            "An LLM engine does not answer with metrics.",
            "The engine at {{ $labels.instance }} has not answered its probe for 1 minute"
            " (see llm_engine_probe_error for the reason).",
            for_="1m",
        ),
        Alert(
            "LLMEngineNotScraped",
            f'up{{{E}}} == 0 or up{{job="{a.engine_exporter_job}"}} == 0',
            "critical",
            "LLM engines are not being scraped.",
            "Prometheus cannot scrape {{ $labels.job }} at {{ $labels.instance }}: no engine metrics"
            " arrive, so no other engine alert can fire.",
            for_="2m",
        ),
        Alert(
            "LLMKVCacheNearFull",
            f"max by ({BY}) (llm_kv_cache_usage_ratio{{{E}}}) > {slo.kv_cache_warning_ratio:g}",
            "warning",
            "KV cache is nearly full.",
            f"KV cache of {WHERE} is {{{{ $value | humanizePercentage }}}} used; above"
            f" {slo.kv_cache_critical_ratio:.0%} requests wait for blocks and get preempted.",
            for_="10m",
        ),
        Alert(
            "LLMKVCacheSaturated",
            f"max by ({BY}) (llm_kv_cache_usage_ratio{{{E}}}) > {slo.kv_cache_critical_ratio:g}"
            f" and on ({BY}) sum by ({BY}) (llm_requests_waiting{{{E}}}) > 0",
            "critical",
            "KV cache is saturated and requests are waiting for blocks.",
            f"KV cache of {WHERE} is {{{{ $value | humanizePercentage }}}} used with requests waiting:"
            " TTFT grows with every queued request.",
            for_="2m",
        ),
        Alert(
            "LLMRequestQueueBuildingUp",
            f"sum by ({BY}) (llm_requests_waiting{{{E}}}) > {slo.queue_waiting_threshold:g}",
            "warning",
            "Requests are queueing in an LLM engine.",
            f"{WHERE} has had more than {slo.queue_waiting_threshold:g} requests waiting for 5 minutes"
            " (now {{ $value }}): demand exceeds capacity.",
            for_="5m",
        ),
        Alert(
            "LLMTimeToFirstTokenSpike",
            f"{ttft_p95} > {slo.ttft_spike_factor:g} * avg_over_time({ttft_p95}[1h] offset 15m)"
            f" and {ttft_p95} > {slo.ttft_spike_floor_s:g}",
            "warning",
            "Time to first token jumped above its recent baseline.",
            f"TTFT p95 of {WHERE} is {{{{ $value | humanizeDuration }}}}, over {slo.ttft_spike_factor:g}x its"
            " last hour: check queueing (waiting requests, KV cache) and prompt lengths.",
            for_="5m",
        ),
        Alert(
            "LLMInterTokenLatencyHigh",
            f"{quantile_record('llm_inter_token_latency_seconds', 0.95)} > {slo.itl_p95_target_s:g}",
            "warning",
            "Inter-token latency is above its target.",
            f"Inter-token latency p95 of {WHERE} is {{{{ $value | humanizeDuration }}}}"
            f" (target {slo.itl_p95_target_s:g}s): decode is slow (batch size, GPU, preemptions).",
            for_="10m",
        ),
        Alert(
            "LLMPreemptionStorm",
            f"sum by ({BY}) (rate(llm_preemptions_total{{{E}}}[5m])) > {slo.preemptions_per_second_threshold:g}",
            "warning",
            "An LLM engine is preempting requests continuously.",
            f'{WHERE} preempts {{{{ $value | printf "%.2f" }}}} requests/s: the KV cache is too small'
            " for the batch, recomputation wastes GPU time.",
            for_="5m",
        ),
    ]


def _p95_in(lo: float, hi: float) -> float:
    """p95 when every observation lies in (lo, hi]: Prometheus interpolates linearly in the bucket."""
    return lo + (hi - lo) * 0.95


def cases(s: Settings, c: Cases) -> None:
    slo = s.slo
    e = engine_labels(s)
    up_labels = {"job": s.alerting.engine_job, "instance": e["instance"]}
    at = c.after("LLMEngineDown", 3)  # down from minute 2
    c.add(
        "engine down fires after its for",
        [series("llm_engine_up", up_labels, f"1 1 0x{at}")],
        [c.silent("LLMEngineDown", "2m"), c.fires("LLMEngineDown", f"{at}m", up_labels)],
    )
    c.add(
        "engine up: no alert",
        [series("llm_engine_up", up_labels, "1x20")],
        [c.silent("LLMEngineDown", "15m")],
    )
    c.add(
        "probe scrape failing",
        [series("up", up_labels, f"0x{c.after('LLMEngineNotScraped', 8)}")],
        [c.fires("LLMEngineNotScraped", f"{c.after('LLMEngineNotScraped', 3)}m", up_labels)],
    )
    c.add(
        "scrapes fine",
        [
            series("up", up_labels, "1x10"),
            series("up", {"job": s.alerting.engine_exporter_job, "instance": "exp:9400"}, "1x10"),
        ],
        [c.silent("LLMEngineNotScraped", "8m")],
    )

    near = round((slo.kv_cache_warning_ratio + slo.kv_cache_critical_ratio) / 2, 4)
    fine = round(max(0.0, slo.kv_cache_warning_ratio - 0.05), 4)
    c.add(
        "kv cache near full",
        [series("llm_kv_cache_usage_ratio", e, f"{near}x{c.after('LLMKVCacheNearFull', 10)}", dp_rank="0")],
        [
            c.silent("LLMKVCacheNearFull", f"{max(0, c.after('LLMKVCacheNearFull', -5))}m"),
            c.fires("LLMKVCacheNearFull", f"{c.after('LLMKVCacheNearFull', 5)}m", e, near),
        ],
    )
    c.add(
        f"kv cache at {fine:.0%}: fine",
        [series("llm_kv_cache_usage_ratio", e, f"{fine}x{c.after('LLMKVCacheNearFull', 10)}", dp_rank="0")],
        [c.silent("LLMKVCacheNearFull", f"{c.after('LLMKVCacheNearFull', 5)}m")],
    )
    full = round((slo.kv_cache_critical_ratio + 1) / 2, 4)
    sat = c.after("LLMKVCacheSaturated", 1)
    if full > slo.kv_cache_critical_ratio:  # a critical ratio of 1.0 cannot be exceeded
        c.add(
            "kv saturated with waiting requests",
            [
                series("llm_kv_cache_usage_ratio", e, f"{full}x{sat + 5}", dp_rank="0"),
                series("llm_requests_waiting", e, f"5x{sat + 5}", dp_rank="0"),
            ],
            [c.fires("LLMKVCacheSaturated", f"{sat}m", e, full)],
        )
    c.add(
        "kv full but nobody waits: not saturated",
        [
            series("llm_kv_cache_usage_ratio", e, f"{full}x{sat + 5}", dp_rank="0"),
            series("llm_requests_waiting", e, f"0x{sat + 5}", dp_rank="0"),
        ],
        [c.silent("LLMKVCacheSaturated", f"{sat}m")],
    )
    queued = math.floor(slo.queue_waiting_threshold) * 2 + 2
    c.add(
        "queue building up",
        [
            series(
                "llm_requests_waiting", e, f"{queued}x{c.after('LLMRequestQueueBuildingUp', 5)}", dp_rank="0"
            )
        ],
        [c.fires("LLMRequestQueueBuildingUp", f"{c.after('LLMRequestQueueBuildingUp', 1)}m", e, queued)],
    )
    c.add(
        "bursty queue that drains: no alert",
        [series("llm_requests_waiting", e, " ".join([f"{queued} 0"] * 5 + [str(queued)]))],
        [c.silent("LLMRequestQueueBuildingUp", "10m")],
    )

    # TTFT: 10 req/min all at most `fast_le` for an hour, then all in (lo, hi], a bucket well above
    # both the spike factor times the old p95 and the absolute floor.
    fast_le = VLLM_TTFT_BUCKETS[VLLM_TTFT_BUCKETS.index(0.25)]
    old_p95 = _p95_in(0, fast_le)
    need = max(slo.ttft_spike_floor_s, slo.ttft_spike_factor * old_p95) * 1.5
    lo = next(b for b in VLLM_TTFT_BUCKETS if b > need)
    hi = VLLM_TTFT_BUCKETS[VLLM_TTFT_BUCKETS.index(lo) + 1]
    at = 60 + c.after("LLMTimeToFirstTokenSpike", 15)  # the prompts grow at minute 60
    fast, slow = f"0+10x60 600+0x{at - 50}", f"0+10x{at + 10}"
    buckets = {repr(fast_le): fast, repr(lo): fast, repr(hi): slow, "+Inf": slow}
    c.add(
        "ttft spike from long prompts",
        hist("llm_time_to_first_token_seconds", e, buckets, slow),
        [
            c.silent("LLMTimeToFirstTokenSpike", "55m"),
            c.fires("LLMTimeToFirstTokenSpike", f"{at}m", e, _p95_in(lo, hi)),
        ],
    )
    steady = f"0+10x{at + 10}"
    c.add(
        "steady ttft: no spike",
        hist("llm_time_to_first_token_seconds", e, {le: steady for le in buckets}, steady),
        [c.silent("LLMTimeToFirstTokenSpike", f"{at}m")],
    )
    # ITL: every gap in the first bucket above the target, then every gap in a bucket below it.
    target = slo.itl_p95_target_s
    slow_lo = next(b for b in VLLM_ITL_BUCKETS if b >= target)
    slow_hi = VLLM_ITL_BUCKETS[VLLM_ITL_BUCKETS.index(slow_lo) + 1]
    fast_hi = max(b for b in VLLM_ITL_BUCKETS if _p95_in(0, b) < target * 0.9)
    itl_at = c.after("LLMInterTokenLatencyHigh", 10)
    grow = f"0+100x{itl_at + 10}"
    c.add(
        "inter-token latency high",
        hist(
            "llm_inter_token_latency_seconds",
            e,
            {repr(slow_lo): f"0x{itl_at + 10}", repr(slow_hi): grow, "+Inf": grow},
            grow,
        ),
        [c.fires("LLMInterTokenLatencyHigh", f"{itl_at}m", e, _p95_in(slow_lo, slow_hi))],
    )
    c.add(
        "inter-token latency fine",
        hist("llm_inter_token_latency_seconds", e, {repr(fast_hi): grow, "+Inf": grow}, grow),
        [c.silent("LLMInterTokenLatencyHigh", f"{itl_at}m")],
    )
    per_minute = math.ceil(slo.preemptions_per_second_threshold * 60 * 2)
    storm = c.after("LLMPreemptionStorm", 5)
    c.add(
        "preemption storm",
        [series("llm_preemptions_total", e, f"0+{per_minute}x{storm + 5}", dp_rank="0")],
        [c.fires("LLMPreemptionStorm", f"{storm}m", e, per_minute / 60)],
    )
    c.add(
        "occasional preemptions",
        [
            series(
                "llm_preemptions_total",
                e,
                f"0+{math.floor(slo.preemptions_per_second_threshold * 60 / 4)}x{storm + 5}",
                dp_rank="0",
            )
        ],
        [c.silent("LLMPreemptionStorm", f"{storm}m")],
    )
