"""PromQL: just enough lexing to list the metric names an expression reads (for catalog checks), and
the one small instant-query client the demo, the cost report, the tests and the benchmarks share."""

from __future__ import annotations

import re
from typing import Any

import httpx

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_DURATION = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_TEMPLATE = re.compile(r"\$\{?\w+\}?")

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "histogram_quantile",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "changes",
    "resets",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "scalar",
    "absent",
    "absent_over_time",
    "label_replace",
    "label_join",
    "sort",
    "sort_desc",
    "day_of_week",
    "hour",
    "histogram_fraction",
    "Inf",
    "NaN",
    "inf",
    "nan",
    "e",
}


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (label names, functions and numbers excluded)."""
    text = _TEMPLATE.sub(" ", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _DURATION.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        token = m.group(0)
        end = m.end()
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the unit of a duration ("15m") or an exponent ("3.6e6")
        if token in KEYWORDS or re.fullmatch(r"[0-9.e]+", token):
            continue
        rest = text[end:].lstrip()
        if rest.startswith("(") and ":" not in token:  # a function call
            continue
        names.add(token)
    return names


class QueryError(ValueError):
    """The server answered, but not with a result (bad expression, unsupported function...)."""


def instant_query(
    url: str, expr: str, *, at: float | None = None, timeout: float = 10
) -> list[dict[str, Any]]:
    """The result of an instant query against a Prometheus-compatible ``url`` (``/api/v1/query``).

    Each item is ``{"metric": {...}, "value": [time, "text"]}``. Raises :class:`QueryError` when the
    server reports a failure, ``httpx.HTTPError`` when it cannot be reached, ``ValueError`` for a body
    that is not JSON: callers that show "no data" instead catch ``(httpx.HTTPError, ValueError)``.
    """
    params: dict[str, str | float] = {"query": expr}
    if at is not None:
        params["time"] = at
    body = httpx.get(f"{url.rstrip('/')}/api/v1/query", params=params, timeout=timeout).json()
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", body) if isinstance(body, dict) else body
        raise QueryError(f"query {expr!r} failed: {error}")
    try:
        return body["data"]["result"]
    except (KeyError, TypeError) as exc:
        raise QueryError(f"query {expr!r}: no data.result in the answer") from exc


# Expression builders shared by the rules (alerts), the cost series (observer.analytics.cost) and the boards.

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration like ``5m``, ``1h30m`` or ``3d``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * (0.001 if u == "ms" else _UNITS[u]) for n, u in parts)


# The longest window ``rate()`` is written with. Beyond it, a series is often younger than the window
# (a new engine or GPU, a restarted exporter, the first hour of the demo), and there PromQL's rate()
# divides by the whole window while MetricsQL's divides by the time the samples cover: measured on
# the same scrapes, ``rate(x[1d])`` read 0.0103/s on Prometheus and 2.05/s on VictoriaMetrics.
RATE_WINDOW = "5m"


def rate_over(series: str, window: str) -> str:
    """Per-second rate of the counter selector ``series`` over ``window``, the same on PromQL and MetricsQL.

    Up to :data:`RATE_WINDOW` it is plain ``rate()``. Longer windows are written
    ``(increase(series[window]) / <window in seconds>)``: Prometheus' answer is unchanged (its rate()
    is that increase over the window), and VictoriaMetrics divides by the window too, so both agree
    while the series is younger than the window. Every rule, cost series and panel builds long
    rates here.
    """
    if duration_seconds(window) <= duration_seconds(RATE_WINDOW):
        return f"rate({series}[{window}])"
    return f"(increase({series}[{window}]) / {duration_seconds(window):g})"
