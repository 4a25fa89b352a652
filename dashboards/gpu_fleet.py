"""GPU Fleet: GPU truth next to the engines."""

from __future__ import annotations

from dashboards.lib import (
    ORANGE,
    RED,
    RI,
    Board,
    Panel,
    Q,
    Row,
    stat,
    variables,
)
from observer.config import Settings


def build(s: Settings) -> Board:
    g = 'job=~"$job",instance=~"$instance"'
    slo = s.slo
    rows = [
        Row(
            "Fleet",
            [
                stat(
                    "GPUs lost",
                    "GPUs not answering NVML (gpu_up == 0): fallen off the bus or driver trouble (GPULost).",
                    "short",
                    f"count(gpu_up{{{g}}} == 0) or vector(0)",
                    w=6,
                    thresholds=[(1, RED)],
                ),
                stat(
                    "Power draw",
                    "Total power of the selected GPUs.",
                    "watt",
                    f"sum(gpu_power_watts{{{g}}})",
                    w=6,
                    bad=None,
                ),
                stat(
                    "Energy per generated token",
                    "GPU energy divided by generated tokens (fleet-wide, 5m): "
                    "the physical cost of a token. Rises when GPUs idle or batches are small.",
                    "joule",
                    "llm:energy_joules_per_generated_token:ratio_rate5m",
                    w=6,
                    bad=None,
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
                        (
                            slo.gpu_temperature_warning_celsius
                            - s.dashboards.temperature_notice_margin_celsius,
                            ORANGE,
                        ),
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
                    bad=None,
                ),
                Panel(
                    "timeseries",
                    "Tensor, SM and DRAM activity",
                    "DCGM-style profiling ratios (NVML GPM, Hopper and later): tensor-core, SM and memory-bandwidth "
                    "activity. Utilization near 100% with low tensor activity = kernels run but the math units idle "
                    "(small batches, memory-bound decode).",
                    "percentunit",
                    [
                        Q(f"gpu_tensor_active_ratio{{{g}}}", "{{instance}} GPU {{gpu}} tensor"),
                        Q(f"gpu_sm_active_ratio{{{g}}}", "{{instance}} GPU {{gpu}} SM"),
                        Q(f"gpu_dram_active_ratio{{{g}}}", "{{instance}} GPU {{gpu}} DRAM"),
                    ],
                    min=0,
                    max=1,
                    bad=None,
                    may_be_empty="GPM profiling metrics exist only on Hopper and later GPUs (fake GPUs may lack them)",
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
                    "Active clock-throttle reasons. sw_power_cap under full load is normal; "
                    + ", ".join(s.slo.gpu_throttle_reasons)
                    + " slow decode down (GPUThrottling).",
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
        Row(
            "GPU exporter health",
            [
                Panel(
                    "timeseries",
                    "NVML collection",
                    "1 = the last NVML collection succeeded (GPUExporterCollectFailing at 0), with NVML errors "
                    "per second by call.",
                    "short",
                    [
                        Q(f"gpu_exporter_last_collect_success{{{g}}}", "{{instance}} last collect ok"),
                        Q(
                            # The error counter appears with the first error: 0 per exporter until then.
                            f"sum by (instance) (rate(gpu_exporter_nvml_errors_total{{{g}}}[{RI}]))"
                            f" or sum by (instance) (gpu_exporter_last_collect_success{{{g}}}) * 0",
                            "{{instance}} NVML errors/s",
                        ),
                    ],
                    bad=None,
                ),
                Panel(
                    "timeseries",
                    "Collection time",
                    "How long the last NVML sweep took. Approaching the collection interval = stale metrics.",
                    "s",
                    [Q(f"gpu_exporter_collect_duration_seconds{{{g}}}", "{{instance}}")],
                    bad=None,
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
        variables("label_values(gpu_up, job)", 'label_values(gpu_up{job=~"$job"}, instance)'),
        alertmanager_uid=s.dashboards.alertmanager_datasource_uid,
    )
