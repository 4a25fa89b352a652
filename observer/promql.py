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
