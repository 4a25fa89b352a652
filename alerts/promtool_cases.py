"""promtool test files: every area's cases, one file per area, reading the generated rule files.

Each case's expected labels and annotations are computed from the settings and the area's own
alerts (``alerts.model.Cases``), so ``python -m alerts --config X`` writes tests that pass for X.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from alerts.model import Cases
from observer.config import Settings


def test_files(
    s: Settings, areas: dict[str, ModuleType], alerts_by_area: dict[str, list], order: list[str]
) -> dict[str, dict[str, Any]]:
    """``<area>_test.yml`` -> promtool test document, for every area with cases."""
    files = {}
    for name, area in areas.items():
        c = Cases(s, alerts_by_area[name])
        area.cases(s, c)
        if not c.groups:
            continue
        files[f"{name}_test.yml"] = {
            "rule_files": ["../generated/recording_rules.yml", "../generated/alert_rules.yml"],
            "evaluation_interval": getattr(area, "EVALUATION_INTERVAL", "1m"),
            "group_eval_order": order,
            "tests": c.groups,
        }
    return files
