"""PromQL pieces shared by the rules and the dashboards, so both evaluate the same series."""

from __future__ import annotations

from observer.promql import RATE_WINDOW, duration_seconds, rate_over

__all__ = [
    "BY",
    "RATE_WINDOW",
    "duration_seconds",
    "histogram_quantile",
    "le",
    "quantile_record",
    "rate_over",
]

BY = "job, instance, model"  # the identity of one engine's series, kept by every engine rule


def le(value: float) -> str:
    """A bucket bound as the exporters render it (``2.5``, ``1.0``), for ``le="..."`` matchers."""
    return repr(float(value))


def histogram_quantile(q: float, metric: str, selector: str, window: str, by: str = "") -> str:
    """``histogram_quantile`` over ``rate`` of ``<metric>_bucket``, aggregated by ``by`` plus ``le``.

    The recording rules (``by=BY``, ``window="5m"``) and the dashboards (``$__rate_interval``) both
    build their quantiles here, so the TTFT p95 stat and the TTFT alert read the same expression.
    """
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q:g}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{window}])))"


def quantile_record(metric: str, q: float) -> str:
    """Name of the recorded quantile, e.g. ``llm:time_to_first_token_seconds:p95_5m``."""
    return f"llm:{metric.removeprefix('llm_')}:p{round(q * 100)}_5m"
