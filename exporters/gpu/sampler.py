"""Background sampling of NVML into a pre-rendered snapshot.

A scrape never touches NVML: it returns the text rendered after the last cycle. Each cycle samples
every GPU in its own worker task and waits at most ``nvml_call_timeout_s`` for them:

* NotSupported / FunctionNotFound / NoPermission on a call -> that series is omitted, and the call
  is not asked again for that GPU (until the next driver re-init).
* GpuIsLost / Unknown / ResetRequired -> ``gpu_up 0`` for that GPU; the others keep reporting.
* A call that does not return in time -> ``gpu_up 0`` for that GPU this cycle, and no new task is
  started for it until the stuck one returns (one outstanding call per GPU, no thread pile-up).
* Uninitialized / DriverNotLoaded / LibRmVersionMismatch / GpuNotFound -> the cycle fails
  (``gpu_exporter_last_collect_success 0``), NVML is shut down and initialised again next cycle.

XID events come from an NVML event set in their own thread and are counted per code.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporters.gpu.backend import ABSENT, GPU_GONE, LIFECYCLE, THROTTLE_REASONS, NvmlBackend, error_name
from observer.config import GpuExporterSettings
from observer.exposition import LabelKey, header, line

MIB = 1024 * 1024


class _Lifecycle(Exception):
    def __init__(self, call: str, exc: BaseException) -> None:
        super().__init__(f"{call}: {exc}")
        self.call, self.exc = call, exc


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
    memory: Any = None
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
    processes: list[tuple[str, str, int]] = field(default_factory=list)  # (pid, process, bytes)
    mig: list[tuple[Any, Any]] = field(default_factory=list)  # (MigDevice, MemoryInfo | None)


@dataclass
class Snapshot:
    gpus: list[GpuSample]
    success: bool
    timestamp: float
    duration_s: float
    driver_version: str = ""
    cuda_version: str = ""


class _Families:
    """Samples grouped by metric, rendered with their catalog HELP/TYPE; None values are omitted."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def add(self, name: str, key: LabelKey, value: float | None) -> None:
        if value is not None:
            self._lines.setdefault(name, []).append(line(name, key, value))

    def render(self) -> list[str]:
        out: list[str] = []
        for name, lines in self._lines.items():
            out += header(name)
            out += lines
        return out


class GpuSampler:
    def __init__(
        self,
        backend: NvmlBackend,
        settings: GpuExporterSettings,
        native: bool = True,
        dcgm: bool = False,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.native = native
        self.dcgm = dcgm
        self.hostname = settings.hostname or socket.gethostname()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.xids: Counter[tuple[str, str, int]] = Counter()  # (gpu index, uuid, xid) -> count
        self.last_xid: dict[str, int] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._identity: dict[int, tuple[str, str, str]] = {}  # index -> (uuid, name, pci bus id)
        self._current_call: dict[int, str] = {}
        self._stuck: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="nvml")
        self._initialized = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.snapshot = Snapshot([], False, 0.0, 0.0)
        self.text = self.render()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._loop, "gpu-sampler"), (self._xid_loop, "gpu-xid-events")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._initialized:
            self.backend.shutdown()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.collect()
            self._stop.wait(max(0.0, self.settings.interval_s - (time.monotonic() - started)))

    # --- one cycle ---------------------------------------------------------------------------------
    def _ensure_init(self) -> None:
        if not self._initialized:
            self.backend.init()
            self._initialized = True

    def _reinit_next_cycle(self, call: str, exc: BaseException) -> None:
        self.errors[(call, error_name(exc))] += 1
        if self._initialized:
            self.backend.shutdown()
        self._initialized = False
        self._unsupported.clear()
        self._identity.clear()

    def collect(self) -> Snapshot:
        start = time.perf_counter()
        driver = cuda = ""
        gpus: list[GpuSample] = []
        success = True
        try:
            self._ensure_init()
            count = self.backend.device_count()
            driver = self._optional(-1, "driver_version", self.backend.driver_version) or ""
            cuda = self._optional(-1, "cuda_driver_version", self.backend.cuda_driver_version) or ""
            gpus = self._sample_all(count)
        except _Lifecycle as exc:
            self._reinit_next_cycle(exc.call, exc.exc)
            success, gpus = False, []
        except LIFECYCLE as exc:
            self._reinit_next_cycle("device_count", exc)
            success, gpus = False, []
        except Exception as exc:  # e.g. NVMLError_LibraryNotFound after a driver removal
            self._reinit_next_cycle("init", exc)
            success, gpus = False, []
        snapshot = Snapshot(gpus, success, time.time(), time.perf_counter() - start, driver, cuda)
        text = self.render(snapshot)
        with self._lock:
            self.snapshot, self.text = snapshot, text
        return snapshot

    def _sample_all(self, count: int) -> list[GpuSample]:
        futures: dict[int, Future] = {}
        samples: dict[int, GpuSample] = {}
        for i in range(count):
            stuck = self._stuck.get(i)
            if stuck is not None and not stuck.done():
                samples[i] = self._down(i)  # still inside the call that hung; don't pile up threads
                continue
            self._stuck.pop(i, None)
            futures[i] = self._pool.submit(self._sample_gpu, i)
        deadline = time.monotonic() + self.settings.nvml_call_timeout_s
        for i, fut in futures.items():
            try:
                samples[i] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self._stuck[i] = fut
                self.errors[(self._current_call.get(i, "unknown"), "timeout")] += 1
                samples[i] = self._down(i)
        return [samples[i] for i in range(count)]

    def _down(self, index: int) -> GpuSample:
        uuid, name, pci = self._identity.get(index, ("", "", ""))
        return GpuSample(index=index, uuid=uuid, up=False, name=name, pci_bus_id=pci)

    def _optional(self, index: int, call: str, fn, *args):
        """Run one NVML call; None when the series does not exist on this GPU."""
        key = (index, call)
        if key in self._unsupported:
            return None
        self._current_call[index] = call
        try:
            return fn(*args)
        except ABSENT as exc:
            self._unsupported.add(key)
            self.errors[(call, error_name(exc))] += 1
            return None
        except LIFECYCLE as exc:
            raise _Lifecycle(call, exc) from None

    def _sample_gpu(self, i: int) -> GpuSample:
        b = self.backend
        s = GpuSample(index=i)
        call = self._current_call[i] = "handle"
        try:
            h = b.handle(i)
            if i not in self._identity:
                call = self._current_call[i] = "identity"
                self._identity[i] = (b.uuid(h), b.name(h), b.pci_bus_id(h))
            s.uuid, s.name, s.pci_bus_id = self._identity[i]
            opt = self._optional
            util = opt(i, "utilization", b.utilization, h)
            if util is not None:
                s.util, s.mem_util = util
            s.memory = opt(i, "memory", b.memory, h)
            s.power_mw = opt(i, "power_mw", b.power_mw, h)
            s.power_limit_mw = opt(i, "power_limit_mw", b.power_limit_mw, h)
            s.energy_mj = opt(i, "energy_mj", b.energy_mj, h)
            s.temperature = opt(i, "temperature_c", b.temperature_c, h)
            s.memory_temperature = opt(i, "memory_temperature_c", b.memory_temperature_c, h)
            s.sm_clock = opt(i, "sm_clock_mhz", b.sm_clock_mhz, h)
            s.memory_clock = opt(i, "memory_clock_mhz", b.memory_clock_mhz, h)
            s.throttle = opt(i, "clock_event_reasons", b.clock_event_reasons, h)
            s.ecc_corrected = opt(i, "ecc_corrected", b.ecc_errors, h, False)
            s.ecc_uncorrected = opt(i, "ecc_uncorrected", b.ecc_errors, h, True)
            s.pcie_replays = opt(i, "pcie_replay_counter", b.pcie_replay_counter, h)
            s.processes = self._processes(i, h)
            if opt(i, "mig_enabled", b.mig_enabled, h):
                s.mig_mode = "enabled"
                for dev in opt(i, "mig_devices", b.mig_devices, h) or ():
                    s.mig.append((dev, opt(i, "mig_memory", b.memory, dev.handle)))
        except GPU_GONE as exc:
            self.errors[(self._current_call.get(i, call), error_name(exc))] += 1
            return self._down(i)
        except LIFECYCLE as exc:
            raise _Lifecycle(call, exc) from None
        return s

    def _processes(self, i: int, h: Any) -> list[tuple[str, str, int]]:
        self._current_call[i] = "compute_processes"
        if (i, "compute_processes") in self._unsupported:
            return []
        try:
            procs = self.backend.compute_processes(h)
        except ABSENT as exc:
            if not isinstance(exc, pynvml.NVMLError_NotFound):  # NotFound just means "none right now"
                self._unsupported.add((i, "compute_processes"))
                self.errors[("compute_processes", error_name(exc))] += 1
            return []
        procs = sorted((p for p in procs if p.used_bytes is not None), key=lambda p: -(p.used_bytes or 0))
        cap = self.settings.max_processes_per_gpu
        out: list[tuple[str, str, int]] = []
        for p in procs[:cap]:
            try:
                label = self.backend.process_label(p.pid)
            except ABSENT + GPU_GONE:
                label = "unknown"
            out.append((str(p.pid), label, p.used_bytes or 0))
        rest = sum(p.used_bytes or 0 for p in procs[cap:])
        if rest:
            out.append(("", "other", rest))
        return out

    # --- XID events ----------------------------------------------------------------------------------
    def _xid_loop(self) -> None:
        while not self._stop.is_set():
            if not self._initialized:
                self._stop.wait(0.5)
                continue
            try:
                count = self.backend.device_count()
                handles = [self.backend.handle(i) for i in range(count)]
                uuids = {self._identity.get(i, ("",))[0]: i for i in range(count)}
                event_set = self.backend.xid_event_set(handles)
            except Exception as exc:
                self.errors[("xid_event_set", error_name(exc))] += 1
                self._stop.wait(5)
                continue
            try:
                while not self._stop.is_set() and self._initialized:
                    event = self.backend.xid_wait(event_set, 1000)
                    if event is None:
                        continue
                    uuid, xid = event
                    index = uuids.get(uuid)
                    if index is None:
                        index = next((i for i, ident in self._identity.items() if ident[0] == uuid), -1)
                    with self._lock:
                        self.xids[(str(index), uuid, xid)] += 1
                        self.last_xid[uuid] = xid
            except Exception as exc:
                self.errors[("xid_wait", error_name(exc))] += 1
            finally:
                self.backend.xid_event_set_free(event_set)

    # --- rendering -------------------------------------------------------------------------------------
    def render(self, snap: Snapshot | None = None) -> str:
        snap = snap or Snapshot([], False, 0.0, 0.0)
        out: list[str] = []
        if self.native:
            out += self._render_native(snap)
        if self.dcgm:
            out += self._render_dcgm(snap)
        out += self._render_self(snap)
        return "\n".join(out) + "\n"

    def _render_native(self, snap: Snapshot) -> list[str]:
        families = _Families()
        add = families.add

        for g in snap.gpus:
            k: LabelKey = (("gpu", str(g.index)), ("uuid", g.uuid))
            add("gpu_up", k, 1.0 if g.up else 0.0)
            if not g.up:
                continue
            info = (
                ("name", g.name),
                ("pci_bus_id", g.pci_bus_id),
                ("driver_version", snap.driver_version),
                ("cuda_version", snap.cuda_version),
                ("mig_mode", g.mig_mode),
                ("hostname", self.hostname),
            )
            add("gpu_info", k + info, 1.0)
            add("gpu_utilization_ratio", k, None if g.util is None else g.util / 100)
            add("gpu_memory_utilization_ratio", k, None if g.mem_util is None else g.mem_util / 100)
            if g.memory is not None:
                add("gpu_memory_used_bytes", k, g.memory.used)
                add("gpu_memory_total_bytes", k, g.memory.total)
            add("gpu_power_watts", k, None if g.power_mw is None else g.power_mw / 1000)
            add("gpu_power_limit_watts", k, None if g.power_limit_mw is None else g.power_limit_mw / 1000)
            add("gpu_energy_joules_total", k, None if g.energy_mj is None else g.energy_mj / 1000)
            add("gpu_temperature_celsius", k, g.temperature)
            add("gpu_memory_temperature_celsius", k, g.memory_temperature)
            add("gpu_sm_clock_hertz", k, None if g.sm_clock is None else g.sm_clock * 1e6)
            add("gpu_memory_clock_hertz", k, None if g.memory_clock is None else g.memory_clock * 1e6)
            if g.throttle is not None:
                for reason, bit in THROTTLE_REASONS:
                    add("gpu_throttle_active", (*k, ("reason", reason)), 1.0 if g.throttle & bit else 0.0)
            add("gpu_ecc_errors_total", (*k, ("type", "corrected")), g.ecc_corrected)
            add("gpu_ecc_errors_total", (*k, ("type", "uncorrected")), g.ecc_uncorrected)
            add("gpu_pcie_replay_errors_total", k, g.pcie_replays)
            for pid, process, used in g.processes:
                add("gpu_process_memory_used_bytes", (*k, ("pid", pid), ("process", process)), used)
            for dev, mem in g.mig:
                mk = (*k, ("mig_uuid", dev.uuid), ("gpu_instance_id", str(dev.gpu_instance_id)))
                add(
                    "gpu_mig_info",
                    (*mk, ("compute_instance_id", str(dev.compute_instance_id)), ("profile", dev.profile)),
                    1.0,
                )
                if mem is not None:
                    add("gpu_mig_memory_used_bytes", mk, mem.used)
                    add("gpu_mig_memory_total_bytes", mk, mem.total)
        # XID counters: the critical codes exist from the start at 0, others appear when first seen.
        with self._lock:
            xids = Counter(self.xids)
        for g in snap.gpus:
            for code in self.settings.critical_xids:
                xids.setdefault((str(g.index), g.uuid, code), 0)
        for (index, uuid, code), n in sorted(xids.items(), key=lambda kv: (kv[0][0], kv[0][2])):
            add("gpu_xid_errors_total", (("gpu", index), ("uuid", uuid), ("xid", str(code))), n)
        return families.render()

    def _render_dcgm(self, snap: Snapshot) -> list[str]:
        families = _Families()
        add = families.add

        for g in snap.gpus:
            if not g.up:
                continue  # dcgm-exporter omits what it cannot read
            k = (
                ("gpu", str(g.index)),
                ("UUID", g.uuid),
                ("device", f"nvidia{g.index}"),
                ("modelName", g.name),
                ("Hostname", self.hostname),
                ("pci_bus_id", g.pci_bus_id),
            )
            add("DCGM_FI_DEV_GPU_UTIL", k, g.util)
            add("DCGM_FI_DEV_MEM_COPY_UTIL", k, g.mem_util)
            if g.memory is not None:
                add("DCGM_FI_DEV_FB_USED", k, g.memory.used // MIB)
                add("DCGM_FI_DEV_FB_FREE", k, g.memory.free // MIB)
            add("DCGM_FI_DEV_POWER_USAGE", k, None if g.power_mw is None else g.power_mw / 1000)
            add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", k, g.energy_mj)
            add("DCGM_FI_DEV_GPU_TEMP", k, g.temperature)
            add("DCGM_FI_DEV_MEMORY_TEMP", k, g.memory_temperature)
            add("DCGM_FI_DEV_SM_CLOCK", k, g.sm_clock)
            add("DCGM_FI_DEV_MEM_CLOCK", k, g.memory_clock)
            add("DCGM_FI_DEV_XID_ERRORS", k, self.last_xid.get(g.uuid, 0))
            add("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", k, g.pcie_replays)
        return families.render()

    def _render_self(self, snap: Snapshot) -> list[str]:
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
        for (call, error), n in sorted(self.errors.items()):
            out.append(line("gpu_exporter_nvml_errors_total", (("call", call), ("error", error)), n))
        return out
