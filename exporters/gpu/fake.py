"""A deterministic fake NVML node behind the same interface as the real one.

H100-like devices (80 GB HBM3, 700 W limit). Load follows a signal (a callable returning 0..1,
e.g. the simulator's running requests) so demos look alive; without one it follows a slow wave.
Tests inject failures with the real ``pynvml`` exception classes, per GPU and per call::

    fake.fail(1, "power_mw", pynvml.NVMLError_NotSupported)   # every time
    fake.lose_gpu(2)                                           # GpuIsLost on every call for GPU 2
    fake.hang(0, "memory", release_event)                      # blocks until the event is set
    fake.break_driver(pynvml.NVMLError_Uninitialized)          # every call fails until init() again
    fake.raise_xid(0, 79)                                      # an XID event on GPU 0
    fake.without_gpm(1)                                        # an A100: no GPM profiling metrics

GPM samples are real objects to free: ``gpm_samples_live`` counts the ones not freed yet, so a test can
see the sampler does not leak them.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporters.gpu.backend import GPM_METRICS, MemoryInfo, MigDevice, ProcessInfo, RemappedRows

GIB = 1024**3
H100_MEMORY = 80 * GIB
H100_POWER_LIMIT_MW = 700_000
IDLE_POWER_MW = 70_000
# NVLink data per direction at full load (KiB/s): an 8-way tensor-parallel all-reduce keeps links busy.
NVLINK_FULL_LOAD_KIB_S = 120 * 1024 * 1024
# GPM activity at load 1.0 (percent, MiB/s for PCIe): decode-heavy serving is memory-bound, so DRAM
# runs ahead of the tensor pipes.
GPM_AT_FULL_LOAD = {
    "graphics": 98.0,
    "sm": 90.0,
    "tensor": 45.0,
    "dram": 75.0,
    "pcie_tx": 900.0,
    "pcie_rx": 1500.0,
}


@dataclass
class FakeGpmSample:
    """What nvmlGpmSampleGet captured: the load at that moment (activity = mean of two samples)."""

    gpu: int
    gpu_instance_id: int | None
    load: float
    freed: bool = False


@dataclass
class FakeGpu:
    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = ""
    processes: list[tuple[int, str, int]] = field(default_factory=list)  # (pid, name, bytes)
    mig: list[MigDevice] = field(default_factory=list)
    lost: bool = False
    energy_mj: float = 0.0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    pcie_replays: int = 0
    gpm: bool = True  # Hopper: GPM profiling metrics available
    encoder_util: int = 0  # an LLM node: the video engines idle
    decoder_util: int = 0
    remapped: RemappedRows = field(default_factory=lambda: RemappedRows(0, 0, False, False))
    nvlink_rx_kib: float = 0.0
    nvlink_tx_kib: float = 0.0


class FakeNvml:
    def __init__(
        self,
        count: int,
        processes_per_gpu: int = 1,
        load: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        model_names: tuple[str, ...] = ("acme/chat-8b",),
    ) -> None:
        self.gpus = [
            FakeGpu(
                index=i,
                uuid=f"GPU-{0xFA4E0000 + i:08x}-0000-4000-8000-{i:012x}",
                pci_bus_id=f"00000000:{0x18 + i * 0x10:02X}:00.0",
            )
            for i in range(count)
        ]
        for gpu in self.gpus:
            for p in range(processes_per_gpu):
                model = model_names[(gpu.index + p) % len(model_names)]
                # vLLM preallocates gpu_memory_utilization (0.9) of the card, split over its processes.
                gpu.processes.append(
                    (4000 + gpu.index * 100 + p, f"vllm:{model}", int(0.9 * H100_MEMORY / processes_per_gpu))
                )
        self.load = load
        self.clock = clock
        self._started = clock()
        self._last_energy_at = clock()
        self._failures: dict[tuple[int | None, str], tuple[type[Exception], int | None]] = {}
        self._hangs: dict[tuple[int, str], threading.Event] = {}
        self._driver_error: type[Exception] | None = None
        self._initialized = False
        self.init_count = 0
        self.shutdown_count = 0
        self.calls = 0
        self.call_seconds = 0.0  # time spent inside fake calls (benchmarks subtract it)
        self.gpm_samples_live = 0
        self._xids: queue.Queue[tuple[str, int]] = queue.Queue()
        self._lock = threading.Lock()

    # --- scenario controls -----------------------------------------------------------------------
    def fail(self, gpu: int | None, call: str, exc: type[Exception], times: int | None = None) -> None:
        """Make ``call`` raise ``exc`` (for one GPU, or all with gpu=None), always or ``times`` times."""
        self._failures[(gpu, call)] = (exc, times)

    def clear_failures(self) -> None:
        self._failures.clear()

    def lose_gpu(self, gpu: int, lost: bool = True) -> None:
        self.gpus[gpu].lost = lost

    def hang(self, gpu: int, call: str, release: threading.Event) -> None:
        self._hangs[(gpu, call)] = release

    def clear_hangs(self) -> None:
        """Later calls run normally again (a call already stuck waits for its ``release`` event)."""
        self._hangs.clear()

    def break_driver(self, exc: type[Exception] | None) -> None:
        """Every call raises ``exc`` until init() is called again after this is cleared (None)."""
        self._driver_error = exc
        if exc is not None:
            self._initialized = False

    def raise_xid(self, gpu: int, xid: int) -> None:
        self._xids.put((self.gpus[gpu].uuid, xid))

    def without_gpm(self, gpu: int, name: str = "NVIDIA A100-SXM4-80GB") -> None:
        """An Ampere card: nvmlGpmQueryDeviceSupport says no and GPM sampling raises NotSupported."""
        self.gpus[gpu].gpm = False
        self.gpus[gpu].name = name

    def enable_mig(self, gpu: int, profiles: tuple[str, ...] = ("3g.40gb", "3g.40gb")) -> None:
        g = self.gpus[gpu]
        g.mig = [
            MigDevice(
                handle=(gpu, i),
                uuid=f"MIG-{g.uuid[4:12]}-{i:04d}-4000-8000-{i:012x}",
                gpu_instance_id=i + 1,
                compute_instance_id=0,
                profile=p,
            )
            for i, p in enumerate(profiles)
        ]

    # --- machinery ---------------------------------------------------------------------------------
    def _current_load(self) -> float:
        if self.load is not None:
            try:
                return min(1.0, max(0.0, float(self.load())))
            except Exception:
                return 0.0
        t = self.clock() - self._started
        return 0.55 + 0.35 * math.sin(t / 30.0)

    def _call(self, call: str, gpu: int | None = None) -> None:
        self.calls += 1
        if self._driver_error is not None:
            raise self._driver_error()
        if not self._initialized and call != "init":
            raise pynvml.NVMLError_Uninitialized()
        if gpu is not None:
            release = self._hangs.get((gpu, call))
            if release is not None:
                release.wait()
            if self.gpus[gpu].lost:
                raise pynvml.NVMLError_GpuIsLost()
        for key in ((gpu, call), (None, call)):
            failure = self._failures.get(key)
            if failure is not None:
                exc, times = failure
                if times is not None:
                    if times <= 1:
                        del self._failures[key]
                    else:
                        self._failures[key] = (exc, times - 1)
                raise exc()

    def _timed(self, call: str, gpu: int | None, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            self._call(call, gpu)
            return fn()
        finally:
            self.call_seconds += time.perf_counter() - start

    def _gpu(self, h: Any) -> FakeGpu:
        return self.gpus[h[0] if isinstance(h, tuple) else h]

    # --- NvmlBackend -------------------------------------------------------------------------------
    def init(self) -> None:
        if self._driver_error is not None:
            raise self._driver_error()
        self._initialized = True
        self.init_count += 1

    def shutdown(self) -> None:
        self._initialized = False
        self.shutdown_count += 1

    def device_count(self) -> int:
        return self._timed("device_count", None, lambda: len(self.gpus))

    def handle(self, index: int) -> int:
        return self._timed("handle", index, lambda: index)

    def driver_version(self) -> str:
        return self._timed("driver_version", None, lambda: "580.95.05")

    def cuda_driver_version(self) -> str:
        return self._timed("cuda_driver_version", None, lambda: "13.0")

    def uuid(self, h: int) -> str:
        return self._timed("uuid", h, lambda: self.gpus[h].uuid)

    def name(self, h: int) -> str:
        return self._timed("name", h, lambda: self.gpus[h].name)

    def pci_bus_id(self, h: int) -> str:
        return self._timed("pci_bus_id", h, lambda: self.gpus[h].pci_bus_id)

    def utilization(self, h: int) -> tuple[int, int]:
        def value() -> tuple[int, int]:
            load = self._current_load()
            return round(100 * load), round(60 * load)

        return self._timed("utilization", h, value)

    def memory(self, h: int | tuple[int, int]) -> MemoryInfo:
        if isinstance(h, tuple):  # a MIG device handle: (parent index, slot)
            parent = h[0]
            total = H100_MEMORY // max(1, len(self.gpus[parent].mig))
            return self._timed("memory", parent, lambda: MemoryInfo(total, total // 2, total - total // 2))

        def value() -> MemoryInfo:
            g = self.gpus[h]
            reserved = 512 * 1024**2
            used = min(H100_MEMORY - reserved, sum(b for _, _, b in g.processes) + 600 * 1024**2)
            return MemoryInfo(H100_MEMORY, used, H100_MEMORY - used - reserved, reserved)

        return self._timed("memory", h, value)

    def power_mw(self, h: int) -> int:
        return self._timed(
            "power_mw", h, lambda: int(IDLE_POWER_MW + (H100_POWER_LIMIT_MW - 110_000) * self._current_load())
        )

    def power_limit_mw(self, h: int) -> int:
        return self._timed("power_limit_mw", h, lambda: H100_POWER_LIMIT_MW)

    def _integrate(self) -> None:
        """Advance every GPU's cumulative counters (energy, NVLink bytes) to now, so they only go up."""
        with self._lock:
            now = self.clock()
            dt = now - self._last_energy_at
            if dt > 0:
                load = self._current_load()
                watts = (IDLE_POWER_MW + (H100_POWER_LIMIT_MW - 110_000) * load) / 1000
                for g in self.gpus:
                    g.energy_mj += watts * dt * 1000
                    g.nvlink_rx_kib += NVLINK_FULL_LOAD_KIB_S * load * dt
                    g.nvlink_tx_kib += NVLINK_FULL_LOAD_KIB_S * load * dt
                self._last_energy_at = now

    def energy_mj(self, h: int) -> int:
        def value() -> int:
            self._integrate()
            return int(self.gpus[h].energy_mj)

        return self._timed("energy_mj", h, value)

    def temperature_c(self, h: int) -> int:
        return self._timed("temperature_c", h, lambda: round(34 + 42 * self._current_load()) + h % 3)

    def memory_temperature_c(self, h: int) -> int:
        return self._timed("memory_temperature_c", h, lambda: round(38 + 36 * self._current_load()) + h % 2)

    def sm_clock_mhz(self, h: int) -> int:
        return self._timed("sm_clock_mhz", h, lambda: 1980 if self._current_load() > 0.05 else 345)

    def memory_clock_mhz(self, h: int) -> int:
        return self._timed("memory_clock_mhz", h, lambda: 2619)

    def clock_event_reasons(self, h: int) -> int:
        def value() -> int:
            load = self._current_load()
            if load < 0.05:
                return 0x1  # idle
            return 0x4 if load > 0.95 else 0x0  # at full load the power cap bites

        return self._timed("clock_event_reasons", h, value)

    def ecc_errors(self, h: int, uncorrected: bool) -> int:
        g = self.gpus[h]
        return self._timed("ecc_errors", h, lambda: g.ecc_uncorrected if uncorrected else g.ecc_corrected)

    def pcie_replay_counter(self, h: int) -> int:
        return self._timed("pcie_replay_counter", h, lambda: self.gpus[h].pcie_replays)

    def compute_processes(self, h: int) -> list[ProcessInfo]:
        return self._timed(
            "compute_processes", h, lambda: [ProcessInfo(pid, b) for pid, _n, b in self.gpus[h].processes]
        )

    def process_label(self, pid: int) -> str:
        for g in self.gpus:
            for p, name, _ in g.processes:
                if p == pid:
                    return name
        raise pynvml.NVMLError_NotFound()

    def encoder_utilization(self, h: int) -> int:
        return self._timed("encoder_utilization", h, lambda: self.gpus[h].encoder_util)

    def decoder_utilization(self, h: int) -> int:
        return self._timed("decoder_utilization", h, lambda: self.gpus[h].decoder_util)

    def remapped_rows(self, h: int) -> RemappedRows:
        return self._timed("remapped_rows", h, lambda: self.gpus[h].remapped)

    def nvlink_kib(self, h: int) -> tuple[int, int]:
        def value() -> tuple[int, int]:
            self._integrate()
            g = self.gpus[h]
            return int(g.nvlink_rx_kib), int(g.nvlink_tx_kib)

        return self._timed("nvlink_kib", h, value)

    def mig_enabled(self, h: int) -> bool:
        return self._timed("mig_enabled", h, lambda: bool(self.gpus[h].mig))

    def mig_devices(self, h: int) -> list[MigDevice]:
        return self._timed("mig_devices", h, lambda: list(self.gpus[h].mig))

    def gpm_supported(self, h: int) -> bool:
        return self._timed("gpm_supported", h, lambda: self.gpus[h].gpm)

    def gpm_sample(self, h: int, gpu_instance_id: int | None = None) -> FakeGpmSample:
        def value() -> FakeGpmSample:
            g = self.gpus[h]
            if not g.gpm:
                raise pynvml.NVMLError_NotSupported()
            if gpu_instance_id is not None and gpu_instance_id not in {d.gpu_instance_id for d in g.mig}:
                raise pynvml.NVMLError_NotFound()
            with self._lock:
                self.gpm_samples_live += 1
            return FakeGpmSample(h, gpu_instance_id, self._current_load())

        call = "gpm_sample" if gpu_instance_id is None else "gpm_mig_sample"
        return self._timed(call, h, value)

    def gpm_metrics(
        self, first: FakeGpmSample, second: FakeGpmSample, metric_ids: tuple[int, ...]
    ) -> dict[int, float]:
        def value() -> dict[int, float]:
            if (
                first.freed
                or second.freed
                or (first.gpu, first.gpu_instance_id)
                != (
                    second.gpu,
                    second.gpu_instance_id,
                )
            ):
                raise pynvml.NVMLError_InvalidArgument()
            load = (first.load + second.load) / 2
            # A GPU instance sees its share of the card's PCIe traffic and the same kind of activity.
            share = 1.0 if first.gpu_instance_id is None else 1.0 / max(1, len(self.gpus[first.gpu].mig))
            by_id = {mid: name for name, mid in GPM_METRICS.items()}
            out = {}
            for mid in metric_ids:
                name = by_id.get(mid)
                if name is not None:
                    scale = share if name.startswith("pcie") else 1.0
                    out[mid] = GPM_AT_FULL_LOAD[name] * load * scale
            return out

        return self._timed("gpm_metrics", first.gpu, value)

    def gpm_sample_free(self, sample: FakeGpmSample) -> None:
        if not sample.freed:
            sample.freed = True
            with self._lock:
                self.gpm_samples_live -= 1

    def xid_event_set(self, handles: list[Any]) -> Any:
        self._call("xid_event_set")
        return self._xids

    def xid_wait(self, event_set: Any, timeout_ms: int) -> tuple[str, int] | None:
        try:
            return event_set.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return None

    def xid_event_set_free(self, event_set: Any) -> None:
        pass
