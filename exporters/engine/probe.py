"""One probe: check the target, fetch its /metrics within the scrape timeout, normalize, render.

Every failure is an answer, not an exception: ``llm_engine_up 0`` with
``llm_engine_probe_error{reason}``, so a dead, slow or garbage-speaking engine shows up on the
dashboards and never breaks the exporter or the probes of other targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from dataclasses import dataclass

import httpx
from prometheus_client import PROCESS_COLLECTOR, CollectorRegistry

from exporters.engine.allowlist import AllowList, TargetRefused, parse_target
from exporters.engine.normalize import UnknownEngine, normalize, render_probe
from exporters.engine.parse import ParseError
from observer.catalog import ENGINE_EXPORTER_SELF, make_metric
from observer.config import EngineExporterSettings

# Leave Prometheus time to receive the answer, as blackbox_exporter's default timeout offset does.
TIMEOUT_OFFSET_S = 0.5
MIN_TIMEOUT_S = 0.1


class _ProbeFailed(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass
class ProbeResult:
    text: str
    up: bool
    reason: str | None
    duration_s: float


def _connect_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "refused"
        cause = cause.__cause__ or cause.__context__
    return "connect_error"


class Prober:
    def __init__(self, settings: EngineExporterSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.allow = AllowList(settings.allowed_targets, settings.allow_any_target)
        self.semaphore = asyncio.Semaphore(settings.max_concurrent_probes)
        self._in_flight: dict[tuple[str, str], asyncio.Future[ProbeResult]] = {}
        self.registry = registry or CollectorRegistry()
        if registry is None:
            self.registry.register(PROCESS_COLLECTOR)
        m = {s.name: make_metric(s, self.registry) for s in ENGINE_EXPORTER_SELF}
        self.m_probes = m["observer_engine_exporter_probes_total"]
        self.m_failures = m["observer_engine_exporter_probe_failures_total"]
        self.m_duration = m["observer_engine_exporter_probe_duration_seconds"]
        self.m_in_flight = m["observer_engine_exporter_probes_in_flight"]
        self.m_refused = m["observer_engine_exporter_targets_refused_total"]
        for result in ("success", "failure"):
            self.m_probes.labels(result=result)
        self.client = httpx.AsyncClient(
            follow_redirects=False,  # a redirect could point anywhere; the allow-list checked this URL
            headers={
                "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
                "User-Agent": "llm-observer-engine-exporter",
            },
            limits=httpx.Limits(max_connections=settings.max_concurrent_probes * 2),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def timeout_for(self, scrape_timeout_header: str | None) -> float:
        timeout = self.settings.default_timeout_s
        if scrape_timeout_header:
            with contextlib.suppress(ValueError):  # a malformed header falls back to the default
                timeout = min(timeout, float(scrape_timeout_header) - TIMEOUT_OFFSET_S)
        return max(timeout, MIN_TIMEOUT_S)

    async def check_target(self, raw_target: str) -> str:
        """The target's base URL, or TargetRefused with the reason (counted)."""
        try:
            target = parse_target(raw_target)
            await self.allow.check(target)
        except TargetRefused:
            self.m_refused.inc()
            raise
        return target.url

    async def probe(self, base_url: str, timeout_s: float, model: str = "") -> ProbeResult:
        """Probe a target. Probes of one target that overlap in time share one fetch (singleflight):
        HA Prometheus pairs and scrape bursts hit the engine once, and no answer is older than the
        probe that asked for it."""
        start = time.perf_counter()
        key = (base_url, model)
        shared = self._in_flight.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._probe_once(base_url, timeout_s, model))
            self._in_flight[key] = shared
            shared.add_done_callback(lambda _f: self._in_flight.pop(key, None))
        self.m_in_flight.inc()
        try:
            async with asyncio.timeout(timeout_s):
                result = await asyncio.shield(shared)
        except TimeoutError:
            result = self._failed("timeout", start)
        finally:
            self.m_in_flight.dec()
        self.m_probes.labels(result="success" if result.up else "failure").inc()
        if result.reason:
            self.m_failures.labels(reason=result.reason).inc()
        self.m_duration.observe(time.perf_counter() - start)
        return result

    async def _probe_once(self, base_url: str, timeout_s: float, model: str) -> ProbeResult:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with self.semaphore:
                    body = await self._fetch(base_url + self.settings.metrics_path)
            try:
                normalized = normalize(body, default_model=model)
            except ParseError as exc:
                raise _ProbeFailed("parse_error", str(exc)) from None
            except UnknownEngine as exc:
                raise _ProbeFailed("unknown_engine", str(exc)) from None
            duration = time.perf_counter() - start
            return ProbeResult(render_probe(normalized, True, duration), True, None, duration)
        except TimeoutError:
            return self._failed("timeout", start)
        except _ProbeFailed as exc:
            return self._failed(exc.reason, start)

    def _failed(self, reason: str, start: float) -> ProbeResult:
        duration = time.perf_counter() - start
        return ProbeResult(render_probe(None, False, duration, reason), False, reason, duration)

    async def _fetch(self, url: str) -> str:
        cap = self.settings.max_body_bytes
        try:
            async with self.client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise _ProbeFailed("http_status", f"HTTP {resp.status_code}")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    raise _ProbeFailed("body_too_large")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise _ProbeFailed("body_too_large")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.ConnectError as exc:
            raise _ProbeFailed(_connect_reason(exc)) from None
        except httpx.HTTPError:
            raise _ProbeFailed("connect_error") from None
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise _ProbeFailed("parse_error", "body is not UTF-8") from None
