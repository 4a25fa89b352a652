"""SLO burn-rate alerts (multi-window, multi-burn-rate) and their promtool cases.

One rule per alert and severity: the pairs of ``settings.slo.burn_windows`` with that severity are
or-ed together, and the rule waits the ``for`` of its first pair.
"""

from __future__ import annotations

import math

from alerts.model import Alert, Cases, engine_labels, hist, series
from alerts.promql import duration_seconds, le
from observer.config import BurnWindow, Settings

WHERE = "{{ $labels.model }} on {{ $labels.instance }}"
SEVERITIES = ("critical", "warning")  # pages, then tickets


def _pairs(s: Settings, severity: str) -> list[BurnWindow]:
    return [w for w in s.slo.burn_windows if w.severity == severity]


def _burn(sli: str, objective: float, windows: list[BurnWindow]) -> str:
    budget = 1 - objective
    return "\n  or\n".join(
        f"(llm:{sli}:ratio_rate{w.short} > ({w.factor:g} * {budget:.6g})"
        f" and llm:{sli}:ratio_rate{w.long} > ({w.factor:g} * {budget:.6g}))"
        for w in windows
    )


def alerts(s: Settings) -> list[Alert]:
    slo = s.slo
    budgets = (
        (
            "LLMTimeToFirstTokenBudgetBurn",
            "ttft_slo_errors",
            slo.ttft_objective,
            "TTFT SLO error budget is burning too fast.",
            f"{WHERE} is burning its TTFT error budget (TTFT over {slo.ttft_target_s:g}s in more than"
            f" {1 - slo.ttft_objective:.2%} of requests): {{{{ $value | humanizePercentage }}}} of requests are slow.",
        ),
        (
            "LLMErrorBudgetBurn",
            "request_errors",
            slo.error_objective,
            "Request error/abort budget is burning too fast.",
            f"{WHERE} fails or aborts {{{{ $value | humanizePercentage }}}} of requests, burning the"
            f" {slo.error_objective:.1%} success objective's budget.",
        ),
    )
    out = []
    for severity in SEVERITIES:
        windows = _pairs(s, severity)
        if not windows:
            continue
        for name, sli, objective, summary, description in budgets:
            out.append(
                Alert(name, _burn(sli, objective, windows), severity, summary, description, windows[0].for_)
            )
    return out


def _minutes(duration: str) -> int:
    return math.ceil(duration_seconds(duration) / 60)


def _rule_for(c: Cases, name: str, severity: str) -> int:
    """The rule's ``for`` in minutes, after any ``alerting.for_overrides``."""
    return _minutes(c.settings.alerting.for_overrides.get(name, _pairs(c.settings, severity)[0].for_))


def _burning(c: Cases, name: str, at_min: int, labels: dict[str, str], share: float) -> dict:
    """Every severity of ``name`` whose pairs see ``share`` and whose ``for`` has passed at ``at_min``."""
    s = c.settings
    objective = s.slo.ttft_objective if name == "LLMTimeToFirstTokenBudgetBurn" else s.slo.error_objective
    exp = []
    for severity in SEVERITIES:
        pairs = _pairs(s, severity)
        if any(share > w.factor * (1 - objective) for w in pairs) and _rule_for(c, name, severity) < at_min:
            exp += c.fires(name, f"{at_min}m", labels, share, severity)["exp_alerts"]
    return {"eval_time": f"{at_min}m", "alertname": name, "exp_alerts": exp}


def _ttft(s: Settings, labels: dict[str, str], per_min: int, slow: int, minutes: int) -> list[dict[str, str]]:
    """``per_min`` requests a minute, ``slow`` of them over the TTFT target."""
    good, total = f"0+{per_min - slow}x{minutes}", f"0+{per_min}x{minutes}"
    return hist(
        "llm_time_to_first_token_seconds", labels, {le(s.slo.ttft_target_s): good, "+Inf": total}, total
    )


def _finished(labels: dict[str, str], per_min: int, failed: int, minutes: int) -> list[dict[str, str]]:
    return [
        series(
            "llm_requests_finished_total",
            labels,
            f"0+{per_min - failed}x{minutes}",
            dp_rank="0",
            finished_reason="stop",
        ),
        series(
            "llm_requests_finished_total",
            labels,
            f"0+{failed}x{minutes}",
            dp_rank="0",
            finished_reason="error",
        ),
    ]


def cases(s: Settings, c: Cases) -> None:
    slo, e, n = s.slo, engine_labels(s), 10_000  # requests a minute: shares to 0.01 %
    pages, tickets = _pairs(s, "critical"), _pairs(s, "warning")
    factors = [w.factor for w in slo.burn_windows]
    for name, objective, make in (
        ("LLMTimeToFirstTokenBudgetBurn", slo.ttft_objective, lambda bad, m: _ttft(s, e, n, bad, m)),
        ("LLMErrorBudgetBurn", slo.error_objective, lambda bad, m: _finished(e, n, bad, m)),
    ):
        budget = 1 - objective
        what = name.removeprefix("LLM").removesuffix("BudgetBurn")
        if pages:  # every page pair sees 1.5x its factor
            bad = min(n - 1, math.ceil(1.5 * max(w.factor for w in pages) * budget * n))
            at = _rule_for(c, name, "critical") + 5
            c.add(f"{what}: page burn", make(bad, at + 5), [_burning(c, name, at, e, bad / n)])
        if tickets:  # between the smallest ticket factor and the smallest page factor: a ticket only
            top = min(w.factor for w in pages) if pages else 2 * max(w.factor for w in tickets)
            bad = math.ceil((min(w.factor for w in tickets) + top) / 2 * budget * n)
            wait = _rule_for(c, name, "warning")
            at = wait + 15
            checks = [_burning(c, name, at, e, bad / n)]
            if wait > 1:
                checks.insert(0, c.silent(name, f"{wait - 1}m"))
            c.add(f"{what}: slow leak opens a ticket", make(bad, at + 5), checks)
        # Half the smallest factor's budget: nothing fires however long it lasts.
        bad = math.floor(0.5 * min(factors) * budget * n)
        horizon = max(_rule_for(c, name, w.severity) for w in slo.burn_windows) + 60
        c.add(f"{what}: within budget", make(bad, horizon + 10), [c.silent(name, f"{horizon}m")])
