"""The asyncio driver around :class:`Scheduler`: one engine loop, requests waiting on tokens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from observer.catalog import VLLM_CACHE_CONFIG_LABELS
from observer.config import SimulatorSettings
from observer.simulator.metrics import VllmMetrics
from observer.simulator.scheduler import Phase, Scheduler, SimRequest, StepModel
from observer.simulator.tracing import RequestTracer

CHARS_PER_TOKEN = 4  # the usual English-text rule of thumb for BPE tokenizers


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def prefix_block_hashes(text: str, block_size: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's full KV blocks, like vLLM's block hashing of token ids."""
    chunk = block_size * CHARS_PER_TOKEN
    full_blocks = len(text) // chunk
    digest = b""
    out = []
    for i in range(full_blocks):
        digest = hashlib.blake2b(digest + text[i * chunk : (i + 1) * chunk].encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little"))
    return tuple(out)


def cache_config_labels(settings: SimulatorSettings) -> dict[str, str]:
    """vllm:cache_config_info labels as vLLM 0.32 renders its CacheConfig (str() of each field)."""
    tokens = settings.num_gpu_blocks * settings.block_size
    max_len = max(1, settings.max_model_len)
    labels = dict.fromkeys(VLLM_CACHE_CONFIG_LABELS, "None")
    labels.pop("engine")
    labels.update(
        {
            "_block_size_resolved": "True",
            "block_size": str(settings.block_size),
            "cache_dtype": "auto",
            "effective_attention_block_size": str(settings.block_size),
            "enable_mamba_shared_prefix_checkpoint": "False",
            "enable_prefix_caching": str(settings.enable_prefix_caching),
            "gpu_memory_utilization": "0.9",
            "is_attention_free": "False",
            "kv_cache_dtype_skip_layers": "[]",
            "kv_cache_max_concurrency": str(round(tokens / max_len, 2)),
            "kv_cache_size_tokens": str(tokens),
            "kv_offloading_backend": "native",
            "kv_sharing_fast_prefill": "False",
            "mamba_cache_dtype": "auto",
            "mamba_cache_mode": "none",
            "mamba_ssm_cache_dtype": "float32",
            "num_gpu_blocks": str(settings.num_gpu_blocks),
            "prefix_cache_retention_interval": "0",
            "prefix_caching_hash_algo": "sha256",
            "replayssm_buffer_len": "16",
            "swa_bounded_replay": "True",
            "use_kda_recoverssm": "False",
            "use_replayssm": "False",
            "user_specified_block_size": "False",
        }
    )
    return labels


@dataclass(eq=False)
class RequestHandle:
    """What an HTTP handler holds while its request is in the engine."""

    req: SimRequest
    wall_arrival_ns: int
    params: dict[str, Any]
    trace_headers: dict[str, str]
    max_tokens_set: bool
    id_prefix: str = ""  # "chatcmpl-" / "cmpl-": the span's request id is the id the client sees
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # shared by the n choices of a request
    done: bool = False
    index: int = 0  # choice index (n > 1)
    logprobs: int | None = None  # top-k logprobs asked for; None answers "logprobs": null
    stop_text: str | None = None  # the stop string the output ends on, if any
    stop_token: int = 0  # output tokens when that stop string completes
    stop_cut: int = 0  # characters of the last token's text kept before the stop string

    @property
    def finished_reason(self) -> str | None:
        return self.req.finished_reason


class Engine:
    def __init__(self, settings: SimulatorSettings, tracer: RequestTracer | None = None) -> None:
        self.settings = settings
        self.scheduler = Scheduler(
            num_gpu_blocks=settings.num_gpu_blocks,
            block_size=settings.block_size,
            max_num_seqs=settings.max_num_seqs,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            step_model=StepModel(
                base_s=settings.step_base_s,
                per_seq_s=settings.step_per_seq_s,
                prefill_per_token_s=settings.prefill_per_token_s,
                speed_factor=settings.speed_factor,
            ),
            enable_prefix_caching=settings.enable_prefix_caching,
        )
        self.metrics = VllmMetrics(
            model=settings.model,
            engine=settings.data_parallel_rank,
            max_model_len=settings.max_model_len,
            cache_config=cache_config_labels(settings),
        )
        self.metrics.running.set(0)
        self.metrics.waiting.set(0)
        self.metrics.kv_usage.set(0)
        self.tracer = tracer
        self._handles: dict[str, RequestHandle] = {}
        self._wake = asyncio.Event()
        self._ids = itertools.count()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.tracer:
            self.tracer.shutdown()

    # --- requests --------------------------------------------------------------------------------
    def eos_after(self, prompt_text: str) -> int:
        """Deterministic per prompt: the same request always gets the same answer length."""
        seed = int.from_bytes(
            hashlib.blake2b(f"{self.settings.seed}|{prompt_text}".encode(), digest_size=8).digest(), "little"
        )
        rng = random.Random(seed)
        mean = self.settings.mean_output_tokens
        # Lognormal with sigma 0.8 and the requested mean: mostly short answers, a long tail.
        value = rng.lognormvariate(math.log(mean) - 0.32, 0.8)
        return max(1, min(int(value), self.settings.max_model_len))

    def submit(
        self,
        prompt_text: str,
        prompt_tokens: int,
        max_tokens: int,
        eos_after: int,
        params: dict[str, Any],
        trace_headers: dict[str, str],
        max_tokens_set: bool,
        prefix_text: str | None = None,
    ) -> RequestHandle:
        now = self._loop.time() if self._loop else time.monotonic()
        rid = f"{next(self._ids):x}{random.getrandbits(48):012x}"
        req = SimRequest(
            request_id=rid,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            eos_after=eos_after,
            arrival=now,
            prefix_hashes=(
                prefix_block_hashes(
                    prefix_text if prefix_text is not None else prompt_text, self.settings.block_size
                )
                if self.settings.enable_prefix_caching
                else ()
            ),
        )
        self.scheduler.add(req)
        handle = RequestHandle(
            req=req,
            wall_arrival_ns=time.time_ns(),
            params=params,
            trace_headers=trace_headers,
            max_tokens_set=max_tokens_set,
        )
        self._handles[rid] = handle
        self._wake.set()
        return handle

    def abort(self, handle: RequestHandle) -> None:
        """The client went away: free the request's blocks. Like vLLM, whose output processor drops the
        request state before any stats are recorded, a disconnect counts nowhere (no finish reason, no
        histogram, no span): ``finished_reason="abort"`` stays for aborts the engine itself decides."""
        if handle.done:
            return
        now = self._loop.time() if self._loop else time.monotonic()
        req = self.scheduler.abort(handle.req.request_id, now)
        if req is not None:
            self._finish(handle, recorded=False)

    def _finish(self, handle: RequestHandle, recorded: bool = True) -> None:
        handle.done = True
        self._handles.pop(handle.req.request_id, None)
        if recorded:
            params_n = (handle.params.get("n") or 1) if handle.index == 0 else None
            self.metrics.on_finished(handle.req, handle.max_tokens_set, params_n)
            if self.tracer is not None:
                self.tracer.record(handle, self._loop.time() if self._loop else time.monotonic())
        handle.ready.set()

    # --- the engine loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        metrics = self.metrics
        while True:
            if not sched.has_work:
                metrics.on_step_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = sched.schedule(loop.time())
            # Gauges reflect the state the scheduler just decided on (vLLM's SchedulerStats), so a
            # request that arrives while a step runs is not reported as waiting before it had a chance.
            running, waiting, kv = len(sched.running), len(sched.waiting), sched.kv_usage
            dt = sched.step_time(batch)
            # Yield even at speed 0 so HTTP handlers can ship tokens between steps.
            await asyncio.sleep(dt)
            outcome = sched.finish_step(batch, loop.time())
            metrics.on_step(batch, outcome, running, waiting, kv)
            handles = self._handles
            for req in outcome.sampled:
                handle = handles.get(req.request_id)
                if handle is not None and req.phase is not Phase.FINISHED:
                    handle.ready.set()
            for req in outcome.finished:
                handle = handles.get(req.request_id)
                if handle is not None:
                    self._finish(handle)
            if not batch.work:
                await asyncio.sleep(0.001)  # nothing schedulable this instant; don't spin
