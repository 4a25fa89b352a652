"""Hand-rendered Prometheus text exposition, with HELP/TYPE taken from the catalog.

The exporters pre-render text instead of building prometheus_client objects per scrape: a probe
or a GPU snapshot is a few hundred to thousands of series that change every time, and rendering
them directly is several times cheaper than registering and collecting metric objects.
"""

from __future__ import annotations

import math
from functools import cache

from observer.catalog import spec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[tuple[str, str], ...]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def line(name: str, key: LabelKey, value: float) -> str:
    if not key:
        return f"{name} {fmt(value)}"
    labels = ",".join(f'{k}="{escape(v)}"' for k, v in key)
    return f"{name}{{{labels}}} {fmt(value)}"


@cache
def header(name: str) -> tuple[str, str]:
    """``# HELP`` and ``# TYPE`` lines for a catalog metric (counters typed without ``_total``)."""
    s = spec(name)
    type_name = s.name[: -len("_total")] if s.type == "counter" and s.name.endswith("_total") else s.name
    return f"# HELP {type_name} {s.help}", f"# TYPE {type_name} {s.type}"
