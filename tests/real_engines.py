"""Real vLLM and llama.cpp servers as pytest fixtures (session-scoped: each starts once, ~25-60 s).

The engines come from ``scripts/real_engines.py`` (installed and cached outside the clone; ``make test``
runs it first, and these fixtures run it again, which costs nothing when the cache is complete). If an
engine cannot be installed or started, the fixture raises with the reason and the engine's log: the
tests fail, they never skip.

vLLM serves with a small KV cache (``VLLM_TEST_KV_BLOCKS`` blocks of 128 tokens, above one
``--max-model-len``) so the end-to-end alert test can saturate it with a few requests, while the
counting tests keep their load at two requests in flight, well below it. Its OTLP traces go to the
session's ``observer serve``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import REPO, Process, observer_cmd, wait_http

from observer.netutil import free_port

SERVED_MODEL = "tiny-llama"
MAX_MODEL_LEN = 2048
# 17 blocks x 128 tokens = 2,176 tokens (vLLM keeps one block back: 2,048 usable, one full-length
# request): the load tests' two chat requests in flight fit, a burst of ~5 long ones saturates it.
VLLM_TEST_KV_BLOCKS = 17
VLLM_TEST_MODEL_OVERRIDES = {
    "num_hidden_layers": 8,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}
STARTUP_TIMEOUT_S = float(os.environ.get("REAL_ENGINE_STARTUP_TIMEOUT_S", "300"))


def _installer():
    spec = importlib.util.spec_from_file_location(
        "real_engines_installer", REPO / "scripts" / "real_engines.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


INSTALLER = _installer()


class EngineProcess:
    """An engine in its own process group (vLLM forks its engine core), its output in a log file."""

    def __init__(self, args: list[str], log_name: str, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix=f"{log_name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 20 s; the engine itself, not only a wrapper."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.log.close()


@dataclass
class Engine:
    name: str  # the engine exporter's engine name
    url: str  # base URL, http://127.0.0.1:PORT
    model: str
    version: str
    process: EngineProcess
    command: list[str]

    @property
    def target(self) -> str:
        return self.url.removeprefix("http://")

    def metrics_text(self) -> str:
        resp = httpx.get(self.url + "/metrics", timeout=10)
        resp.raise_for_status()
        return resp.text


def _wait_ready(url: str, proc: EngineProcess, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {proc.proc.returncode} during startup\n--- log tail ---\n"
                f"{proc.output()[-4000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    log = proc.output()[-4000:]
    proc.stop()
    raise RuntimeError(f"{what} not ready at {url} within {STARTUP_TIMEOUT_S:.0f}s\n--- log tail ---\n{log}")


@dataclass(frozen=True)
class VllmInstall:
    python: str
    version: str
    model_dir: str


@dataclass(frozen=True)
class LlamaInstall:
    binary: str
    build: str
    gguf: str


def _install(what: str, fn):
    try:
        return fn()
    except Exception as exc:
        raise RuntimeError(f"{what} could not be installed (scripts/real_engines.py): {exc}") from exc


def install_vllm() -> VllmInstall:
    """vLLM and the tiny model, from the cache or installed now; raises with the reason."""
    root = INSTALLER.cache_root()

    def run() -> VllmInstall:
        python = INSTALLER.ensure_vllm(root)
        model = INSTALLER.ensure_model(root, python)
        return VllmInstall(str(python), INSTALLER.VLLM_VERSION, str(model))

    return _install(f"vLLM {INSTALLER.VLLM_VERSION}", run)


def install_llama() -> LlamaInstall:
    """llama-server and the tiny model's GGUF, from the cache or built now; raises with the reason."""
    root = INSTALLER.cache_root()

    def run() -> LlamaInstall:
        binary = INSTALLER.ensure_llama_server(root)
        model = INSTALLER.ensure_model(root, INSTALLER.ensure_vllm(root))  # tokenizers + gguf live there
        return LlamaInstall(str(binary), INSTALLER.LLAMA_CPP_BUILD, str(model / "model.gguf"))

    return _install(f"llama.cpp b{INSTALLER.LLAMA_CPP_BUILD}", run)


def vllm_env(cache_root: str) -> dict[str, str]:
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",  # else its internal message queue binds a non-loopback address
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": cache_root,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }


def vllm_command(
    python: str, model_dir: str, port: int, otlp_endpoint: str | None, kv_blocks: int
) -> list[str]:
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",  # the `vllm` CLI fails: the distribution is `vllm-cpu`
        "--model",
        model_dir,
        "--served-model-name",
        SERVED_MODEL,
        "--load-format",
        "dummy",
        "--enforce-eager",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--num-gpu-blocks-override",
        str(kv_blocks),
        # Every request holds its own blocks (the load generator's chat prompts share a 200-token
        # prefix), so a burst fills the small cache for as long as the burst lasts.
        "--no-enable-prefix-caching",
        # Random weights (--load-format dummy), so the model can be made bigger here: 8 layers of 512
        # make the engine, not its HTTP front, the bottleneck of a burst on an idle 2-core machine.
        "--hf-overrides",
        json.dumps(VLLM_TEST_MODEL_OVERRIDES),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if otlp_endpoint:
        cmd += ["--otlp-traces-endpoint", otlp_endpoint]
    return cmd


@contextlib.contextmanager
def observer_server(
    subcommand: str, *args: str, ready_path: str = "/health"
) -> Iterator[tuple[str, Process]]:
    """``support.observer_server`` with a startup allowance for a machine busy with real engines."""
    port = free_port()
    proc = Process(observer_cmd(subcommand, "--listen", f"127.0.0.1:{port}", *args), subcommand)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(base + ready_path, timeout=120, proc=proc.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- {subcommand} output ---\n{proc.output()[-3000:]}") from None
        yield base, proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def observer_sink(tmp_path_factory) -> Iterator[str]:
    """One ``observer serve`` for the session: real vLLM sends its OTLP spans here from startup on."""
    db = tmp_path_factory.mktemp("observer-serve") / "observer.db"
    with observer_server("serve", "--db", f"sqlite:///{db}", ready_path="/healthz") as (base, _proc):
        yield base


def start_vllm(paths: VllmInstall, otlp_endpoint: str | None, kv_blocks: int = VLLM_TEST_KV_BLOCKS) -> Engine:
    port = free_port()
    cache = tempfile.mkdtemp(prefix="vllm-cache-")
    cmd = vllm_command(paths.python, paths.model_dir, port, otlp_endpoint, kv_blocks)
    proc = EngineProcess(cmd, "vllm", vllm_env(cache))
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url + "/v1/models", proc, f"vLLM {paths.version}")
    return Engine("vllm", url, SERVED_MODEL, paths.version, proc, cmd)


def llama_command(binary: str, gguf: str, port: int) -> list[str]:
    return [
        binary,
        "-m",
        gguf,
        "--alias",
        SERVED_MODEL,
        "--metrics",
        "--slots",
        "--no-ui",
        "-c",
        str(MAX_MODEL_LEN),
        "-np",
        "4",
        "-t",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def start_llama(paths: LlamaInstall) -> Engine:
    port = free_port()
    cmd = llama_command(paths.binary, paths.gguf, port)
    proc = EngineProcess(cmd, "llama-server", {})
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url + "/health", proc, f"llama-server b{paths.build}")
    return Engine("llama.cpp", url, SERVED_MODEL, f"b{paths.build}", proc, cmd)


@pytest.fixture(scope="session")
def real_vllm(observer_sink) -> Iterator[Engine]:
    engine = start_vllm(install_vllm(), observer_sink + "/v1/traces")
    try:
        yield engine
    finally:
        engine.process.stop()


@pytest.fixture(scope="session")
def real_llama() -> Iterator[Engine]:
    engine = start_llama(install_llama())
    try:
        yield engine
    finally:
        engine.process.stop()
