"""The continuous-batching scheduler on a virtual clock: deterministic, no sleeping."""

from observer.simulator.scheduler import Phase, Scheduler, SimRequest, StepModel


def req(rid, prompt, out, arrival=0.0, hashes=()):
    return SimRequest(
        rid, prompt_tokens=prompt, max_tokens=out, eos_after=10**9, arrival=arrival, prefix_hashes=hashes
    )


def run(sched, now=0.0, until=lambda s: not s.has_work, max_steps=100_000, arrivals=()):
    """Step the scheduler on a virtual clock; ``arrivals`` is [(time, request)]."""
    pending = sorted(arrivals, key=lambda a: a[0])
    finished, samples = [], []
    for _ in range(max_steps):
        while pending and pending[0][0] <= now:
            sched.add(pending.pop(0)[1])
        if until(sched) and not pending:
            break
        batch = sched.schedule(now)
        dt = sched.step_time(batch) or 0.001
        out = sched.finish_step(batch, now + dt)
        now += dt
        finished += out.finished
        samples.append((now, len(sched.running), len(sched.waiting), sched.kv_usage))
    return now, finished, samples


def test_single_request_prefill_then_one_token_per_step():
    s = Scheduler(
        num_gpu_blocks=100,
        block_size=16,
        max_num_seqs=8,
        max_num_batched_tokens=64,
        step_model=StepModel(speed_factor=1.0),
    )
    r = req("a", prompt=100, out=5)
    s.add(r)
    steps = 0
    while s.has_work:
        b = s.schedule(steps)
        s.finish_step(b, steps + 1)
        steps += 1
    # 100 prompt tokens in 64-token chunks = 2 prefill steps (the second samples token 1), then 4 decodes.
    assert steps == 6
    assert r.finished_reason == "length" and r.output_tokens == 5
    assert r.first_token == 2 and r.last_token == 6
    assert s.free_blocks == 100


def test_admission_is_fifo_and_waits_for_blocks():
    s = Scheduler(num_gpu_blocks=10, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096)
    big, small = req("big", 120, 10), req("small", 10, 10)  # big needs 8 blocks
    first = req("first", 40, 10)  # 3 blocks
    s.add(first)
    s.add(big)
    s.add(small)
    s.schedule(0)
    # first fits (3 blocks); big needs 8 of the 7 left: it waits, and small waits behind it (FIFO).
    assert [r.request_id for r in s.running] == ["first"]
    assert [r.request_id for r in s.waiting] == ["big", "small"]


def test_eos_stop_versus_length():
    s = Scheduler(num_gpu_blocks=100, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096)
    a = SimRequest("a", 10, max_tokens=50, eos_after=3, arrival=0)
    b = SimRequest("b", 10, max_tokens=2, eos_after=30, arrival=0)
    s.add(a)
    s.add(b)
    run(s)
    assert (a.finished_reason, a.output_tokens) == ("stop", 3)
    assert (b.finished_reason, b.output_tokens) == ("length", 2)


def test_preemption_when_kv_runs_out_mid_decode_and_recompute():
    # 6 blocks x 4 tokens = 24 tokens. Two requests of 8-token prompts admitted (3 blocks each with
    # the +1 slot); decoding grows both until the cache is exhausted -> the later one is preempted.
    s = Scheduler(num_gpu_blocks=6, block_size=4, max_num_seqs=4, max_num_batched_tokens=64)
    a, b = req("a", 8, 10), req("b", 8, 10)
    s.add(a)
    s.add(b)
    _, finished, _ = run(s)
    assert s.total_preemptions >= 1
    assert b.num_preemptions >= 1 and a.num_preemptions == 0
    assert {r.request_id for r in finished} == {"a", "b"}
    assert a.output_tokens == b.output_tokens == 10  # recomputed, not lost
    assert s.free_blocks == 6


def test_abort_frees_blocks_and_removes_from_queues():
    s = Scheduler(num_gpu_blocks=10, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096)
    a, b = req("a", 100, 10), req("b", 100, 10)
    s.add(a)
    s.add(b)
    s.schedule(0)
    assert a.phase is Phase.RUNNING and b.phase is Phase.WAITING
    assert s.abort("a", 1.0).finished_reason == "abort"
    assert s.abort("b", 1.0).finished_reason == "abort"
    assert s.free_blocks == 10 and not s.has_work
    assert s.abort("a", 2.0) is None


def test_prefix_cache_hits_skip_prefill():
    s = Scheduler(num_gpu_blocks=100, block_size=16, max_num_seqs=8, max_num_batched_tokens=4096)
    hashes = (1, 2, 3)
    first = req("a", 60, 2, hashes=hashes)
    s.add(first)
    b1 = s.schedule(0)
    assert (b1.prefix_queries, b1.prefix_hits, b1.prefill_tokens) == (60, 0, 60)
    run(s)
    second = req("b", 60, 2, hashes=(1, 2, 9))
    s.add(second)
    b2 = s.schedule(10)
    assert (b2.prefix_queries, b2.prefix_hits) == (60, 32)  # two shared full blocks
    assert b2.prefill_tokens == 28


def test_step_time_grows_with_batch_and_prefill_and_zero_speed_is_free():
    m = StepModel(base_s=0.005, per_seq_s=0.001, prefill_per_token_s=0.0001, speed_factor=1)
    assert m.duration(10, 0) > m.duration(1, 0)
    assert m.duration(1, 1000) > m.duration(1, 0)
    assert StepModel(speed_factor=0).duration(100, 5000) == 0


def _ttft_p95(finished):
    ttfts = sorted(r.first_token - r.arrival for r in finished)
    return ttfts[int(0.95 * (len(ttfts) - 1))]


def test_overload_produces_the_critical_situation_by_itself():
    """Arrivals beyond capacity: KV pinned near 100%, queue climbing, TTFT far above the light case."""

    def scenario(interval, n=300):
        s = Scheduler(
            num_gpu_blocks=256,
            block_size=16,
            max_num_seqs=128,
            max_num_batched_tokens=2048,
            step_model=StepModel(base_s=0.005, per_seq_s=0.0002, prefill_per_token_s=0.00002),
        )
        arrivals = [(i * interval, req(f"r{i}", 300, 200, arrival=i * interval)) for i in range(n)]
        _, finished, samples = run(s, arrivals=arrivals)
        return finished, samples

    light, light_samples = scenario(interval=0.5)
    heavy, heavy_samples = scenario(interval=0.01)
    assert max(w for _, _, w, _ in light_samples) == 0
    assert max(kv for *_, kv in light_samples) < 0.5
    assert max(kv for *_, kv in heavy_samples) >= 0.95
    waiting = [w for _, _, w, _ in heavy_samples]
    assert max(waiting) > 50
    assert _ttft_p95(heavy) > 5 * _ttft_p95(light)
    assert len(heavy) == len(light) == 300  # everything finishes eventually; nothing is lost
