"""The real backend: NVML through nvidia-ml-py (module ``pynvml``), with fallbacks for older drivers."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pynvml

from exporters.gpu.backend import Handle, MemoryInfo, MigDevice, ProcessInfo, RemappedRows
from exporters.gpu.processes import process_label

# nvml.h: a field's scopeId of UINT_MAX sums the NVLink throughput counters over every link; DCGM reads
# DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL the same way (DcgmCacheManager::ReadAndCacheNvLinkBandwidth).
ALL_NVLINKS = 0xFFFFFFFF


class NvmlUnavailable(RuntimeError):
    """No NVIDIA driver / libnvidia-ml on this machine."""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PynvmlBackend:
    def init(self) -> None:
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as exc:
            raise NvmlUnavailable(str(exc)) from None

    def shutdown(self) -> None:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()

    def device_count(self) -> int:
        return pynvml.nvmlDeviceGetCount()

    def handle(self, index: int) -> Handle:
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def driver_version(self) -> str:
        return _s(pynvml.nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> str:
        v = pynvml.nvmlSystemGetCudaDriverVersion()
        return f"{v // 1000}.{(v % 1000) // 10}"

    def uuid(self, h: Handle) -> str:
        return _s(pynvml.nvmlDeviceGetUUID(h))

    def name(self, h: Handle) -> str:
        return _s(pynvml.nvmlDeviceGetName(h))

    def pci_bus_id(self, h: Handle) -> str:
        return _s(pynvml.nvmlDeviceGetPciInfo(h).busId)

    def utilization(self, h: Handle) -> tuple[int, int]:
        u = pynvml.nvmlDeviceGetUtilizationRates(h)
        return int(u.gpu), int(u.memory)

    def memory(self, h: Handle) -> MemoryInfo:
        # v2 reports reserved memory separately; on drivers >= 510, v1's "used" includes it.
        try:
            m = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            return MemoryInfo(int(m.total), int(m.used), int(m.free), int(m.reserved))
        except pynvml.NVMLError_FunctionNotFound:
            m = pynvml.nvmlDeviceGetMemoryInfo(h)
            return MemoryInfo(int(m.total), int(m.used), int(m.free))

    def power_mw(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetPowerUsage(h))

    def power_limit_mw(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetEnforcedPowerLimit(h))

    def energy_mj(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h))

    def temperature_c(self, h: Handle) -> int:
        get_v = getattr(pynvml, "nvmlDeviceGetTemperatureV", None)
        if get_v is not None:
            try:
                return int(get_v(h, pynvml.NVML_TEMPERATURE_GPU))
            except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NotSupported, TypeError):
                pass
        return int(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))

    def memory_temperature_c(self, h: Handle) -> int:
        (value,) = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_MEMORY_TEMP])
        if value.nvmlReturn != pynvml.NVML_SUCCESS:
            raise pynvml.NVMLError(value.nvmlReturn)
        return int(value.value.uiVal)

    def sm_clock_mhz(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))

    def memory_clock_mhz(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM))

    def clock_event_reasons(self, h: Handle) -> int:
        fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is not None:
            try:
                return int(fn(h))
            except pynvml.NVMLError_FunctionNotFound:
                pass
        return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))

    def ecc_errors(self, h: Handle, uncorrected: bool) -> int:
        kind = (
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            if uncorrected
            else pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
        )
        return int(pynvml.nvmlDeviceGetTotalEccErrors(h, kind, pynvml.NVML_VOLATILE_ECC))

    def pcie_replay_counter(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetPcieReplayCounter(h))

    def compute_processes(self, h: Handle) -> list[ProcessInfo]:
        return [
            ProcessInfo(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        ]

    def process_label(self, pid: int) -> str:
        try:
            nvml_name: str | None = _s(pynvml.nvmlSystemGetProcessName(pid))
        except (pynvml.NVMLError_NotFound, pynvml.NVMLError_NoPermission, pynvml.NVMLError_NotSupported):
            nvml_name = None
        return process_label(pid, nvml_name)

    def encoder_utilization(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetEncoderUtilization(h)[0])

    def decoder_utilization(self, h: Handle) -> int:
        return int(pynvml.nvmlDeviceGetDecoderUtilization(h)[0])

    def remapped_rows(self, h: Handle) -> RemappedRows:
        corr, unc, pending, failure = pynvml.nvmlDeviceGetRemappedRows(h)
        return RemappedRows(int(corr), int(unc), bool(pending), bool(failure))

    def nvlink_kib(self, h: Handle) -> tuple[int, int]:
        values = pynvml.nvmlDeviceGetFieldValues(
            h,
            [
                (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ALL_NVLINKS),
                (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ALL_NVLINKS),
            ],
        )
        for v in values:
            if v.nvmlReturn != pynvml.NVML_SUCCESS:
                raise pynvml.NVMLError(v.nvmlReturn)
        return int(values[0].value.ullVal), int(values[1].value.ullVal)

    def mig_enabled(self, h: Handle) -> bool:
        current, _pending = pynvml.nvmlDeviceGetMigMode(h)
        return current == pynvml.NVML_DEVICE_MIG_ENABLE

    def mig_devices(self, h: Handle) -> list[MigDevice]:
        out = []
        for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
            try:
                mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
            except (pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument):
                continue  # empty slot
            name = _s(pynvml.nvmlDeviceGetName(mh))
            out.append(
                MigDevice(
                    handle=mh,
                    uuid=_s(pynvml.nvmlDeviceGetUUID(mh)),
                    gpu_instance_id=int(pynvml.nvmlDeviceGetGpuInstanceId(mh)),
                    compute_instance_id=int(pynvml.nvmlDeviceGetComputeInstanceId(mh)),
                    profile=name.rsplit("MIG ", 1)[-1] if "MIG " in name else name,
                )
            )
        return out

    def gpm_supported(self, h: Handle) -> bool:
        return bool(pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)

    def gpm_sample(self, h: Handle, gpu_instance_id: int | None = None) -> Any:
        sample = pynvml.nvmlGpmSampleAlloc()
        try:
            if gpu_instance_id is None:
                pynvml.nvmlGpmSampleGet(h, sample)
            else:
                pynvml.nvmlGpmMigSampleGet(h, gpu_instance_id, sample)
        except BaseException:
            self.gpm_sample_free(sample)
            raise
        return sample

    def gpm_metrics(self, first: Any, second: Any, metric_ids: tuple[int, ...]) -> dict[int, float]:
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(metric_ids)
        request.sample1, request.sample2 = first, second
        for i, metric_id in enumerate(metric_ids):
            request.metrics[i].metricId = metric_id
        pynvml.nvmlGpmMetricsGet(request)
        out: dict[int, float] = {}
        for i, metric_id in enumerate(metric_ids):
            m = request.metrics[i]
            if m.nvmlReturn == pynvml.NVML_SUCCESS and not math.isnan(m.value):
                out[metric_id] = float(m.value)  # a metric this GPU lacks is left out, not zero
        return out

    def gpm_sample_free(self, sample: Any) -> None:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlGpmSampleFree(sample)

    def xid_event_set(self, handles: list[Handle]) -> Any:
        es = pynvml.nvmlEventSetCreate()
        for h in handles:
            with contextlib.suppress(pynvml.NVMLError_NotSupported):
                pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
        return es

    def xid_wait(self, event_set: Any, timeout_ms: int) -> tuple[str, int] | None:
        try:
            data = pynvml.nvmlEventSetWait(event_set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return None
        if data.eventType != pynvml.nvmlEventTypeXidCriticalError:
            return None
        return _s(pynvml.nvmlDeviceGetUUID(data.device)), int(data.eventData)

    def xid_event_set_free(self, event_set: Any) -> None:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlEventSetFree(event_set)
