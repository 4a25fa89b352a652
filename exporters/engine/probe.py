"""One probe: check the target, fetch its metrics within the probe's deadline, normalize, render.

Every failure is an answer, not an exception: ``llm_engine_up 0`` with
``llm_engine_probe_error{reason}``, so a dead, slow or garbage-speaking engine shows up on the
dashboards and never breaks the exporter or the probes of other targets.

What keeps one target from hurting the others:

- Overlapping probes of one target share one fetch (singleflight), but each keeps its own deadline:
  the shared fetch runs until the latest deadline of the probes waiting on it, so a short probe
  never cuts a longer one short.
- Fetches hold a per-target slot and a global slot. Targets that did not answer their last probe
  (or never did) share at most half of the global slots: dead targets cannot starve live ones.
- The connection goes to an address the allow-list checked (no second DNS lookup), without
  proxies, to a path the exporter chose.
- Parsing runs in worker threads with a cap on samples, so a huge exposition neither blocks the
  event loop (``/metrics``, other probes) nor turns into hundreds of thousands of series.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import os
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import certifi
import httpx
from prometheus_client import PROCESS_COLLECTOR, CollectorRegistry

from exporters.engine.allowlist import AllowList, CheckedTarget, TargetRefused, parse_target
from exporters.engine.mappings import metrics_paths
from exporters.engine.normalize import NotPrometheusText, UnknownEngine, normalize, render_probe
from exporters.engine.parse import ParseError, TooManySamples
from observer.catalog import ENGINE_EXPORTER_SELF, make_metric
from observer.config import EngineExporterSettings

# Leave Prometheus time to receive the answer, as blackbox_exporter's default timeout offset does.
TIMEOUT_OFFSET_S = 0.5
MIN_TIMEOUT_S = 0.1
# Statuses that mean "not here": the next metrics path of the plan is tried.
_TRY_NEXT_STATUS = frozenset({400, 404, 405})
_HEALTH_MEMORY = 10_000  # targets whose last result is remembered (LRU)


class _ProbeFailed(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class _TryNext(Exception):
    """This path is not the engine's metrics endpoint; the next one of the plan may be."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ProbeResult:
    text: str
    up: bool
    reason: str | None
    duration_s: float


@dataclass
class _Flight:
    """One fetch shared by the probes of a target that overlap in time."""

    deadline: float  # loop time: the latest deadline of the probes waiting on it
    task: asyncio.Task[ProbeResult] | None = None
    timeout: asyncio.Timeout | None = None

    def joinable(self) -> bool:
        return (
            self.task is not None
            and not self.task.done()
            and not (self.timeout is not None and self.timeout.expired())
        )

    def extend(self, deadline: float) -> None:
        if deadline <= self.deadline:
            return
        self.deadline = deadline
        if self.timeout is not None:
            self.timeout.reschedule(deadline)  # joinable() checked that it is still running


class _Slots:
    """Global fetch slots. Targets that answered their last probe may take any free slot; unproven ones
    (never answered, or failed last time) at most ``unproven_max``, so dead targets, which hold a slot
    until their deadline, can never take the slots live targets need."""

    def __init__(self, total: int, unproven_max: int) -> None:
        self.total = total
        self.unproven_max = unproven_max
        self.used = 0
        self.unproven_used = 0
        self._waiters: deque[tuple[bool, asyncio.Future[None]]] = deque()

    def _free_for(self, proven: bool) -> bool:
        return self.used < self.total and (proven or self.unproven_used < self.unproven_max)

    def _take(self, proven: bool) -> None:
        self.used += 1
        self.unproven_used += not proven

    def _release(self, proven: bool) -> None:
        self.used -= 1
        self.unproven_used -= not proven
        for waiter in list(self._waiters):  # first come, first served within what the rules allow
            waiter_proven, future = waiter
            if future.done():
                self._waiters.remove(waiter)
            elif self._free_for(waiter_proven):
                self._waiters.remove(waiter)
                self._take(waiter_proven)
                future.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, proven: bool) -> AsyncIterator[None]:
        if self._free_for(proven):  # waiters exist only while they cannot be served, so no queue-jumping
            self._take(proven)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (proven, future)
            self._waiters.append(entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(proven)  # granted just as we were cancelled: give it on
                elif entry in self._waiters:
                    self._waiters.remove(entry)
                raise
        try:
            yield
        finally:
            self._release(proven)


def _connect_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "refused"
        cause = cause.__cause__ or cause.__context__
    return "connect_error"


def _is_local_address(address: str) -> bool:
    """Whether this machine owns the address (binding to it succeeds only then)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(ip), 0))
        except OSError:
            return False
    return True


def _tls_context() -> ssl.SSLContext:
    """Certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR (a private CA): trust_env=False, which keeps proxies
    out, would drop those two as well."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def _own_addresses(listen: tuple[str, int] | None) -> tuple[int, frozenset[str]] | None:
    """(port, addresses) the exporter listens on; no addresses = every local one (0.0.0.0, ::)."""
    if listen is None:
        return None
    host, port = listen[0].strip("[]"), listen[1]
    if host in ("", "0.0.0.0", "::"):
        return port, frozenset()
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return port, frozenset(str(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0])) for i in infos)


class Prober:
    def __init__(
        self,
        settings: EngineExporterSettings,
        registry: CollectorRegistry | None = None,
        listen: tuple[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self._self_addresses = _own_addresses(listen)
        self.allow = AllowList(settings.allowed_targets, settings.allow_any_target, settings.denied_targets)
        self.slots = _Slots(settings.max_concurrent_probes, max(1, settings.max_concurrent_probes // 2))
        self._per_target: dict[tuple[str, int], tuple[asyncio.Semaphore, int]] = {}
        self._answered: OrderedDict[str, bool] = OrderedDict()  # target url -> answered last time
        self._in_flight: dict[tuple[str, str, str], _Flight] = {}
        self._parse_pool = concurrent.futures.ThreadPoolExecutor(
            settings.parse_threads, thread_name_prefix="engine-parse"
        )
        self._parse_slots = asyncio.Semaphore(settings.parse_threads)
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
            trust_env=False,  # HTTP(S)_PROXY would send the probe (and its target) elsewhere
            verify=_tls_context(),
            timeout=None,  # the probe's deadline bounds everything; httpx's 5 s default must not
            headers={
                "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
                "User-Agent": "llm-observer-engine-exporter",
            },
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        self._parse_pool.shutdown(wait=False, cancel_futures=True)

    def timeout_for(self, scrape_timeout_header: str | None) -> float:
        timeout = self.settings.default_timeout_s
        if scrape_timeout_header:
            with contextlib.suppress(ValueError):  # a malformed header falls back to the default
                timeout = min(timeout, float(scrape_timeout_header) - TIMEOUT_OFFSET_S)
        return max(timeout, MIN_TIMEOUT_S)

    async def check_target(self, raw_target: str) -> CheckedTarget:
        """The target and the addresses it may be fetched from, or TargetRefused with the reason (counted)."""
        try:
            checked = await self.allow.check(parse_target(raw_target))
            self._refuse_self(checked)
        except TargetRefused:
            self.m_refused.inc()
            raise
        return checked

    def _refuse_self(self, checked: CheckedTarget) -> None:
        """A probe of the exporter's own address would fetch its own pages (and could recurse): refused."""
        if self._self_addresses is None:
            return
        port, addresses = self._self_addresses
        if checked.target.port != port:
            return
        for address in checked.addresses:
            mine = address in addresses if addresses else _is_local_address(address)
            if mine:
                raise TargetRefused("the target is this exporter itself")

    async def probe(
        self, checked: CheckedTarget, timeout_s: float, model: str = "", engine: str | None = None
    ) -> ProbeResult:
        """Probe a target before ``timeout_s`` from now. Probes of one target that overlap in time share
        one fetch (HA Prometheus pairs and scrape bursts hit the engine once, and no answer is older
        than the probe that asked for it); each probe still answers at its own deadline."""
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        key = (checked.target.url, model, engine or "")
        flight = self._in_flight.get(key)
        if flight is not None and flight.joinable():
            flight.extend(deadline)
        else:
            flight = _Flight(deadline)
            flight.task = asyncio.create_task(self._fly(flight, checked, model, engine))
            self._in_flight[key] = flight
            flight.task.add_done_callback(
                lambda _t, f=flight: self._in_flight.pop(key) if self._in_flight.get(key) is f else None
            )
        assert flight.task is not None
        self.m_in_flight.inc()
        try:
            async with asyncio.timeout_at(deadline):
                result = await asyncio.shield(flight.task)
        except TimeoutError:
            result = self._failed("timeout", start)
        finally:
            self.m_in_flight.dec()
        self.m_probes.labels(result="success" if result.up else "failure").inc()
        if result.reason:
            self.m_failures.labels(reason=result.reason).inc()
        self.m_duration.observe(time.perf_counter() - start)
        return result

    async def _fly(
        self, flight: _Flight, checked: CheckedTarget, model: str, engine: str | None
    ) -> ProbeResult:
        start = time.perf_counter()
        url = checked.target.url
        try:
            async with asyncio.timeout_at(flight.deadline) as timeout:
                flight.timeout = timeout
                result = await self._probe_paths(checked, model, engine, start)
        except TimeoutError:
            result = self._failed("timeout", start)
        except _ProbeFailed as exc:
            result = self._failed(exc.reason, start)
        self._answered[url] = result.reason not in ("timeout", "refused", "connect_error")
        self._answered.move_to_end(url)
        while len(self._answered) > _HEALTH_MEMORY:
            self._answered.popitem(last=False)
        return result

    async def _probe_paths(
        self, checked: CheckedTarget, model: str, engine: str | None, start: float
    ) -> ProbeResult:
        paths = metrics_paths(engine, model)
        for i, path in enumerate(paths):
            last = i == len(paths) - 1
            try:
                body = await self._fetch(checked, path)
                return await self._parse(body, model, start)
            except _TryNext as exc:
                if last:
                    raise _ProbeFailed(exc.reason) from None
        raise _ProbeFailed("http_status")  # no path at all (never: the plan has /metrics)

    @contextlib.asynccontextmanager
    async def _target_slot(self, checked: CheckedTarget) -> AsyncIterator[None]:
        key = (checked.addresses[0], checked.target.port)
        sem, users = self._per_target.get(key) or (asyncio.Semaphore(self.settings.max_probes_per_target), 0)
        self._per_target[key] = (sem, users + 1)
        try:
            async with sem:
                yield
        finally:
            sem, users = self._per_target[key]
            if users == 1:
                del self._per_target[key]
            else:
                self._per_target[key] = (sem, users - 1)

    async def _fetch(self, checked: CheckedTarget, path: str) -> str:
        proven = self._answered.get(checked.target.url, False)
        async with self._target_slot(checked), self.slots.hold(proven):
            return await self._fetch_from_addresses(checked, path)

    async def _fetch_from_addresses(self, checked: CheckedTarget, path: str) -> str:
        target = checked.target
        headers = {"Host": target.host_header}
        extensions: dict[str, str] = {}
        if target.scheme == "https":
            # TLS is verified against the name; no pooled connection outlives its own name.
            extensions["sni_hostname"] = target.host
            headers["Connection"] = "close"
        last_error: BaseException | None = None
        for address in checked.addresses:
            try:
                return await self._get(checked.url_for(address, path), headers, extensions)
            except httpx.ConnectError as exc:  # next checked address (a name with several)
                last_error = exc
        assert last_error is not None
        raise _ProbeFailed(_connect_reason(last_error))

    async def _get(self, url: str, headers: dict[str, str], extensions: dict[str, str]) -> str:
        cap = self.settings.max_body_bytes
        try:
            request = self.client.build_request("GET", url, headers=headers, extensions=extensions)
            resp = await self.client.send(request, stream=True)
            try:
                if resp.status_code in _TRY_NEXT_STATUS:
                    raise _TryNext("http_status")
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
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.ConnectError:
            raise
        except httpx.HTTPError:
            raise _ProbeFailed("connect_error") from None
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise _ProbeFailed("parse_error", "body is not UTF-8") from None

    async def _parse(self, body: str, model: str, start: float) -> ProbeResult:
        """Normalize and render in a worker thread. The thread's slot is released when the thread is
        done, not when this probe gives up, so abandoned parses cannot pile up."""
        max_series = self.settings.max_series

        def work() -> ProbeResult:
            try:
                normalized = normalize(body, default_model=model, max_samples=max_series)
            except NotPrometheusText:
                raise _TryNext("unknown_engine") from None
            except ParseError as exc:
                raise _ProbeFailed("parse_error", str(exc)) from None
            except UnknownEngine as exc:
                raise _ProbeFailed("unknown_engine", str(exc)) from None
            except TooManySamples as exc:
                raise _ProbeFailed("too_many_series", str(exc)) from None
            duration = time.perf_counter() - start
            return ProbeResult(render_probe(normalized, True, duration), True, None, duration)

        await self._parse_slots.acquire()
        loop = asyncio.get_running_loop()
        try:
            done = self._parse_pool.submit(work)
        except BaseException:
            self._parse_slots.release()
            raise
        done.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._parse_slots.release))
        return await asyncio.wrap_future(done)

    def timed_out_answer(self, duration_s: float) -> str:
        """The answer of a probe whose time ran out before its target was even checked (slow DNS)."""
        self.m_probes.labels(result="failure").inc()
        self.m_failures.labels(reason="timeout").inc()
        return render_probe(None, False, duration_s, "timeout")

    def _failed(self, reason: str, start: float) -> ProbeResult:
        duration = time.perf_counter() - start
        return ProbeResult(render_probe(None, False, duration, reason), False, reason, duration)
