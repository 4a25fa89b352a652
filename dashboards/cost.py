"""Cost: what a token costs, self-hosted against the public API."""

from __future__ import annotations

from dashboards.lib import (
    GREEN,
    Board,
    Panel,
    Q,
    Row,
    business_variables,
    currency_unit,
)
from observer.analytics.cost import LIVE_WINDOW
from observer.config import Settings


def build(s: Settings) -> Board:
    c = s.cost
    o = 'job=~"$job",instance=~"$instance"'
    money = currency_unit(c.currency)
    rows = [
        Row(
            "Unit cost",
            [
                Panel(
                    "stat",
                    "Self-hosted cost per 1M tokens (now)",
                    f"GPU-hours ({c.gpus} GPUs, as configured) plus energy per million tokens, from the last "
                    f"{LIVE_WINDOW} of traffic. Falls as utilization rises: idle GPUs cost the same.",
                    money,
                    [Q("llm:cost_self_hosted:per_million_tokens", instant=True)],
                    w=6,
                    h=5,
                ),
                Panel(
                    "stat",
                    f"{c.reference.model} per 1M tokens",
                    "What the same token mix costs per million on the reference public API.",
                    money,
                    [Q("llm:cost_public_api_equivalent:per_million_tokens", instant=True)],
                    w=6,
                    h=5,
                ),
                Panel(
                    "stat",
                    "Savings over 30 days",
                    "Public-API-equivalent cost minus self-hosted cost over 30 days "
                    "(negative: the GPUs cost more than the API would at this volume).",
                    money,
                    [Q(f'llm_cost_savings{{{o},window="30d"}}', instant=True)],
                    w=6,
                    h=5,
                    thresholds=[(0, GREEN)],
                    bad="low",
                ),
                Panel(
                    "stat",
                    "Self-hosted vs public per 1M (30 days)",
                    "Both unit costs over the last 30 days of traffic, from the request store.",
                    money,
                    [Q(f"llm_cost_per_million_tokens{{{o}}}", "{{kind}}", instant=True)],
                    w=6,
                    h=5,
                ),
            ],
        ),
        Row(
            "Over time",
            [
                Panel(
                    "timeseries",
                    "Cost per hour: self-hosted vs public API",
                    "Self-hosted (GPU-hours + measured "
                    "energy) against what the same tokens would cost on the public API, per hour.",
                    money,
                    [
                        Q("llm:cost_self_hosted:per_hour", "self-hosted"),
                        Q("llm:cost_public_api_equivalent:per_hour", c.reference.model),
                    ],
                ),
                Panel(
                    "bargauge",
                    "Cost by department (30 days)",
                    "Self-hosted cost charged back by each department's share of tokens.",
                    money,
                    [Q(f'llm_cost_by_department{{{o},window="30d"}}', "{{department}}", instant=True)],
                ),
                Panel(
                    "timeseries",
                    "Energy per generated token",
                    "Joules per generated token, fleet-wide.",
                    "joule",
                    [Q("llm:energy_joules_per_generated_token:ratio_rate5m", "J/token")],
                ),
            ],
        ),
    ]
    return Board(
        "llm-cost",
        "Cost",
        "What a token costs: self-hosted (GPU-hours and energy) against the public-API price of "
        "the same tokens, savings, chargeback by department.",
        ["llm-observer", "business", "cost"],
        rows,
        business_variables(with_model=False),
        alertmanager_uid=s.dashboards.alertmanager_datasource_uid,
        refresh="5m",
        time_from="now-24h",
    )
