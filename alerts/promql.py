"""PromQL pieces shared by the rules and the dashboards, so both evaluate the same series."""

from __future__ import annotations

import re

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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration like ``5m``, ``1h30m`` or ``3d``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * (0.001 if u == "ms" else _UNITS[u]) for n, u in parts)
