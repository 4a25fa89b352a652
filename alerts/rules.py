"""Prometheus recording and alerting rules, generated from the one settings object.

Every threshold, window and job selector comes from ``observer.config`` (``slo``, ``alerting``,
``cost``, ``gpu_exporter``), the same numbers the dashboards draw as threshold lines. Every alert
has ``severity`` (critical = page, warning = ticket, none = Watchdog), a static ``summary``, a
templated ``description`` naming the model/instance/GPU and the value, and a ``runbook_url`` into
docs/runbooks.md. ``python -m alerts`` writes alerts/generated/; a test fails on drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from observer.config import Settings

BY = "job, instance, model"


@dataclass
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str = "0m"
    labels: dict[str, str] = field(default_factory=dict)

    def render(self, runbook_base: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{runbook_base}#{self.name.lower()}",
        }
        return rule


def _le(value: float) -> str:
    return repr(float(value))  # the exporter renders every bucket bound this way


def _windows(s: Settings) -> list[str]:
    order = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    wanted = {w.long for w in s.slo.burn_windows} | {w.short for w in s.slo.burn_windows}
    return [w for w in order if w in wanted] + sorted(wanted - set(order))


def recording_groups(s: Settings) -> list[dict[str, Any]]:
    E = f'job="{s.alerting.engine_job}"'
    G = f'job="{s.alerting.gpu_job}"'

    def rate(metric: str, window: str = "5m", extra: str = "") -> str:
        sel = E + (f",{extra}" if extra else "")
        return f"sum by ({BY}) (rate({metric}{{{sel}}}[{window}]))"

    def quantiles(metric: str, qs=(0.5, 0.95, 0.99)) -> list[dict[str, str]]:
        stem = metric.removeprefix("llm_")
        return [
            {
                "record": f"llm:{stem}:p{round(q * 100)}_5m",
                "expr": f"histogram_quantile({q}, sum by ({BY}, le) (rate({metric}_bucket{{{E}}}[5m])))",
            }
            for q in qs
        ]

    engine = [
        {"record": "llm:requests_finished:rate5m", "expr": rate("llm_requests_finished_total")},
        {
            "record": "llm:requests_finished_by_reason:rate5m",
            "expr": f"sum by ({BY}, finished_reason) (rate(llm_requests_finished_total{{{E}}}[5m]))",
        },
        {"record": "llm:prompt_tokens:rate5m", "expr": rate("llm_prompt_tokens_total")},
        {"record": "llm:generation_tokens:rate5m", "expr": rate("llm_generation_tokens_total")},
        {"record": "llm:preemptions:rate5m", "expr": rate("llm_preemptions_total")},
        {
            "record": "llm:prefix_cache_hit:ratio_rate5m",
            "expr": f"{rate('llm_prefix_cache_hits_total')} / {rate('llm_prefix_cache_queries_total')}",
        },
        *quantiles("llm_time_to_first_token_seconds"),
        *quantiles("llm_inter_token_latency_seconds"),
        *quantiles("llm_time_per_output_token_seconds", (0.5, 0.95)),
        *quantiles("llm_e2e_request_latency_seconds"),
        *quantiles("llm_request_queue_time_seconds", (0.95,)),
        *quantiles("llm_request_prefill_time_seconds", (0.95,)),
        *quantiles("llm_request_decode_time_seconds", (0.95,)),
    ]

    le = _le(s.slo.ttft_target_s)
    slo: list[dict[str, str]] = []
    for w in _windows(s):
        total = rate("llm_time_to_first_token_seconds_count", w)
        good = rate("llm_time_to_first_token_seconds_bucket", w, f'le="{le}"')
        slo.append({"record": f"llm:ttft_slo_errors:ratio_rate{w}", "expr": f"({total} - {good}) / {total}"})
        bad = rate("llm_requests_finished_total", w, 'finished_reason=~"error|abort"')
        slo.append(
            {
                "record": f"llm:request_errors:ratio_rate{w}",
                "expr": f"{bad} / {rate('llm_requests_finished_total', w)}",
            }
        )
    period = f"{s.slo.period_days}d"
    slo += [
        {
            "record": "llm:ttft_slo_error_budget_remaining:ratio",
            "expr": f"1 - avg_over_time(llm:ttft_slo_errors:ratio_rate5m[{period}]) / {1 - s.slo.ttft_objective:g}",
        },
        {
            "record": "llm:request_error_budget_remaining:ratio",
            "expr": f"1 - avg_over_time(llm:request_errors:ratio_rate5m[{period}]) / {1 - s.slo.error_objective:g}",
        },
    ]

    gpu = [
        {
            "record": "gpu:memory_used:ratio",
            "expr": f"gpu_memory_used_bytes{{{G}}} / gpu_memory_total_bytes{{{G}}}",
        },
        {
            "record": "llm:energy_joules_per_generated_token:ratio_rate5m",
            "expr": f"sum(rate(gpu_energy_joules_total{{{G}}}[5m])) / sum(rate(llm_generation_tokens_total{{{E}}}[5m]))",
        },
    ]

    c = s.cost
    gpus = f"(count(gpu_up{{{G}}}) or vector({c.gpus}))"
    energy_kwh_per_hour = f"sum(rate(gpu_energy_joules_total{{{G}}}[5m])) * 3600 / 3.6e6"
    tokens_per_hour = f"(sum(rate(llm_prompt_tokens_total{{{E}}}[1h])) + sum(rate(llm_generation_tokens_total{{{E}}}[1h]))) * 3600"
    cost = [
        {
            "record": "llm:cost_self_hosted:per_hour",
            "expr": f"{gpus} * {c.gpu_hour_cost:.6g} + ({energy_kwh_per_hour} or vector(0)) * {c.electricity_per_kwh:g}",
            "labels": {"currency": c.currency},
        },
        {
            "record": "llm:cost_public_api_equivalent:per_hour",
            "expr": f"(sum(rate(llm_prompt_tokens_total{{{E}}}[5m])) * {c.reference.input_per_million:g}"
            f" + sum(rate(llm_generation_tokens_total{{{E}}}[5m])) * {c.reference.output_per_million:g}) * 3600 / 1e6",
            "labels": {"currency": c.currency},
        },
        {
            "record": "llm:cost_self_hosted:per_million_tokens",
            "expr": f"llm:cost_self_hosted:per_hour / ignoring(currency) ({tokens_per_hour} / 1e6)",
        },
        {
            "record": "llm:cost_public_api_equivalent:per_million_tokens",
            "expr": f"(sum(rate(llm_prompt_tokens_total{{{E}}}[1h])) * {c.reference.input_per_million:g}"
            f" + sum(rate(llm_generation_tokens_total{{{E}}}[1h])) * {c.reference.output_per_million:g})"
            f" / (sum(rate(llm_prompt_tokens_total{{{E}}}[1h])) + sum(rate(llm_generation_tokens_total{{{E}}}[1h])))",
            "labels": {"currency": c.currency},
        },
    ]
    return [
        {"name": "llm-observer.engine.rules", "rules": engine},
        {"name": "llm-observer.slo.rules", "rules": slo},
        {"name": "llm-observer.gpu.rules", "rules": gpu},
        {"name": "llm-observer.cost.rules", "rules": cost},
    ]


def _burn(metric: str, objective: float, windows, severity: str) -> str:
    budget = 1 - objective
    parts = [
        f"(llm:{metric}:ratio_rate{w.short} > ({w.factor:g} * {budget:.6g})"
        f" and llm:{metric}:ratio_rate{w.long} > ({w.factor:g} * {budget:.6g}))"
        for w in windows
        if w.severity == severity
    ]
    return "\n  or\n".join(parts)


def alerts(s: Settings) -> dict[str, list[Alert]]:
    a, slo = s.alerting, s.slo
    E = f'job="{a.engine_job}"'
    G = f'job="{a.gpu_job}"'
    where = "{{ $labels.model }} on {{ $labels.instance }}"
    gpu_where = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"

    engine = [
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
            f"KV cache of {where} is {{{{ $value | humanizePercentage }}}} used; above"
            f" {slo.kv_cache_critical_ratio:.0%} requests wait for blocks and get preempted.",
            for_="10m",
        ),
        Alert(
            "LLMKVCacheSaturated",
            f"max by ({BY}) (llm_kv_cache_usage_ratio{{{E}}}) > {slo.kv_cache_critical_ratio:g}"
            f" and on ({BY}) sum by ({BY}) (llm_requests_waiting{{{E}}}) > 0",
            "critical",
            "KV cache is saturated and requests are waiting for blocks.",
            f"KV cache of {where} is {{{{ $value | humanizePercentage }}}} used with requests waiting:"
            " TTFT grows with every queued request.",
            for_="2m",
        ),
        Alert(
            "LLMRequestQueueBuildingUp",
            f"sum by ({BY}) (llm_requests_waiting{{{E}}}) > {slo.queue_waiting_threshold:g}",
            "warning",
            "Requests are queueing in an LLM engine.",
            f"{where} has had more than {slo.queue_waiting_threshold:g} requests waiting for 5 minutes"
            " (now {{ $value }}): demand exceeds capacity.",
            for_="5m",
        ),
        Alert(
            "LLMTimeToFirstTokenSpike",
            f"llm:time_to_first_token_seconds:p95_5m > {slo.ttft_spike_factor:g} *"
            f" avg_over_time(llm:time_to_first_token_seconds:p95_5m[1h] offset 15m)"
            f" and llm:time_to_first_token_seconds:p95_5m > {slo.ttft_spike_floor_s:g}",
            "warning",
            "Time to first token jumped above its recent baseline.",
            f"TTFT p95 of {where} is {{{{ $value | humanizeDuration }}}}, over {slo.ttft_spike_factor:g}x its"
            " last hour: check queueing (waiting requests, KV cache) and prompt lengths.",
            for_="5m",
        ),
        Alert(
            "LLMInterTokenLatencyHigh",
            f"llm:inter_token_latency_seconds:p95_5m > {slo.itl_p95_target_s:g}",
            "warning",
            "Inter-token latency is above its target.",
            f"Inter-token latency p95 of {where} is {{{{ $value | humanizeDuration }}}}"
            f" (target {slo.itl_p95_target_s:g}s): decode is slow (batch size, GPU, preemptions).",
            for_="10m",
        ),
        Alert(
            "LLMPreemptionStorm",
            f"sum by ({BY}) (rate(llm_preemptions_total{{{E}}}[5m])) > {slo.preemptions_per_second_threshold:g}",
            "warning",
            "An LLM engine is preempting requests continuously.",
            f'{where} preempts {{{{ $value | printf "%.2f" }}}} requests/s: the KV cache is too small'
            " for the batch, recomputation wastes GPU time.",
            for_="5m",
        ),
    ]
    ttft_desc = (
        f"{where} is burning its TTFT error budget (TTFT over {slo.ttft_target_s:g}s in more than"
        f" {1 - slo.ttft_objective:.2%} of requests): {{{{ $value | humanizePercentage }}}} of requests are slow."
    )
    err_desc = (
        f"{where} fails or aborts {{{{ $value | humanizePercentage }}}} of requests, burning the"
        f" {slo.error_objective:.1%} success objective's budget."
    )
    budgets = (
        (
            "LLMTimeToFirstTokenBudgetBurn",
            "ttft_slo_errors",
            slo.ttft_objective,
            "TTFT SLO error budget is burning too fast.",
            ttft_desc,
        ),
        (
            "LLMErrorBudgetBurn",
            "request_errors",
            slo.error_objective,
            "Request error/abort budget is burning too fast.",
            err_desc,
        ),
    )
    slos = []
    for severity in ("critical", "warning"):  # page pairs, then ticket pairs: one rule each
        windows = [w for w in slo.burn_windows if w.severity == severity]
        if not windows:
            continue
        for name, sli, objective, summary, description in budgets:
            expr = _burn(sli, objective, slo.burn_windows, severity)
            slos.append(Alert(name, expr, severity, summary, description, for_=windows[0].for_))

    critical_xids = "|".join(str(x) for x in s.gpu_exporter.critical_xids)
    gpu = [
        Alert(
            "GPULost",
            f"gpu_up{{{G}}} == 0",
            "critical",
            "A GPU fell off the bus or stopped answering NVML.",
            f"{gpu_where} is lost; the engine on it cannot serve.",
            for_="1m",
        ),
        Alert(
            "GPUXidCriticalError",
            f'increase(gpu_xid_errors_total{{{G},xid=~"{critical_xids}"}}[10m]) > 0',
            "critical",
            "A GPU reported a critical XID error.",
            f"{gpu_where} reported XID {{{{ $labels.xid }}}}: hardware or driver fault, drain and reset.",
        ),
        Alert(
            "GPUUncorrectableECCErrors",
            f'increase(gpu_ecc_errors_total{{{G},type="uncorrected"}}[10m]) > 0',
            "critical",
            "A GPU had uncorrectable memory errors.",
            f"{gpu_where} counted {{{{ $value }}}} uncorrectable ECC errors in 10 minutes.",
        ),
        Alert(
            "GPUOverTemperature",
            f"gpu_temperature_celsius{{{G}}} > {slo.gpu_temperature_warning_celsius:g}",
            "warning",
            "A GPU is running hot.",
            f"{gpu_where} is at {{{{ $value }}}} C (threshold {slo.gpu_temperature_warning_celsius:g} C).",
            for_="5m",
        ),
        Alert(
            "GPUThrottling",
            f"max by (job, instance, gpu, uuid) (avg_over_time(gpu_throttle_active{{{G},"
            f'reason=~"hw_slowdown|hw_thermal_slowdown|sw_thermal_slowdown|hw_power_brake_slowdown"}}[10m])) > 0.5',
            "warning",
            "A GPU is thermally or power-brake throttled.",
            f"{gpu_where} spent {{{{ $value | humanizePercentage }}}} of the last 10 minutes throttled: clocks are"
            " reduced, decode slows down.",
            for_="10m",
        ),
        Alert(
            "GPUMemoryNearFull",
            f"gpu:memory_used:ratio > {slo.gpu_memory_warning_ratio:g}",
            "warning",
            "GPU memory is nearly full.",
            f"{gpu_where} memory is {{{{ $value | humanizePercentage }}}} used: new processes or larger"
            " batches will fail to allocate.",
            for_="10m",
        ),
        Alert(
            "GPUExporterCollectFailing",
            f"gpu_exporter_last_collect_success{{{G}}} == 0",
            "warning",
            "The GPU exporter cannot read NVML.",
            "NVML collection on {{ $labels.instance }} fails (driver error); GPU metrics are stale.",
            for_="5m",
        ),
    ]
    platform = [
        Alert(
            "LLMObserverTargetDown",
            f'up{{job=~"{a.gpu_job}|{a.observer_job}"}} == 0',
            "warning",
            "An LLM Observer component is not being scraped.",
            "{{ $labels.job }} at {{ $labels.instance }} is down: its metrics (GPU or usage) are missing.",
            for_="3m",
        ),
        Alert(
            "LLMCollectorRejectingSpans",
            f'sum by (job, instance) (rate(observer_collector_spans_rejected_total{{job="{a.observer_job}"}}[10m]))'
            f' / sum by (job, instance) (rate(observer_collector_spans_received_total{{job="{a.observer_job}"}}[10m]))'
            f" > {slo.collector_rejected_ratio:g}",
            "warning",
            "The trace collector rejects spans.",
            "{{ $labels.instance }} rejected {{ $value | humanizePercentage }} of spans in 10 minutes"
            " (see observer_collector_spans_rejected_total by reason).",
            for_="10m",
        ),
        Alert(
            "LLMCollectorStoreDown",
            f'observer_store_up{{job="{a.observer_job}"}} == 0',
            "critical",
            "The request store is unreachable.",
            "{{ $labels.instance }} cannot write to its database; senders are told to retry (503) and"
            " buffer until it is back.",
            for_="2m",
        ),
        Alert(
            "LLMDailyActiveUsersDrop",
            f'llm_active_users{{job="{a.observer_job}",window="1d"}} < {1 - slo.dau_drop_ratio:g} *'
            f' llm_active_users{{job="{a.observer_job}",window="1d"}} offset 7d',
            "warning",
            "Daily active users dropped week over week.",
            f"DAU is {{{{ $value }}}}, more than {slo.dau_drop_ratio:.0%} below the same day last week:"
            " check outages, client changes or a broken gateway trace.",
            for_="2h",
        ),
        Alert(
            "Watchdog",
            "vector(1)",
            "none",
            "An alert that always fires, to prove the alerting pipeline works.",
            "This alert is always firing. A dead man's switch outside this stack should page when its"
            " heartbeats stop arriving.",
        ),
    ]
    return {"engine": engine, "slo": slos, "gpu": gpu, "platform": platform}


def alert_groups(s: Settings) -> list[dict[str, Any]]:
    base = s.alerting.runbook_url
    groups = alerts(s)
    known = {a.name for items in groups.values() for a in items}
    unknown = set(s.alerting.for_overrides) - known
    if unknown:
        raise ValueError(f"alerting.for_overrides names unknown alerts: {sorted(unknown)}")
    for items in groups.values():
        for a in items:
            a.for_ = s.alerting.for_overrides.get(a.name, a.for_)
    return [
        {"name": f"llm-observer.{group}.alerts", "rules": [a.render(base) for a in items]}
        for group, items in groups.items()
    ]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `python -m alerts` from observer/config.py settings. Do not edit by hand.\n"


def dump_yaml(data: Any) -> str:
    return HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000)


def render(s: Settings) -> dict[str, str]:
    """Relative path -> YAML text: alerts/generated/ rule files and alerts/tests/ promtool tests."""
    from alerts.unit_tests import build

    files = {
        "generated/recording_rules.yml": dump_yaml({"groups": recording_groups(s)}),
        "generated/alert_rules.yml": dump_yaml({"groups": alert_groups(s)}),
    }
    for name, content in build(s).items():
        files[f"tests/{name}"] = dump_yaml(content)
    return files


def group_eval_order(s: Settings) -> list[str]:
    """Recording groups before alert groups, as Prometheus effectively does every cycle in steady
    state; promtool needs it spelled out or it may evaluate an alert before the rule it reads."""
    return [g["name"] for g in recording_groups(s)] + [g["name"] for g in alert_groups(s)]


def write_rule_files(s: Settings, directory: Path) -> list[Path]:
    """The recording and alert rule files for Prometheus, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for rel, text in render(s).items():
        if rel.startswith("generated/"):
            path = directory / Path(rel).name
            path.write_text(text)
            paths.append(path)
    return paths


def all_alert_names(s: Settings) -> list[str]:
    return sorted({a.name for group in alerts(s).values() for a in group})
