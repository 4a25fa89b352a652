"""LLM Observer's own components (scrapes, trace collector, store) and the Watchdog, with cases."""

from __future__ import annotations

from alerts.model import Alert, Cases, observer_labels, series
from alerts.promql import rate_over
from observer.config import Settings


def alerts(s: Settings) -> list[Alert]:
    a, slo = s.alerting, s.slo
    O = f'job="{a.observer_job}"'  # noqa: E741 - the observer's selector, next to E and G elsewhere
    return [
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
            f"sum by (job, instance) ({rate_over(f'observer_collector_spans_rejected_total{{{O}}}', '10m')})"
            f" / sum by (job, instance) ({rate_over(f'observer_collector_spans_received_total{{{O}}}', '10m')})"
            f" > {slo.collector_rejected_ratio:g}",
            "warning",
            "The trace collector rejects spans.",
            "{{ $labels.instance }} rejected {{ $value | humanizePercentage }} of spans in 10 minutes"
            " (see observer_collector_spans_rejected_total by reason).",
            for_="10m",
        ),
        Alert(
            "LLMCollectorStoreDown",
            f"observer_store_up{{{O}}} == 0",
            "critical",
            "The request store is unreachable.",
            "{{ $labels.instance }} cannot write to its database; senders are told to retry (503) and"
            " buffer until it is back.",
            for_="2m",
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


def cases(s: Settings, c: Cases) -> None:
    o = observer_labels(s)
    down = c.after("LLMObserverTargetDown", 2)
    c.add(
        "observer down", [series("up", o, f"0x{down + 5}")], [c.fires("LLMObserverTargetDown", f"{down}m", o)]
    )
    c.add("observer up", [series("up", o, f"1x{down + 5}")], [c.silent("LLMObserverTargetDown", f"{down}m")])
    rej = c.after("LLMCollectorRejectingSpans", 5)
    limit = s.slo.collector_rejected_ratio
    rejected, fine = min(99, round(limit * 100 * 2 + 1)), max(0, round(limit * 100 / 5))
    c.add(
        f"collector rejects {rejected}% of spans",
        [
            series("observer_collector_spans_received_total", o, f"0+100x{rej + 5}"),
            series(
                "observer_collector_spans_rejected_total", o, f"0+{rejected}x{rej + 5}", reason="malformed"
            ),
        ],
        [c.fires("LLMCollectorRejectingSpans", f"{rej}m", o, rejected / 100)],
    )
    c.add(
        f"collector rejects {fine}%",
        [
            series("observer_collector_spans_received_total", o, f"0+100x{rej + 5}"),
            series("observer_collector_spans_rejected_total", o, f"0+{fine}x{rej + 5}", reason="malformed"),
        ],
        [c.silent("LLMCollectorRejectingSpans", f"{rej}m")],
    )
    store = c.after("LLMCollectorStoreDown", 1)
    c.add(
        "store down",
        [series("observer_store_up", o, f"0x{store + 2}")],
        [c.fires("LLMCollectorStoreDown", f"{store}m", o)],
    )
    c.add(
        "store up",
        [series("observer_store_up", o, f"1x{store + 2}")],
        [c.silent("LLMCollectorStoreDown", f"{store}m")],
    )
    c.add("watchdog always fires", [], [c.fires("Watchdog", "0m", {})])
