"""What one sampling cycle saw, in NVML's units, and the family buffer the renderers share.

The sampler (:mod:`exporters.gpu.sampler`) fills a :class:`Snapshot`; the renderers
(:mod:`exporters.gpu.render_native` for our ``gpu_*`` names, :mod:`exporters.gpu.render_dcgm` for
dcgm-exporter's ``DCGM_FI_*``) turn it into text. Neither renderer calls NVML.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from exporters.gpu.backend import MemoryInfo, MigDevice, RemappedRows
from observer.exposition import LabelKey, escape, fmt, header, line


@dataclass
class MigSample:
    device: MigDevice
    memory: MemoryInfo | None = None
    activity: dict[str, float] = field(default_factory=dict)  # GPM of its GPU instance, NVML units


@dataclass
class GpuSample:
    index: int
    uuid: str = ""
    up: bool = True
    name: str = ""
    pci_bus_id: str = ""
    mig_mode: str = "disabled"
    util: int | None = None
    mem_util: int | None = None
    memory: MemoryInfo | None = None
    power_mw: int | None = None
    power_limit_mw: int | None = None
    energy_mj: int | None = None
    temperature: int | None = None
    memory_temperature: int | None = None
    sm_clock: int | None = None
    memory_clock: int | None = None
    throttle: int | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    pcie_replays: int | None = None
    encoder_util: int | None = None
    decoder_util: int | None = None
    remapped: RemappedRows | None = None
    nvlink_kib: tuple[int, int] | None = None  # (rx, tx) since driver load
    nvlink_dcgm_rate: int | None = None  # DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL: KiB/s / 1000, as in DCGM
    # None: not asked (GPU down); False: no GPM here (pre-Hopper, old driver); True: activity follows
    # from the second cycle on.
    profiling_supported: bool | None = None
    activity: dict[str, float] = field(default_factory=dict)  # GPM values keyed as backend.GPM_METRICS
    processes: list[tuple[str, str, int]] = field(default_factory=list)  # (pid, process, bytes)
    mig: list[MigSample] = field(default_factory=list)


@dataclass
class Snapshot:
    gpus: list[GpuSample]
    success: bool
    timestamp: float
    duration_s: float
    driver_version: str = ""
    cuda_version: str = ""
    xids: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (gpu index, uuid, xid) -> n
    last_xid: dict[str, int] = field(default_factory=dict)  # uuid -> last XID code


def label_text(key: LabelKey) -> str:
    """``a="1",b="x"``: render a label set once and reuse it for every metric of that GPU."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in key)


class Families:
    """Samples grouped by metric, rendered with their catalog HELP/TYPE; None values are omitted."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def add(self, name: str, key: LabelKey, value: float | None) -> None:
        if value is not None:
            self._lines.setdefault(name, []).append(line(name, key, value))

    def add_text(self, name: str, labels: str, value: float | None) -> None:
        """Like add, with labels already rendered by :func:`label_text` (escaping is the hot spot)."""
        if value is not None:
            self._lines.setdefault(name, []).append(f"{name}{{{labels}}} {fmt(value)}")

    def render(self) -> list[str]:
        out: list[str] = []
        for name, lines in self._lines.items():
            out += header(name)
            out += lines
        return out
