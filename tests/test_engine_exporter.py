"""The engine exporter as a server: probes of real and misbehaving targets, SSRF guard, Prometheus."""

import asyncio
import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support import Prometheus, observer_server, scrape, simulator

from exporters.engine.allowlist import AllowList, TargetRefused, parse_target
from observer.netutil import free_port
from observer.stack import probe_scrape_job

FIXTURE = (Path(__file__).parent / "fixtures" / "engines" / "vllm-0.11.txt").read_bytes()


class _BadEngine(BaseHTTPRequestHandler):
    """One misbehaviour per server (a target is scheme://host:port only, so the port chooses it)."""

    protocol_version = "HTTP/1.1"
    kind = "ok"
    fetches: dict[str, int] = {}

    def do_GET(self):
        kind = self.kind
        _BadEngine.fetches[kind] = _BadEngine.fetches.get(kind, 0) + 1
        if kind == "slow":
            time.sleep(3)
            body, status = FIXTURE, 200
        elif kind == "shared":
            time.sleep(1)
            body, status = FIXTURE, 200
        elif kind == "error500":
            body, status = b"internal error", 500
        elif kind == "garbage":
            body, status = b"<html>hello</html>\n", 200
        elif kind == "huge":
            body, status = FIXTURE * 50, 200
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body, status = FIXTURE, 200
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the probe gave up first
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bad_engine():
    """bad_engine(kind) -> the base URL of a server that misbehaves that way (started on first use)."""
    servers: dict[str, ThreadingHTTPServer] = {}

    def url(kind: str) -> str:
        if kind not in servers:
            handler = type(f"_BadEngine_{kind}", (_BadEngine,), {"kind": kind})
            server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers[kind] = server
        return f"http://127.0.0.1:{servers[kind].server_address[1]}"

    yield url
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def exporter():
    env = {"OBSERVER_ENGINE_EXPORTER__MAX_BODY_BYTES": str(len(FIXTURE) * 10)}
    with observer_server("engine-exporter", env=env) as (base, _):
        yield base


def probe(exporter, target, **headers):
    return httpx.get(exporter + "/probe", params={"target": target}, headers=headers, timeout=15)


def sample(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line
    return None


def test_good_target(exporter, bad_engine):
    r = probe(exporter, bad_engine("ok"))
    assert r.status_code == 200
    assert sample(r.text, "llm_engine_up") == "llm_engine_up 1.0"
    assert 'llm_requests_running{model="Qwen/Qwen3-0.6B",dp_rank="0"} 3.0' in r.text


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/error500", "http_status"),
        ("/garbage", "parse_error"),
        ("/huge", "body_too_large"),
        ("/redirect", "http_status"),  # never followed: the allow-list checked only the first URL
    ],
)
def test_failures_are_answers_with_a_reason(exporter, bad_engine, path, reason):
    r = probe(exporter, bad_engine(path.strip("/")))
    assert r.status_code == 200
    assert sample(r.text, "llm_engine_up") == "llm_engine_up 0.0"
    assert f'llm_engine_probe_error{{reason="{reason}"}} 1.0' in r.text
    assert sample(r.text, "llm_engine_scrape_duration_seconds")


def test_dead_target_is_refused_connection(exporter):
    r = probe(exporter, f"127.0.0.1:{free_port()}")  # bare host:port means http://
    assert 'llm_engine_probe_error{reason="refused"} 1.0' in r.text


def test_scrape_timeout_header_is_honoured(exporter, bad_engine):
    start = time.monotonic()
    r = probe(exporter, bad_engine("slow"), **{"X-Prometheus-Scrape-Timeout-Seconds": "1.5"})
    elapsed = time.monotonic() - start
    assert 'llm_engine_probe_error{reason="timeout"} 1.0' in r.text
    assert elapsed < 2.0  # 1.5 s minus the 0.5 s offset, not the target's 3 s


def test_slow_target_does_not_hold_up_other_probes(exporter, bad_engine):
    async def run():
        async with httpx.AsyncClient(timeout=15) as client:
            slow = asyncio.create_task(client.get(exporter + "/probe", params={"target": bad_engine("slow")}))
            await asyncio.sleep(0.2)
            start = time.monotonic()
            fast = await asyncio.gather(
                *(client.get(exporter + "/probe", params={"target": bad_engine("ok")}) for _ in range(20))
            )
            fast_elapsed = time.monotonic() - start
            await slow
            return fast, fast_elapsed

    fast, elapsed = asyncio.run(run())
    assert all("llm_engine_up 1.0" in r.text for r in fast)
    assert elapsed < 2.0


def test_overlapping_probes_of_one_target_share_one_fetch(exporter, bad_engine):
    async def run():
        async with httpx.AsyncClient(timeout=15) as client:
            return await asyncio.gather(
                *(client.get(exporter + "/probe", params={"target": bad_engine("shared")}) for _ in range(10))
            )

    responses = asyncio.run(run())
    assert all("llm_engine_up 1.0" in r.text for r in responses)
    assert _BadEngine.fetches["shared"] == 1


@pytest.mark.parametrize(
    "target",
    [
        "169.254.169.254",
        "http://8.8.8.8:80",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1:1",
        "gopher://x",
    ],
)
def test_ssrf_guard_refuses_with_403(exporter, target):
    r = probe(exporter, target)
    assert r.status_code == 403
    assert "target refused" in r.text


def test_missing_target_is_400(exporter):
    assert httpx.get(exporter + "/probe").status_code == 400


def test_self_metrics_count_probes_and_reasons(exporter, bad_engine):
    probe(exporter, bad_engine("garbage"))
    probe(exporter, "169.254.169.254")
    m = scrape(exporter + "/metrics")
    assert m["observer_engine_exporter_probe_failures_total"][(("reason", "parse_error"),)] >= 1
    assert m["observer_engine_exporter_targets_refused_total"][()] >= 1
    assert m["observer_engine_exporter_probes_total"][(("result", "success"),)] >= 1
    assert "process_resident_memory_bytes" in m


def test_allow_list_rules():
    # Names are resolved at check time (the probe connects to the checked address), so they must resolve.
    allow = AllowList(["10.0.0.0/8", "localhost"])

    def check(raw, allow=allow):
        return asyncio.run(allow.check(parse_target(raw)))

    assert check("10.1.2.3:8000").addresses == ("10.1.2.3",)
    assert "127.0.0.1" in check("http://localhost:8000").addresses
    assert "127.0.0.1" in check("http://LOCALHOST:8000", AllowList([r"re:^local\w+$"])).addresses
    for refused in ("11.0.0.1", "http://vllm-x.prod", "http://[::ffff:169.254.169.254]/"):
        with pytest.raises(TargetRefused):
            check(refused)
    asyncio.run(AllowList([], allow_any=True).check(parse_target("8.8.8.8")))


def test_real_prometheus_multi_target_and_a_killed_engine(tmp_path):
    with (
        simulator("--model", "alpha") as (sim_a, proc_a),
        simulator("--model", "beta") as (sim_b, _),
        observer_server("engine-exporter") as (exporter, _),
    ):
        a, b = sim_a.removeprefix("http://"), sim_b.removeprefix("http://")
        # The multi-target pattern: the target becomes a parameter and the instance label;
        # the exporter's own address is what Prometheus actually connects to.
        exporters = [exporter.removeprefix("http://")]
        job = probe_scrape_job("llm-engines", [a, b], exporters, scrape_interval="1s", scrape_timeout="1s")
        prom = Prometheus([job])
        try:
            running = prom.wait_for(f'llm_requests_running{{instance="{a}"}}')
            assert running[0]["metric"]["model"] == "alpha"
            prom.wait_for("llm_engine_up == 1", lambda r: len(r) == 2)
            proc_a.kill()  # the engine dies; the exporter and the other engine keep going
            down = prom.wait_for(
                f'llm_engine_up{{instance="{a}"}}', lambda r: r and r[0]["value"][1] == "0", timeout=20
            )
            assert down
            assert prom.query(f'llm_engine_up{{instance="{b}"}}')[0]["value"][1] == "1"
            reason = prom.wait_for(f'llm_engine_probe_error{{instance="{a}"}}')
            assert reason[0]["metric"]["reason"] == "refused"
            assert prom.query(f'up{{instance="{a}"}}')[0]["value"][1] == "1"  # the scrape itself worked
        finally:
            prom.stop()
