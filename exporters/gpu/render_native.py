"""Our own names (``gpu_*``): base units, ratios 0-1, descriptive labels on ``gpu_info``.

A GPU without GPM (pre-Hopper, or a driver too old for it) reports ``gpu_profiling_supported 0`` and
no ``gpu_*_active_ratio`` series, so a panel can say "not available on this GPU" instead of showing 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from exporters.gpu.backend import GPM_PERCENT, THROTTLE_REASONS
from exporters.gpu.snapshot import Families, Snapshot, label_text
from observer.exposition import LabelKey, header, line

MIB = 1024 * 1024
KIB = 1024
# GPM activity -> native metric; MIG instances use gpu_mig_activity_ratio{activity=...} instead.
ACTIVITY_METRICS = {
    "graphics": "gpu_graphics_active_ratio",
    "sm": "gpu_sm_active_ratio",
    "tensor": "gpu_tensor_active_ratio",
    "dram": "gpu_dram_active_ratio",
}


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else percent / 100


def render_native(snap: Snapshot, hostname: str, critical_xids: Iterable[int]) -> list[str]:
    families = Families()
    add = families.add
    add_text = families.add_text

    for g in snap.gpus:
        k: LabelKey = (("gpu", str(g.index)), ("uuid", g.uuid))
        kt = label_text(k)
        add_text("gpu_up", kt, 1.0 if g.up else 0.0)
        if not g.up:
            continue
        info = (
            ("name", g.name),
            ("pci_bus_id", g.pci_bus_id),
            ("driver_version", snap.driver_version),
            ("cuda_version", snap.cuda_version),
            ("mig_mode", g.mig_mode),
            ("hostname", hostname),
        )
        add("gpu_info", k + info, 1.0)
        add_text("gpu_utilization_ratio", kt, _ratio(g.util))
        add_text("gpu_memory_utilization_ratio", kt, _ratio(g.mem_util))
        add_text("gpu_encoder_utilization_ratio", kt, _ratio(g.encoder_util))
        add_text("gpu_decoder_utilization_ratio", kt, _ratio(g.decoder_util))
        if g.memory is not None:
            add_text("gpu_memory_used_bytes", kt, g.memory.used)
            add_text("gpu_memory_total_bytes", kt, g.memory.total)
            add_text("gpu_memory_reserved_bytes", kt, g.memory.reserved)
        add_text("gpu_power_watts", kt, None if g.power_mw is None else g.power_mw / 1000)
        add_text("gpu_power_limit_watts", kt, None if g.power_limit_mw is None else g.power_limit_mw / 1000)
        add_text("gpu_energy_joules_total", kt, None if g.energy_mj is None else g.energy_mj / 1000)
        add_text("gpu_temperature_celsius", kt, g.temperature)
        add_text("gpu_memory_temperature_celsius", kt, g.memory_temperature)
        add_text("gpu_sm_clock_hertz", kt, None if g.sm_clock is None else g.sm_clock * 1e6)
        add_text("gpu_memory_clock_hertz", kt, None if g.memory_clock is None else g.memory_clock * 1e6)
        if g.throttle is not None:
            for reason, bit in THROTTLE_REASONS:  # constant label values: no escaping needed
                add_text("gpu_throttle_active", f'{kt},reason="{reason}"', 1.0 if g.throttle & bit else 0.0)
        add_text("gpu_ecc_errors_total", f'{kt},type="corrected"', g.ecc_corrected)
        add_text("gpu_ecc_errors_total", f'{kt},type="uncorrected"', g.ecc_uncorrected)
        if g.remapped is not None:
            add_text("gpu_remapped_rows_total", f'{kt},type="correctable"', g.remapped.correctable)
            add_text("gpu_remapped_rows_total", f'{kt},type="uncorrectable"', g.remapped.uncorrectable)
            add_text("gpu_row_remap_pending", kt, 1.0 if g.remapped.pending else 0.0)
            add_text("gpu_row_remap_failure", kt, 1.0 if g.remapped.failure else 0.0)
        add_text("gpu_pcie_replay_errors_total", kt, g.pcie_replays)
        if g.nvlink_kib is not None:
            add_text("gpu_nvlink_bytes_total", f'{kt},direction="rx"', g.nvlink_kib[0] * KIB)
            add_text("gpu_nvlink_bytes_total", f'{kt},direction="tx"', g.nvlink_kib[1] * KIB)
        if g.profiling_supported is not None:
            add_text("gpu_profiling_supported", kt, 1.0 if g.profiling_supported else 0.0)
        for activity, metric in ACTIVITY_METRICS.items():
            add_text(metric, kt, _ratio(g.activity.get(activity)))
        for direction in ("tx", "rx"):
            mib_s = g.activity.get(f"pcie_{direction}")
            if mib_s is not None:
                add_text("gpu_pcie_throughput_bytes_per_second", f'{kt},direction="{direction}"', mib_s * MIB)
        for pid, process, used in g.processes:
            labels = f"{kt},{label_text((('pid', pid), ('process', process)))}"
            add_text("gpu_process_memory_used_bytes", labels, used)
        for mig in g.mig:
            dev, mem = mig.device, mig.memory
            mk = (*k, ("mig_uuid", dev.uuid), ("gpu_instance_id", str(dev.gpu_instance_id)))
            add(
                "gpu_mig_info",
                (*mk, ("compute_instance_id", str(dev.compute_instance_id)), ("profile", dev.profile)),
                1.0,
            )
            if mem is not None:
                add("gpu_mig_memory_used_bytes", mk, mem.used)
                add("gpu_mig_memory_total_bytes", mk, mem.total)
            for activity in GPM_PERCENT:
                value = _ratio(mig.activity.get(activity))
                add("gpu_mig_activity_ratio", (*mk, ("activity", activity)), value)
    # XID counters: the critical codes exist from the start at 0, others appear when first seen.
    xids = Counter(snap.xids)
    for g in snap.gpus:
        for code in critical_xids:
            xids.setdefault((str(g.index), g.uuid, code), 0)
    for (index, uuid, code), n in sorted(xids.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        add("gpu_xid_errors_total", (("gpu", index), ("uuid", uuid), ("xid", str(code))), n)
    return families.render()


def render_self(snap: Snapshot, errors: Counter[tuple[str, str]]) -> list[str]:
    """The exporter's own health: rendered in every mode."""
    out = [
        *header("gpu_exporter_last_collect_success"),
        line("gpu_exporter_last_collect_success", (), 1.0 if snap.success else 0.0),
        *header("gpu_exporter_last_collect_timestamp_seconds"),
        line("gpu_exporter_last_collect_timestamp_seconds", (), snap.timestamp),
        *header("gpu_exporter_collect_duration_seconds"),
        line("gpu_exporter_collect_duration_seconds", (), snap.duration_s),
        *header("gpu_exporter_devices"),
        line("gpu_exporter_devices", (), float(len(snap.gpus))),
        *header("gpu_exporter_nvml_errors_total"),
    ]
    for (call, error), n in sorted(errors.items()):
        out.append(line("gpu_exporter_nvml_errors_total", (("call", call), ("error", error)), n))
    return out
