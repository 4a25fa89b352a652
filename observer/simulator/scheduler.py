"""A continuous-batching scheduler with a paged KV cache, modelled on vLLM V1.

Pure and clock-free: the caller passes ``now`` in, so tests drive it on a virtual clock and the
server drives it on the event loop's clock. One engine step is::

    batch = scheduler.schedule(now)        # who runs, how many tokens each (token budget, KV blocks)
    dt = scheduler.step_time(batch)        # the step-time model
    outcome = scheduler.finish_step(batch, now + dt)   # tokens sampled, requests finished

The rules (vLLM V1 ``Scheduler.schedule``, simplified but with the same consequences):

* Every request needs ``prompt + output - computed`` tokens this step: a (chunked) prefill while
  that is > 1, a single decode token afterwards. Running requests go first, within the step's token
  budget (``max_num_batched_tokens``).
* A running request that needs a new KV block when none is free preempts the most recently admitted
  running request (recompute policy: its blocks are freed, it goes back to the *front* of the
  waiting queue and later recomputes prompt + generated tokens).
* Waiting requests are admitted in FIFO order while a batch slot is free and the blocks for their
  whole prompt fit; the head of the queue blocks the rest (head-of-line, like vLLM's FCFS policy).
* Prefix caching: full prompt blocks whose chained hash was seen recently are cache hits; hit
  tokens need no prefill compute.

Under sustained load beyond capacity this produces the production failure mode by itself: KV usage
pinned near 1.0, the waiting queue climbing, preemptions, and TTFT growing with queue length.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum


class Phase(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class SimRequest:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    # Output length at which the "model" would emit EOS; >= max_tokens means it stops on length.
    eos_after: int
    arrival: float
    prefix_hashes: tuple[int, ...] = ()

    phase: Phase = Phase.WAITING
    computed: int = 0  # tokens whose KV is computed (prompt + output, reset on preemption)
    output_tokens: int = 0
    blocks: int = 0
    cached_tokens: int = 0
    num_preemptions: int = 0
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished_at: float | None = None
    finished_reason: str | None = None

    @property
    def total_len(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def pending(self) -> int:
        return self.total_len - self.computed


@dataclass(frozen=True)
class StepModel:
    """Seconds per engine step; every term scaled by ``speed_factor`` (0 = as fast as possible)."""

    base_s: float = 0.006
    per_seq_s: float = 0.00012
    prefill_per_token_s: float = 0.00002
    speed_factor: float = 1.0

    def duration(self, num_seqs: int, prefill_tokens: int) -> float:
        if self.speed_factor == 0 or num_seqs == 0:
            return 0.0
        raw = self.base_s + self.per_seq_s * num_seqs + self.prefill_per_token_s * prefill_tokens
        return raw * self.speed_factor


@dataclass
class Batch:
    now: float
    work: list[tuple[SimRequest, int]] = field(default_factory=list)  # (request, tokens scheduled)
    prefill_tokens: int = 0  # tokens computed as prefill (cache hits excluded)
    decode_tokens: int = 0
    preempted: list[SimRequest] = field(default_factory=list)
    newly_scheduled: list[SimRequest] = field(default_factory=list)
    prefix_queries: int = 0
    prefix_hits: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass
class StepOutcome:
    sampled: list[SimRequest] = field(default_factory=list)  # requests that got a new token
    first_tokens: list[SimRequest] = field(default_factory=list)
    inter_token_gaps: list[float] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)


class _PrefixCache:
    """Chained block hashes of recently computed prompts, LRU-bounded by the cache's block count."""

    def __init__(self, capacity_blocks: int) -> None:
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_blocks

    def hit_blocks(self, hashes: tuple[int, ...]) -> int:
        hits = 0
        for h in hashes:
            if h not in self._lru:
                break
            self._lru.move_to_end(h)
            hits += 1
        return hits

    def insert(self, hashes: tuple[int, ...]) -> None:
        for h in hashes:
            self._lru[h] = None
            self._lru.move_to_end(h)
        while len(self._lru) > self._capacity:
            self._lru.popitem(last=False)


class Scheduler:
    def __init__(
        self,
        num_gpu_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        step_model: StepModel | None = None,
        enable_prefix_caching: bool = True,
    ) -> None:
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.step_model = step_model or StepModel()
        self.free_blocks = num_gpu_blocks
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.prefix_cache = _PrefixCache(num_gpu_blocks) if enable_prefix_caching else None
        self._by_id: dict[str, SimRequest] = {}
        self.total_preemptions = 0

    # --- state -----------------------------------------------------------------------------------
    @property
    def kv_usage(self) -> float:
        return 1.0 - self.free_blocks / self.num_gpu_blocks

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def can_ever_fit(self, prompt_tokens: int) -> bool:
        return self.blocks_for(prompt_tokens + 1) <= self.num_gpu_blocks

    # --- requests --------------------------------------------------------------------------------
    def add(self, request: SimRequest) -> None:
        if not self.can_ever_fit(request.prompt_tokens):
            raise ValueError(
                f"prompt of {request.prompt_tokens} tokens needs more KV blocks than the cache has "
                f"({self.num_gpu_blocks} x {self.block_size})"
            )
        self._by_id[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str, now: float) -> SimRequest | None:
        """Remove a request (client went away). Returns it, finished with reason ``abort``."""
        req = self._by_id.pop(request_id, None)
        if req is None or req.phase is Phase.FINISHED:
            return None
        if req.phase is Phase.RUNNING:
            self.running.remove(req)
            self._free(req)
        else:
            self.waiting.remove(req)
        req.phase = Phase.FINISHED
        req.finished_reason = "abort"
        req.finished_at = now
        return req

    def _free(self, req: SimRequest) -> None:
        self.free_blocks += req.blocks
        req.blocks = 0

    def _grow(self, req: SimRequest, new_tokens: int) -> bool:
        need = self.blocks_for(req.computed + new_tokens) - req.blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        req.blocks += need
        return True

    def _preempt(self, victim: SimRequest, batch: Batch) -> None:
        self.running.remove(victim)
        self._free(victim)
        victim.computed = 0
        victim.phase = Phase.WAITING
        victim.num_preemptions += 1
        self.total_preemptions += 1
        self.waiting.appendleft(victim)
        batch.preempted.append(victim)

    # --- one engine step -------------------------------------------------------------------------
    def schedule(self, now: float) -> Batch:
        batch = Batch(now=now)
        budget = self.max_num_batched_tokens
        scheduled: set[int] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.pending, budget)
            while not self._grow(req, n):
                # Out of blocks: preempt the most recently admitted request that is not yet in this
                # batch; if that is the request itself, it yields and waits.
                victim = self.running[-1]
                if id(victim) in scheduled:
                    victim = req
                self._preempt(victim, batch)
                if victim is req:
                    break
            if req.phase is not Phase.RUNNING:
                continue  # preempted itself; self.running shifted left, i stays
            budget -= self._add_work(batch, scheduled, req, n)
            i += 1

        # Admission (FIFO); nothing is admitted in a step that had to preempt.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not batch.preempted:
            req = self.waiting[0]
            fresh = req.num_preemptions == 0 and req.first_scheduled is None
            cached = 0
            if fresh and self.prefix_cache is not None and req.prefix_hashes:
                # Never a full hit: the last prompt token is always computed (as vLLM does).
                cached = min(
                    self.prefix_cache.hit_blocks(req.prefix_hashes) * self.block_size,
                    req.prompt_tokens - 1,
                )
            if self.blocks_for(req.total_len + 1) > self.free_blocks:
                break  # head-of-line: the oldest request waits for blocks, so do the rest
            self.waiting.popleft()
            if fresh:
                batch.prefix_queries += req.prompt_tokens
                batch.prefix_hits += cached
                req.cached_tokens = cached
                req.computed = cached
            req.blocks = self.blocks_for(req.total_len + 1)
            self.free_blocks -= req.blocks
            req.phase = Phase.RUNNING
            if req.first_scheduled is None:
                req.first_scheduled = now
                batch.newly_scheduled.append(req)
            self.running.append(req)
            budget -= self._add_work(batch, scheduled, req, min(req.pending, budget))
        return batch

    @staticmethod
    def _add_work(batch: Batch, scheduled: set[int], req: SimRequest, n: int) -> int:
        batch.work.append((req, n))
        scheduled.add(id(req))
        if req.pending > 1:
            batch.prefill_tokens += n
        else:
            batch.decode_tokens += n
        return n

    def step_time(self, batch: Batch) -> float:
        return self.step_model.duration(len(batch.work), batch.prefill_tokens)

    def finish_step(self, batch: Batch, now: float) -> StepOutcome:
        out = StepOutcome()
        for req, n in batch.work:
            if req.phase is not Phase.RUNNING:
                continue  # aborted while the step ran
            req.computed += n
            if req.computed < req.total_len:
                continue  # prefill chunk not done yet
            # Every known token has KV: the model samples the next one.
            req.output_tokens += 1
            out.sampled.append(req)
            if req.first_token is None:
                req.first_token = now
                out.first_tokens.append(req)
            elif req.last_token is not None:
                out.inter_token_gaps.append(now - req.last_token)
            req.last_token = now
            if req.output_tokens >= req.eos_after or req.output_tokens >= req.max_tokens:
                req.finished_reason = "stop" if req.output_tokens >= req.eos_after else "length"
                req.phase = Phase.FINISHED
                req.finished_at = now
                out.finished.append(req)
        if out.finished:
            # One pass, not list.remove per finished request: a step where most of the batch finishes
            # (equal-length requests admitted together) would cost O(finished x running).
            self.running = [r for r in self.running if r.phase is Phase.RUNNING]
        for req in out.finished:
            self._free(req)
            self._by_id.pop(req.request_id, None)
            if self.prefix_cache is not None:
                self.prefix_cache.insert(req.prefix_hashes)
        return out
