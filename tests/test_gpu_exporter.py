"""GPU exporter against the fake NVML (real pynvml exception classes), and a real Prometheus."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pynvml
import pytest
from support import Prometheus, observer_server, scrape

from exporters.gpu.backend import ABSENT, GPU_GONE, LIFECYCLE
from exporters.gpu.fake import FakeNvml
from exporters.gpu.processes import label_from_cmdline, process_label
from exporters.gpu.sampler import GpuSampler
from observer.config import GpuExporterSettings

GOLDEN = Path(__file__).parent / "fixtures" / "gpu"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(count=2, load=0.5, timeout=1.0, **kw):
    fake = FakeNvml(count, load=lambda: load, clock=Clock(), **kw)
    settings = GpuExporterSettings(hostname="node-a", nvml_call_timeout_s=timeout)
    return fake, GpuSampler(fake, settings, native=True, dcgm=True)


def series(sampler):
    """{(name, frozenset(labels)): value} of the rendered text, via the reference parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(sampler.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def values(sampler, name, **match):
    return {
        dict(labels).get("gpu"): v
        for (n, labels), v in series(sampler).items()
        if n == name and all(dict(labels).get(k) == x for k, x in match.items())
    }


@pytest.mark.parametrize(("mode", "native", "dcgm"), [("native", True, False), ("dcgm", False, True)])
def test_golden_exposition(mode, native, dcgm):
    fake = FakeNvml(2, processes_per_gpu=2, load=lambda: 0.5, clock=Clock())
    fake.enable_mig(1)
    sampler = GpuSampler(fake, GpuExporterSettings(hostname="node-a"), native=native, dcgm=dcgm)
    snap = sampler.collect()
    body = "\n".join(sampler._render_native(snap) if native else sampler._render_dcgm(snap)) + "\n"
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
        fake._hangs.clear()
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


# The panels of NVIDIA's dashboard 12239 (reference/gpu-exporters.md section 2), with its variables
# expanded the way Grafana would for "All".
DASHBOARD_12239 = [
    'DCGM_FI_DEV_GPU_TEMP{instance=~".*", gpu=~".*"}',
    'avg(DCGM_FI_DEV_GPU_TEMP{instance=~".*", gpu=~".*"})',
    'DCGM_FI_DEV_POWER_USAGE{instance=~".*", gpu=~".*"}',
    'sum(DCGM_FI_DEV_POWER_USAGE{instance=~".*", gpu=~".*"})',
    'DCGM_FI_DEV_SM_CLOCK{instance=~".*", gpu=~".*"} * 1000000',
    'DCGM_FI_DEV_GPU_UTIL{instance=~".*", gpu=~".*"}',
    'DCGM_FI_DEV_FB_USED{instance=~".*", gpu=~".*"}',
]


def test_real_prometheus_and_dashboard_12239_queries():
    with observer_server("gpu-exporter", "--fake-gpus", "2", "--dcgm-compat", "--interval", "0.5") as (
        base,
        _,
    ):
        target = base.removeprefix("http://")
        prom = Prometheus([{"job_name": "gpu", "static_configs": [{"targets": [target]}]}])
        try:
            prom.wait_for("gpu_up == 1", lambda r: len(r) == 2)
            for query in DASHBOARD_12239:
                assert prom.wait_for(query), query
            # The variables' label_values() queries also resolve.
            assert len(prom.wait_for("count by (gpu) (DCGM_FI_DEV_GPU_TEMP)")) == 2
            assert prom.wait_for("rate(gpu_energy_joules_total[5s])", lambda r: len(r) == 2)
            m = scrape(base + "/metrics")
            assert m["gpu_exporter_last_collect_success"][()] == 1
            assert "process_cpu_seconds_total" in m
        finally:
            prom.stop()


# The dashboard panel "Tensor Core Utilization" uses a DCP profiling field (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE)
# that NVML does not expose; it is the one 12239 panel this exporter leaves empty (see README).


@pytest.mark.gpu
def test_real_nvml_backend_when_a_driver_is_present():
    if not pynvml_available():
        pytest.skip("no libnvidia-ml / NVIDIA driver on this machine (runs on GPU machines)")
    from exporters.gpu.nvml import PynvmlBackend

    sampler = GpuSampler(PynvmlBackend(), GpuExporterSettings(), native=True, dcgm=True)
    snap = sampler.collect()
    sampler.stop()
    assert snap.success and snap.gpus
    assert all(g.up for g in snap.gpus)
    assert values(sampler, "gpu_memory_total_bytes")
    assert "DCGM_FI_DEV_GPU_TEMP" in sampler.text
