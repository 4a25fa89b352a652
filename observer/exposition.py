"""Hand-rendered Prometheus text exposition, with HELP/TYPE taken from the catalog.

The exporters pre-render text instead of building prometheus_client objects per scrape: a probe
or a GPU snapshot is a few hundred to thousands of series that change every time, and rendering
them directly is several times cheaper than registering and collecting metric objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

from observer.catalog import spec

if TYPE_CHECKING:
    from fastapi import FastAPI

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[tuple[str, str], ...]


def escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value  # the common case: three scans instead of three copies
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
    """``# HELP`` and ``# TYPE`` lines for a catalog metric. In the 0.0.4 text format they name the
    sample (``x_total`` for counters, as prometheus_client writes them): ``promtool check metrics``
    reports "no help text" for a counter whose HELP names ``x`` but whose samples are ``x_total``."""
    s = spec(name)
    return f"# HELP {s.name} {s.help}", f"# TYPE {s.name} {s.type}"


def add_health_and_metrics(app: FastAPI, render: Callable[[], bytes]) -> None:
    """The two routes every one of our exporters and the simulator serve: ``GET /health`` (200 while
    the process answers) and ``GET /metrics`` (``render()`` in the text format)."""
    from fastapi.responses import Response

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render(), media_type=CONTENT_TYPE)
