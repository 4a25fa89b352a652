"""The five dashboards. Thresholds come from the same settings the alert rules use.

Panel descriptions carry the diagnosis an SRE needs at 3 a.m. (what the shape of a curve means and
where to look next), not just what the metric is.
"""

from __future__ import annotations

from dashboards.lib import ORANGE, RED, Board, Panel, Q, Row, variables
from observer.config import Settings

E = 'job=~"$job",instance=~"$instance",model=~"$model"'
RI = "$__rate_interval"


def _q(metric: str, q: float, by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{E}}}[{RI}])))"


def _engine_vars():
    return variables(
        "label_values(llm_engine_up, job)",
        'label_values(llm_engine_up{job=~"$job"}, instance)',
        'label_values(llm_requests_running{job=~"$job",instance=~"$instance"}, model)',
    )


def serving(s: Settings) -> Board:
    slo = s.slo
    budget = 1 - slo.ttft_objective
    kv = [(slo.kv_cache_warning_ratio, ORANGE), (slo.kv_cache_critical_ratio, RED)]
    overview = Row(
        "Overview",
        [
            Panel(
                "stat",
                "Engines up",
                "Engines answering their probe (llm_engine_up). Below the number you run: see "
                "LLMEngineDown and the probe error reason.",
                "short",
                [Q('sum(llm_engine_up{job=~"$job",instance=~"$instance"})', instant=True)],
                w=4,
                h=4,
            ),
            Panel(
                "stat",
                "Request rate",
                "Finished requests per second across the selected engines.",
                "reqps",
                [Q(f"sum(rate(llm_requests_finished_total{{{E}}}[{RI}]))", instant=True)],
                w=4,
                h=4,
            ),
            Panel(
                "stat",
                "Error + abort ratio",
                "Share of requests ending in error or abort. Aborts usually mean clients "
                "gave up while queueing.",
                "percentunit",
                [
                    Q(
                        f'sum(rate(llm_requests_finished_total{{{E},finished_reason=~"error|abort"}}[{RI}])) / '
                        f"sum(rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                        instant=True,
                    )
                ],
                w=4,
                h=4,
                thresholds=[(1 - slo.error_objective, ORANGE), (5 * (1 - slo.error_objective), RED)],
            ),
            Panel(
                "stat",
                "TTFT p95",
                f"Time to first token, 95th percentile. Target: {slo.ttft_target_s:g}s.",
                "s",
                [Q(_q("llm_time_to_first_token_seconds", 0.95), instant=True)],
                w=4,
                h=4,
                thresholds=[(slo.ttft_target_s * 0.8, ORANGE), (slo.ttft_target_s, RED)],
            ),
            Panel(
                "stat",
                "KV cache (max)",
                "Fullest KV cache among the selected engines. Near 100% new requests wait for blocks.",
                "percentunit",
                [Q(f"max(llm_kv_cache_usage_ratio{{{E}}})", instant=True)],
                w=4,
                h=4,
                thresholds=kv,
                min=0,
                max=1,
            ),
            Panel(
                "stat",
                "Waiting requests",
                "Requests queued in the schedulers. A sustained value above "
                f"{slo.queue_waiting_threshold:g} means demand exceeds capacity.",
                "short",
                [Q(f"sum(llm_requests_waiting{{{E}}})", instant=True)],
                w=4,
                h=4,
                thresholds=[(1, ORANGE), (slo.queue_waiting_threshold, RED)],
            ),
        ],
    )
    throughput = Row(
        "Throughput",
        [
            Panel(
                "timeseries",
                "Token throughput: prompt vs generation",
                "Prompt tokens/s measure prefill speed, "
                "generation tokens/s decode speed. Prompt up with generation flat: longer prompts (RAG, tools).",
                "suffix: tok/s",
                [
                    Q(f"sum by (model) (rate(llm_prompt_tokens_total{{{E}}}[{RI}]))", "{{model}} prompt"),
                    Q(
                        f"sum by (model) (rate(llm_generation_tokens_total{{{E}}}[{RI}]))",
                        "{{model}} generation",
                    ),
                ],
            ),
            Panel(
                "timeseries",
                "Finished requests by reason",
                "stop = the model ended, length = max_tokens hit, abort = "
                "client gave up, error = engine failed. Growing abort with rising TTFT = users timing out in the queue.",
                "reqps",
                [
                    Q(
                        f"sum by (finished_reason) (rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                        "{{finished_reason}}",
                    )
                ],
                stack=True,
            ),
        ],
    )
    scheduler = Row(
        "Scheduler and KV cache",
        [
            Panel(
                "timeseries",
                "Running vs waiting",
                "Running = in the batch; waiting = queued. A surge of waiting while "
                "running is flat at its maximum is overload: add replicas or shed load.",
                "short",
                [
                    Q(f"sum by (instance) (llm_requests_running{{{E}}})", "{{instance}} running"),
                    Q(f"sum by (instance) (llm_requests_waiting{{{E}}})", "{{instance}} waiting"),
                ],
            ),
            Panel(
                "timeseries",
                "KV cache usage",
                "Fraction of KV blocks in use, with the alert thresholds. Near 100% "
                "requests wait for blocks and get preempted; TTFT rises with the queue.",
                "percentunit",
                [Q(f"max by (instance, model) (llm_kv_cache_usage_ratio{{{E}}})", "{{instance}} {{model}}")],
                thresholds=kv,
                threshold_lines=True,
                min=0,
                max=1,
            ),
            Panel(
                "timeseries",
                "Preemptions",
                "Requests evicted from the KV cache and recomputed, per second. Every "
                "preemption repeats a prefill: throughput drops while latency rises.",
                "suffix: /s",
                [Q(f"sum by (instance) (rate(llm_preemptions_total{{{E}}}[{RI}]))", "{{instance}}")],
                thresholds=[(slo.preemptions_per_second_threshold, RED)],
                threshold_lines=True,
            ),
            Panel(
                "timeseries",
                "Prefix cache hit rate",
                "Share of prompt tokens served from the prefix cache. A drop "
                "means prompts stopped sharing prefixes (system prompt change, cache too small): prefill gets dearer.",
                "percentunit",
                [
                    Q(
                        f"sum by (model) (rate(llm_prefix_cache_hits_total{{{E}}}[{RI}])) / "
                        f"sum by (model) (rate(llm_prefix_cache_queries_total{{{E}}}[{RI}]))",
                        "{{model}}",
                    )
                ],
                min=0,
                max=1,
            ),
        ],
    )
    latency = Row(
        "Latency",
        [
            Panel(
                "timeseries",
                "Time to first token",
                "TTFT p50/p95/p99 with the SLO target. Peaks mean queueing or "
                "expensive prefill (long prompts) or cold starts. TTFT spiking while KV sits near 100% = requests "
                "waiting for blocks.",
                "s",
                [
                    Q(_q("llm_time_to_first_token_seconds", q), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
                thresholds=[(slo.ttft_target_s, RED)],
                threshold_lines=True,
            ),
            Panel(
                "heatmap",
                "TTFT distribution",
                "Requests per TTFT bucket over time. Two bands = two populations "
                "(e.g. short chat vs long RAG prompts).",
                "s",
                [
                    Q(
                        f"sum by (le) (increase(llm_time_to_first_token_seconds_bucket{{{E}}}[{RI}]))",
                        "{{le}}",
                        fmt="heatmap",
                    )
                ],
            ),
            Panel(
                "timeseries",
                "Inter-token latency",
                "Gap between generated tokens (per step), p50/p95/p99, with the "
                "target. Up = decode is slow: batch too large, preemptions, throttled GPU.",
                "s",
                [
                    Q(_q("llm_inter_token_latency_seconds", q), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
                thresholds=[(slo.itl_p95_target_s, RED)],
                threshold_lines=True,
            ),
            Panel(
                "timeseries",
                "End-to-end latency",
                "Arrival to last token, p50/p95/p99. E2E up with TPOT flat = the time "
                "goes before the first token (queueing, long prompts); TPOT up too = GPU/KV/batching is the limit.",
                "s",
                [
                    Q(_q("llm_e2e_request_latency_seconds", q), f"p{round(q * 100)}")
                    for q in (0.5, 0.95, 0.99)
                ],
            ),
            Panel(
                "timeseries",
                "Queue / prefill / decode (p95)",
                "Where a request's time goes. Queue dominates under "
                "overload; prefill under long prompts; decode under long answers or slow GPUs.",
                "s",
                [
                    Q(_q("llm_request_queue_time_seconds", 0.95), "queue"),
                    Q(_q("llm_request_prefill_time_seconds", 0.95), "prefill"),
                    Q(_q("llm_request_decode_time_seconds", 0.95), "decode"),
                ],
            ),
            Panel(
                "timeseries",
                "Time per output token (per request)",
                "Mean decode time per generated token of each "
                "request, p50/p95: what a streaming user feels as typing speed.",
                "s",
                [Q(_q("llm_time_per_output_token_seconds", q), f"p{round(q * 100)}") for q in (0.5, 0.95)],
                may_be_empty="engines before vLLM 0.11 (and TGI/SGLang mappings without it) have no per-request TPOT",
            ),
        ],
    )
    slo_row = Row(
        "SLO",
        [
            Panel(
                "timeseries",
                "TTFT SLO burn rate",
                f"How fast the TTFT error budget ({budget:.2%} of requests slower "
                f"than {slo.ttft_target_s:g}s) is spent; 1 = exactly on budget. Lines: the page (14.4x) and ticket (6x) "
                "factors.",
                "suffix: x",
                [
                    Q(
                        f"sum by (model) (llm:ttft_slo_errors:ratio_rate5m{{{E}}}) / {budget:g}",
                        "{{model}} 5m",
                    ),
                    Q(
                        f"sum by (model) (llm:ttft_slo_errors:ratio_rate1h{{{E}}}) / {budget:g}",
                        "{{model}} 1h",
                    ),
                ],
                thresholds=[(6, ORANGE), (14.4, RED)],
                threshold_lines=True,
            ),
            Panel(
                "timeseries",
                "Error ratio",
                "Share of requests ending in error or abort (5m and 1h), with the "
                "objective's budget as a line.",
                "percentunit",
                [
                    Q(f"llm:request_errors:ratio_rate5m{{{E}}}", "{{model}} 5m"),
                    Q(f"llm:request_errors:ratio_rate1h{{{E}}}", "{{model}} 1h"),
                ],
                thresholds=[(1 - slo.error_objective, RED)],
                threshold_lines=True,
            ),
        ],
    )
    per_model = Row(
        "Per model",
        [
            Panel(
                "table",
                "Models",
                "One row per model: request rate, generated tokens/s, TTFT p95, fullest KV cache, "
                "waiting requests.",
                "short",
                [
                    Q(
                        f"sum by (model) (rate(llm_requests_finished_total{{{E}}}[{RI}]))",
                        instant=True,
                        fmt="table",
                    ),
                    Q(
                        f"sum by (model) (rate(llm_generation_tokens_total{{{E}}}[{RI}]))",
                        instant=True,
                        fmt="table",
                    ),
                    Q(_q("llm_time_to_first_token_seconds", 0.95, "model"), instant=True, fmt="table"),
                    Q(f"max by (model) (llm_kv_cache_usage_ratio{{{E}}})", instant=True, fmt="table"),
                    Q(f"sum by (model) (llm_requests_waiting{{{E}}})", instant=True, fmt="table"),
                ],
                w=24,
                transformations=[
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "Value #A": "requests/s",
                                "Value #B": "generated tok/s",
                                "Value #C": "TTFT p95 (s)",
                                "Value #D": "KV cache",
                                "Value #E": "waiting",
                            },
                        },
                    },
                ],
            ),
        ],
    )
    return Board(
        "llm-serving",
        "LLM Serving",
        "Is serving healthy and where is the bottleneck: throughput, scheduler, KV "
        "cache, latency split, SLOs. Engines of every kind and version, normalized by the engine exporter.",
        ["llm-observer", "serving"],
        [overview, throughput, scheduler, latency, slo_row, per_model],
        _engine_vars(),
    )


def gpu_fleet(s: Settings) -> Board:
    g = 'job=~"$job",instance=~"$instance"'
    slo = s.slo
    rows = [
        Row(
            "Fleet",
            [
                Panel(
                    "stat",
                    "GPUs up",
                    "GPUs answering NVML. A GPU at 0 fell off the bus (GPULost).",
                    "short",
                    [Q(f"sum(gpu_up{{{g}}})", instant=True)],
                    w=6,
                    h=4,
                ),
                Panel(
                    "stat",
                    "Power draw",
                    "Total power of the selected GPUs.",
                    "watt",
                    [Q(f"sum(gpu_power_watts{{{g}}})", instant=True)],
                    w=6,
                    h=4,
                ),
                Panel(
                    "stat",
                    "Energy per generated token",
                    "GPU energy divided by generated tokens (fleet-wide, 5m): "
                    "the physical cost of a token. Rises when GPUs idle or batches are small.",
                    "joule",
                    [Q("llm:energy_joules_per_generated_token:ratio_rate5m", instant=True)],
                    w=6,
                    h=4,
                ),
                Panel(
                    "gauge",
                    "Hottest GPU",
                    "Highest GPU temperature, with the alert threshold.",
                    "celsius",
                    [Q(f"max(gpu_temperature_celsius{{{g}}})", instant=True)],
                    w=6,
                    h=4,
                    min=0,
                    max=100,
                    thresholds=[
                        (slo.gpu_temperature_warning_celsius - 5, ORANGE),
                        (slo.gpu_temperature_warning_celsius, RED),
                    ],
                ),
            ],
        ),
        Row(
            "Utilization and memory",
            [
                Panel(
                    "timeseries",
                    "GPU utilization",
                    "Share of time a kernel ran. Low utilization with waiting "
                    "requests = the engine, not the GPU, is the bottleneck (scheduler limits, CPU, tokenization).",
                    "percentunit",
                    [Q(f"gpu_utilization_ratio{{{g}}}", "{{instance}} GPU {{gpu}}")],
                    min=0,
                    max=1,
                ),
                Panel(
                    "timeseries",
                    "GPU memory used",
                    "Framebuffer in use per GPU, with the total. vLLM preallocates "
                    "about 90% for weights and KV cache, so a flat high line is normal.",
                    "bytes",
                    [
                        Q(f"gpu_memory_used_bytes{{{g}}}", "{{instance}} GPU {{gpu}} used"),
                        Q(f"gpu_memory_total_bytes{{{g}}}", "{{instance}} GPU {{gpu}} total"),
                    ],
                ),
                Panel(
                    "bargauge",
                    "Memory by process",
                    "Device memory per process (named by the model it serves); more "
                    "than one process per GPU means contention.",
                    "bytes",
                    [
                        Q(
                            f"sum by (process) (gpu_process_memory_used_bytes{{{g}}})",
                            "{{process}}",
                            instant=True,
                        )
                    ],
                ),
                Panel(
                    "timeseries",
                    "GPU memory used ratio",
                    "Used / total per GPU, with the alert threshold.",
                    "percentunit",
                    [Q(f"gpu:memory_used:ratio{{{g}}}", "{{instance}} GPU {{gpu}}")],
                    thresholds=[(slo.gpu_memory_warning_ratio, RED)],
                    threshold_lines=True,
                    min=0,
                    max=1,
                ),
            ],
        ),
        Row(
            "Power, heat, clocks",
            [
                Panel(
                    "timeseries",
                    "Power vs limit",
                    "Draw per GPU against its enforced limit. Riding the limit = power "
                    "capped: clocks drop under load.",
                    "watt",
                    [
                        Q(f"gpu_power_watts{{{g}}}", "{{instance}} GPU {{gpu}}"),
                        Q(f"gpu_power_limit_watts{{{g}}}", "{{instance}} GPU {{gpu}} limit"),
                    ],
                ),
                Panel(
                    "timeseries",
                    "Energy",
                    "Energy per GPU in each interval (the counter's increase).",
                    "joule",
                    [Q(f"increase(gpu_energy_joules_total{{{g}}}[{RI}])", "{{instance}} GPU {{gpu}}")],
                ),
                Panel(
                    "timeseries",
                    "Temperature",
                    "Core and memory temperature with the alert threshold.",
                    "celsius",
                    [
                        Q(f"gpu_temperature_celsius{{{g}}}", "{{instance}} GPU {{gpu}} core"),
                        Q(f"gpu_memory_temperature_celsius{{{g}}}", "{{instance}} GPU {{gpu}} memory"),
                    ],
                    thresholds=[(slo.gpu_temperature_warning_celsius, RED)],
                    threshold_lines=True,
                ),
                Panel(
                    "timeseries",
                    "SM clock",
                    "Streaming-multiprocessor clock. Drops under load = throttling (see next panel).",
                    "hertz",
                    [Q(f"gpu_sm_clock_hertz{{{g}}}", "{{instance}} GPU {{gpu}}")],
                ),
                Panel(
                    "timeseries",
                    "Throttle reasons",
                    "Active clock-throttle reasons. sw_power_cap under full load is "
                    "normal; thermal or power-brake slowdowns are not.",
                    "short",
                    [Q(f'gpu_throttle_active{{{g},reason!="gpu_idle"}} == 1', "GPU {{gpu}} {{reason}}")],
                    stack=True,
                    may_be_empty="no throttle reason is active on a healthy fleet (== 1 filters zeros)",
                ),
                Panel(
                    "timeseries",
                    "XID and ECC errors",
                    "XID events by code and ECC errors by type in each interval. "
                    "Any uncorrectable ECC or hardware XID needs a drain and reset.",
                    "short",
                    [
                        Q(
                            f"sum by (gpu, xid) (increase(gpu_xid_errors_total{{{g}}}[{RI}]))",
                            "GPU {{gpu}} XID {{xid}}",
                        ),
                        Q(
                            f"sum by (gpu, type) (increase(gpu_ecc_errors_total{{{g}}}[{RI}]))",
                            "GPU {{gpu}} ECC {{type}}",
                        ),
                    ],
                ),
            ],
        ),
    ]
    return Board(
        "llm-gpu-fleet",
        "GPU Fleet",
        "GPU truth next to the engines: utilization, memory and who holds it, power "
        "and energy per token, heat, clocks, throttling, XID and ECC errors.",
        ["llm-observer", "gpu"],
        rows,
        variables(
            "label_values(gpu_up, job)",
            'label_values(gpu_up{job=~"$job"}, instance)',
            "label_values(llm_requests_running, model)",
        ),
    )


def _business_vars():
    return variables(
        "label_values(llm_active_users, job)",
        'label_values(llm_active_users{job=~"$job"}, instance)',
        "label_values(llm_usage_requests_total, model)",
    )


def adoption(s: Settings) -> Board:
    o = 'job=~"$job",instance=~"$instance"'
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
                ),
                Panel(
                    "stat",
                    "WAU",
                    "Distinct users in the last 7 days.",
                    "short",
                    [Q(f'llm_active_users{{{o},window="7d"}}', instant=True)],
                    w=4,
                    h=4,
                ),
                Panel(
                    "stat",
                    "MAU",
                    "Distinct users in the last 30 days.",
                    "short",
                    [Q(f'llm_active_users{{{o},window="30d"}}', instant=True)],
                    w=4,
                    h=4,
                ),
                Panel(
                    "gauge",
                    "DAU/MAU (stickiness)",
                    "Mean DAU over 30 days / MAU. Above 0.5 the assistant is a daily "
                    "habit; below 0.2 it is an occasional tool.",
                    "percentunit",
                    [Q(f"llm_users_stickiness_ratio{{{o}}}", instant=True)],
                    w=4,
                    h=4,
                    min=0,
                    max=1,
                    thresholds=[(0.2, ORANGE), (0.5, "blue")],
                ),
                Panel(
                    "stat",
                    "New users today",
                    "Users whose first request was today.",
                    "short",
                    [Q(f"llm_new_users{{{o}}}", instant=True)],
                    w=4,
                    h=4,
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
        _business_vars(),
        refresh="5m",
        time_from="now-7d",
    )


def cost(s: Settings) -> Board:
    c = s.cost
    o = 'job=~"$job",instance=~"$instance"'
    cur = c.currency
    rows = [
        Row(
            "Unit cost",
            [
                Panel(
                    "stat",
                    "Self-hosted cost per 1M tokens (now)",
                    "GPU-hours plus energy per million tokens, from the "
                    "last hour of traffic. Falls as utilization rises: idle GPUs cost the same.",
                    f"currency{cur}",
                    [Q("llm:cost_self_hosted:per_million_tokens", instant=True)],
                    w=6,
                    h=5,
                ),
                Panel(
                    "stat",
                    f"{c.reference.model} per 1M tokens",
                    "What the same token mix costs per million on the reference public API.",
                    f"currency{cur}",
                    [Q("llm:cost_public_api_equivalent:per_million_tokens", instant=True)],
                    w=6,
                    h=5,
                ),
                Panel(
                    "stat",
                    "Savings over 30 days",
                    "Public-API-equivalent cost minus self-hosted cost over 30 days "
                    "(negative: the GPUs cost more than the API would at this volume).",
                    f"currency{cur}",
                    [Q(f'llm_cost_savings{{{o},window="30d"}}', instant=True)],
                    w=6,
                    h=5,
                    thresholds=[(0, "green")],
                ),
                Panel(
                    "stat",
                    "Self-hosted vs public per 1M (30 days)",
                    "Both unit costs over the last 30 days of traffic, from the request store.",
                    f"currency{cur}",
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
                    f"currency{cur}",
                    [
                        Q("llm:cost_self_hosted:per_hour", "self-hosted"),
                        Q("llm:cost_public_api_equivalent:per_hour", c.reference.model),
                    ],
                ),
                Panel(
                    "bargauge",
                    "Cost by department (30 days)",
                    "Self-hosted cost charged back by each department's share of tokens.",
                    f"currency{cur}",
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
        _business_vars(),
        refresh="5m",
        time_from="now-24h",
    )


def alerts_slos(s: Settings) -> Board:
    slo = s.slo
    ttft_budget = 1 - slo.ttft_objective
    err_budget = 1 - slo.error_objective
    rows = [
        Row(
            "Firing now",
            [
                Panel(
                    "stat",
                    "Firing alerts by severity",
                    "critical pages, warning opens a ticket; the Watchdog is excluded.",
                    "short",
                    [
                        Q(
                            'count by (severity) (ALERTS{alertstate="firing",alertname!="Watchdog"})',
                            "{{severity}}",
                            instant=True,
                        )
                    ],
                    w=8,
                    h=5,
                    may_be_empty="no alert but the Watchdog fires on a healthy fleet",
                ),
                Panel(
                    "table",
                    "Firing alerts",
                    "Every firing alert with its labels; the runbook link is in the alert's "
                    "annotations (Alertmanager, or observer's /api/v1/alerts).",
                    "short",
                    [Q('ALERTS{alertstate="firing"}', instant=True, fmt="table")],
                    w=16,
                    h=5,
                ),
            ],
        ),
        Row(
            "Error budgets",
            [
                Panel(
                    "gauge",
                    "TTFT error budget remaining",
                    f"Share of the {slo.period_days}-day budget "
                    f"({ttft_budget:.2%} of requests slower than {slo.ttft_target_s:g}s) still unspent.",
                    "percentunit",
                    [
                        Q(
                            'min by (model) (llm:ttft_slo_error_budget_remaining:ratio{job=~"$job",'
                            'instance=~"$instance",model=~"$model"})',
                            "{{model}}",
                            instant=True,
                        )
                    ],
                    w=12,
                    min=0,
                    max=1,
                    thresholds=[(0.25, ORANGE), (0.5, "green")],
                ),
                Panel(
                    "gauge",
                    "Error budget remaining",
                    f"Share of the {slo.period_days}-day error/abort budget "
                    f"({err_budget:.2%}) still unspent.",
                    "percentunit",
                    [
                        Q(
                            'min by (model) (llm:request_error_budget_remaining:ratio{job=~"$job",instance=~"$instance",'
                            'model=~"$model"})',
                            "{{model}}",
                            instant=True,
                        )
                    ],
                    w=12,
                    min=0,
                    max=1,
                    thresholds=[(0.25, ORANGE), (0.5, "green")],
                ),
            ],
        ),
        Row(
            "Burn rates",
            [
                Panel(
                    "timeseries",
                    "TTFT burn rate by window",
                    "Budget spend rate per window (1 = on budget). The page "
                    "fires when both 5m and 1h exceed 14.4, or 30m and 6h exceed 6.",
                    "suffix: x",
                    [
                        Q(f'max(llm:ttft_slo_errors:ratio_rate{w}{{model=~"$model"}}) / {ttft_budget:g}', w)
                        for w in ("5m", "30m", "1h", "6h")
                    ],
                    thresholds=[(6, ORANGE), (14.4, RED)],
                    threshold_lines=True,
                ),
                Panel(
                    "timeseries",
                    "Error burn rate by window",
                    "The same for errors and aborts.",
                    "suffix: x",
                    [
                        Q(f'max(llm:request_errors:ratio_rate{w}{{model=~"$model"}}) / {err_budget:g}', w)
                        for w in ("5m", "30m", "1h", "6h")
                    ],
                    thresholds=[(6, ORANGE), (14.4, RED)],
                    threshold_lines=True,
                ),
                Panel(
                    "text",
                    "How to read this",
                    "What the burn-rate panels mean.",
                    content=(
                        "**Burn rate** = how many times faster than sustainable the error budget is spent. 1 means the budget "
                        f"lasts exactly {slo.period_days} days. Pages use two windows so they fire fast on big burns and "
                        "stop soon after recovery; tickets catch slow leaks. Runbooks: docs/runbooks.md."
                    ),
                    w=24,
                    h=4,
                ),
            ],
        ),
    ]
    return Board(
        "llm-alerts-slos",
        "Alerts & SLOs",
        "What is firing, how much error budget is left, how fast it burns.",
        ["llm-observer", "slo"],
        rows,
        _engine_vars(),
    )


BOARDS = {
    "llm-serving.json": serving,
    "gpu-fleet.json": gpu_fleet,
    "adoption.json": adoption,
    "cost.json": cost,
    "alerts-slos.json": alerts_slos,
}
