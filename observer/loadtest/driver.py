"""Open-loop (Poisson) and closed-loop (concurrency) drivers over streamed chat completions.

Measured like ``vllm bench serve``: TTFT = send -> first token chunk; ITL = gaps between token
chunks; TPOT per request = (E2E - TTFT) / (output tokens - 1); E2E = send -> last chunk. Output
tokens come from the server's ``usage`` when it sends one, else from the chunk count.

Outcomes: ``success`` (finish_reason then ``[DONE]``), ``error`` (HTTP error, refused connection,
no response within the timeout), ``incomplete`` (the stream started but was cut: the server
disconnected, the request timed out mid-stream, or the run ended while it streamed).

The open-loop driver sends on a precomputed Poisson schedule and never waits for answers, so a
slow server sees the load a real population would send (no coordinated omission); how late each
send was against its schedule is recorded, which is the driver's own accuracy.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from observer.load.generator import resolve_model
from observer.loadtest.profiles import Profile, build_messages

__all__ = ["Driver", "Record", "RunResult", "resolve_model"]

_DATA = b"data: "
_DONE = b"[DONE]"


@dataclass(slots=True)
class Record:
    """One request, as the client saw it. Times are seconds from the run's start (perf_counter)."""

    scenario: str
    start: float
    outcome: str | None = None  # None while in flight
    ttft: float | None = None
    e2e: float | None = None
    tpot: float | None = None
    itl: array = field(default_factory=lambda: array("d"))
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    started_stream: bool = False
    lag: float = 0.0  # how late the send was against the open-loop schedule
    end: float | None = None  # when it finished or was cut


@dataclass
class RunResult:
    records: list[Record]
    started: float  # perf_counter at the run's start (time 0 of the records)
    elapsed: float  # sending window plus drain
    send_window: float
    stopped_early: str | None = None
    mode: str = "rate"
    level: float = 0.0  # offered rate (req/s) or concurrency


class Driver:
    """Sends a profile's requests to one OpenAI-compatible target; reusable across runs (a sweep)."""

    def __init__(
        self,
        target: str,
        model: str,
        profile: Profile,
        request_timeout_s: float = 300.0,
        seed: int = 1,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.target = target.rstrip("/")
        self.model = model
        self.profile = profile
        self.request_timeout_s = request_timeout_s
        self.rng = random.Random(seed)
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            base_url=self.target,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=2048),
            timeout=httpx.Timeout(connect=10.0, read=request_timeout_s, write=30.0, pool=None),
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    def _body(self) -> tuple[str, bytes]:
        scenario = self.profile.pick(self.rng)
        body, _, _ = build_messages(scenario, self.rng)
        body["model"] = self.model
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if self.profile.ignore_eos:
            body["ignore_eos"] = True
        if self.profile.temperature is not None:
            body["temperature"] = self.profile.temperature
        return scenario.name, json.dumps(body, separators=(",", ":")).encode()

    async def _send(self, rec: Record, payload: bytes, t0: float) -> None:
        """Stream one request into ``rec``; never raises (except cancellation, recorded first)."""
        perf = time.perf_counter
        sent_at = perf()
        rec.start = sent_at - t0
        last = sent_at
        chunks = 0
        finished = False
        itl = rec.itl
        try:
            async with asyncio.timeout(self.request_timeout_s):
                async with self.client.stream(
                    "POST",
                    "/v1/chat/completions",
                    content=payload,
                    headers={"content-type": "application/json"},
                ) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        rec.outcome, rec.error = "error", f"http_{resp.status_code}"
                        return
                    rec.started_stream = True
                    buf = b""
                    async for data in resp.aiter_raw():
                        now = perf()
                        buf += data
                        if b"\n\n" not in buf:
                            continue
                        *events, buf = buf.split(b"\n\n")
                        got_token = False
                        for event in events:
                            if not event.startswith(_DATA):
                                continue
                            payload_bytes = event[6:]
                            if payload_bytes == _DONE:
                                if finished:
                                    rec.outcome = "success"
                                continue
                            msg = json.loads(payload_bytes)
                            usage = msg.get("usage")
                            if usage:
                                rec.prompt_tokens = usage.get("prompt_tokens") or 0
                                rec.output_tokens = usage.get("completion_tokens") or 0
                            for choice in msg.get("choices") or ():
                                delta = choice.get("delta") or {}
                                if (
                                    delta.get("content")
                                    or delta.get("reasoning_content")
                                    or delta.get("tool_calls")
                                ):
                                    got_token = True
                                    chunks += 1
                                if choice.get("finish_reason"):
                                    finished = True
                        if got_token:
                            if rec.ttft is None:
                                rec.ttft = now - sent_at
                            else:
                                itl.append(now - last)
                            last = now
        except TimeoutError:
            rec.outcome, rec.error = ("incomplete" if rec.started_stream else "error"), "timeout"
            return
        except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            rec.outcome = "incomplete" if rec.started_stream else "error"
            rec.error = type(exc).__name__
            return
        except asyncio.CancelledError:
            rec.outcome, rec.error = ("incomplete" if rec.started_stream else "error"), "run_ended"
            raise
        finally:
            rec.end = perf() - t0
        if rec.outcome != "success":
            rec.outcome, rec.error = "incomplete", "stream_ended_early"
            return
        rec.output_tokens = rec.output_tokens or chunks
        if rec.ttft is None:  # finished without a single token (max_tokens=0-like): count it done
            rec.ttft = last - sent_at
        rec.e2e = last - sent_at
        if rec.output_tokens > 1:
            rec.tpot = (rec.e2e - rec.ttft) / (rec.output_tokens - 1)

    async def run(
        self,
        *,
        rate: float | None = None,
        concurrency: int | None = None,
        duration: float,
        max_requests: int | None = None,
        drain_s: float = 30.0,
        should_stop: Callable[[list[Record], float], str | None] | None = None,
        on_tick: Callable[[float, int, int], Any] | None = None,
        t0: float | None = None,
    ) -> RunResult:
        """One load level: ``rate`` req/s (open loop) or ``concurrency`` workers (closed loop).

        Sends for ``duration`` seconds (or until ``max_requests``), then gives in-flight requests
        ``drain_s`` before cutting them. ``should_stop(records, now)`` is polled twice a second and
        ends the run early with its reason. ``t0`` (perf_counter) is time 0 of the records.
        """
        if (rate is None) == (concurrency is None):
            raise ValueError("exactly one of rate and concurrency")
        records: list[Record] = []
        tasks: set[asyncio.Task] = set()
        start = time.perf_counter()
        t0 = start if t0 is None else t0
        deadline = start + duration
        stop_reason: str | None = None
        stop = asyncio.Event()
        limit = max_requests if max_requests is not None else 1 << 62

        def launch(lag: float) -> asyncio.Task:
            scenario, payload = self._body()
            rec = Record(scenario=scenario, start=0.0, lag=lag)
            records.append(rec)
            task = asyncio.create_task(self._send(rec, payload, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task

        async def open_loop() -> None:
            rng = random.Random(self.rng.random())
            next_at = start
            sent = 0
            sleep = asyncio.sleep
            perf = time.perf_counter
            while sent < limit and not stop.is_set():
                next_at += rng.expovariate(rate)
                if next_at >= deadline:
                    break
                delay = next_at - perf()
                if delay > 0:
                    await sleep(delay)
                launch(max(0.0, perf() - next_at))
                sent += 1

        async def closed_loop() -> None:
            counter = iter(range(limit))

            async def worker() -> None:
                while not stop.is_set() and time.perf_counter() < deadline:
                    if next(counter, None) is None:
                        return
                    task = launch(0.0)
                    # Past the deadline the answer is left to the drain, not awaited here.
                    await asyncio.wait({task}, timeout=max(0.0, deadline - time.perf_counter()))

            await asyncio.gather(*(worker() for _ in range(concurrency or 1)))

        async def monitor() -> None:
            nonlocal stop_reason
            while not stop.is_set():
                await asyncio.sleep(0.5)
                now = time.perf_counter()
                if on_tick is not None:
                    done = sum(1 for r in records if r.outcome is not None)
                    on_tick(now - start, len(records), done)
                if should_stop is not None and stop_reason is None:
                    reason = should_stop(records, now - t0)
                    if reason:
                        stop_reason = reason
                        stop.set()

        mon = asyncio.create_task(monitor())
        sender = asyncio.create_task(open_loop() if rate is not None else closed_loop())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({sender, stopper}, return_when=asyncio.FIRST_COMPLETED)
        send_window = time.perf_counter() - start
        if stop.is_set():
            sender.cancel()
            for task in list(tasks):  # the SLO is already broken: don't wait for the queue to drain
                task.cancel()
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(sender, return_exceptions=True)
        stop.set()
        stopper.cancel()
        mon.cancel()
        await asyncio.gather(mon, stopper, return_exceptions=True)
        for rec in records:  # cancelled before its task ever ran
            if rec.outcome is None:
                rec.outcome, rec.error = "error", "run_ended"
        elapsed = time.perf_counter() - start
        return RunResult(
            records=records,
            started=t0,
            elapsed=elapsed,
            send_window=send_window,
            stopped_early=stop_reason,
            mode="rate" if rate is not None else "concurrency",
            level=float(rate if rate is not None else concurrency or 0),
        )
