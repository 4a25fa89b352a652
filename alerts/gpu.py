"""GPU alerts (lost, XID, ECC, heat, throttling, memory, NVML collection) and their promtool cases."""

from __future__ import annotations

from alerts.model import Alert, Cases, gpu_labels, series
from alerts.recording import gpu_selector
from observer.config import Settings

WHERE = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"
GPU_BY = "job, instance, gpu, uuid"


def alerts(s: Settings) -> list[Alert]:
    slo, G = s.slo, gpu_selector(s)
    critical_xids = "|".join(str(x) for x in s.gpu_exporter.critical_xids)
    reasons = "|".join(slo.gpu_throttle_reasons)
    return [
        Alert(
            "GPULost",
            f"gpu_up{{{G}}} == 0",
            "critical",
            "A GPU fell off the bus or stopped answering NVML.",
            f"{WHERE} is lost; the engine on it cannot serve.",
            for_="1m",
        ),
        Alert(
            "GPUXidCriticalError",
            f'increase(gpu_xid_errors_total{{{G},xid=~"{critical_xids}"}}[10m]) > 0',
            "critical",
            "A GPU reported a critical XID error.",
            f"{WHERE} reported XID {{{{ $labels.xid }}}}: hardware or driver fault, drain and reset.",
        ),
        Alert(
            "GPUUncorrectableECCErrors",
            f'increase(gpu_ecc_errors_total{{{G},type="uncorrected"}}[10m]) > 0',
            "critical",
            "A GPU had uncorrectable memory errors.",
            f"{WHERE} counted {{{{ $value }}}} uncorrectable ECC errors in 10 minutes.",
        ),
        Alert(
            "GPUOverTemperature",
            f"gpu_temperature_celsius{{{G}}} > {slo.gpu_temperature_warning_celsius:g}",
            "warning",
            "A GPU is running hot.",
            f"{WHERE} is at {{{{ $value }}}} C (threshold {slo.gpu_temperature_warning_celsius:g} C).",
            for_="5m",
        ),
        Alert(
            "GPUThrottling",
            f"max by ({GPU_BY}) (avg_over_time(gpu_throttle_active{{{G},"
            f'reason=~"{reasons}"}}[10m])) > {slo.gpu_throttled_share:g}',
            "warning",
            "A GPU is thermally or power-brake throttled.",
            f"{WHERE} spent {{{{ $value | humanizePercentage }}}} of the last 10 minutes throttled: clocks are"
            " reduced, decode slows down.",
            for_="10m",
        ),
        Alert(
            "GPUMemoryNearFull",
            f"gpu:memory_used:ratio > {slo.gpu_memory_warning_ratio:g}",
            "warning",
            "GPU memory is nearly full.",
            f"{WHERE} memory is {{{{ $value | humanizePercentage }}}} used: new processes or larger"
            " batches will fail to allocate.",
            for_="10m",
        ),
        Alert(
            "GPUExporterCollectFailing",
            f"gpu_exporter_last_collect_success{{{G}}} == 0",
            "warning",
            "The GPU exporter cannot read NVML.",
            "NVML collection on {{ $labels.instance }} fails (driver error); GPU metrics are stale.",
            for_="5m",
        ),
    ]


def cases(s: Settings, c: Cases) -> None:
    slo, g = s.slo, gpu_labels(s)
    lost = c.after("GPULost", 3)  # gone from minute 2
    c.add(
        "gpu lost",
        [series("gpu_up", g, f"1 1 0x{lost}")],
        [c.silent("GPULost", "2m"), c.fires("GPULost", f"{lost}m", g)],
    )
    c.add("gpu fine", [series("gpu_up", g, "1x10")], [c.silent("GPULost", "8m")])
    critical = str(s.gpu_exporter.critical_xids[0])
    benign = str(next(x for x in range(1, 200) if x not in s.gpu_exporter.critical_xids))
    c.add(
        "critical xid",
        [series("gpu_xid_errors_total", g, "0 0 0 1 1 1", xid=critical)],
        [c.fires("GPUXidCriticalError", "4m", {**g, "xid": critical})],
    )
    c.add(
        f"application xid {benign} is not critical",
        [
            series("gpu_xid_errors_total", g, "0 0 0 1 2 3", xid=benign),
            series("gpu_xid_errors_total", g, "0x5", xid=critical),
        ],
        [c.silent("GPUXidCriticalError", "4m")],
    )
    c.add(
        "uncorrectable ecc",
        [series("gpu_ecc_errors_total", g, "0 0 2 2 2", type="uncorrected")],
        [c.fires("GPUUncorrectableECCErrors", "4m", {**g, "type": "uncorrected"}, 2)],
    )
    c.add(
        "corrected ecc only",
        [
            series("gpu_ecc_errors_total", g, "0 0 2 5 9", type="corrected"),
            series("gpu_ecc_errors_total", g, "0x4", type="uncorrected"),
        ],
        [c.silent("GPUUncorrectableECCErrors", "4m")],
    )
    hot, warm = slo.gpu_temperature_warning_celsius + 5, slo.gpu_temperature_warning_celsius - 5
    heat = c.after("GPUOverTemperature", 1)
    c.add(
        "hot gpu",
        [series("gpu_temperature_celsius", g, f"{hot:g}x{heat + 5}")],
        [c.fires("GPUOverTemperature", f"{heat}m", g, hot)],
    )
    c.add(
        "warm gpu",
        [series("gpu_temperature_celsius", g, f"{warm:g}x{heat + 5}")],
        [c.silent("GPUOverTemperature", f"{heat}m")],
    )
    throttled = c.after("GPUThrottling", 10)
    c.add(
        "throttling",
        [series("gpu_throttle_active", g, f"1x{throttled + 5}", reason=slo.gpu_throttle_reasons[0])],
        [c.fires("GPUThrottling", f"{throttled}m", g, 1.0)],
    )
    normal = [r for r in ("sw_power_cap", "gpu_idle") if r not in slo.gpu_throttle_reasons]
    c.add(
        "normal throttle reasons are not alerts",
        [series("gpu_throttle_active", g, f"1x{throttled + 5}", reason=r) for r in normal]
        # Throttled for less than the share that counts: on 1 minute in 10 at most.
        + [
            series(
                "gpu_throttle_active",
                g,
                " ".join(["0 0 0 0 0 0 0 0 0 1"] * (throttled // 10 + 1)),
                reason=slo.gpu_throttle_reasons[0],
            )
        ],
        [c.silent("GPUThrottling", f"{throttled}m")],
    )
    total = 80_000_000_000
    full = round((1 + slo.gpu_memory_warning_ratio) / 2, 4)
    mem = c.after("GPUMemoryNearFull", 2)
    ok = round(max(0.0, slo.gpu_memory_warning_ratio - 0.1), 4)
    c.add(
        "gpu memory near full",
        [
            series("gpu_memory_used_bytes", g, f"{round(total * full)}x{mem + 5}"),
            series("gpu_memory_total_bytes", g, f"{total}x{mem + 5}"),
        ],
        [c.fires("GPUMemoryNearFull", f"{mem}m", g, round(total * full) / total)],
    )
    c.add(
        f"gpu memory at {ok:.0%} is normal",
        [
            series("gpu_memory_used_bytes", g, f"{round(total * ok)}x{mem + 5}"),
            series("gpu_memory_total_bytes", g, f"{total}x{mem + 5}"),
        ],
        [c.silent("GPUMemoryNearFull", f"{mem}m")],
    )
    nvml = {"job": s.alerting.gpu_job, "instance": g["instance"]}
    c.add(
        "nvml collection failing",
        [series("gpu_exporter_last_collect_success", nvml, f"0x{c.after('GPUExporterCollectFailing', 5)}")],
        [c.fires("GPUExporterCollectFailing", f"{c.after('GPUExporterCollectFailing', 1)}m", nvml)],
    )
    c.add(
        "nvml collection fine",
        [series("gpu_exporter_last_collect_success", nvml, f"1x{c.after('GPUExporterCollectFailing', 5)}")],
        [c.silent("GPUExporterCollectFailing", f"{c.after('GPUExporterCollectFailing', 1)}m")],
    )
