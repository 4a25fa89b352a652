"""Alerts & SLOs: what is firing, how much error budget is left, how fast it burns, and whether the
monitoring pipeline itself (exporters, collector, store) is healthy."""

from __future__ import annotations

from alerts.recording import slo_windows
from dashboards.lib import (
    GREEN,
    ORANGE,
    RED,
    RI,
    Board,
    Panel,
    Q,
    Row,
    burn_thresholds,
    engine_variables,
    gauge,
    stat,
    timeseries,
)
from observer.config import Settings


def build(s: Settings) -> Board:
    slo, d = s.slo, s.dashboards
    ttft_budget, err_budget = 1 - slo.ttft_objective, 1 - slo.error_objective
    windows = slo_windows(s)
    budget_steps = [(d.budget_critical_below, ORANGE), (d.budget_warning_below, GREEN)]
    pairs = "; ".join(
        f"{'pages' if w.severity == 'critical' else 'ticket'} when {w.short} and {w.long} exceed {w.factor:g}"
        for w in slo.burn_windows
    )
    sel = 'job=~"$job",model=~"$model"'
    rows = [
        Row(
            "Firing now",
            [
                stat(
                    "Firing alerts",
                    "Alerts firing now, the Watchdog excluded. Critical pages, warning opens a ticket.",
                    "short",
                    'count(ALERTS{alertstate="firing",alertname!="Watchdog"}) or vector(0)',
                    w=6,
                    h=6,
                    thresholds=[(1, RED)],
                ),
                Panel(
                    "alertlist",
                    "Alerts in Alertmanager",
                    "Firing and pending alerts as Alertmanager holds them, with silences; the runbook link is in "
                    "each alert's annotations.",
                    w=18,
                    h=6,
                ),
            ],
        ),
        Row(
            "Error budgets",
            [
                gauge(
                    "TTFT error budget remaining",
                    f"Share of the {slo.period_days}-day budget ({ttft_budget:.2%} of requests slower than "
                    f"{slo.ttft_target_s:g}s) still unspent, per model over all its replicas. Red below "
                    f"{d.budget_critical_below:.0%}, orange below {d.budget_warning_below:.0%}.",
                    "percentunit",
                    f"min by (model) (llm:ttft_slo_error_budget_remaining:ratio{{{sel}}})",
                    "{{model}}",
                    w=12,
                    min=0,
                    max=1,
                    thresholds=budget_steps,
                    bad="low",
                ),
                gauge(
                    "Error budget remaining",
                    f"Share of the {slo.period_days}-day error/abort budget ({err_budget:.2%}) still unspent.",
                    "percentunit",
                    f"min by (model) (llm:request_error_budget_remaining:ratio{{{sel}}})",
                    "{{model}}",
                    w=12,
                    min=0,
                    max=1,
                    thresholds=budget_steps,
                    bad="low",
                ),
            ],
        ),
        Row(
            "Burn rates",
            [
                timeseries(
                    "TTFT burn rate by window",
                    f"Budget spend rate per recorded window (1 = on budget), over all replicas: {pairs}.",
                    "suffix:x",
                    [
                        Q(
                            f"sum(llm:ttft_slow_requests:rate{w}{{{sel}}}) / sum(llm:ttft_requests:rate{w}{{{sel}}})"
                            f" / {ttft_budget:g}",
                            w,
                        )
                        for w in windows
                    ],
                    thresholds=burn_thresholds(slo.burn_windows),
                    threshold_lines=True,
                ),
                timeseries(
                    "Error burn rate by window",
                    "The same for errors and aborts.",
                    "suffix:x",
                    [
                        Q(
                            f"sum(llm:requests_failed:rate{w}{{{sel}}}) / sum(llm:requests:rate{w}{{{sel}}})"
                            f" / {err_budget:g}",
                            w,
                        )
                        for w in windows
                    ],
                    thresholds=burn_thresholds(slo.burn_windows),
                    threshold_lines=True,
                ),
                Panel(
                    "text",
                    "How to read this",
                    "What the burn-rate panels mean.",
                    content=(
                        "**Burn rate** = how many times faster than sustainable the error budget is spent. 1 means "
                        f"the budget lasts exactly {slo.period_days} days. Pages use two windows so they fire fast on "
                        "big burns and stop soon after recovery; tickets catch slow leaks. Runbooks: docs/runbooks.md."
                    ),
                    w=24,
                    h=4,
                ),
            ],
        ),
        Row(
            "Monitoring pipeline health",
            [
                timeseries(
                    "Engine probe errors",
                    "Engines whose last probe failed, by reason (timeout, refused, http_status, parse_error...). "
                    "The reason LLMEngineDown points to.",
                    "short",
                    [
                        Q(
                            'sum by (instance, reason) (llm_engine_probe_error{job=~"$job",instance=~"$instance"} == 1)',
                            "{{instance}} {{reason}}",
                        )
                    ],
                    bad=None,
                    may_be_empty="no probe fails on a healthy fleet (== 1 keeps failures only)",
                ),
                timeseries(
                    "Engine exporter probes",
                    "Probes per second and failed probes per second of the engine exporter itself.",
                    "count:/s",
                    [
                        Q(
                            f'sum(rate(observer_engine_exporter_probes_total{{job="{s.alerting.engine_exporter_job}"}}[{RI}]))',
                            "probes",
                        ),
                        Q(
                            # Failures by reason appear with the first failure: 0 until then.
                            f'sum(rate(observer_engine_exporter_probe_failures_total{{job="{s.alerting.engine_exporter_job}"}}[{RI}]))'
                            " or vector(0)",
                            "failures",
                        ),
                    ],
                    bad=None,
                ),
                timeseries(
                    "Trace collector: spans",
                    f"Spans received and rejected per second by the collector; LLMCollectorRejectingSpans at "
                    f"{slo.collector_rejected_ratio:.0%} rejected.",
                    "count:/s",
                    [
                        Q(
                            f'sum(rate(observer_collector_spans_received_total{{job="{s.alerting.observer_job}"}}[{RI}]))',
                            "received",
                        ),
                        Q(
                            # No rejected series exists before the first rejection: 0, not "no data".
                            f'sum by (reason) (rate(observer_collector_spans_rejected_total{{job="{s.alerting.observer_job}"}}[{RI}]))'
                            ' or label_replace(vector(0), "reason", "none", "", "")',
                            "rejected {{reason}}",
                        ),
                    ],
                    bad=None,
                ),
                stat(
                    "Stores down",
                    "observer serve instances that cannot write to their database (LLMCollectorStoreDown).",
                    "short",
                    f'count(observer_store_up{{job="{s.alerting.observer_job}"}} == 0) or vector(0)',
                    w=12,
                    thresholds=[(1, RED)],
                ),
                stat(
                    "Scrape targets down",
                    "Prometheus targets of this stack that do not answer (up == 0): engines, exporters, observer.",
                    "short",
                    "count(up{job=~"
                    + '"'
                    + "|".join(
                        (
                            s.alerting.engine_job,
                            s.alerting.engine_exporter_job,
                            s.alerting.gpu_job,
                            s.alerting.observer_job,
                        )
                    )
                    + '"} == 0) or vector(0)',
                    w=12,
                    thresholds=[(1, RED)],
                ),
            ],
        ),
    ]
    return Board(
        "llm-alerts-slos",
        "Alerts & SLOs",
        "What is firing, how much error budget is left, how fast it burns, and whether the monitoring "
        "pipeline itself is healthy.",
        ["llm-observer", "slo"],
        rows,
        engine_variables(),
        alertmanager_uid=d.alertmanager_datasource_uid,
    )
