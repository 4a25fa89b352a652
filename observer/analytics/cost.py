"""Self-hosted cost versus what the same tokens would cost on a public API.

Self-hosted = GPUs x hours x GPU-hour cost (a rental price, or purchase price amortized over its
life plus hosting) + energy x electricity price. Energy is measured (``gpu_energy_joules_total``
from Prometheus) when a Prometheus URL is configured, else estimated from an assumed average draw.
Chargeback splits the self-hosted cost by each department's share of tokens.

This module is the one owner of the formula: :func:`self_hosted_cost` and :func:`public_api_cost`
price a window here, and :func:`recording_rules` writes the same formula in PromQL for the live
per-hour and per-million series (GPU count from the settings in both, never from ``gpu_up``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import httpx

from observer.config import CostSettings, Settings
from observer.promql import instant_query, rate_over

JOULES_PER_KWH = 3.6e6


@dataclass
class CostReport:
    window_days: int
    currency: str
    input_tokens: int
    output_tokens: int
    public_api_model: str
    public_api_cost: float
    gpu_hours: float
    gpu_cost: float
    energy_kwh: float
    energy_source: str  # measured | assumed
    energy_cost: float
    self_hosted_cost: float
    self_hosted_per_million_tokens: float | None
    public_api_per_million_tokens: float | None
    savings: float
    by_department: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def public_api_cost(cfg: CostSettings, input_tokens: int, output_tokens: int) -> float:
    ref = cfg.reference
    return input_tokens / 1e6 * ref.input_per_million + output_tokens / 1e6 * ref.output_per_million


def self_hosted_cost(cfg: CostSettings, hours: float, energy_kwh: float | None) -> tuple[float, float, float]:
    """(GPU cost, energy kWh, energy cost) of ``hours``; energy is assumed from the average draw
    per GPU when it was not measured."""
    if energy_kwh is None:
        energy_kwh = cfg.gpus * cfg.assumed_gpu_power_watts * hours / 1000
    return cfg.gpus * hours * cfg.gpu_hour_cost, energy_kwh, energy_kwh * cfg.electricity_per_kwh


LIVE_WINDOW = "1h"  # the window of the live cost series (the 30-day figures come from cost_report)


def recording_rules(settings: Settings) -> list[dict]:
    """The formula above in PromQL, over the last ``LIVE_WINDOW`` of traffic and energy."""
    c, w = settings.cost, LIVE_WINDOW
    E, G = f'job="{settings.alerting.engine_job}"', f'job="{settings.alerting.gpu_job}"'
    assumed_kw = c.gpus * c.assumed_gpu_power_watts / 1000
    # rate_over: an hour is longer than a new engine or GPU has existed, and both TSDBs must agree then.
    energy_kw = f"(sum({rate_over(f'gpu_energy_joules_total{{{G}}}', w)}) / 1000 or vector({assumed_kw:g}))"
    prompt = f"sum({rate_over(f'llm_prompt_tokens_total{{{E}}}', w)})"
    generated = f"sum({rate_over(f'llm_generation_tokens_total{{{E}}}', w)})"
    ref = c.reference
    public_per_s = f"({prompt} * {ref.input_per_million:g} + {generated} * {ref.output_per_million:g}) / 1e6"
    tokens_per_hour = f"({prompt} + {generated}) * 3600"
    currency = {"currency": c.currency}
    return [
        {
            "record": "llm:cost_self_hosted:per_hour",
            "expr": f"{c.gpus} * {c.gpu_hour_cost!r} + {energy_kw} * {c.electricity_per_kwh!r}",
            "labels": currency,
        },
        {
            "record": "llm:cost_public_api_equivalent:per_hour",
            "expr": f"{public_per_s} * 3600",
            "labels": currency,
        },
        {
            "record": "llm:cost_self_hosted:per_million_tokens",
            "expr": f"llm:cost_self_hosted:per_hour / ignoring(currency) ({tokens_per_hour} / 1e6)",
            "labels": currency,
        },
        {
            "record": "llm:cost_public_api_equivalent:per_million_tokens",
            "expr": f"{public_per_s} * 1e6 / ({prompt} + {generated})",
            "labels": currency,
        },
    ]


def measured_energy_kwh(prometheus_url: str, window_days: int) -> float | None:
    """Energy of every GPU over the window from Prometheus, or None if it can't say."""
    query = f"sum(increase(gpu_energy_joules_total[{window_days}d]))"
    try:
        result = instant_query(prometheus_url, query, timeout=5)
    except (httpx.HTTPError, ValueError):
        return None
    if not result:
        return None
    return float(result[0]["value"][1]) / JOULES_PER_KWH


def cost_report(
    cfg: CostSettings,
    window_days: int,
    input_tokens: int,
    output_tokens: int,
    departments: list[tuple[str, int, int]],  # (department, input tokens, output tokens)
    energy_kwh: float | None = None,
) -> CostReport:
    hours = window_days * 24
    gpu_hours = cfg.gpus * hours
    source = "measured" if energy_kwh is not None else "assumed"
    gpu_cost, energy_kwh, energy_cost = self_hosted_cost(cfg, hours, energy_kwh)
    self_hosted = gpu_cost + energy_cost
    public = public_api_cost(cfg, input_tokens, output_tokens)
    total = input_tokens + output_tokens
    by_department = []
    for dept, i, o in departments:
        share = (i + o) / total if total else 0.0
        by_department.append(
            {
                "department": dept,
                "input_tokens": i,
                "output_tokens": o,
                "token_share": round(share, 6),
                "self_hosted_cost": round(self_hosted * share, 2),
                "public_api_cost": round(public_api_cost(cfg, i, o), 2),
            }
        )
    by_department.sort(key=lambda d: -d["self_hosted_cost"])
    return CostReport(
        window_days=window_days,
        currency=cfg.currency,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        public_api_model=cfg.reference.model,
        public_api_cost=round(public, 2),
        gpu_hours=gpu_hours,
        gpu_cost=round(gpu_cost, 2),
        energy_kwh=round(energy_kwh, 3),
        energy_source=source,
        energy_cost=round(energy_cost, 2),
        self_hosted_cost=round(self_hosted, 2),
        self_hosted_per_million_tokens=round(self_hosted / (total / 1e6), 4) if total else None,
        public_api_per_million_tokens=round(public / (total / 1e6), 4) if total else None,
        savings=round(public - self_hosted, 2),
        by_department=by_department,
    )
