"""promtool unit tests for every alert: one case where it fires (exact labels and annotations,
computed by hand below) and one where it must not. Rendered to alerts/tests/*.yml by
``python -m alerts`` and run with ``promtool test rules alerts/tests/*.yml``.

The Watchdog is the one alert with no negative case: it must always fire.
"""

from __future__ import annotations

from typing import Any

from observer.config import Settings


def group_eval_order(settings: Settings) -> list[str]:
    from alerts.rules import group_eval_order as order

    return order(settings)


ENGINE = {"job": "llm-engines", "instance": "vllm-0:8000", "model": "m"}
GPU = {"job": "gpu", "instance": "node-a:9835", "gpu": "0", "uuid": "GPU-0"}
OBS = {"job": "observer", "instance": "observer:4318"}


def sel(labels: dict[str, str], **extra: str) -> str:
    items = {**labels, **extra}
    return "{" + ",".join(f'{k}="{v}"' for k, v in items.items()) + "}"


def series(name: str, labels: dict[str, str], values: str, **extra: str) -> dict[str, str]:
    return {"series": f"{name}{sel(labels, **extra)}", "values": values}


def hist(name: str, labels: dict[str, str], buckets: dict[str, str], count: str) -> list[dict[str, str]]:
    out = [series(f"{name}_bucket", {**labels, "dp_rank": "0"}, v, le=le) for le, v in buckets.items()]
    out.append(series(f"{name}_count", {**labels, "dp_rank": "0"}, count))
    return out


class Cases:
    def __init__(self, settings: Settings) -> None:
        self.runbook = settings.alerting.runbook_url
        self.groups: dict[str, list[dict[str, Any]]] = {}

    def add(
        self,
        file: str,
        name: str,
        input_series: list[dict[str, str]],
        checks: list[dict[str, Any]],
        interval: str = "1m",
    ) -> None:
        self.groups.setdefault(file, []).append(
            {"name": name, "interval": interval, "input_series": input_series, "alert_rule_test": checks}
        )

    def fires(
        self, alert: str, at: str, labels: dict[str, str], summary: str, description: str
    ) -> dict[str, Any]:
        return {
            "eval_time": at,
            "alertname": alert,
            "exp_alerts": [
                {
                    "exp_labels": labels,
                    "exp_annotations": {
                        "summary": summary,
                        "description": description,
                        "runbook_url": f"{self.runbook}#{alert.lower()}",
                    },
                }
            ],
        }

    @staticmethod
    def silent(alert: str, at: str) -> dict[str, Any]:
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def build(settings: Settings) -> dict[str, dict[str, Any]]:
    c = Cases(settings)
    e = {**ENGINE}
    where = "m on vllm-0:8000"
    gpu_where = "GPU 0 (GPU-0) on node-a:9835"

    # --- engine ------------------------------------------------------------------------------------
    c.add(
        "engine",
        "engine down fires after 1m",
        [series("llm_engine_up", {"job": "llm-engines", "instance": "vllm-0:8000"}, "1 1 0 0 0 0")],
        [
            c.silent("LLMEngineDown", "2m"),  # down for 0 minutes: pending at most
            c.fires(
                "LLMEngineDown",
                "4m",
                {"severity": "critical", "job": "llm-engines", "instance": "vllm-0:8000"},
                "An LLM engine does not answer with metrics.",
                "The engine at vllm-0:8000 has not answered its probe for 1 minute (see llm_engine_probe_error for the reason).",
            ),
        ],
    )
    c.add(
        "engine",
        "engine up: no alert",
        [series("llm_engine_up", {"job": "llm-engines", "instance": "vllm-0:8000"}, "1x20")],
        [c.silent("LLMEngineDown", "15m")],
    )
    c.add(
        "engine",
        "probe scrape failing",
        [series("up", {"job": "llm-engines", "instance": "vllm-0:8000"}, "0x10")],
        [
            c.fires(
                "LLMEngineNotScraped",
                "5m",
                {"severity": "critical", "job": "llm-engines", "instance": "vllm-0:8000"},
                "LLM engines are not being scraped.",
                "Prometheus cannot scrape llm-engines at vllm-0:8000: no engine metrics arrive, so no other engine alert can fire.",
            ),
        ],
    )
    c.add(
        "engine",
        "scrapes fine",
        [
            series("up", {"job": "llm-engines", "instance": "vllm-0:8000"}, "1x10"),
            series("up", {"job": "llm-engine-exporter", "instance": "exp:9400"}, "1x10"),
        ],
        [c.silent("LLMEngineNotScraped", "8m")],
    )

    kv_labels = {"severity": "warning", **e}
    c.add(
        "engine",
        "kv cache near full",
        [series("llm_kv_cache_usage_ratio", e, "0.95x20", dp_rank="0")],
        [
            c.silent("LLMKVCacheNearFull", "5m"),
            c.fires(
                "LLMKVCacheNearFull",
                "15m",
                kv_labels,
                "KV cache is nearly full.",
                f"KV cache of {where} is 95% used; above 98% requests wait for blocks and get preempted.",
            ),
        ],
    )
    c.add(
        "engine",
        "kv cache at 85%: fine",
        [series("llm_kv_cache_usage_ratio", e, "0.85x20", dp_rank="0")],
        [c.silent("LLMKVCacheNearFull", "15m")],
    )
    c.add(
        "engine",
        "kv saturated with waiting requests",
        [
            series("llm_kv_cache_usage_ratio", e, "0.99x10", dp_rank="0"),
            series("llm_requests_waiting", e, "5x10", dp_rank="0"),
        ],
        [
            c.fires(
                "LLMKVCacheSaturated",
                "3m",
                {"severity": "critical", **e},
                "KV cache is saturated and requests are waiting for blocks.",
                f"KV cache of {where} is 99% used with requests waiting: TTFT grows with every queued request.",
            ),
        ],
    )
    c.add(
        "engine",
        "kv full but nobody waits: not saturated",
        [
            series("llm_kv_cache_usage_ratio", e, "0.99x10", dp_rank="0"),
            series("llm_requests_waiting", e, "0x10", dp_rank="0"),
        ],
        [c.silent("LLMKVCacheSaturated", "8m")],
    )
    c.add(
        "engine",
        "queue building up",
        [series("llm_requests_waiting", e, "20x10", dp_rank="0")],
        [
            c.fires(
                "LLMRequestQueueBuildingUp",
                "6m",
                {"severity": "warning", **e},
                "Requests are queueing in an LLM engine.",
                f"{where} has had more than 10 requests waiting for 5 minutes (now 20): demand exceeds capacity.",
            ),
        ],
    )
    c.add(
        "engine",
        "bursty queue that drains: no alert",
        [series("llm_requests_waiting", e, "20 0 20 0 20 0 20 0 20 0 20")],
        [c.silent("LLMRequestQueueBuildingUp", "10m")],
    )

    # TTFT: 10 req/min, all <= 0.25 s for an hour (p95 = 0.2375 s), then all in (5, 7.5] (p95 = 7.375 s).
    fast = "0+10x60 600+0x30"
    slow = "0+10x90"
    c.add(
        "engine",
        "ttft spike from long prompts",
        hist(
            "llm_time_to_first_token_seconds",
            e,
            {"0.25": fast, "2.5": fast, "5.0": fast, "7.5": slow, "+Inf": slow},
            slow,
        ),
        [
            c.silent("LLMTimeToFirstTokenSpike", "55m"),
            c.fires(
                "LLMTimeToFirstTokenSpike",
                "80m",
                {"severity": "warning", **e},
                "Time to first token jumped above its recent baseline.",
                f"TTFT p95 of {where} is 7.375s, over 3x its last hour: check queueing (waiting requests, KV cache) "
                "and prompt lengths.",
            ),
        ],
    )
    steady = "0+10x90"
    c.add(
        "engine",
        "steady ttft: no spike",
        hist(
            "llm_time_to_first_token_seconds",
            e,
            {"0.25": steady, "2.5": steady, "5.0": steady, "7.5": steady, "+Inf": steady},
            steady,
        ),
        [c.silent("LLMTimeToFirstTokenSpike", "80m")],
    )
    # ITL: all gaps in (0.15, 0.2] -> p95 = 0.1975 s; the healthy case in (0.025, 0.05] -> 0.04875 s.
    c.add(
        "engine",
        "inter-token latency high",
        hist(
            "llm_inter_token_latency_seconds",
            e,
            {"0.15": "0x30", "0.2": "0+100x30", "+Inf": "0+100x30"},
            "0+100x30",
        ),
        [
            c.fires(
                "LLMInterTokenLatencyHigh",
                "20m",
                {"severity": "warning", **e},
                "Inter-token latency is above its target.",
                f"Inter-token latency p95 of {where} is 197.5ms (target 0.1s): decode is slow (batch size, GPU, preemptions).",
            ),
        ],
    )
    c.add(
        "engine",
        "inter-token latency fine",
        hist(
            "llm_inter_token_latency_seconds",
            e,
            {"0.025": "0x30", "0.05": "0+100x30", "+Inf": "0+100x30"},
            "0+100x30",
        ),
        [c.silent("LLMInterTokenLatencyHigh", "20m")],
    )
    c.add(
        "engine",
        "preemption storm",
        [series("llm_preemptions_total", e, "0+120x15", dp_rank="0")],
        [
            c.fires(
                "LLMPreemptionStorm",
                "10m",
                {"severity": "warning", **e},
                "An LLM engine is preempting requests continuously.",
                f"{where} preempts 2.00 requests/s: the KV cache is too small for the batch, recomputation wastes GPU time.",
            ),
        ],
    )
    c.add(
        "engine",
        "occasional preemptions",
        [series("llm_preemptions_total", e, "0+30x15", dp_rank="0")],
        [c.silent("LLMPreemptionStorm", "10m")],
    )

    # --- SLO burn ------------------------------------------------------------------------------------
    slo = settings.slo
    ttft_sum = "TTFT SLO error budget is burning too fast."
    ttft_desc = (
        f"{where} is burning its TTFT error budget (TTFT over {slo.ttft_target_s:g}s in more than "
        f"{1 - slo.ttft_objective:.2%} of requests): {{pct}} of requests are slow."
    )
    le = repr(float(slo.ttft_target_s))
    c.add(
        "slo",
        "ttft page: 30% of requests slow",
        hist("llm_time_to_first_token_seconds", e, {le: "0+70x20", "+Inf": "0+100x20"}, "0+100x20"),
        [
            c.fires(
                "LLMTimeToFirstTokenBudgetBurn",
                "10m",
                {"severity": "critical", **e},
                ttft_sum,
                ttft_desc.format(pct="30%"),
            ),
        ],
    )
    c.add(
        "slo",
        "ttft ticket: 5% slow for hours",
        hist("llm_time_to_first_token_seconds", e, {le: "0+95x200", "+Inf": "0+100x200"}, "0+100x200"),
        [
            c.silent("LLMTimeToFirstTokenBudgetBurn", "30m"),  # ticket needs 1h of burn
            c.fires(
                "LLMTimeToFirstTokenBudgetBurn",
                "3h",
                {"severity": "warning", **e},
                ttft_sum,
                ttft_desc.format(pct="5%"),
            ),
        ],
    )
    c.add(
        "slo",
        "ttft within budget",
        hist("llm_time_to_first_token_seconds", e, {le: "0+995x400", "+Inf": "0+1000x400"}, "0+1000x400"),
        [c.silent("LLMTimeToFirstTokenBudgetBurn", "6h")],
    )
    err_sum = "Request error/abort budget is burning too fast."
    c.add(
        "slo",
        "error burst pages",
        [
            series("llm_requests_finished_total", e, "0+90x20", dp_rank="0", finished_reason="stop"),
            series("llm_requests_finished_total", e, "0+10x20", dp_rank="0", finished_reason="error"),
        ],
        [
            c.fires(
                "LLMErrorBudgetBurn",
                "10m",
                {"severity": "critical", **e},
                err_sum,
                f"{where} fails or aborts 10% of requests, burning the {slo.error_objective:.1%} success objective's budget.",
            ),
        ],
    )
    c.add(
        "slo",
        "rare errors: no burn",
        [
            series("llm_requests_finished_total", e, "0+998x400", dp_rank="0", finished_reason="stop"),
            series("llm_requests_finished_total", e, "0+2x400", dp_rank="0", finished_reason="error"),
        ],
        [c.silent("LLMErrorBudgetBurn", "6h")],
    )

    # --- GPU ----------------------------------------------------------------------------------------------
    g = {**GPU}
    c.add(
        "gpu",
        "gpu lost",
        [series("gpu_up", g, "1 1 0 0 0 0")],
        [
            c.silent("GPULost", "2m"),
            c.fires(
                "GPULost",
                "4m",
                {"severity": "critical", **g},
                "A GPU fell off the bus or stopped answering NVML.",
                f"{gpu_where} is lost; the engine on it cannot serve.",
            ),
        ],
    )
    c.add("gpu", "gpu fine", [series("gpu_up", g, "1x10")], [c.silent("GPULost", "8m")])
    c.add(
        "gpu",
        "critical xid",
        [series("gpu_xid_errors_total", g, "0 0 0 1 1 1", xid="79")],
        [
            c.fires(
                "GPUXidCriticalError",
                "4m",
                {"severity": "critical", **g, "xid": "79"},
                "A GPU reported a critical XID error.",
                f"{gpu_where} reported XID 79: hardware or driver fault, drain and reset.",
            ),
        ],
    )
    c.add(
        "gpu",
        "application xid is not critical",
        [
            series("gpu_xid_errors_total", g, "0 0 0 1 2 3", xid="13"),
            series("gpu_xid_errors_total", g, "0x5", xid="79"),
        ],
        [c.silent("GPUXidCriticalError", "4m")],
    )
    c.add(
        "gpu",
        "uncorrectable ecc",
        [series("gpu_ecc_errors_total", g, "0 0 2 2 2", type="uncorrected")],
        [
            c.fires(
                "GPUUncorrectableECCErrors",
                "4m",
                {"severity": "critical", **g, "type": "uncorrected"},
                "A GPU had uncorrectable memory errors.",
                f"{gpu_where} counted 2 uncorrectable ECC errors in 10 minutes.",
            ),
        ],
    )
    c.add(
        "gpu",
        "corrected ecc only",
        [
            series("gpu_ecc_errors_total", g, "0 0 2 5 9", type="corrected"),
            series("gpu_ecc_errors_total", g, "0x4", type="uncorrected"),
        ],
        [c.silent("GPUUncorrectableECCErrors", "4m")],
    )
    c.add(
        "gpu",
        "hot gpu",
        [series("gpu_temperature_celsius", g, "90x10")],
        [
            c.fires(
                "GPUOverTemperature",
                "6m",
                {"severity": "warning", **g},
                "A GPU is running hot.",
                f"{gpu_where} is at 90 C (threshold {slo.gpu_temperature_warning_celsius:g} C).",
            ),
        ],
    )
    c.add(
        "gpu",
        "warm gpu",
        [series("gpu_temperature_celsius", g, "80x10")],
        [c.silent("GPUOverTemperature", "8m")],
    )
    c.add(
        "gpu",
        "thermal throttling",
        [series("gpu_throttle_active", g, "1x25", reason="hw_thermal_slowdown")],
        [
            c.fires(
                "GPUThrottling",
                "20m",
                {"severity": "warning", **g},
                "A GPU is thermally or power-brake throttled.",
                f"{gpu_where} spent 100% of the last 10 minutes throttled: clocks are reduced, decode slows down.",
            ),
        ],
    )
    c.add(
        "gpu",
        "power cap and idle are not throttling alerts",
        [
            series("gpu_throttle_active", g, "1x25", reason="sw_power_cap"),
            series("gpu_throttle_active", g, "1x25", reason="gpu_idle"),
        ],
        [c.silent("GPUThrottling", "20m")],
    )
    c.add(
        "gpu",
        "gpu memory near full",
        [
            series("gpu_memory_used_bytes", g, "79000000000x15"),
            series("gpu_memory_total_bytes", g, "80000000000x15"),
        ],
        [
            c.fires(
                "GPUMemoryNearFull",
                "12m",
                {"severity": "warning", **g},
                "GPU memory is nearly full.",
                f"{gpu_where} memory is 98.75% used: new processes or larger batches will fail to allocate.",
            ),
        ],
    )
    c.add(
        "gpu",
        "vllm's 90% preallocation is normal",
        [
            series("gpu_memory_used_bytes", g, "72000000000x15"),
            series("gpu_memory_total_bytes", g, "80000000000x15"),
        ],
        [c.silent("GPUMemoryNearFull", "12m")],
    )
    nvml = {"job": "gpu", "instance": "node-a:9835"}
    c.add(
        "gpu",
        "nvml collection failing",
        [series("gpu_exporter_last_collect_success", nvml, "0x10")],
        [
            c.fires(
                "GPUExporterCollectFailing",
                "6m",
                {"severity": "warning", **nvml},
                "The GPU exporter cannot read NVML.",
                "NVML collection on node-a:9835 fails (driver error); GPU metrics are stale.",
            ),
        ],
    )
    c.add(
        "gpu",
        "nvml collection fine",
        [series("gpu_exporter_last_collect_success", nvml, "1x10")],
        [c.silent("GPUExporterCollectFailing", "8m")],
    )

    # --- platform ---------------------------------------------------------------------------------------------
    o = {**OBS}
    c.add(
        "platform",
        "observer down",
        [series("up", o, "0x10")],
        [
            c.fires(
                "LLMObserverTargetDown",
                "5m",
                {"severity": "warning", **o},
                "An LLM Observer component is not being scraped.",
                "observer at observer:4318 is down: its metrics (GPU or usage) are missing.",
            ),
        ],
    )
    c.add("platform", "observer up", [series("up", o, "1x10")], [c.silent("LLMObserverTargetDown", "8m")])
    c.add(
        "platform",
        "collector rejects 20% of spans",
        [
            series("observer_collector_spans_received_total", o, "0+100x20"),
            series("observer_collector_spans_rejected_total", o, "0+20x20", reason="malformed"),
        ],
        [
            c.fires(
                "LLMCollectorRejectingSpans",
                "15m",
                {"severity": "warning", **o},
                "The trace collector rejects spans.",
                "observer:4318 rejected 20% of spans in 10 minutes (see observer_collector_spans_rejected_total by reason).",
            ),
        ],
    )
    c.add(
        "platform",
        "collector rejects 1%",
        [
            series("observer_collector_spans_received_total", o, "0+100x20"),
            series("observer_collector_spans_rejected_total", o, "0+1x20", reason="malformed"),
        ],
        [c.silent("LLMCollectorRejectingSpans", "15m")],
    )
    c.add(
        "platform",
        "store down",
        [series("observer_store_up", o, "0x5")],
        [
            c.fires(
                "LLMCollectorStoreDown",
                "3m",
                {"severity": "critical", **o},
                "The request store is unreachable.",
                "observer:4318 cannot write to its database; senders are told to retry (503) and buffer until it is back.",
            ),
        ],
    )
    c.add(
        "platform",
        "store up",
        [series("observer_store_up", o, "1x5")],
        [c.silent("LLMCollectorStoreDown", "4m")],
    )
    # A week of history: sampled every 5 minutes (an hourly series would go stale between samples).
    c.add(
        "business",
        "dau dropped week over week",
        [series("llm_active_users", o, "1000x2016 500x60", window="1d")],
        [
            c.fires(
                "LLMDailyActiveUsersDrop",
                "172h",
                {"severity": "warning", **o, "window": "1d"},
                "Daily active users dropped week over week.",
                f"DAU is 500, more than {slo.dau_drop_ratio:.0%} below the same day last week: check outages, client "
                "changes or a broken gateway trace.",
            ),
        ],
        interval="5m",
    )
    c.add(
        "business",
        "dau dipped 20%: no ticket",
        [series("llm_active_users", o, "1000x2016 800x60", window="1d")],
        [c.silent("LLMDailyActiveUsersDrop", "172h")],
        interval="5m",
    )
    c.add(
        "platform",
        "watchdog always fires",
        [],
        [
            c.fires(
                "Watchdog",
                "0m",
                {"severity": "none"},
                "An alert that always fires, to prove the alerting pipeline works.",
                "This alert is always firing. A dead man's switch outside this stack should page when its heartbeats stop "
                "arriving.",
            ),
        ],
    )

    # Week-long inputs are evaluated every 5 minutes; minute resolution matters for the others.
    return {
        f"{name}_test.yml": {
            "rule_files": ["../generated/recording_rules.yml", "../generated/alert_rules.yml"],
            "evaluation_interval": "5m" if name == "business" else "1m",
            "group_eval_order": group_eval_order(settings),
            "tests": groups,
        }
        for name, groups in c.groups.items()
    }
