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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
    detail: str | None = None  # the server's error message for an HTTP error (never request content)


@dataclass
class RunResult:
    records: list[Record]
    started: float  # perf_counter at the run's start (time 0 of the records)
    elapsed: float  # sending window plus drain
    send_window: float
    began: float = 0.0  # the run's start, seconds from time 0 of the records
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
        parts = urlsplit(self.target)
        self.path = parts.path.rstrip("/") + "/v1/chat/completions"
        # Plain http goes through the lean client below; https (and a client given by the caller)
        # through httpx.
        self._raw: tuple[str, int, bytes] | None = None
        if parts.scheme == "http" and client is None:
            host = parts.hostname or "127.0.0.1"
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                "Accept: text/event-stream\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            ).encode()
            self._raw = (host, parts.port or 80, head)
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
        if "tools" in body and self.profile.tool_choice != "omit":
            body["tool_choice"] = self.profile.tool_choice
        return scenario.name, json.dumps(body, separators=(",", ":")).encode()

    async def _send(self, rec: Record, payload: bytes, t0: float) -> None:
        """Stream one request into ``rec``; never raises (except cancellation, recorded first)."""
        perf = time.perf_counter
        sent_at = perf()
        rec.start = sent_at - t0
        state = _Stream(rec, sent_at)
        try:
            async with asyncio.timeout(self.request_timeout_s):
                if self._raw is not None:
                    resp = await _RawResponse.open(*self._raw, payload)
                    try:
                        await state.consume(resp.status, resp.body())
                    finally:
                        resp.close()
                else:
                    async with self.client.stream(
                        "POST",
                        self.target + "/v1/chat/completions",
                        content=payload,
                        headers={"content-type": "application/json"},
                    ) as resp:
                        await state.consume(resp.status_code, resp.aiter_raw())
        except TimeoutError:
            rec.outcome, rec.error = ("incomplete" if rec.started_stream else "error"), "timeout"
            return
        except (
            OSError,
            EOFError,
            asyncio.IncompleteReadError,
            httpx.HTTPError,
            ValueError,  # JSON or HTTP framing garbage
            UnicodeDecodeError,
        ) as exc:
            rec.outcome = "incomplete" if rec.started_stream else "error"
            rec.error = type(exc).__name__
            return
        except asyncio.CancelledError:
            rec.outcome, rec.error = ("incomplete" if rec.started_stream else "error"), "run_ended"
            raise
        finally:
            rec.end = perf() - t0
        state.finish()

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
            rec = Record(scenario=scenario, start=time.perf_counter() - t0, lag=lag)
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
            began=start - t0,
            stopped_early=stop_reason,
            mode="rate" if rate is not None else "concurrency",
            level=float(rate if rate is not None else concurrency or 0),
        )


class _Stream:
    """SSE events of one chat completion stream -> the record's timings and token counts."""

    __slots__ = ("chunks", "finished", "last", "rec", "sent_at")

    def __init__(self, rec: Record, sent_at: float) -> None:
        self.rec = rec
        self.sent_at = sent_at
        self.last = sent_at
        self.chunks = 0
        self.finished = False

    async def consume(self, status: int, body: AsyncIterator[bytes]) -> None:
        rec = self.rec
        if status != 200:
            raw = b""
            async for data in body:
                raw += data[: 4096 - len(raw)]
            rec.outcome, rec.error = "error", f"http_{status}"
            rec.detail = _error_message(raw)
            return
        rec.started_stream = True
        perf = time.perf_counter
        loads = json.loads
        itl = rec.itl
        buf = b""
        async for data in body:
            now = perf()
            buf += data
            if b"\n\n" not in buf:
                continue
            *events, buf = buf.split(b"\n\n")
            got_token = False
            for event in events:
                if not event.startswith(_DATA):
                    continue
                payload = event[6:]
                if payload == _DONE:
                    if self.finished:
                        rec.outcome = "success"
                    continue
                msg = loads(payload)
                usage = msg.get("usage")
                if usage:
                    rec.prompt_tokens = usage.get("prompt_tokens") or 0
                    rec.output_tokens = usage.get("completion_tokens") or 0
                for choice in msg.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                        got_token = True
                        self.chunks += 1
                    if choice.get("finish_reason"):
                        self.finished = True
            if got_token:
                if rec.ttft is None:
                    rec.ttft = now - self.sent_at
                else:
                    itl.append(now - self.last)
                self.last = now

    def finish(self) -> None:
        rec = self.rec
        if rec.outcome == "error":
            return
        if rec.outcome != "success":
            rec.outcome, rec.error = "incomplete", "stream_ended_early"
            return
        rec.output_tokens = rec.output_tokens or self.chunks
        if rec.ttft is None:  # finished without a single token: count it done at the end
            rec.ttft = self.last - self.sent_at
        rec.e2e = self.last - self.sent_at
        if rec.output_tokens > 1:
            rec.tpot = (rec.e2e - rec.ttft) / (rec.output_tokens - 1)


def _error_message(raw: bytes) -> str:
    """OpenAI's ``{"error": {"message": ...}}`` (or the body's start), shortened for the report."""
    try:
        body = json.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        text = err.get("message") if isinstance(err, dict) else (err or body.get("detail") or raw.decode())
    except (ValueError, AttributeError):
        text = raw.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:197] + "..."


class _RawResponse:
    """A minimal HTTP/1.1 client for plain-http targets: one connection per request, no pool.

    httpx's pool does work per open connection on every response event, so its CPU per token grows
    with the number of open streams (measured in benchmarks/simulator.py); at hundreds of requests
    per second that would be the driver's bottleneck rather than the server's. This reads the
    response with a few buffered reads and decodes chunked transfer encoding itself.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.chunked = False
        self.length: int | None = None

    @classmethod
    async def open(cls, host: str, port: int, head: bytes, payload: bytes) -> _RawResponse:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        self = cls(reader, writer)
        try:
            writer.write(head % len(payload) + payload)
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
            self.status = int(parts[1])
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"content-length":
                    self.length = int(value.strip())
        except BaseException:
            self.close()
            raise
        return self

    async def body(self) -> AsyncIterator[bytes]:
        reader = self.reader
        if not self.chunked:
            remaining = self.length
            while remaining is None or remaining > 0:
                data = await reader.read(65536 if remaining is None else min(65536, remaining))
                if not data:
                    if remaining:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    return
                if remaining is not None:
                    remaining -= len(data)
                yield data
            return
        buf = b""
        need = -1  # bytes left in the current chunk; -1: a size line comes next
        while True:
            data = await reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(buf, None)
            buf += data
            out = []
            pos = 0
            while True:
                if need > 0:
                    take = min(need, len(buf) - pos)
                    out.append(buf[pos : pos + take])
                    pos += take
                    need -= take
                    if need:
                        break
                    need = -2  # the chunk's trailing CRLF
                if need == -2:
                    if len(buf) - pos < 2:
                        break
                    pos += 2
                    need = -1
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:
                    if out:
                        yield b"".join(out)
                    return
                need = size
            buf = buf[pos:]
            if out:
                yield b"".join(out)

    def close(self) -> None:
        self.writer.close()
