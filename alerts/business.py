"""Business alerts (adoption) and their promtool cases; week-long inputs, evaluated every 5 minutes.

The cost formula's recording rules live with the formula in ``observer/analytics/cost.py``; a case
here checks that the PromQL and the Python price the same hour identically.
"""

from __future__ import annotations

from alerts.model import Alert, Cases, observer_labels, series
from observer.analytics.cost import self_hosted_cost
from observer.config import Settings

EVALUATION_INTERVAL = "5m"


def alerts(s: Settings) -> list[Alert]:
    O, drop = f'job="{s.alerting.observer_job}"', s.slo.dau_drop_ratio  # noqa: E741
    return [
        Alert(
            "LLMDailyActiveUsersDrop",
            f'llm_active_users{{{O},window="1d"}} < {1 - drop:g} * llm_active_users{{{O},window="1d"}} offset 7d',
            "warning",
            "Daily active users dropped week over week.",
            f"DAU is {{{{ $value }}}}, more than {drop:.0%} below the same day last week:"
            " check outages, client changes or a broken gateway trace.",
            for_="2h",
        ),
    ]


def cases(s: Settings, c: Cases) -> None:
    o, drop = observer_labels(s), s.slo.dau_drop_ratio
    week = "1000x2016"  # a week of samples every 5 minutes (an hourly series would go stale)
    low, dip = round(1000 * (1 - drop) * 0.7), round(1000 * (1 - drop / 2))
    after = c.after("LLMDailyActiveUsersDrop", 120)  # minutes into the second week
    at, samples = f"{(7 * 1440 + after) // 60}h", after // 5 + 12
    c.add(
        "dau dropped week over week",
        [series("llm_active_users", o, f"{week} {low}x{samples}", window="1d")],
        [c.fires("LLMDailyActiveUsersDrop", at, {**o, "window": "1d"}, low)],
        interval="5m",
    )
    c.add(
        f"dau dipped {drop / 2:.0%}: no ticket",
        [series("llm_active_users", o, f"{week} {dip}x{samples}", window="1d")],
        [c.silent("LLMDailyActiveUsersDrop", at)],
        interval="5m",
    )
    c.groups.append(
        {"name": "cost formula", "interval": "5m", "input_series": [], "promql_expr_test": cost_checks(s)}
    )


def cost_checks(s: Settings) -> list[dict]:
    """PromQL cost of an hour with no energy measured equals the Python formula's (the one owner)."""
    gpu_cost, _, energy_cost = self_hosted_cost(s.cost, 1, None)
    return [
        {
            "expr": "llm:cost_self_hosted:per_hour",
            "eval_time": "1h",
            "exp_samples": [
                {
                    "labels": f'llm:cost_self_hosted:per_hour{{currency="{s.cost.currency}"}}',
                    "value": gpu_cost + energy_cost,
                }
            ],
        }
    ]
