"""dcgm-exporter's names, units and labels (``--dcgm-compat``), so NVIDIA's dashboards work unchanged.

Pinned to NVIDIA/dcgm-exporter ``etc/default-counters.csv`` (4.x up to 4.5.3-4.8.2) and its label
template ``internal/pkg/rendermetrics/render_metrics.go``:

* labels ``gpu, UUID, pci_bus_id, device, modelName``, then ``GPU_I_PROFILE, GPU_I_ID`` on MIG
  instances, then the hostname (``Hostname`` in releases, ``hostname`` on main after #655: a flag picks),
  then the ``label``-typed fields (``DCGM_FI_DRIVER_VERSION``), then ``err_code``/``err_msg`` on XIDs;
* values in DCGM's units (MHz, C, W, mJ, %, MiB; ``DCGM_FI_PROF_*`` 0-1 ratios, PCIe in bytes/s);
* what NVML cannot give is left out, as dcgm-exporter drops DCGM's blank values: the GPU/copy/
  encoder/decoder utilizations on MIG instances, ``DCGM_FI_PROF_*`` on GPUs without GPM (pre-Hopper:
  DCGM serves those from its own profiling module, which NVML does not have), and
  ``DCGM_FI_DEV_VGPU_LICENSE_STATUS`` (blank outside a vGPU guest).

With MIG enabled, dcgm-exporter's default ``-d f`` watches each GPU instance instead of the GPU: one
series set per instance, device-wide fields repeating the parent's value (dcgm-exporter #50), memory and
profiling per instance. We do the same.
"""

from __future__ import annotations

from exporters.gpu.backend import MigDevice
from exporters.gpu.snapshot import Families, GpuSample, MigSample, Snapshot, label_text
from exporters.gpu.xid import xid_message
from observer.exposition import LabelKey

MIB = 1024 * 1024
HOSTNAME_LABELS = ("Hostname", "hostname", "none")  # released spelling, main's spelling, -n/--no-hostname


def _entities(g: GpuSample) -> list[MigSample | None]:
    """The GPU itself (None), or one entry per GPU instance when MIG is on (first compute instance)."""
    if not g.mig:
        return [None]
    seen: dict[int, MigSample] = {}
    for m in g.mig:
        seen.setdefault(m.device.gpu_instance_id, m)
    return list(seen.values())


def _key(g: GpuSample, mig: MigDevice | None, hostname_label: str, hostname: str, driver: str) -> LabelKey:
    key: LabelKey = (
        ("gpu", str(g.index)),
        ("UUID", g.uuid),  # the parent's UUID on MIG instances too
        ("pci_bus_id", g.pci_bus_id),
        ("device", f"nvidia{g.index}"),
        ("modelName", g.name),
    )
    if mig is not None:
        key += (("GPU_I_PROFILE", mig.profile), ("GPU_I_ID", str(mig.gpu_instance_id)))
    if hostname_label != "none":
        key += ((hostname_label, hostname),)
    if driver:
        key += (("DCGM_FI_DRIVER_VERSION", driver),)
    return key


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else percent / 100


def render_dcgm(snap: Snapshot, hostname: str, hostname_label: str = "Hostname") -> list[str]:
    if hostname_label not in HOSTNAME_LABELS:
        raise ValueError(f"hostname label must be one of {HOSTNAME_LABELS}, not {hostname_label!r}")
    families = Families()
    add = families.add_text

    for g in snap.gpus:
        if not g.up:
            continue  # dcgm-exporter omits what it cannot read
        for mig in _entities(g):
            key = _key(g, None if mig is None else mig.device, hostname_label, hostname, snap.driver_version)
            k = label_text(key)
            add("DCGM_FI_DEV_SM_CLOCK", k, g.sm_clock)
            add("DCGM_FI_DEV_MEM_CLOCK", k, g.memory_clock)
            add("DCGM_FI_DEV_MEMORY_TEMP", k, g.memory_temperature)
            add("DCGM_FI_DEV_GPU_TEMP", k, g.temperature)
            add("DCGM_FI_DEV_POWER_USAGE", k, None if g.power_mw is None else g.power_mw / 1000)
            add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", k, g.energy_mj)
            add("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", k, g.pcie_replays)
            if mig is None:  # not supported on MIG (dcgm-exporter #50, #105, #216)
                add("DCGM_FI_DEV_GPU_UTIL", k, g.util)
                add("DCGM_FI_DEV_MEM_COPY_UTIL", k, g.mem_util)
                add("DCGM_FI_DEV_ENC_UTIL", k, g.encoder_util)
                add("DCGM_FI_DEV_DEC_UTIL", k, g.decoder_util)
            xid = snap.last_xid.get(g.uuid, 0)
            xid_labels = label_text((("err_code", str(xid)), ("err_msg", xid_message(xid))))
            add("DCGM_FI_DEV_XID_ERRORS", f"{k},{xid_labels}", xid)
            memory = g.memory if mig is None else mig.memory
            if memory is not None:
                add("DCGM_FI_DEV_FB_FREE", k, memory.free // MIB)
                add("DCGM_FI_DEV_FB_USED", k, memory.used // MIB)
                add("DCGM_FI_DEV_FB_RESERVED", k, memory.reserved // MIB)
            add("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", k, g.nvlink_dcgm_rate)
            if g.remapped is not None:
                add("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", k, g.remapped.uncorrectable)
                add("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", k, g.remapped.correctable)
                add("DCGM_FI_DEV_ROW_REMAP_FAILURE", k, 1 if g.remapped.failure else 0)
            activity = g.activity if mig is None else mig.activity
            add("DCGM_FI_PROF_GR_ENGINE_ACTIVE", k, _ratio(activity.get("graphics")))
            add("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", k, _ratio(activity.get("tensor")))
            add("DCGM_FI_PROF_DRAM_ACTIVE", k, _ratio(activity.get("dram")))
            for direction in ("TX", "RX"):
                mib_s = activity.get(f"pcie_{direction.lower()}")
                add(f"DCGM_FI_PROF_PCIE_{direction}_BYTES", k, None if mib_s is None else mib_s * MIB)
    return families.render()
