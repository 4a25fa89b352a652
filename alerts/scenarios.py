"""Incident scenarios as promtool input series, and the time each alert takes to detect them.

A small model of one engine (``vllm-0:8000``, model ``m``) and a two-GPU node emits per-minute
samples of the metrics the rules read. Each scenario is an hour of healthy traffic followed by an
incident; the normal-day scenario is 24 hours of diurnal traffic with no incident. For every
scenario promtool checks, from ``ALERTS``, that the expected alerts fire within the budget
(the alert's ``for`` plus the rate window) and that nothing outside the expected/allowed set fires.

    python -m alerts.scenarios            # run all scenarios, print detection times
    python -m alerts.scenarios --out DIR  # only write the promtool files
"""

from __future__ import annotations

import argparse
import math
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from alerts.rules import alerts, group_eval_order, write_rule_files
from observer.config import Settings, load_settings

# Bucket bounds around the targets (as multiples of them), so the shapes below mean the same
# thing for any settings: the 4th TTFT bound is the SLO target, the 3rd ITL bound the ITL target.
TTFT_LE_FACTORS = (0.1, 0.2, 0.4, 1, 2, 4, 8)
ITL_LE_FACTORS = (0.25, 0.5, 1, 2)
HEALTHY_TTFT = (0.80, 0.93, 0.985, 0.998, 1, 1, 1, 1)  # cumulative share <= each bound
HEALTHY_ITL = (0.5, 0.97, 1, 1, 1)


@dataclass
class State:
    """What the system looks like during one minute."""

    rps: float = 8.0
    kv: float = 0.45
    waiting: float = 0.0
    engine_up: bool = True
    ttft: tuple[float, ...] = HEALTHY_TTFT
    itl: tuple[float, ...] = HEALTHY_ITL
    error_share: float = 0.001
    preemptions_per_s: float = 0.0
    gpu_up: tuple[bool, bool] = (True, True)
    gpu_temp: float = 65.0


@dataclass
class Scenario:
    name: str
    minutes: int
    state: Callable[[int], State]
    onset: int | None = None
    expected: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    budget_min: dict[str, int] = field(default_factory=dict)


def _duration_minutes(text: str) -> int:
    unit = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}[text[-1]]
    return math.ceil(float(text[:-1]) * unit)


def scenarios(settings: Settings) -> list[Scenario]:
    fors = {a.name: a.for_ for group in alerts(settings).values() for a in group}
    fors.update(settings.alerting.for_overrides)
    slo = settings.slo
    healthy = State(gpu_temp=slo.gpu_temperature_warning_celsius - 20)
    # Incidents sized from the settings: well past the fastest page's burn factor, whatever the budget.
    top_page = max((w.factor for w in slo.burn_windows if w.severity == "critical"), default=1.0)
    spike_good = min(0.5, max(0.0, 1 - 1.5 * top_page * (1 - slo.ttft_objective)))  # share within target
    spike_ttft = (*(min(c, spike_good) for c in (0.2, 0.3, 0.4)), spike_good, 0.9, 1.0, 1.0, 1.0)
    burst = min(0.9, max(0.2, 2 * top_page * (1 - slo.error_objective)))  # share of requests failing
    onset = 60

    def after(incident: State) -> Callable[[int], State]:
        return lambda t: incident if t >= onset else healthy

    def diurnal(t: int) -> State:
        hour = t / 60
        load = max(0.0, math.sin(math.pi * (hour - 7) / 13)) if 7 <= hour <= 20 else 0.0
        return replace(healthy, rps=1.5 + 18 * load, kv=0.15 + 0.5 * load)

    def kv(t: int) -> State:
        if t < onset:
            return healthy
        return replace(
            healthy,
            kv=(slo.kv_cache_critical_ratio + 1) / 2,
            gpu_temp=slo.gpu_temperature_warning_celsius - 20,
            waiting=min(60, 2 * (t - onset + 1)),
            preemptions_per_s=slo.preemptions_per_second_threshold / 2,  # some, below the storm alert
            ttft=(0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 1),
        )

    cases = [
        Scenario("normal 24h diurnal day", 24 * 60, diurnal),
        Scenario(
            "KV cache saturation",
            90,
            kv,
            onset,
            ("LLMKVCacheSaturated",),
            (
                "LLMKVCacheNearFull",
                "LLMRequestQueueBuildingUp",
                "LLMTimeToFirstTokenSpike",
                "LLMTimeToFirstTokenBudgetBurn",
            ),
        ),
        Scenario(
            "queue build-up",
            90,
            after(
                replace(
                    healthy,
                    kv=slo.kv_cache_warning_ratio - 0.05,
                    waiting=slo.queue_waiting_threshold * 2.5,
                    ttft=(0.5, 0.7, 0.85, 0.97, 1, 1, 1, 1),
                )
            ),
            onset,
            ("LLMRequestQueueBuildingUp",),
            ("LLMTimeToFirstTokenSpike", "LLMTimeToFirstTokenBudgetBurn"),
        ),
        Scenario(
            "TTFT spike from long prompts",
            90,
            after(replace(healthy, ttft=spike_ttft)),
            onset,
            ("LLMTimeToFirstTokenSpike", "LLMTimeToFirstTokenBudgetBurn"),
        ),
        Scenario("GPU lost", 90, after(replace(healthy, gpu_up=(True, False))), onset, ("GPULost",)),
        Scenario("engine crash", 90, after(replace(healthy, engine_up=False)), onset, ("LLMEngineDown",)),
        Scenario(
            "error burst", 90, after(replace(healthy, error_share=burst)), onset, ("LLMErrorBudgetBurn",)
        ),
    ]
    page = [w for w in settings.slo.burn_windows if w.severity == "critical"]
    page_for = _duration_minutes(page[0].for_) if page else 0

    def burn_budget(objective: float, bad_share: float) -> int:
        # MWMB by design: the long window must see factor x budget, i.e. after
        # factor * (1 - objective) * long / bad_share minutes of the incident (SRE workbook).
        return min(
            math.ceil(w.factor * (1 - objective) * _duration_minutes(w.long) / bad_share) for w in page
        )

    burn = {
        ("TTFT spike from long prompts", "LLMTimeToFirstTokenBudgetBurn"): burn_budget(
            settings.slo.ttft_objective, 1 - spike_good
        ),
        ("error burst", "LLMErrorBudgetBurn"): burn_budget(settings.slo.error_objective, burst),
    }
    for c in cases:
        # Detection budget: the alert's "for" plus the 5-minute rate window it needs to see the change
        # (for burn-rate alerts, the time their long window needs, plus the page's "for").
        c.budget_min = {
            a: (burn[(c.name, a)] + page_for if (c.name, a) in burn else _duration_minutes(fors.get(a, "0m")))
            + 5
            for a in c.expected
        }
    return cases


def _cumulative(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out


def _bounds(target: float, factors: tuple[float, ...]) -> tuple[str, ...]:
    return (*(repr(float(round(target * f, 6))) for f in factors), "+Inf")


def input_series(s: Scenario, settings: Settings) -> list[dict[str, str]]:
    ENGINE = f'job="{settings.alerting.engine_job}",instance="vllm-0:8000",model="m",dp_rank="0"'
    GPU_NODE = f'job="{settings.alerting.gpu_job}",instance="node-a:9835"'
    TTFT_LE = _bounds(settings.slo.ttft_target_s, TTFT_LE_FACTORS)
    ITL_LE = _bounds(settings.slo.itl_p95_target_s, ITL_LE_FACTORS)
    memory_used = min(0.9, settings.slo.gpu_memory_warning_ratio - 0.05) * 80e9
    states = [s.state(t) for t in range(s.minutes + 1)]
    per_min = [st.rps * 60 for st in states]
    series: dict[str, list[str]] = {}

    def put(selector: str, values: list[float | None]) -> None:
        out: list[str] = []
        gone = False
        for v in values:
            if v is None:
                out.append("_" if gone else "stale")
                gone = True
            else:
                out.append(f"{v:.6g}")
                gone = False
        series[selector] = out

    up = [st.engine_up for st in states]

    def engine(values: list[float]) -> list[float | None]:
        return [v if alive else None for v, alive in zip(values, up, strict=True)]

    put(f"llm_engine_up{{{ENGINE.rsplit(',model', 1)[0]}}}", [1.0 if u else 0.0 for u in up])
    put(f'up{{job="{settings.alerting.engine_job}",instance="vllm-0:8000"}}', [1.0] * len(states))
    put(f"llm_kv_cache_usage_ratio{{{ENGINE}}}", engine([st.kv for st in states]))
    put(f"llm_requests_waiting{{{ENGINE}}}", engine([st.waiting for st in states]))
    put(
        f"llm_preemptions_total{{{ENGINE}}}",
        engine(_cumulative([st.preemptions_per_s * 60 for st in states])),
    )
    ok = _cumulative([n * (1 - st.error_share) for n, st in zip(per_min, states, strict=True)])
    bad = _cumulative([n * st.error_share for n, st in zip(per_min, states, strict=True)])
    put(f'llm_requests_finished_total{{{ENGINE},finished_reason="stop"}}', engine(ok))
    put(f'llm_requests_finished_total{{{ENGINE},finished_reason="error"}}', engine(bad))
    for name, bounds, attr in (
        ("llm_time_to_first_token_seconds", TTFT_LE, "ttft"),
        ("llm_inter_token_latency_seconds", ITL_LE, "itl"),
    ):
        for i, le in enumerate(bounds):
            counts = _cumulative([n * getattr(st, attr)[i] for n, st in zip(per_min, states, strict=True)])
            put(f'{name}_bucket{{{ENGINE},le="{le}"}}', engine(counts))
        put(f"{name}_count{{{ENGINE}}}", engine(_cumulative(per_min)))
    for g in (0, 1):
        gsel = f'{GPU_NODE},gpu="{g}",uuid="GPU-{g}"'
        alive = [st.gpu_up[g] for st in states]

        def gpu(values: list[float], alive: list[bool] = alive) -> list[float | None]:
            return [v if a else None for v, a in zip(values, alive, strict=True)]

        put(f"gpu_up{{{gsel}}}", [1.0 if a else 0.0 for a in alive])
        put(f"gpu_temperature_celsius{{{gsel}}}", gpu([st.gpu_temp for st in states]))
        put(f"gpu_memory_used_bytes{{{gsel}}}", gpu([memory_used] * len(states)))
        put(f"gpu_memory_total_bytes{{{gsel}}}", gpu([80e9] * len(states)))
        put(
            f'gpu_throttle_active{{{gsel},reason="{settings.slo.gpu_throttle_reasons[0]}"}}',
            gpu([0.0] * len(states)),
        )
        put(f'gpu_ecc_errors_total{{{gsel},type="uncorrected"}}', gpu([0.0] * len(states)))
    put(f"gpu_exporter_last_collect_success{{{GPU_NODE}}}", [1.0] * len(states))
    return [{"series": k, "values": " ".join(v)} for k, v in series.items()]


def _firing(name: str, at: int) -> dict:
    return {
        "expr": f'count(ALERTS{{alertstate="firing",alertname="{name}"}}) > 0 or vector(0)',
        "eval_time": f"{at}m",
        "exp_samples": [{"labels": "{}", "value": 1}],
    }


def _unrelated_silent(s: Scenario, at: int) -> dict:
    quiet = "|".join(("Watchdog", *s.expected, *s.allowed))
    return {
        "expr": f'count(ALERTS{{alertstate="firing",alertname!~"{quiet}"}}) or vector(0)',
        "eval_time": f"{at}m",
        "exp_samples": [{"labels": "{}", "value": 0}],
    }


def test_file(s: Scenario, checks: list[dict], order: list[str], settings: Settings) -> dict:
    return {
        "rule_files": ["rules/recording_rules.yml", "rules/alert_rules.yml"],
        "evaluation_interval": "1m",
        "group_eval_order": order,
        "tests": [
            {
                "name": s.name,
                "interval": "1m",
                "input_series": input_series(s, settings),
                "promql_expr_test": checks,
            }
        ],
    }


def _promtool(path: Path, promtool: str) -> bool:
    return (
        subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, timeout=600).returncode
        == 0
    )


@dataclass
class Result:
    scenario: str
    alert: str | None
    detected_after_min: int | None
    budget_min: int | None
    passed: bool


def run(settings: Settings, workdir: Path, promtool: str = "promtool") -> list[Result]:
    write_rule_files(settings, workdir / "rules")
    order = group_eval_order(settings)
    results: list[Result] = []
    for i, s in enumerate(scenarios(settings)):
        path = workdir / f"scenario_{i}.yml"

        def check(checks: list[dict], s: Scenario = s, path: Path = path) -> bool:
            path.write_text(yaml.safe_dump(test_file(s, checks, order, settings), width=10_000))
            return _promtool(path, promtool)

        if s.onset is None:  # the normal day: nothing but the Watchdog, every hour
            hours = [_unrelated_silent(s, h * 60) for h in range(1, s.minutes // 60 + 1)]
            results.append(Result(s.name, None, None, None, check(hours)))
            continue
        for alert in s.expected:
            budget = s.budget_min[alert]
            lo, hi = s.onset, s.onset + budget
            if not check([_firing(alert, hi), _unrelated_silent(s, hi)]):
                results.append(Result(s.name, alert, None, budget, False))
                continue
            while lo < hi:  # the earliest minute at which it fires (firing persists during the incident)
                mid = (lo + hi) // 2
                if check([_firing(alert, mid)]):
                    hi = mid
                else:
                    lo = mid + 1
            results.append(Result(s.name, alert, lo - s.onset, budget, True))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the scenario rule files and tests here and keep them")
    ap.add_argument("--config", help="observer.yaml to take thresholds and job names from")
    args = ap.parse_args()
    settings = load_settings(args.config, environ={}) if args.config else Settings()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="scenarios-"))
    for r in run(settings, work):
        detail = (
            f"{r.alert} after {r.detected_after_min} min (budget {r.budget_min})"
            if r.alert
            else "no alert all day besides the Watchdog"
        )
        print(f"{'PASS' if r.passed else 'FAIL'}  {r.scenario:<30} {detail}")


if __name__ == "__main__":
    main()
