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

GPM (profiling activity, Hopper and newer) needs two samples: each cycle takes one per GPU (and per
MIG GPU instance), computes the metrics against the previous one, and frees the previous one. Samples
closer than ``gpm_min_span_s`` are not taken; the last values are shown again instead. Rendering lives
in :mod:`exporters.gpu.render_native` and :mod:`exporters.gpu.render_dcgm`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pynvml

from exporters.gpu.backend import ABSENT, GPM_METRICS, GPU_GONE, LIFECYCLE, NvmlBackend, error_name
from exporters.gpu.render_dcgm import render_dcgm
from exporters.gpu.render_native import render_native, render_self
from exporters.gpu.snapshot import GpuSample, MigSample, Snapshot
from observer.config import GpuExporterSettings


class _Lifecycle(Exception):
    def __init__(self, call: str, exc: BaseException) -> None:
        super().__init__(f"{call}: {exc}")
        self.call, self.exc = call, exc


__all__ = ["GpuSample", "GpuSampler", "Snapshot"]
_GPM_IDS = tuple(GPM_METRICS.values())


class GpuSampler:
    def __init__(
        self,
        backend: NvmlBackend,
        settings: GpuExporterSettings,
        native: bool = True,
        dcgm: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.clock = clock
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
        self._gpm_support: dict[int, bool] = {}
        self._gpm_prev: dict[tuple[int, int | None], tuple[Any, float]] = {}  # -> (sample, taken at)
        self._gpm_last: dict[tuple[int, int | None], dict[str, float]] = {}
        self._nvlink_prev: dict[int, tuple[int, float]] = {}  # -> (rx + tx KiB, read at)
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
            self._drop_gpm()
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
        self._drop_gpm()  # samples die with the library handle
        if self._initialized:
            self.backend.shutdown()
        self._initialized = False
        self._unsupported.clear()
        self._identity.clear()
        self._gpm_support.clear()
        self._nvlink_prev.clear()

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
        with self._lock:
            xids, last_xid = Counter(self.xids), dict(self.last_xid)
        snapshot = Snapshot(
            gpus, success, time.time(), time.perf_counter() - start, driver, cuda, xids, last_xid
        )
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
            s.encoder_util = opt(i, "encoder_utilization", b.encoder_utilization, h)
            s.decoder_util = opt(i, "decoder_utilization", b.decoder_utilization, h)
            s.remapped = opt(i, "remapped_rows", b.remapped_rows, h)
            s.nvlink_kib = opt(i, "nvlink_kib", b.nvlink_kib, h)
            if s.nvlink_kib is not None:
                s.nvlink_dcgm_rate = self._nvlink_rate(i, sum(s.nvlink_kib))
            s.processes = self._processes(i, h)
            s.profiling_supported = self._gpm_supported(i, h)
            if s.profiling_supported:
                s.activity = self._gpm(i, h, None)
            if opt(i, "mig_enabled", b.mig_enabled, h):
                s.mig_mode = "enabled"
                by_instance: dict[int, dict[str, float]] = {}
                for dev in opt(i, "mig_devices", b.mig_devices, h) or ():
                    mig = MigSample(dev, opt(i, "mig_memory", b.memory, dev.handle))
                    if s.profiling_supported:
                        gi = dev.gpu_instance_id
                        if gi not in by_instance:  # compute instances share their GPU instance's sample
                            by_instance[gi] = self._gpm(i, h, gi)
                        mig.activity = by_instance[gi]
                    s.mig.append(mig)
        except GPU_GONE as exc:
            self.errors[(self._current_call.get(i, call), error_name(exc))] += 1
            self._drop_gpm(i)
            return self._down(i)
        except LIFECYCLE as exc:
            raise _Lifecycle(call, exc) from None
        return s

    def _nvlink_rate(self, i: int, total_kib: int) -> int:
        """DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL as DCGM computes it: the rx + tx KiB counters' rate / 1000
        (DCGM calls it MB/s), 0 on the first reading or when the counters read 0."""
        now = self.clock()
        prev = self._nvlink_prev.get(i)
        self._nvlink_prev[i] = (total_kib, now)
        if total_kib == 0 or prev is None or now <= prev[1]:
            return 0
        return max(0, int((total_kib - prev[0]) / (now - prev[1]) / 1000))

    # --- GPM ---------------------------------------------------------------------------------------
    def _gpm_supported(self, i: int, h: Any) -> bool:
        if i not in self._gpm_support:
            # FunctionNotFound (driver older than GPM) or NotSupported count as "no", as does a plain no.
            self._gpm_support[i] = bool(self._optional(i, "gpm_supported", self.backend.gpm_supported, h))
        return self._gpm_support[i]

    def _gpm(self, i: int, h: Any, gpu_instance_id: int | None) -> dict[str, float]:
        """GPM values (NVML units) between the previous sample of this GPU/instance and a new one."""
        key = (i, gpu_instance_id)
        now = self.clock()
        prev = self._gpm_prev.get(key)
        if prev is not None and now - prev[1] < self.settings.gpm_min_span_s:
            return self._gpm_last.get(key, {})  # too close for a meaningful window: keep the last values
        call = "gpm_sample" if gpu_instance_id is None else "gpm_mig_sample"
        sample = self._optional(i, call, self.backend.gpm_sample, h, gpu_instance_id)
        if sample is None:
            return {}
        self._gpm_prev[key] = (sample, now)
        if prev is None:
            return {}  # the first sample only opens the window
        self._current_call[i] = "gpm_metrics"
        try:
            raw = self.backend.gpm_metrics(prev[0], sample, _GPM_IDS)
        except (*ABSENT, pynvml.NVMLError_InvalidArgument) as exc:
            self.errors[("gpm_metrics", error_name(exc))] += 1
            raw = {}
        finally:
            self.backend.gpm_sample_free(prev[0])
        values = {name: raw[mid] for name, mid in GPM_METRICS.items() if mid in raw}
        self._gpm_last[key] = values
        return values

    def _drop_gpm(self, index: int | None = None) -> None:
        """Free the kept GPM samples (of one GPU, or all): the next cycle starts a new window."""
        for key in [k for k in self._gpm_prev if index is None or k[0] == index]:
            sample, _ = self._gpm_prev.pop(key)
            self._gpm_last.pop(key, None)
            with contextlib.suppress(Exception):  # the handle may be gone with the GPU
                self.backend.gpm_sample_free(sample)

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
            out += render_native(snap, self.hostname, self.settings.critical_xids)
        if self.dcgm:
            out += render_dcgm(snap, self.hostname, self.settings.dcgm_hostname_label)
        out += render_self(snap, self.errors)
        return "\n".join(out) + "\n"
