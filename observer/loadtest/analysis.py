"""From per-request records to a report point: percentiles, throughput, SLO checks, diagnosis, cost."""

from __future__ import annotations

from typing import Any

from observer.analytics.cost import public_api_cost, self_hosted_cost
from observer.config import CostSettings, LoadtestSettings, SloSettings
from observer.load.generator import percentile
from observer.loadtest.driver import Record, RunResult

_CUT = ("run_ended", "timeout")  # cut by the clock, not refused by the server
SLO_KEYS = ("ttft_p95", "ttft_p99", "tpot_p95", "itl_p95", "e2e_p95", "e2e_p99", "success")


def default_slo(slo: SloSettings, loadtest: LoadtestSettings) -> dict[str, float]:
    """The SLO a run is judged by when ``--slo`` says nothing: the alerting SLO, then overrides.

    TTFT: ``ttft_objective`` (0.99) of requests within ``ttft_target_s`` is a p99 target; ITL p95
    is the dashboards' target; success is the error objective's share.
    """
    out = {"ttft_p99": slo.ttft_target_s, "itl_p95": slo.itl_p95_target_s, "success": slo.error_objective}
    for key, value in loadtest.slo.items():
        if key not in SLO_KEYS:
            raise ValueError(f"loadtest.slo: unknown key {key!r} (known: {', '.join(SLO_KEYS)})")
        out[key] = float(value)
    return out


def parse_slo(text: str | None, defaults: dict[str, float]) -> dict[str, float]:
    """``ttft_p95=0.5,success=0.99`` over the defaults; a key given on the command line replaces
    its default, and the others still apply."""
    out = dict(defaults)
    if not text:
        return out
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"--slo: {part!r} is not KEY=VALUE with KEY one of {', '.join(SLO_KEYS)}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--slo: {key} needs a number, got {raw!r}") from None
        if value <= 0 or (key == "success" and value > 1):
            raise ValueError(f"--slo: {key}={raw} out of range (seconds > 0; success in (0, 1])")
        out[key] = value
    return out


def _pcts(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": _round(percentile(values, q)) for q in (50, 95, 99)}


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(v, digits)


def summarize(run: RunResult, records: list[Record] | None = None) -> dict[str, Any]:
    """One load level's figures (the report's top level, or one sweep point)."""
    records = run.records if records is None else records
    ok = [r for r in records if r.outcome == "success"]
    itl: list[float] = []
    for r in records:
        itl.extend(r.itl)
    errors: dict[str, int] = {}
    scenarios: dict[str, int] = {}
    cuts: dict[str, int] = {}
    details: dict[str, str] = {}  # one server message per error kind
    for r in records:
        scenarios[r.scenario] = scenarios.get(r.scenario, 0) + 1
        if r.outcome != "success" and r.error:
            into = errors if r.outcome == "error" else cuts
            into[r.error] = into.get(r.error, 0) + 1
            if r.detail and r.error not in details:
                details[r.error] = r.detail
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    # Served throughput: completions over the time from the first send to the last completion
    # (at least the sending window), so a run bounded by --max-requests is not credited with
    # answers that arrived during the drain.
    last_done = max((r.end for r in ok if r.end is not None), default=0.0) - run.began
    window = max(run.send_window, last_done, 1e-9)
    lags = [r.lag for r in records]
    cut_at_end = sum(r.error == "run_ended" for r in records)
    judged = len(records) - cut_at_end
    counts = {
        "sent": len(records),
        "success": len(ok),
        "error": sum(r.outcome == "error" for r in records),
        "incomplete": sum(r.outcome == "incomplete" for r in records),
        "cut_at_end": cut_at_end,
    }
    return {
        "mode": run.mode,
        "level": run.level,
        "offered_requests_per_s": round(len(records) / max(run.send_window, 1e-9), 4),
        "duration_s": round(run.send_window, 3),
        "stopped_early": run.stopped_early,
        # TTFT and ITL of every request that got that far: a stream cut later still had its first
        # token late, and leaving it out would hide the queue exactly when it matters.
        # One cut while still waiting for its first token had a TTFT of at least its age: counted
        # at that lower bound rather than dropped (dropping it would flatter an overloaded server).
        "ttft": _pcts(
            [
                r.ttft if r.ttft is not None else r.end - r.start
                for r in records
                if r.ttft is not None or (r.error in _CUT and r.end is not None)
            ]
        ),
        "tpot": _pcts([r.tpot for r in ok if r.tpot is not None]),
        "itl": _pcts(itl),
        "e2e": _pcts([r.e2e for r in ok if r.e2e is not None]),
        "throughput": {
            "requests_per_s": round(len(ok) / window, 4),
            "output_tokens_per_s": round(out_tokens / window, 3),
            "total_tokens_per_s": round((out_tokens + in_tokens) / window, 3),
        },
        "tokens": {"input": in_tokens, "output": out_tokens},
        "counts": counts,
        # Requests still running when the run ended were cut by this tool, not failed by the server:
        # they count as incomplete but not against the success ratio (their late first token still
        # counts against TTFT above, so a jammed queue fails the latency SLO instead).
        "success_ratio": round(len(ok) / judged, 6) if judged else None,
        "errors": errors,  # why requests failed before their stream started
        "incomplete_reasons": cuts,  # why started streams were cut
        "error_messages": details,
        "scenarios": scenarios,
        "driver": {
            "send_lag_p50_s": _round(percentile(lags, 50)),
            "send_lag_p99_s": _round(percentile(lags, 99)),
        },
    }


def actual(point: dict[str, Any], key: str) -> float | None:
    if key == "success":
        return point.get("success_ratio")
    metric, _, q = key.partition("_")
    return (point.get(metric) or {}).get(q)


def check_slo(point: dict[str, Any], slo: dict[str, float]) -> dict[str, Any]:
    """Every key's verdict. A latency with no successful request to measure fails: nothing was served."""
    checks = []
    for key in SLO_KEYS:
        if key not in slo:
            continue
        target = slo[key]
        value = actual(point, key)
        if value is None:
            ok = False
        elif key == "success":
            ok = value >= target
        else:
            ok = value <= target
        checks.append({"key": key, "target": target, "actual": value, "pass": ok})
    return {"pass": all(c["pass"] for c in checks), "checks": checks}


def early_stop_rule(slo: dict[str, float], share: float, min_requests: int):
    """A ``should_stop`` for the driver: stop a sweep step once the SLO is clearly broken.

    Clearly broken = at least ``share`` of the step's requests already missed a latency target that
    the SLO bounds at p95/p99 (or failed), counting requests still waiting for a first token past
    the TTFT target, so a queue that explodes is caught before its requests finish.
    """
    ttft_target = min((slo[k] for k in ("ttft_p95", "ttft_p99") if k in slo), default=None)
    e2e_target = min((slo[k] for k in ("e2e_p95", "e2e_p99") if k in slo), default=None)

    def should_stop(records: list[Record], now: float) -> str | None:
        if len(records) < min_requests:
            return None
        bad = 0
        for r in records:
            age = now - r.start
            if r.outcome is None:
                late_first = ttft_target is not None and r.ttft is None and age > ttft_target * 2
                late_end = e2e_target is not None and age > e2e_target * 2
                bad += late_first or late_end
            elif r.outcome != "success":
                bad += 1
            else:
                late_first = ttft_target is not None and (r.ttft or 0) > ttft_target
                late_end = e2e_target is not None and (r.e2e or 0) > e2e_target
                bad += late_first or late_end
        if bad >= share * len(records):
            return f"{bad} of {len(records)} requests already missed the SLO"
        return None

    return should_stop


def diagnose(
    point: dict[str, Any],
    slo_result: dict[str, Any],
    server: dict[str, Any] | None,
    slo_settings: SloSettings,
    baseline: dict[str, Any] | None = None,
    growth: float = 1.5,
) -> list[str]:
    """Short sentences naming the bottleneck, from the client figures and the engine's own metrics.

    The rules (how operators read vLLM): KV cache full -> TTFT explodes (requests wait for blocks);
    E2E up with TPOT flat -> queueing or long prompts; TPOT up too -> decode itself is slow (GPU
    compute, KV cache or batch size is the limit). "Up" and "flat" are against the lightest load
    level when a sweep has one, else against the SLO's own targets.
    """
    # A check that failed because nothing was measured says nothing about the bottleneck.
    failed = {c["key"] for c in slo_result["checks"] if not c["pass"] and c.get("actual") is not None}
    unmeasured = sorted(c["key"] for c in slo_result["checks"] if c.get("actual") is None)
    out: list[str] = []
    if unmeasured:
        out.append(
            f"{', '.join(unmeasured)} could not be measured, so the SLO cannot hold: inter-token latency "
            "needs two or more streamed chunks per request, and an engine that sends a short response in "
            "one chunk (real vLLM can, under load) gives none; use longer outputs or drop the check."
        )
    ttft95 = (point.get("ttft") or {}).get("p95")
    e2e95 = (point.get("e2e") or {}).get("p95")
    tpot95 = (point.get("tpot") or {}).get("p95")
    ttft_failed = bool(failed & {"ttft_p95", "ttft_p99"})
    e2e_failed = bool(failed & {"e2e_p95", "e2e_p99"})
    tpot_failed = bool(failed & {"tpot_p95", "itl_p95"})

    def grew(metric: str) -> bool | None:
        if baseline is None:
            return None
        base = (baseline.get(metric) or {}).get("p95")
        now = (point.get(metric) or {}).get("p95")
        if not base or now is None:
            return None
        return now > base * growth

    tpot_up = grew("tpot")
    tpot_up = tpot_failed if tpot_up is None else tpot_up or tpot_failed
    e2e_up = grew("e2e")
    e2e_up = e2e_failed if e2e_up is None else e2e_up or e2e_failed

    if server:
        kv_peak = server.get("kv_cache_usage_peak")
        waiting = server.get("requests_waiting_peak")
        preempt = server.get("preemptions") or 0
        kv_full = kv_peak is not None and kv_peak >= slo_settings.kv_cache_warning_ratio
        if kv_full and (ttft_failed or e2e_failed or preempt):
            ttft_txt = f"TTFT p95 {ttft95:.2f}s" if ttft95 is not None else "TTFT"
            out.append(
                f"KV cache full (peak {kv_peak:.0%}): new requests wait for free KV blocks and {ttft_txt} "
                "explodes; more KV memory (GPU memory utilization, a smaller model or quantized KV), "
                "shorter contexts or fewer concurrent requests move the limit."
            )
        if preempt:
            out.append(
                f"{preempt:.0f} preemptions: the KV cache could not hold the running batch, so requests "
                "were evicted and recomputed (wasted GPU work, long tails)."
            )
        if waiting is not None and waiting >= slo_settings.queue_waiting_threshold and not kv_full:
            out.append(
                f"Up to {waiting:.0f} requests waited in the engine queue with KV cache at "
                f"{(kv_peak or 0):.0%}: the batch is at max_num_seqs or the token budget; arrivals "
                "exceed what one step can admit."
            )
    if (e2e_up or ttft_failed) and not tpot_up:
        share = (ttft95 / e2e95) if ttft95 is not None and e2e95 else None
        share_txt = f" (TTFT p95 is {share:.0%} of E2E p95)" if share is not None else ""
        queue = (server or {}).get("queue_time_mean_s")
        prefill = (server or {}).get("prefill_time_mean_s")
        if queue is not None and prefill is not None:
            cause = "queueing" if queue >= prefill else "prefill of long prompts"
            share_txt += f"; engine says mean queue {queue:.2f}s vs prefill {prefill:.2f}s, so {cause}"
        out.append(
            "Latency up with TPOT flat: time goes to waiting before the first token, i.e. queueing or "
            f"prefill of long prompts, not decoding{share_txt}."
        )
    if tpot_up:
        tpot_txt = f"TPOT p95 {tpot95 * 1000:.0f}ms" if tpot95 is not None else "TPOT"
        out.append(
            f"{tpot_txt} up too: each decode step is slow, so GPU compute, KV cache or batch size is the "
            "limit; fewer concurrent sequences or more GPUs, not a bigger queue, will help."
        )
    counts = point.get("counts") or {}
    failed = {k: v for k, v in (point.get("errors") or {}).items() if k != "run_ended"}
    if failed:
        top = sorted(failed.items(), key=lambda kv: -kv[1])[:3]
        messages = point.get("error_messages") or {}
        detail = ", ".join(f"{k} x{v}" + (f": {messages[k]}" if k in messages else "") for k, v in top)
        out.append(f"{sum(failed.values())} requests failed ({detail}).")
    server_cut = {k: v for k, v in (point.get("incomplete_reasons") or {}).items() if k != "run_ended"}
    if server_cut:
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(server_cut.items()))
        out.append(f"{sum(server_cut.values())} streams were cut after they started ({detail}).")
    if counts.get("cut_at_end"):
        out.append(
            f"{counts['cut_at_end']} requests were still unanswered when the run ended and were cut: the "
            "server did not catch up within loadtest.drain_s."
        )
    if not server and not slo_result["pass"]:
        out.append("Pass --metrics with the engine's /metrics URL to see the server-side cause.")
    if slo_result["pass"] and not out:
        kv = (server or {}).get("kv_cache_usage_peak")
        kv_txt = f"; KV cache peaked at {kv:.0%}" if kv is not None else ""
        out.append(f"Every SLO holds at this load{kv_txt}.")
    return out


def cost_at_capacity(
    cost: CostSettings, gpus: int, capacity: dict[str, Any], tokens: dict[str, int]
) -> dict[str, Any] | None:
    """Cost per million tokens when ``gpus`` GPUs serve the capacity's throughput around the clock,
    next to the public API's price for the same input/output mix."""
    total_per_s = capacity.get("total_tokens_per_s") or 0
    if total_per_s <= 0:
        return None
    # One owner of the cost formula (observer.analytics.cost): an hour of ``gpus`` GPUs at assumed draw.
    gpu_cost, _kwh, energy_cost = self_hosted_cost(cost.model_copy(update={"gpus": gpus}), 1.0, None)
    hourly = gpu_cost + energy_cost
    million_per_hour = total_per_s * 3600 / 1e6
    self_hosted = hourly / million_per_hour
    inp, outp = tokens.get("input", 0), tokens.get("output", 0)
    public = public_api_cost(cost, inp, outp) / ((inp + outp) / 1e6) if inp + outp else None
    return {
        "currency": cost.currency,
        "gpus": gpus,
        "gpu_hour_cost": round(cost.gpu_hour_cost, 4),
        "cost_per_hour": round(hourly, 4),
        "self_hosted": round(self_hosted, 4),
        "public_api": round(public, 4) if public is not None else None,
        "public_api_model": cost.reference.model,
        "input_share": round(inp / (inp + outp), 4) if inp + outp else None,
        "energy": "assumed",
    }
