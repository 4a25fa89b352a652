"""Just enough PromQL lexing to list the metric names an expression reads (for catalog checks)."""

from __future__ import annotations

import re

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
