"""GPU exporter against the fake NVML (real pynvml exception classes), and a real Prometheus."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pynvml
import pytest
from support import Prometheus, binary, observer_server, scrape

from exporters.gpu.backend import ABSENT, GPM_METRICS, GPU_GONE, LIFECYCLE, RemappedRows
from exporters.gpu.fake import FakeNvml
from exporters.gpu.processes import label_from_cmdline, process_label
from exporters.gpu.render_dcgm import render_dcgm
from exporters.gpu.render_native import render_native
from exporters.gpu.sampler import GpuSampler
from exporters.gpu.server import MetricsLoadSignal
from observer.config import GpuExporterSettings

GOLDEN = Path(__file__).parent / "fixtures" / "gpu"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(count=2, load=0.5, timeout=1.0, **kw):
    clock = Clock()
    fake = FakeNvml(count, load=lambda: load, clock=clock, **kw)
    settings = GpuExporterSettings(hostname="node-a", nvml_call_timeout_s=timeout)
    return fake, GpuSampler(fake, settings, native=True, dcgm=True, clock=clock)


def series(sampler):
    """{(name, frozenset(labels)): value} of the rendered text, via the reference parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(sampler.text):
        for s in fam.samples:
            # The reference parser names counter samples x_total; dcgm-exporter's counters have no suffix.
            name = fam.name if fam.name.startswith("DCGM_") else s.name
            out[(name, frozenset(s.labels.items()))] = s.value
    return out


def values(sampler, name, **match):
    return {
        dict(labels).get("gpu"): v
        for (n, labels), v in series(sampler).items()
        if n == name and all(dict(labels).get(k) == x for k, x in match.items())
    }


def golden_node():
    """GPU 0 plain H100, GPU 1 in MIG mode (two 3g.40gb instances), GPU 2 an A100 without GPM."""
    clock = Clock()
    fake = FakeNvml(3, processes_per_gpu=2, load=lambda: 0.5, clock=clock)
    fake.enable_mig(1)
    fake.without_gpm(2)
    return fake, clock


@pytest.mark.parametrize("mode", ["native", "dcgm"])
def test_golden_exposition(mode):
    fake, clock = golden_node()
    sampler = GpuSampler(fake, GpuExporterSettings(hostname="node-a"), clock=clock)
    sampler.collect()
    clock.t += 2  # GPM and the NVLink rate need a second reading
    snap = sampler.collect()
    lines = render_native(snap, "node-a", [79]) if mode == "native" else render_dcgm(snap, "node-a")
    body = "\n".join(lines) + "\n"
    path = GOLDEN / f"{mode}.prom"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(body)
    assert body == path.read_text(), f"exposition changed; UPDATE_GOLDEN=1 rewrites {path}"


def test_units_are_converted_to_base_units():
    _, sampler = make(load=0.5)
    sampler.collect()
    assert values(sampler, "gpu_power_watts")["0"] == pytest.approx((70_000 + 590_000 * 0.5) / 1000)
    assert values(sampler, "DCGM_FI_DEV_POWER_USAGE")["0"] == pytest.approx(365.0)
    assert (
        values(sampler, "gpu_sm_clock_hertz")["0"] == 1980e6
        and values(sampler, "DCGM_FI_DEV_SM_CLOCK")["0"] == 1980
    )
    assert (
        values(sampler, "gpu_utilization_ratio")["0"] == 0.5
        and values(sampler, "DCGM_FI_DEV_GPU_UTIL")["0"] == 50
    )
    used = values(sampler, "gpu_memory_used_bytes")["0"]
    assert values(sampler, "DCGM_FI_DEV_FB_USED")["0"] == used // 2**20
    assert values(sampler, "gpu_memory_total_bytes")["0"] == 80 * 2**30


def test_energy_is_a_counter_in_joules():
    fake, sampler = make(load=1.0)
    sampler.collect()
    first = values(sampler, "gpu_energy_joules_total")["0"]
    fake.clock.t += 10  # 10 s at 660 W
    sampler.collect()
    assert values(sampler, "gpu_energy_joules_total")["0"] - first == pytest.approx(6600, rel=1e-3)


def test_lost_gpu_goes_down_alone():
    fake, sampler = make(count=3)
    sampler.collect()
    fake.lose_gpu(1)
    snap = sampler.collect()
    assert snap.success
    assert values(sampler, "gpu_up") == {"0": 1.0, "1": 0.0, "2": 1.0}
    assert set(values(sampler, "gpu_temperature_celsius")) == {"0", "2"}
    # The lost GPU keeps its uuid label (known from the earlier cycle) so alerts can name it.
    up = [labels for (n, labels) in series(sampler) if n == "gpu_up" and dict(labels)["gpu"] == "1"]
    assert dict(up[0])["uuid"].startswith("GPU-")
    assert sampler.errors[("handle", "gpu_is_lost")] == 1
    fake.lose_gpu(1, lost=False)
    sampler.collect()
    assert values(sampler, "gpu_up") == {"0": 1.0, "1": 1.0, "2": 1.0}


@pytest.mark.parametrize("exc", ABSENT, ids=lambda e: e.__name__)
def test_absent_series_are_omitted_per_gpu_and_not_asked_again(exc):
    fake, sampler = make()
    fake.fail(0, "power_mw", exc)
    sampler.collect()
    assert set(values(sampler, "gpu_power_watts")) == {"1"}
    assert values(sampler, "gpu_up") == {"0": 1.0, "1": 1.0}
    calls = fake.calls
    fake.clear_failures()
    sampler.collect()  # remembered as unsupported: still omitted, not retried
    assert set(values(sampler, "gpu_power_watts")) == {"1"}
    assert fake.calls > calls


@pytest.mark.parametrize("exc", GPU_GONE, ids=lambda e: e.__name__)
def test_gpu_gone_errors_mark_only_that_gpu_down(exc):
    fake, sampler = make()
    fake.fail(1, "temperature_c", exc)
    assert sampler.collect().success
    assert values(sampler, "gpu_up") == {"0": 1.0, "1": 0.0}


@pytest.mark.parametrize("exc", LIFECYCLE, ids=lambda e: e.__name__)
def test_driver_errors_fail_the_cycle_then_reinit(exc):
    fake, sampler = make()
    sampler.collect()
    fake.break_driver(exc)
    snap = sampler.collect()
    assert not snap.success
    assert values(sampler, "gpu_exporter_last_collect_success") == {None: 0.0}
    assert fake.shutdown_count == 1
    fake.break_driver(None)
    assert sampler.collect().success
    assert fake.init_count == 2
    assert values(sampler, "gpu_up") == {"0": 1.0, "1": 1.0}


def test_a_hanging_call_is_bounded_and_isolated():
    fake, sampler = make(timeout=0.3)
    sampler.collect()
    release = threading.Event()
    fake.hang(0, "memory", release)
    try:
        start = time.monotonic()
        sampler.collect()
        assert time.monotonic() - start < 1.0
        assert values(sampler, "gpu_up") == {"0": 0.0, "1": 1.0}
        assert sampler.errors[("memory", "timeout")] == 1
        sampler.collect()  # GPU 0 still stuck: no second thread is sent into the driver
        assert sampler.errors[("memory", "timeout")] == 1
        assert values(sampler, "gpu_up")["0"] == 0.0
    finally:
        release.set()
        fake.clear_hangs()
    time.sleep(0.05)
    sampler.collect()
    assert values(sampler, "gpu_up") == {"0": 1.0, "1": 1.0}
    sampler.stop()


def test_xid_events_counted_per_code_in_their_own_thread():
    fake, sampler = make()
    sampler.settings.interval_s = 0.05
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while not sampler.snapshot.success and time.monotonic() < deadline:
            time.sleep(0.02)
        fake.raise_xid(1, 79)
        fake.raise_xid(1, 79)
        fake.raise_xid(0, 31)  # not a pre-created code: appears when first seen
        while sum(sampler.xids.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        sampler.collect()
    finally:
        sampler.stop()
    assert values(sampler, "gpu_xid_errors_total", xid="79") == {"0": 0.0, "1": 2.0}
    assert values(sampler, "gpu_xid_errors_total", xid="31") == {"0": 1.0}
    assert values(sampler, "gpu_xid_errors_total", xid="48") == {"0": 0.0, "1": 0.0}  # pre-created
    assert values(sampler, "DCGM_FI_DEV_XID_ERRORS") == {"0": 31.0, "1": 79.0}
    # dcgm-exporter's XID labels: the code again, and the text from its table (xid_errors.go).
    xid_labels = {
        dict(labels)["gpu"]: (dict(labels)["err_code"], dict(labels)["err_msg"])
        for (n, labels) in series(sampler)
        if n == "DCGM_FI_DEV_XID_ERRORS"
    }
    assert xid_labels == {"0": ("31", "GPU memory page fault"), "1": ("79", "GPU has fallen off the bus")}


def test_mig_instances_have_their_own_labels():
    fake, sampler = make()
    fake.enable_mig(0, ("3g.40gb", "2g.20gb"))
    sampler.collect()
    mig = [dict(labels) for (n, labels) in series(sampler) if n == "gpu_mig_info"]
    assert {(m["gpu"], m["gpu_instance_id"], m["profile"]) for m in mig} == {
        ("0", "1", "3g.40gb"),
        ("0", "2", "2g.20gb"),
    }
    assert len(values(sampler, "gpu_mig_memory_total_bytes")) == 1  # keyed by gpu in this helper
    info = [dict(labels) for (n, labels) in series(sampler) if n == "gpu_info"]
    assert {i["gpu"]: i["mig_mode"] for i in info} == {"0": "enabled", "1": "disabled"}


def test_process_memory_is_capped_per_gpu():
    fake = FakeNvml(1, processes_per_gpu=20, load=lambda: 0.5, clock=Clock())
    sampler = GpuSampler(fake, GpuExporterSettings(hostname="n", max_processes_per_gpu=4))
    sampler.collect()
    procs = [dict(labels) for (n, labels) in series(sampler) if n == "gpu_process_memory_used_bytes"]
    assert len(procs) == 5
    assert next(p for p in procs if p["process"] == "other")["pid"] == ""
    total = sum(v for (n, _), v in series(sampler).items() if n == "gpu_process_memory_used_bytes")
    assert total == pytest.approx(0.9 * 80 * 2**30, rel=1e-6)


def test_process_labels_name_the_model():
    assert (
        label_from_cmdline(["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m/x"])
        == "vllm:m/x"
    )
    assert (
        label_from_cmdline(["/usr/bin/vllm", "serve", "Qwen/Qwen3-8B", "--port", "8000"])
        == "vllm:Qwen/Qwen3-8B"
    )
    assert (
        label_from_cmdline(["vllm", "serve", "Qwen/Qwen3-8B", "--served-model-name", "chat"]) == "vllm:chat"
    )
    assert label_from_cmdline(["python", "-m", "sglang.launch_server", "--model-path", "m"]) == "sglang:m"
    assert label_from_cmdline(["bash"]) is None
    assert process_label(999999999, "/usr/bin/python3") == "python3"  # no /proc entry: executable name
    assert process_label(999999999, "text-generation-router") == "text-generation-router"


def test_no_driver_exits_with_one_clear_line():
    if pynvml_available():
        pytest.skip("an NVIDIA driver is present on this machine")
    out = subprocess.run(
        [sys.executable, "-m", "observer.cli", "gpu-exporter", "--listen", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0
    assert "no NVIDIA driver" in out.stderr and "--fake-gpus" in out.stderr


def pynvml_available() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


# NVIDIA's dashboard 12239 as published: NVIDIA/dcgm-exporter grafana/dcgm-exporter-dashboard.json at d5e5f51
# (last changed in cffaeb8; Apache-2.0), copied unchanged into the fixtures.
DASHBOARD_12239_JSON = GOLDEN / "dcgm-exporter-dashboard-12239.json"


def dashboard_12239_queries() -> tuple[list[str], list[str]]:
    """Every panel target, with $instance/$gpu expanded as Grafana does for "All"; and each
    label_values(metric, label) variable as the PromQL that lists the values."""
    board = json.loads(DASHBOARD_12239_JSON.read_text())
    panels = [
        t["expr"].replace("$instance", ".*").replace("$gpu", ".*")
        for p in board["panels"]
        for t in p.get("targets", [])
    ]
    variables = []
    for v in board["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", v.get("query", ""))
        if m:
            variables.append(f"count by ({m.group(2)}) ({m.group(1)})")
    return panels, variables


def test_dashboard_12239_fixture_is_the_published_board():
    panels, variables = dashboard_12239_queries()
    assert len(panels) == 8 and len(variables) == 2
    assert 'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{instance=~".*", gpu=~".*"}' in panels  # Tensor Core Utilization


# Our GPU Fleet board's DCGM-style activity panel reads the native names.
FLEET_ACTIVITY = ["gpu_tensor_active_ratio", "gpu_sm_active_ratio", "gpu_dram_active_ratio"]


def test_real_prometheus_and_dashboard_12239_queries():
    flags = ("--fake-gpus", "2", "--dcgm-compat", "--interval", "0.5")
    with observer_server("gpu-exporter", *flags) as (base, _):
        target = base.removeprefix("http://")
        prom = Prometheus([{"job_name": "gpu", "static_configs": [{"targets": [target]}]}])
        try:
            prom.wait_for("gpu_up == 1", lambda r: len(r) == 2)
            panels, variables = dashboard_12239_queries()
            for query in panels:
                per_gpu = not query.startswith(("avg(", "sum("))  # one series per GPU, or one in all
                assert prom.wait_for(query, lambda r, n=2 if per_gpu else 1: len(r) == n), query
            for query in variables:
                assert prom.wait_for(query), query
            # GPM activity is a 0-1 ratio in both namings, and the same number.
            tensor = prom.wait_for("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", lambda r: len(r) == 2)
            assert all(0 < float(r["value"][1]) <= 1 for r in tensor)
            for name in FLEET_ACTIVITY:
                assert prom.wait_for(f"{name} > 0 and {name} <= 1", lambda r: len(r) == 2), name
            assert prom.wait_for("rate(gpu_energy_joules_total[5s])", lambda r: len(r) == 2)
            m = scrape(base + "/metrics")
            assert m["gpu_exporter_last_collect_success"][()] == 1
            assert "process_cpu_seconds_total" in m
        finally:
            prom.stop()


def two_cycles(fake, sampler, span=2.0):
    sampler.collect()
    fake.clock.t += span
    return sampler.collect()


def test_gpm_activity_needs_two_samples_and_samples_are_freed():
    fake, sampler = make(load=0.5)
    sampler.collect()
    assert values(sampler, "gpu_profiling_supported") == {"0": 1.0, "1": 1.0}
    assert values(sampler, "gpu_tensor_active_ratio") == {}  # one sample opens the window only
    fake.clock.t += 2
    sampler.collect()
    # The fake's GPM: percent at full load x load; 0-1 in both namings.
    assert values(sampler, "gpu_tensor_active_ratio") == {"0": 0.225, "1": 0.225}
    assert values(sampler, "gpu_sm_active_ratio")["0"] == pytest.approx(0.45)
    assert values(sampler, "gpu_dram_active_ratio")["0"] == pytest.approx(0.375)
    assert values(sampler, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") == {"0": 0.225, "1": 0.225}
    assert values(sampler, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")["1"] == pytest.approx(0.49)
    assert values(sampler, "DCGM_FI_PROF_PCIE_TX_BYTES")["0"] == pytest.approx(900 * 0.5 * 2**20)
    tx = values(sampler, "gpu_pcie_throughput_bytes_per_second", direction="tx")
    assert tx["0"] == pytest.approx(900 * 0.5 * 2**20)
    assert fake.gpm_samples_live == 2  # one kept per GPU, the older one freed
    fake.clock.t += 0.2  # closer than gpm_min_span_s: no new sample, the last values again
    calls = fake.calls
    sampler.collect()
    assert fake.gpm_samples_live == 2
    assert values(sampler, "gpu_tensor_active_ratio") == {"0": 0.225, "1": 0.225}
    assert fake.calls > calls
    fake.lose_gpu(1)
    fake.clock.t += 2
    sampler.collect()
    assert fake.gpm_samples_live == 1  # the lost GPU's sample is dropped
    fake.break_driver(pynvml.NVMLError_Uninitialized)
    sampler.collect()
    assert fake.gpm_samples_live == 0  # none survive a library re-init


def test_gpus_without_gpm_report_profiling_unsupported():
    fake, sampler = make(count=3)
    fake.without_gpm(1)  # an A100: the query says no
    fake.fail(2, "gpm_supported", pynvml.NVMLError_FunctionNotFound)  # a driver older than GPM
    two_cycles(fake, sampler)
    assert values(sampler, "gpu_profiling_supported") == {"0": 1.0, "1": 0.0, "2": 0.0}
    for name in ("gpu_tensor_active_ratio", "gpu_sm_active_ratio", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"):
        assert set(values(sampler, name)) == {"0"}, name
    # Everything else still reports for those GPUs.
    assert set(values(sampler, "DCGM_FI_DEV_GPU_TEMP")) == {"0", "1", "2"}
    assert sampler.errors[("gpm_supported", "function_not_found")] == 1
    assert fake.gpm_samples_live == 1


def test_mig_instances_in_compat_mode_carry_gpu_i_labels():
    fake, sampler = make()
    fake.enable_mig(0, ("3g.40gb", "2g.20gb"))
    two_cycles(fake, sampler)
    fb = {
        (d["gpu"], d.get("GPU_I_PROFILE"), d.get("GPU_I_ID")): v
        for (n, labels), v in series(sampler).items()
        if n == "DCGM_FI_DEV_FB_USED"
        for d in [dict(labels)]
    }
    # dcgm-exporter's default -d f: a MIG GPU is watched per GPU instance, not as a whole.
    assert set(fb) == {("0", "3g.40gb", "1"), ("0", "2g.20gb", "2"), ("1", None, None)}
    assert fb[("0", "3g.40gb", "1")] == 20480  # the instance's own memory, MiB
    assert set(values(sampler, "DCGM_FI_DEV_GPU_UTIL")) == {"1"}  # not supported on MIG
    tensor = [dict(labels) for (n, labels) in series(sampler) if n == "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"]
    assert sorted((t["gpu"], t.get("GPU_I_ID")) for t in tensor) == [("0", "1"), ("0", "2"), ("1", None)]
    mig_uuid = {dict(labels)["UUID"] for (n, labels) in series(sampler) if n == "DCGM_FI_DEV_GPU_TEMP"}
    assert mig_uuid == {fake.gpus[0].uuid, fake.gpus[1].uuid}  # the parent's UUID on instances
    assert set(values(sampler, "gpu_mig_activity_ratio", activity="tensor", gpu_instance_id="2")) == {"0"}


@pytest.mark.parametrize(
    ("label", "present"), [("Hostname", "Hostname"), ("hostname", "hostname"), ("none", None)]
)
def test_dcgm_hostname_label_spelling(label, present):
    fake = FakeNvml(1, load=lambda: 0.5, clock=Clock())
    settings = GpuExporterSettings(hostname="node-a", dcgm_hostname_label=label)
    sampler = GpuSampler(fake, settings, native=False, dcgm=True)
    sampler.collect()
    temp = next(dict(labels) for (n, labels) in series(sampler) if n == "DCGM_FI_DEV_GPU_TEMP")
    assert {"Hostname", "hostname"} & set(temp) == ({present} if present else set())
    if present:
        assert temp[present] == "node-a"
    assert temp["DCGM_FI_DRIVER_VERSION"] == "580.95.05"


def test_hostname_label_setting_is_validated():
    with pytest.raises(ValueError, match="dcgm_hostname_label"):
        GpuExporterSettings(dcgm_hostname_label="HOSTNAME")


def test_nvlink_bandwidth_is_computed_like_dcgm():
    fake, sampler = make(load=0.5)
    sampler.collect()
    assert values(sampler, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL") == {"0": 0.0, "1": 0.0}  # first reading
    before = values(sampler, "gpu_nvlink_bytes_total", direction="rx")["0"]
    fake.clock.t += 10
    sampler.collect()
    # rx + tx KiB per second / 1000 (DcgmCacheManager::ReadAndCacheNvLinkBandwidth), truncated.
    kib_per_s = 2 * 120 * 1024 * 1024 * 0.5
    assert values(sampler, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL")["0"] == int(kib_per_s / 1000)
    after = values(sampler, "gpu_nvlink_bytes_total", direction="rx")["0"]
    assert after - before == pytest.approx(10 * kib_per_s / 2 * 1024, rel=1e-6)


def test_remapped_rows_encoder_and_reserved_memory():
    fake, sampler = make()
    fake.gpus[0].remapped = RemappedRows(correctable=3, uncorrectable=1, pending=True, failure=True)
    fake.gpus[0].decoder_util = 40
    fake.fail(1, "remapped_rows", pynvml.NVMLError_NotSupported)
    sampler.collect()
    assert values(sampler, "gpu_remapped_rows_total", type="uncorrectable") == {"0": 1.0}
    assert values(sampler, "gpu_row_remap_failure") == {"0": 1.0}
    assert values(sampler, "gpu_row_remap_pending") == {"0": 1.0}
    assert values(sampler, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS") == {"0": 3.0}
    assert values(sampler, "DCGM_FI_DEV_ROW_REMAP_FAILURE") == {"0": 1.0}
    assert values(sampler, "DCGM_FI_DEV_DEC_UTIL") == {"0": 40.0, "1": 0.0}
    assert values(sampler, "gpu_decoder_utilization_ratio")["0"] == 0.4
    assert values(sampler, "DCGM_FI_DEV_FB_RESERVED")["0"] == 512
    assert values(sampler, "gpu_memory_reserved_bytes")["0"] == 512 * 2**20


def test_real_pynvml_wrappers_for_gpm_and_nvlink(monkeypatch):
    """The real backend through nvidia-ml-py's own wrappers, with the C entry points faked, so the
    struct handling (versions, sample pointers, per-metric returns, scopeId) is exercised here."""
    import ctypes

    from exporters.gpu.nvml import ALL_NVLINKS, PynvmlBackend

    freed = []

    def metrics_get(ref):
        request = ref._obj
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        for i in range(request.numMetrics):
            m = request.metrics[i]
            if m.metricId == pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL:
                m.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                m.nvmlReturn, m.value = pynvml.NVML_SUCCESS, float(m.metricId)
        return pynvml.NVML_SUCCESS

    def support(_device, ref):
        assert ref._obj.version == pynvml.NVML_GPM_SUPPORT_VERSION
        ref._obj.isSupportedDevice = 1
        return pynvml.NVML_SUCCESS

    def field_values(_device, count, ref):
        for i in range(count.value):
            v = ref._obj[i]
            assert v.scopeId == ALL_NVLINKS
            v.nvmlReturn, v.value.ullVal = pynvml.NVML_SUCCESS, 1000 + v.fieldId
        return pynvml.NVML_SUCCESS

    entry_points = {
        "nvmlGpmQueryDeviceSupport": support,
        "nvmlGpmSampleAlloc": lambda ref: pynvml.NVML_SUCCESS,
        "nvmlGpmSampleGet": lambda device, sample: pynvml.NVML_SUCCESS,
        "nvmlGpmMigSampleGet": lambda device, gi, sample: (
            pynvml.NVML_SUCCESS if gi == 3 else pynvml.NVML_ERROR_NOT_FOUND
        ),
        "nvmlGpmMetricsGet": metrics_get,
        "nvmlGpmSampleFree": lambda sample: freed.append(sample) or pynvml.NVML_SUCCESS,
        "nvmlDeviceGetFieldValues": field_values,
    }
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", lambda name: entry_points[name])
    backend = PynvmlBackend()
    device = ctypes.c_void_p(1)
    assert backend.gpm_supported(device)
    first, second = backend.gpm_sample(device), backend.gpm_sample(device, 3)
    ids = tuple(GPM_METRICS.values())
    got = backend.gpm_metrics(first, second, ids)
    assert got == {mid: float(mid) for mid in ids if mid != pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL}
    with pytest.raises(pynvml.NVMLError_NotFound):
        backend.gpm_sample(device, 7)  # no such GPU instance: the sample is freed, not leaked
    assert len(freed) == 1
    rx, tx = backend.nvlink_kib(device)
    assert (rx, tx) == (
        1000 + pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        1000 + pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
    )


# promtool's lint findings that are dcgm-exporter's schema, copied on purpose: camelCase labels (UUID,
# modelName, Hostname, GPU_I_*, DCGM_FI_DRIVER_VERSION) and counters named without _total.
FOREIGN_SCHEMA_FINDINGS = re.compile(
    r"^DCGM_FI_[A-Z0-9_]+ (label names should be written in 'snake_case' not 'camelCase'"
    r'|counter metrics should have "_total" suffix'
    r"|metric name should not include type 'counter')$"
)


@pytest.mark.parametrize("mode", ["native", "dcgm"])
def test_promtool_check_metrics(mode):
    fake, clock = golden_node()
    settings = GpuExporterSettings(hostname="node-a")
    sampler = GpuSampler(fake, settings, native=mode == "native", dcgm=mode == "dcgm", clock=clock)
    two_cycles(fake, sampler)
    sampler.errors[("power_mw", "not_supported")] += 1  # the self-metrics with a sample too
    out = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=sampler.text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    if mode == "native":
        assert out.returncode == 0 and findings == [], findings
    else:
        assert out.returncode in (0, 3), findings  # 3 = lint findings only, 1 would be a parse error
        assert [f for f in findings if not FOREIGN_SCHEMA_FINDINGS.match(f)] == []
        assert any("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" in line for line in sampler.text.splitlines())


def test_load_signal_reads_running_requests_with_the_engine_parser():
    import http.server

    bodies = {
        "/ok": 'vllm:num_requests_running{model_name="m"} 8\nllm_requests_running{model="x"} 8\nother 1\n',
        "/garbage": "<html>not metrics</html>\n",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = bodies[self.path].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert MetricsLoadSignal(base + "/ok", capacity=32)() == 0.5
        assert MetricsLoadSignal(base + "/garbage")() == 0.0
        assert MetricsLoadSignal(base + "/missing-server".replace(base, "http://127.0.0.1:9"))() == 0.0
    finally:
        server.shutdown()


NO_DRIVER = "no libnvidia-ml / NVIDIA driver on this machine (runs on GPU machines)"


@pytest.mark.gpu
def test_real_nvml_backend_when_a_driver_is_present():
    if not pynvml_available():
        pytest.skip(NO_DRIVER)
    from exporters.gpu.nvml import PynvmlBackend

    sampler = GpuSampler(PynvmlBackend(), GpuExporterSettings(), native=True, dcgm=True)
    try:
        sampler.collect()
        time.sleep(1.2)  # GPM needs two samples at least gpm_min_span_s apart
        snap = sampler.collect()
    finally:
        sampler.stop()
    assert snap.success and snap.gpus
    assert all(g.up for g in snap.gpus)
    assert values(sampler, "gpu_memory_total_bytes")
    assert "DCGM_FI_DEV_GPU_TEMP" in sampler.text
    supported = values(sampler, "gpu_profiling_supported")
    assert set(supported) == {str(g.index) for g in snap.gpus}
    for gpu, ok in supported.items():
        tensor = values(sampler, "gpu_tensor_active_ratio").get(gpu)
        assert (tensor is not None and 0 <= tensor <= 1) if ok else tensor is None


NVIDIA_SMI_FIELDS = "index,memory.total,memory.used,temperature.gpu,power.draw,clocks.sm,power.limit"


@pytest.mark.gpu
def test_real_nvml_values_match_nvidia_smi():
    """The issue's check on a lent GPU: every value we read against nvidia-smi --query-gpu."""
    if not pynvml_available() or shutil.which("nvidia-smi") is None:
        pytest.skip(NO_DRIVER)
    from exporters.gpu.nvml import PynvmlBackend

    sampler = GpuSampler(PynvmlBackend(), GpuExporterSettings(), native=True, dcgm=False)
    try:
        sampler.collect()
    finally:
        sampler.stop()
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_FIELDS}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for row in out.strip().splitlines():
        idx, mem_total, mem_used, temp, power, sm_clock, limit = (c.strip() for c in row.split(","))
        assert values(sampler, "gpu_memory_total_bytes")[idx] == float(mem_total) * 2**20
        assert values(sampler, "gpu_memory_used_bytes")[idx] == pytest.approx(
            float(mem_used) * 2**20, abs=64 * 2**20
        )
        assert values(sampler, "gpu_temperature_celsius")[idx] == pytest.approx(float(temp), abs=3)
        assert values(sampler, "gpu_power_watts")[idx] == pytest.approx(
            float(power), abs=0.25 * float(power) + 15
        )
        assert values(sampler, "gpu_sm_clock_hertz")[idx] == pytest.approx(float(sm_clock) * 1e6, rel=0.3)
        assert values(sampler, "gpu_power_limit_watts")[idx] == pytest.approx(float(limit), abs=1)
