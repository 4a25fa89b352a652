"""Do the generated rules answer the same on Prometheus and on VictoriaMetrics (MetricsQL)?

The demo stack (simulated engines, exporters, 1 s scrapes) is scraped at once by Prometheus and by
vmagent -> VictoriaMetrics (vmalert evaluating the same rule files). After --load seconds of
synthetic users, every recording and alert expression, plus a few probes of rate() vs increase(),
is evaluated on both at one timestamp. Reported: the expressions whose label sets or values (beyond
--tolerance, relative) differ, and how many agree. Use a load longer than the rules' 5 m windows to
see steady state; shorter runs show the young-series differences of long-window rates.

    python benchmarks/promql_vs_metricsql.py [--load 400] [--tolerance 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_victoriametrics import VictoriaMetricsPath

from alerts.rules import alert_groups, recording_groups
from observer.config import Settings
from observer.load.generator import LoadConfig, run_load
from observer.promql import QueryError, instant_query
from observer.stack import Stack, StackOptions

PROBES = [
    ("rate over 1d", "sum by (instance) (rate(llm_requests_finished_total[1d]))"),
    ("increase over 1d / 86400", "sum by (instance) (increase(llm_requests_finished_total[1d])) / 86400"),
    ("rate over 5m", "sum by (instance) (rate(llm_requests_finished_total[5m]))"),
]


def instant(url: str, expr: str, at: float) -> dict[tuple, float] | str:
    try:
        result = instant_query(url, expr, at=at, timeout=30)
    except QueryError as exc:
        return str(exc)
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
        for r in result
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=float, default=400)
    ap.add_argument("--tolerance", type=float, default=0.1)
    args = ap.parse_args()
    settings = Settings()
    with Stack(
        StackOptions(engines=2, scrape_interval="1s", analytics_refresh_s=2, settings=settings)
    ) as stack:
        assert stack.prometheus_url and stack.alertmanager_url and stack.serve
        config = yaml.safe_load((stack.dir / "prometheus.yml").read_text())
        vm = VictoriaMetricsPath(config["scrape_configs"], config["rule_files"], stack.alertmanager_url)
        try:

            async def drive() -> None:
                await asyncio.gather(
                    *(
                        run_load(LoadConfig(target=e.url, users=40, rps=4, duration=args.load, seed=i + 1))
                        for i, e in enumerate(stack.engines)
                    )
                )

            asyncio.run(drive())
            time.sleep(12)  # VictoriaMetrics makes a new series searchable ~10 s after its first sample
            at = time.time() - 3
            rules = [g["rules"] for g in recording_groups(settings) + alert_groups(settings)]
            exprs = PROBES + [(r.get("record") or r["alert"], r["expr"]) for group in rules for r in group]
            agree = 0
            for name, expr in exprs:
                prom, victoria = instant(stack.prometheus_url, expr, at), instant(vm.url, expr, at)
                if isinstance(prom, str) or isinstance(victoria, str):
                    print(f"ERROR   {name}: prometheus {prom!r:.200} victoriametrics {victoria!r:.200}")
                elif set(prom) != set(victoria):
                    print(f"LABELS  {name}: prometheus {sorted(prom)[:2]} vm {sorted(victoria)[:2]}")
                else:
                    off = [
                        (dict(k).get("instance") or dict(k).get("model") or "", prom[k], victoria[k])
                        for k in prom
                        if not (math.isnan(prom[k]) and math.isnan(victoria[k]))
                        and abs(prom[k] - victoria[k])
                        > args.tolerance * max(abs(prom[k]), abs(victoria[k]), 1e-9)
                    ]
                    if off:
                        where, p, v = off[0]
                        print(f"VALUES  {name}: {where} prometheus {p:.4g} victoriametrics {v:.4g}")
                    else:
                        agree += 1
            print(
                f"{agree} of {len(exprs)} agree within {args.tolerance:.0%} after {args.load:.0f} s of load"
            )
        finally:
            vm.stop()


if __name__ == "__main__":
    main()
