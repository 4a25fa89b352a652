"""The seam between the exporter and NVML.

:class:`NvmlBackend` is the small interface the sampler uses; :mod:`exporters.gpu.nvml` implements
it over ``pynvml`` (nvidia-ml-py) and :mod:`exporters.gpu.fake` over a simulated node. Both raise
the real ``pynvml.NVMLError_*`` classes, so the sampler's error handling is the same code whether
a GPU is real or not. Units are NVML's (mW, mJ, MHz, bytes, percent); the renderer converts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pynvml

Handle = Any


@dataclass(frozen=True)
class MemoryInfo:
    total: int
    used: int
    free: int
    reserved: int = 0


@dataclass(frozen=True)
class RemappedRows:
    """nvmlDeviceGetRemappedRows: rows remapped so far, and whether a remap is pending or has failed."""

    correctable: int
    uncorrectable: int
    pending: bool
    failure: bool


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class MigDevice:
    handle: Handle
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    profile: str


class NvmlBackend(Protocol):
    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Handle: ...
    def driver_version(self) -> str: ...
    def cuda_driver_version(self) -> str: ...
    def uuid(self, h: Handle) -> str: ...
    def name(self, h: Handle) -> str: ...
    def pci_bus_id(self, h: Handle) -> str: ...
    def utilization(self, h: Handle) -> tuple[int, int]: ...  # (gpu %, memory %)
    def memory(self, h: Handle) -> MemoryInfo: ...
    def power_mw(self, h: Handle) -> int: ...
    def power_limit_mw(self, h: Handle) -> int: ...
    def energy_mj(self, h: Handle) -> int: ...
    def temperature_c(self, h: Handle) -> int: ...
    def memory_temperature_c(self, h: Handle) -> int: ...
    def sm_clock_mhz(self, h: Handle) -> int: ...
    def memory_clock_mhz(self, h: Handle) -> int: ...
    def clock_event_reasons(self, h: Handle) -> int: ...  # bitmask
    def ecc_errors(self, h: Handle, uncorrected: bool) -> int: ...  # volatile totals
    def pcie_replay_counter(self, h: Handle) -> int: ...
    def compute_processes(self, h: Handle) -> list[ProcessInfo]: ...
    def process_label(self, pid: int) -> str: ...  # what to call it: "vllm:<model>", "python3", ...
    def encoder_utilization(self, h: Handle) -> int: ...  # percent
    def decoder_utilization(self, h: Handle) -> int: ...  # percent
    def remapped_rows(self, h: Handle) -> RemappedRows: ...
    def nvlink_kib(self, h: Handle) -> tuple[int, int]: ...  # (rx, tx) data KiB since driver load, all links
    def mig_enabled(self, h: Handle) -> bool: ...
    def mig_devices(self, h: Handle) -> list[MigDevice]: ...
    # GPM (Hopper and newer): activity between two samples of the device or of one GPU instance
    def gpm_supported(self, h: Handle) -> bool: ...
    def gpm_sample(self, h: Handle, gpu_instance_id: int | None = None) -> Any: ...
    def gpm_metrics(self, first: Any, second: Any, metric_ids: tuple[int, ...]) -> dict[int, float]: ...
    def gpm_sample_free(self, sample: Any) -> None: ...
    # XID events (used by one dedicated thread)
    def xid_event_set(self, handles: list[Handle]) -> Any: ...
    def xid_wait(self, event_set: Any, timeout_ms: int) -> tuple[str, int] | None: ...  # (uuid, xid)
    def xid_event_set_free(self, event_set: Any) -> None: ...


# Throttle / clock-event reason bits (nvml.h nvmlClocksEventReason*).
THROTTLE_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)

# GPM metrics read each cycle: our name -> NVML id. Percentages (0-100) except PCIe, in MiB/s
# (pynvml.py, NVML_GPM_METRIC_*). DCGM maps its DCGM_FI_PROF_* fields to the same ids on Hopper+
# (NVIDIA/DCGM dcgmlib/src/dcgm_fields.cpp, DcgmFieldIdToNvmlGpmMetricId): tensor = ANY_TENSOR_UTIL.
GPM_METRICS: dict[str, int] = {
    "graphics": pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
    "sm": pynvml.NVML_GPM_METRIC_SM_UTIL,
    "tensor": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    "dram": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    "pcie_tx": pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
    "pcie_rx": pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
}
GPM_PERCENT = ("graphics", "sm", "tensor", "dram")

# Errors meaning "this series does not exist here": omit it, remember, don't ask every cycle.
ABSENT = (
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_FunctionNotFound,
    pynvml.NVMLError_NoPermission,
    pynvml.NVMLError_Deprecated,
    pynvml.NVMLError_NotFound,
)
# Errors meaning "this GPU is gone": gpu_up 0 for it, the others keep reporting.
GPU_GONE = (
    pynvml.NVMLError_GpuIsLost,
    pynvml.NVMLError_Unknown,
    pynvml.NVMLError_ResetRequired,
)
# Errors meaning "the library or driver state is gone": fail the cycle, shut down, init again.
LIFECYCLE = (
    pynvml.NVMLError_Uninitialized,
    pynvml.NVMLError_DriverNotLoaded,
    pynvml.NVMLError_LibRmVersionMismatch,
    pynvml.NVMLError_GpuNotFound,
)


def error_name(exc: BaseException) -> str:
    """``NVMLError_GpuIsLost`` -> ``gpu_is_lost``; anything else -> its snake-cased class name."""
    name = type(exc).__name__.removeprefix("NVMLError_")
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
