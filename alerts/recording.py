"""Recording rules: engine rates and quantiles, SLI counts per burn window, GPU ratios, cost.

The SLO windows recorded are exactly the burn windows of ``settings.slo.burn_windows`` (each pair's
long and short window): nothing records a window no alert or panel reads, and nothing reads one
that is not recorded. Ratios are recorded next to their numerator and denominator rates, so a
dashboard can aggregate across replicas from counts (sum the rates, then divide).
"""

from __future__ import annotations

from typing import Any

from alerts.promql import BY, duration_seconds, histogram_quantile, le, quantile_record, rate_over
from observer.config import Settings

# Quantiles recorded per latency histogram (the alerts and the serving board read these).
QUANTILES: dict[str, tuple[float, ...]] = {
    "llm_time_to_first_token_seconds": (0.5, 0.95, 0.99),
    "llm_inter_token_latency_seconds": (0.5, 0.95, 0.99),
    "llm_time_per_output_token_seconds": (0.5, 0.95),
    "llm_e2e_request_latency_seconds": (0.5, 0.95, 0.99),
    "llm_request_queue_time_seconds": (0.95,),
    "llm_request_prefill_time_seconds": (0.95,),
    "llm_request_decode_time_seconds": (0.95,),
}
FAILED_REASONS = "error|abort"


def slo_windows(s: Settings) -> list[str]:
    """Every window a burn pair names, shortest first."""
    wanted = {w.long for w in s.slo.burn_windows} | {w.short for w in s.slo.burn_windows}
    return sorted(wanted, key=duration_seconds)


def budget_window(s: Settings) -> str:
    """The shortest recorded window: the error-budget rules sum its rates over the SLO period."""
    return slo_windows(s)[0]


def engine_selector(s: Settings, extra: str = "") -> str:
    return f'job="{s.alerting.engine_job}"' + (f",{extra}" if extra else "")


def gpu_selector(s: Settings) -> str:
    return f'job="{s.alerting.gpu_job}"'


def _rate(s: Settings, metric: str, window: str = "5m", extra: str = "") -> str:
    return f"sum by ({BY}) ({rate_over(f'{metric}{{{engine_selector(s, extra)}}}', window)})"


def engine_rules(s: Settings) -> list[dict[str, str]]:
    rules = [
        {"record": "llm:requests_finished:rate5m", "expr": _rate(s, "llm_requests_finished_total")},
        {
            "record": "llm:requests_finished_by_reason:rate5m",
            "expr": f"sum by ({BY}, finished_reason) "
            f"(rate(llm_requests_finished_total{{{engine_selector(s)}}}[5m]))",
        },
        {"record": "llm:prompt_tokens:rate5m", "expr": _rate(s, "llm_prompt_tokens_total")},
        {"record": "llm:generation_tokens:rate5m", "expr": _rate(s, "llm_generation_tokens_total")},
        {"record": "llm:preemptions:rate5m", "expr": _rate(s, "llm_preemptions_total")},
        {
            "record": "llm:prefix_cache_hit:ratio_rate5m",
            "expr": f"{_rate(s, 'llm_prefix_cache_hits_total')} / {_rate(s, 'llm_prefix_cache_queries_total')}",
        },
    ]
    for metric, qs in QUANTILES.items():
        rules += [
            {
                "record": quantile_record(metric, q),
                "expr": histogram_quantile(q, metric, engine_selector(s), "5m", BY),
            }
            for q in qs
        ]
    return rules


def slo_rules(s: Settings) -> list[dict[str, str]]:
    slo = s.slo
    target = le(slo.ttft_target_s)
    rules: list[dict[str, str]] = []
    for w in slo_windows(s):
        total = _rate(s, "llm_time_to_first_token_seconds_count", w)
        good = _rate(s, "llm_time_to_first_token_seconds_bucket", w, f'le="{target}"')
        rules += [
            {"record": f"llm:ttft_requests:rate{w}", "expr": total},
            {"record": f"llm:ttft_slow_requests:rate{w}", "expr": f"{total} - {good}"},
            {
                "record": f"llm:ttft_slo_errors:ratio_rate{w}",
                "expr": f"llm:ttft_slow_requests:rate{w} / llm:ttft_requests:rate{w}",
            },
            {"record": f"llm:requests:rate{w}", "expr": _rate(s, "llm_requests_finished_total", w)},
            {
                "record": f"llm:requests_failed:rate{w}",
                "expr": _rate(s, "llm_requests_finished_total", w, f'finished_reason=~"{FAILED_REASONS}"'),
            },
            {
                "record": f"llm:request_errors:ratio_rate{w}",
                "expr": f"llm:requests_failed:rate{w} / llm:requests:rate{w}",
            },
        ]
    period, w = f"{slo.period_days}d", budget_window(s)

    def remaining(bad: str, total: str, objective: float) -> str:
        # Counts over the period (sums of the rate samples), summed across replicas, then divided.
        return (
            f"1 - (sum by (job, model) (sum_over_time({bad}[{period}]))"
            f" / sum by (job, model) (sum_over_time({total}[{period}]))) / {1 - objective:.6g}"
        )

    rules += [
        {
            "record": "llm:ttft_slo_error_budget_remaining:ratio",
            "expr": remaining(
                f"llm:ttft_slow_requests:rate{w}", f"llm:ttft_requests:rate{w}", slo.ttft_objective
            ),
        },
        {
            "record": "llm:request_error_budget_remaining:ratio",
            "expr": remaining(f"llm:requests_failed:rate{w}", f"llm:requests:rate{w}", slo.error_objective),
        },
    ]
    return rules


def gpu_rules(s: Settings) -> list[dict[str, str]]:
    G, E = gpu_selector(s), engine_selector(s)
    return [
        {
            "record": "gpu:memory_used:ratio",
            "expr": f"gpu_memory_used_bytes{{{G}}} / gpu_memory_total_bytes{{{G}}}",
        },
        {
            "record": "llm:energy_joules_per_generated_token:ratio_rate5m",
            "expr": f"sum(rate(gpu_energy_joules_total{{{G}}}[5m])) / sum(rate(llm_generation_tokens_total{{{E}}}[5m]))",
        },
    ]


def recording_groups(s: Settings) -> list[dict[str, Any]]:
    from observer.analytics.cost import recording_rules as cost_rules

    return [
        {"name": "llm-observer.engine.rules", "rules": engine_rules(s)},
        {"name": "llm-observer.slo.rules", "rules": slo_rules(s)},
        {"name": "llm-observer.gpu.rules", "rules": gpu_rules(s)},
        {"name": "llm-observer.cost.rules", "rules": cost_rules(s)},
    ]
