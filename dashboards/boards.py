"""The five boards, one module each; thresholds come from the same settings the alert rules use.

Panel descriptions carry the diagnosis an SRE needs at 3 a.m. (what the shape of a curve means and
where to look next), not just what the metric is.
"""

from __future__ import annotations

from dashboards import adoption, alerts_slos, cost, gpu_fleet, serving

BOARDS = {
    "llm-serving.json": serving.build,
    "gpu-fleet.json": gpu_fleet.build,
    "adoption.json": adoption.build,
    "cost.json": cost.build,
    "alerts-slos.json": alerts_slos.build,
}
