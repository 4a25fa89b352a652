"""Adoption: do people actually use the assistant."""

from __future__ import annotations

from dashboards.lib import (
    GREEN,
    ORANGE,
    RI,
    Board,
    Panel,
    Q,
    Row,
    business_variables,
)
from observer.config import Settings


def build(s: Settings) -> Board:
    o = 'job=~"$job",instance=~"$instance"'
    d = s.dashboards
    rows = [
        Row(
            "Active users",
            [
                Panel(
                    "stat",
                    "DAU",
                    "Distinct users today (company time zone). The top of the iceberg: read it with DAU/MAU.",
                    "short",
                    [Q(f'llm_active_users{{{o},window="1d"}}', instant=True)],
                    w=4,
                    h=4,
                    bad=None,
                ),
                Panel(
                    "stat",
                    "WAU",
                    "Distinct users in the last 7 days.",
                    "short",
                    [Q(f'llm_active_users{{{o},window="7d"}}', instant=True)],
                    w=4,
                    h=4,
                    bad=None,
                ),
                Panel(
                    "stat",
                    "MAU",
                    "Distinct users in the last 30 days.",
                    "short",
                    [Q(f'llm_active_users{{{o},window="30d"}}', instant=True)],
                    w=4,
                    h=4,
                    bad=None,
                ),
                Panel(
                    "gauge",
                    "DAU/MAU (stickiness)",
                    f"Mean DAU over 30 days / MAU. Above {d.stickiness_habit_above:g} the assistant is a daily "
                    f"habit (green); below {d.stickiness_occasional_below:g} it is an occasional tool (red).",
                    "percentunit",
                    [Q(f"llm_users_stickiness_ratio{{{o}}}", instant=True)],
                    w=4,
                    h=4,
                    min=0,
                    max=1,
                    thresholds=[(d.stickiness_occasional_below, ORANGE), (d.stickiness_habit_above, GREEN)],
                    bad="low",
                ),
                Panel(
                    "stat",
                    "New users today",
                    "Users whose first request was today.",
                    "short",
                    [Q(f"llm_new_users{{{o}}}", instant=True)],
                    w=4,
                    h=4,
                    bad=None,
                ),
                Panel(
                    "gauge",
                    "Retention month to month",
                    "Share of last month's users active this month so far: the key "
                    "metric of a general-purpose assistant.",
                    "percentunit",
                    [Q(f"llm_users_retention_m2m_ratio{{{o}}}", instant=True)],
                    w=4,
                    h=4,
                    min=0,
                    max=1,
                    thresholds=[(d.retention_low_below, ORANGE), (d.retention_good_above, GREEN)],
                    bad="low",
                    may_be_empty="needs users active in the previous calendar month; a fresh demo has none",
                ),
            ],
        ),
        Row(
            "Trends and cohorts",
            [
                Panel(
                    "timeseries",
                    "DAU / WAU / MAU",
                    "Active users over time. DAU falling while MAU holds = people keep the habit less often.",
                    "short",
                    [Q(f"llm_active_users{{{o}}}", "{{window}}")],
                ),
                Panel(
                    "table",
                    "Monthly cohorts",
                    "Share of each month's new users (rows) still active k months later "
                    "(columns). Flat rows = a habit; steep drops = novelty.",
                    "percentunit",
                    [Q(f"llm_cohort_retention_ratio{{{o}}}", instant=True, fmt="table")],
                    transformations=[
                        {
                            "id": "groupingToMatrix",
                            "options": {
                                "columnField": "months_since",
                                "rowField": "cohort",
                                "valueField": "Value",
                            },
                        }
                    ],
                ),
            ],
        ),
        Row(
            "Departments",
            [
                Panel(
                    "bargauge",
                    "Active users by department (30 days)",
                    "Who uses it. Departments beyond the top N are folded into other.",
                    "short",
                    [
                        Q(
                            f'llm_active_users_by_department{{{o},window="30d"}}',
                            "{{department}}",
                            instant=True,
                        )
                    ],
                ),
                Panel(
                    "bargauge",
                    "Tokens by department (30 days)",
                    "Input + output tokens by department: the basis of chargeback on the Cost dashboard.",
                    "short",
                    [
                        Q(
                            f'sum by (department) (llm_department_tokens{{{o},window="30d"}})',
                            "{{department}}",
                            instant=True,
                        )
                    ],
                ),
                Panel(
                    "timeseries",
                    "Requests by department",
                    "Request rate seen in traces, by department.",
                    "reqps",
                    [
                        Q(
                            f'sum by (department) (rate(llm_usage_requests_total{{{o},model=~"$model"}}[{RI}]))',
                            "{{department}}",
                        )
                    ],
                    stack=True,
                ),
                Panel(
                    "table",
                    "Feedback",
                    "Thumbs-up share and votes by model and department (30 days).",
                    "percentunit",
                    [Q(f"llm_feedback_up_ratio{{{o}}}", instant=True, fmt="table")],
                    may_be_empty="no feedback submitted in the demo window until someone posts /api/v1/feedback",
                ),
            ],
        ),
    ]
    return Board(
        "llm-adoption",
        "Adoption",
        "Do people actually use the assistant: DAU/WAU/MAU, stickiness, new users, "
        "retention and cohorts, departments, feedback. Computed from traces; users are never Prometheus labels.",
        ["llm-observer", "business"],
        rows,
        business_variables(with_model=True),
        alertmanager_uid=d.alertmanager_datasource_uid,
        refresh="5m",
        time_from="now-7d",
    )
