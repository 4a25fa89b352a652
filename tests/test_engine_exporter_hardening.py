"""The engine exporter under attack and under load (issue 13): each finding against a real exporter.

Engines are small HTTP servers on free loopback ports; dead targets are listening sockets that never
answer; the DNS-rebinding case runs the exporter in this process, behind a resolver the test controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn
from support import observer_server, scrape

from exporters.engine.allowlist import AllowList, TargetRefused, parse_target
from exporters.engine.server import create_app
from observer.config import EngineExporterSettings
from observer.netutil import free_port

FIXTURE = (Path(__file__).parent / "fixtures" / "engines" / "vllm-0.11.txt").read_bytes()
TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


class Engine:
    """A vLLM-like /metrics server on 127.0.0.1 (or another loopback address) that records requests."""

    def __init__(self, body: bytes = FIXTURE, delay_s: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                engine.requests.append((self.path, self.headers.get("Host", "")))
                if delay_s:
                    time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port or free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def engines(*args: dict) -> Iterator[list[Engine]]:
    started = [Engine(**kw) for kw in args]
    try:
        yield started
    finally:
        for e in started:
            e.stop()


@contextlib.contextmanager
def dead_targets(n: int) -> Iterator[list[str]]:
    """Targets that accept connections (the kernel completes the handshake) and never answer."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            socks.append(s)
        yield [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def probe(exporter: str, target: str, timeout_header: float | None = None, **params: str) -> httpx.Response:
    headers = {TIMEOUT_HEADER: str(timeout_header)} if timeout_header else {}
    return httpx.get(exporter + "/probe", params={"target": target, **params}, headers=headers, timeout=30)


def up(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("llm_engine_up "):
            return float(line.split()[1])
    raise AssertionError(f"no llm_engine_up in {text[:300]!r}")


def reason(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith('llm_engine_probe_error{reason="'):
            return line.split('"')[1]
    return None


async def probe_many(exporter: str, calls: list[tuple[str, float, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(
                client.get(
                    exporter + "/probe",
                    params={"target": target, **params},
                    headers={TIMEOUT_HEADER: str(header)},
                )
                for target, header, params in calls
            )
        )


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    with observer_server("engine-exporter") as (base, _):
        yield base


# --- SSRF: IPv6 metadata and ULA, paths, proxies, rebinding, self ----------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://[fd00:ec2::254]/",  # AWS instance metadata over IPv6
        "http://[fd00:ec2::254]:80",
        "http://[fc00::1]:8000",  # ULA: not admitted by default
        "http://[fd12:3456:789a::1]:8000",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 form of 169.254.169.254
        "http://0.0.0.0:8000",  # "this host"
    ],
)
def test_ipv6_metadata_ula_and_embedded_ipv4_are_refused_by_default(exporter, target):
    r = probe(exporter, target)
    assert r.status_code == 403, r.text
    assert "target refused" in r.text


def test_metadata_stays_refused_when_ula_is_allowed_or_the_allow_list_is_off():
    async def check(allow: AllowList, raw: str) -> tuple[str, ...]:
        return (await allow.check(parse_target(raw))).addresses

    denied = EngineExporterSettings().denied_targets
    with_ula = AllowList(["fc00::/7"], denied=denied)
    assert asyncio.run(check(with_ula, "http://[fd12::1]:8000")) == ("fd12::1",)  # how to allow ULA
    anything = AllowList([], allow_any=True, denied=denied)
    assert asyncio.run(check(anything, "http://8.8.8.8")) == ("8.8.8.8",)
    for allow in (with_ula, anything):
        for raw in ("http://[fd00:ec2::254]/", "http://169.254.169.254", "http://[64:ff9b::a9fe:a9fe]"):
            with pytest.raises(TargetRefused, match="denied"):
                asyncio.run(check(allow, raw))


@pytest.mark.parametrize(
    "suffix",
    ["/admin?", "/admin#", "?", "#", "/?x=", "/secret", "/probe?target=x", "/%2e%2e/admin"],
)
def test_a_target_cannot_reach_another_path(exporter, suffix):
    with engines({}) as (engine,):
        r = probe(exporter, engine.url + suffix)
        assert r.status_code == 403, r.text
        assert "path, query or fragment" in r.text
        assert engine.requests == []  # nothing was fetched at all
        ok = probe(exporter, engine.url + "/")
        assert up(ok.text) == 1.0
        assert [path for path, _ in engine.requests] == ["/metrics"]


def test_proxy_environment_is_not_honoured():
    with engines({}, {}) as (engine, proxy):
        env = {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "ALL_PROXY": proxy.url, "NO_PROXY": ""}
        with observer_server("engine-exporter", env=env) as (exporter, _):
            r = probe(exporter, engine.url)
        assert up(r.text) == 1.0
        assert proxy.requests == []
        assert len(engine.requests) == 1


@contextlib.contextmanager
def in_process_exporter(settings: EngineExporterSettings) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, listen=("127.0.0.1", port)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",  # the stdlib loop resolves through socket.getaddrinfo, which the test controls
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "exporter did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_dns_rebinding_cannot_redirect_the_connection(monkeypatch):
    """The name resolves to an allowed address when checked and to a forbidden one afterwards: the
    probe must connect to the checked address, never look the name up again."""
    with engines({}) as (allowed,), engines({"host": "127.0.0.2", "port": allowed.port}) as (forbidden,):
        real = socket.getaddrinfo
        lookups: list[str] = []

        def rebinding_resolver(host, port, *args, **kwargs):
            if host not in ("rebind.test", b"rebind.test"):  # (anyio passes names as bytes)
                return real(host, port, *args, **kwargs)
            answer = "127.0.0.1" if len(lookups) % 2 == 0 else "127.0.0.2"  # allowed, then not, ...
            lookups.append(answer)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, int(port or 80)))]

        monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver)
        settings = EngineExporterSettings(allowed_targets=["127.0.0.1/32"])
        with in_process_exporter(settings) as exporter:
            first = probe(exporter, f"http://rebind.test:{allowed.port}")
            assert forbidden.requests == []
            assert lookups == ["127.0.0.1"]  # one lookup per probe: the one that was checked
            second = probe(exporter, f"http://rebind.test:{allowed.port}")  # its lookup answers 127.0.0.2
        assert up(first.text) == 1.0
        assert second.status_code == 403 and "outside the allowed networks" in second.text
        assert forbidden.requests == []
        # The engine saw the name it was asked by (Host header kept), at the checked address.
        assert allowed.requests == [("/metrics", f"rebind.test:{allowed.port}")]


@contextlib.contextmanager
def tls_engine(tmp_path: Path) -> Iterator[tuple[Engine, list[str], Path]]:
    """An HTTPS engine with a self-signed certificate for "localhost"; records the SNI names it is sent."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    sni: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    engine = Engine()
    engine.server.socket = context.wrap_socket(engine.server.socket, server_side=True)
    try:
        yield engine, sni, cert
    finally:
        engine.stop()


def test_https_keeps_the_name_for_sni_host_and_certificate_check(tmp_path):
    """The probe connects to the checked address but speaks TLS to the name: SNI and Host are the name,
    and the certificate is checked against it (a private CA comes from SSL_CERT_FILE, proxies do not)."""
    with tls_engine(tmp_path) as (engine, sni, cert):
        port = engine.url.rsplit(":", 1)[1]
        env = {"SSL_CERT_FILE": str(cert)}
        with observer_server("engine-exporter", env=env) as (exporter, _):
            by_name = probe(exporter, f"https://localhost:{port}")
            by_address = probe(exporter, f"https://127.0.0.1:{port}")  # not a name the certificate has
    assert up(by_name.text) == 1.0, by_name.text
    assert "localhost" in sni
    assert engine.requests == [("/metrics", f"localhost:{port}")]
    assert up(by_address.text) == 0.0 and reason(by_address.text) == "connect_error"


def test_the_exporter_refuses_to_probe_itself(exporter):
    port = exporter.rsplit(":", 1)[1]
    for target in (exporter, f"localhost:{port}", f"http://127.0.0.1:{port}/"):
        r = probe(exporter, target)
        assert r.status_code == 403, (target, r.text)
        assert "this exporter itself" in r.text


def test_an_exporter_on_all_interfaces_refuses_every_local_address_of_its_port():
    settings = EngineExporterSettings()
    port = free_port()
    from exporters.engine.probe import Prober

    async def check(raw: str) -> None:
        prober = Prober(settings, listen=("0.0.0.0", port))
        try:
            await prober.check_target(raw)
        finally:
            await prober.aclose()

    for raw in (f"127.0.0.1:{port}", f"127.0.0.9:{port}", f"localhost:{port}"):
        with pytest.raises(TargetRefused, match="itself"):
            asyncio.run(check(raw))
    asyncio.run(check(f"127.0.0.1:{port + 1 if port < 65535 else port - 1}"))  # other ports are fine


# --- deadlines -----------------------------------------------------------------------------------------


def test_a_short_probe_does_not_cut_overlapping_longer_probes_short(exporter):
    """A 0.4 s probe starts the shared fetch of an engine that answers in 0.7 s; fifteen 1.5 s probes
    join it. Only the short probe may time out."""
    with engines({"delay_s": 0.7}) as (engine,):

        async def run() -> tuple[httpx.Response, list[httpx.Response]]:
            short = asyncio.create_task(probe_many(exporter, [(engine.url, 0.9, {})]))
            await asyncio.sleep(0.1)
            normal = await probe_many(exporter, [(engine.url, 2.0, {})] * 15)
            return (await short)[0], normal

        short, normal = asyncio.run(run())
        assert reason(short.text) == "timeout"
        assert [up(r.text) for r in normal] == [1.0] * 15
        assert len(engine.requests) == 1  # still one fetch for all sixteen


def test_the_timeout_setting_is_not_capped_by_an_http_client_default():
    """--timeout 8 with an engine that answers in 6 s: up 1 (httpx's 5 s default used to win)."""
    env = {"OBSERVER_ENGINE_EXPORTER__DEFAULT_TIMEOUT_S": "8"}
    with engines({"delay_s": 6.0}) as (engine,), observer_server("engine-exporter", env=env) as (exporter, _):
        start = time.monotonic()
        r = probe(exporter, engine.url)
        elapsed = time.monotonic() - start
    assert up(r.text) == 1.0, r.text
    assert 5.9 < elapsed < 8.0


# --- concurrency ---------------------------------------------------------------------------------------


@pytest.fixture
def small_exporter() -> Iterator[str]:
    env = {"OBSERVER_ENGINE_EXPORTER__MAX_CONCURRENT_PROBES": "8"}
    with observer_server("engine-exporter", env=env) as (base, _):
        yield base


def _healthy_while(exporter: str, hostile: list[tuple[str, float, dict]], healthy: str) -> list[float]:
    """Fire the hostile probes, then 10 probes of the healthy engine; the healthy ones' latencies."""

    async def run() -> list[float]:
        flood = asyncio.create_task(probe_many(exporter, hostile))
        await asyncio.sleep(0.5)  # the dead targets now hold every slot they can get
        async with httpx.AsyncClient(timeout=60) as client:

            async def one() -> float:
                start = time.monotonic()
                r = await client.get(
                    exporter + "/probe", params={"target": healthy}, headers={TIMEOUT_HEADER: "3"}
                )
                assert up(r.text) == 1.0, r.text
                return time.monotonic() - start

            latencies = await asyncio.gather(*(one() for _ in range(10)))
        flooded = await flood
        assert all(reason(r.text) == "timeout" for r in flooded)
        return latencies

    return asyncio.run(run())


def test_dead_targets_cannot_starve_a_live_one(small_exporter):
    """16 dead targets, probed twice each with 6 s deadlines, against 8 fetch slots."""
    with engines({}) as (engine,), dead_targets(16) as dead:
        assert up(probe(small_exporter, engine.url).text) == 1.0  # known to answer
        latencies = _healthy_while(small_exporter, [(t, 6.5, {}) for t in dead * 2], engine.url)
    assert max(latencies) < 1.5, latencies


def test_one_dead_target_cannot_take_every_slot_through_many_model_names(small_exporter):
    """Distinct model parameters are distinct probes, but one target gets only its per-target slots,
    so even a never-probed live engine is served at once."""
    with engines({}) as (engine,), dead_targets(1) as (dead,):
        hostile = [(dead, 6.5, {"model": f"m{i}"}) for i in range(20)]
        latencies = _healthy_while(small_exporter, hostile, engine.url)
    assert max(latencies) < 1.5, latencies


# --- parse cost ----------------------------------------------------------------------------------------


def huge_exposition(target_mb: int = 30) -> bytes:
    """About 30 MB of valid vLLM text, every line a distinct wanted series (~550k)."""
    line = 'vllm:num_requests_running{{model_name="org/model-{:07d}",engine="0"}} 1\n'
    n = target_mb * 1024 * 1024 // len(line.format(0))
    return ("# TYPE vllm:num_requests_running gauge\n" + "".join(line.format(i) for i in range(n))).encode()


def test_a_30mb_exposition_is_capped_and_blocks_nothing():
    body = huge_exposition()
    assert len(body) >= 30 * 1024 * 1024
    with engines({"body": body}, {}) as (huge, healthy), observer_server("engine-exporter") as (exporter, _):
        probe(exporter, healthy.url)

        async def run() -> tuple[httpx.Response, list[float], list[float]]:
            big = asyncio.create_task(probe_many(exporter, [(huge.url, 15.0, {})]))
            metrics_latency: list[float] = []
            probe_latency: list[float] = []
            async with httpx.AsyncClient(timeout=30) as client:
                while not big.done():
                    start = time.monotonic()
                    await client.get(exporter + "/metrics")
                    metrics_latency.append(time.monotonic() - start)
                    start = time.monotonic()
                    r = await client.get(exporter + "/probe", params={"target": healthy.url})
                    assert up(r.text) == 1.0
                    probe_latency.append(time.monotonic() - start)
                    await asyncio.sleep(0.05)
            return (await big)[0], metrics_latency, probe_latency

        big, metrics_latency, probe_latency = asyncio.run(run())
        self_metrics = scrape(exporter + "/metrics")
    assert reason(big.text) == "too_many_series", big.text[:500]
    assert len(big.text.splitlines()) < 20  # an error answer, not 550k series
    assert max(metrics_latency) < 1.0, metrics_latency
    assert max(probe_latency) < 1.5, probe_latency
    assert (
        self_metrics["observer_engine_exporter_probe_failures_total"][(("reason", "too_many_series"),)] == 1
    )


def test_the_series_cap_is_a_setting_and_normal_engines_stay_under_it():
    from exporters.engine.normalize import normalize
    from exporters.engine.parse import TooManySamples

    text = FIXTURE.decode()
    normalize(text, max_samples=EngineExporterSettings().max_series)
    with pytest.raises(TooManySamples):
        normalize(text, max_samples=10)
