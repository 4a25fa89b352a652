"""observer loadtest against the real simulator (small KV cache): verdicts, diagnosis, sweep, report.

The simulator is a real vLLM-like engine process on a loopback port; every run is the real CLI in
a subprocess so exit codes are checked as CI would see them. Runs are a few seconds each.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from support import binary, observer_cmd, simulator

from exporters.engine.normalize import normalize, render_probe
from observer.config import LoadtestSettings, SloSettings
from observer.loadtest.analysis import default_slo, diagnose, parse_slo
from observer.loadtest.profiles import BUILTIN, Profile, build_messages, load_profile
from observer.loadtest.report import compare
from observer.loadtest.sampler import read_exposition

KV_BLOCKS = "512"  # x 16 tokens: ~20 chat requests fill it
LIGHT_RPS = 1.0
OVERLOAD_RPS = 40.0
# Short runs: in-flight requests get a short drain, so an overload run ends quickly.
FAST_ENV = {"OBSERVER_LOADTEST__DRAIN_S": "8", "OBSERVER_LOADTEST__PROGRESS_MIN_S": "1000"}
SLO = "ttft_p95=1.5,success=0.9"


def loadtest(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        observer_cmd("loadtest", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **FAST_ENV, **(env or {})},
    )


def engine():
    """The simulator with a small KV cache, its step times halved to keep the runs short."""
    return simulator("--num-gpu-blocks", KV_BLOCKS, "--speed-factor", "0.5")


def run_report(out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """A run with --json (no HTML: rendering plots costs seconds); the report saved like --out does."""
    with engine() as (base, _):
        proc = loadtest("--target", base, "--metrics", base + "/metrics", "--slo", SLO, *args, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(proc.stdout)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict, str]]:
    """The light and the overload run, shared by the tests that read them."""
    root = tmp_path_factory.mktemp("loadtest")
    return {
        "light": run_report(root / "light", "--rps", str(LIGHT_RPS), "--duration", "4", "--json"),
        "overload": run_report(
            root / "overload",
            "--rps",
            str(OVERLOAD_RPS),
            "--duration",
            "4",
            "--json",
            env={"OBSERVER_LOADTEST__DRAIN_S": "2"},
        ),
        "root": root,
    }


# --- against the simulator -------------------------------------------------------------------------


@pytest.mark.integration
def test_light_run_meets_its_slo_and_exits_0(reports) -> None:
    code, report, stdout = reports["light"]
    assert code == 0, stdout
    assert report["slo"]["pass"] is True
    assert {c["key"] for c in report["slo"]["checks"]} >= {"ttft_p95", "ttft_p99", "itl_p95", "success"}
    for metric in ("ttft", "tpot", "itl", "e2e"):
        p = report[metric]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"], (metric, p)
    assert report["counts"]["success"] >= 2 and report["counts"]["error"] == 0
    assert report["throughput"]["output_tokens_per_s"] > report["throughput"]["requests_per_s"] > 0
    assert report["server"]["kv_cache_usage_peak"] < 0.9
    assert report["server"]["preemptions"] == 0


@pytest.mark.integration
def test_overload_fails_and_the_diagnosis_names_the_kv_cache(reports) -> None:
    code, report, stdout = reports["overload"]
    assert code == 1, stdout
    assert report["slo"]["pass"] is False
    assert report["server"]["kv_cache_usage_peak"] >= 0.9
    assert report["server"]["requests_waiting_peak"] > 0
    assert any("KV cache" in line for line in report["diagnosis"]), report["diagnosis"]
    # The queue shows in TTFT, not in decoding speed.
    assert report["ttft"]["p95"] > reports["light"][1]["ttft"]["p95"] * 3
    assert report["counts"]["incomplete"] > 0  # streams cut when the run ended mid-answer


@pytest.mark.integration
def test_compare_flags_the_regression(reports) -> None:
    root = reports["root"]
    proc = loadtest("compare", str(root / "light/report.json"), str(root / "overload/report.json"), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert "slo_pass" in result["regressions"] and "ttft_p95" in result["regressions"]
    same = loadtest("compare", str(root / "light/report.json"), str(root / "light/report.json"))
    assert same.returncode == 0 and "no regression" in same.stdout


@pytest.mark.integration
def test_sweep_finds_capacity_between_light_and_overload_and_the_html_shows_plots(tmp_path: Path) -> None:
    env = {
        "OBSERVER_LOADTEST__SWEEP_START_RPS": str(4 * LIGHT_RPS),
        "OBSERVER_LOADTEST__SWEEP_MIN_REQUESTS": "8",
        "OBSERVER_LOADTEST__SWEEP_MAX_STEPS": "4",
        "OBSERVER_LOADTEST__SWEEP_PRECISION": "0.5",
        "OBSERVER_LOADTEST__DRAIN_S": "3",
        "OBSERVER_LOADTEST__EARLY_STOP_MIN_REQUESTS": "10",
    }
    with engine() as (base, _):
        proc = loadtest(
            "--target",
            base,
            "--metrics",
            base + "/metrics",
            "--slo",
            "ttft_p95=0.5,success=0.9",  # tighter than the light run's: the knee comes within 4 steps
            "--sweep",
            "--duration",
            "2",
            "--out",
            str(tmp_path),
            env=env,
        )
    code, report, stdout = proc.returncode, json.loads((tmp_path / "report.json").read_text()), proc.stdout
    assert "capacity:" in stdout and "cost per 1M tokens" in stdout
    assert code == 0, stdout
    cap = report["capacity"]
    assert LIGHT_RPS <= cap["offered_requests_per_s"] < OVERLOAD_RPS, report["points"]
    assert cap["requests_per_s"] > 0 and cap["output_tokens_per_s"] > 0
    rates = [p["rate"] for p in report["points"]]
    assert len(rates) <= 4 and rates == sorted(rates)
    passing = [p["rate"] for p in report["points"] if p["slo"]["pass"]]
    failing = [p["rate"] for p in report["points"] if not p["slo"]["pass"]]
    assert max(passing) == cap["offered_requests_per_s"]
    assert failing and min(failing) > max(passing)
    cost = report["cost_per_million_tokens"]
    assert cost["self_hosted"] > 0 and cost["public_api"] > 0 and cost["gpus"] == 1
    assert_html_plots_render(tmp_path / "report.html", tmp_path)


def assert_html_plots_render(html: Path, workdir: Path) -> None:
    """Open the report from disk in headless Chromium: every embedded plot decodes and is drawn."""
    chromium = binary("chromium")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=workdir)}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 'data-plots-loaded="3/3"' in dom.stdout, dom.stdout[-2000:] + dom.stderr[-2000:]
    shot = workdir / "shot.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1200,3200", f"--screenshot={shot}", html.resolve().as_uri()],
        capture_output=True,
        timeout=60,
        cwd=workdir,
    )
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    # Plot lines use matplotlib's palette; the page's own text is black/grey/green/red.
    blue = int(((abs(r - 31) < 25) & (abs(g - 119) < 25) & (b > 150)).sum())
    orange = int(((r > 220) & (g > 100) & (g < 160) & (b < 60)).sum())
    assert blue > 500 and orange > 200, (blue, orange)


@pytest.mark.integration
def test_closed_loop_and_cut_streams_count_as_incomplete(tmp_path: Path) -> None:
    profile = tmp_path / "long.yaml"
    profile.write_text(
        "name: long-answers\nscenarios:\n  - kind: code\n    prompt_tokens: 200\n    output_tokens: 3000\n"
    )
    with engine() as (base, _):
        ok = loadtest(
            "--target",
            base,
            "--profile",
            "tools",  # tools array + tool messages; short answers keep the run short
            "--concurrency",
            "3",
            "--max-requests",
            "6",
            "--duration",
            "30",
            "--slo",
            SLO,
            "--json",
        )
        cut = loadtest(
            "--target",
            base,
            "--profile",
            str(profile),
            "--concurrency",
            "2",
            "--max-requests",
            "2",
            "--duration",
            "10",
            "--json",
            env={"OBSERVER_LOADTEST__REQUEST_TIMEOUT_S": "1"},
        )
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["mode"] == "concurrency" and report["counts"]["sent"] == 6
    assert report["counts"]["success"] == 6 and report["scenarios"] == {"tools": 6}
    assert cut.returncode == 1, cut.stderr
    report = json.loads(cut.stdout)
    assert report["counts"] == {"sent": 2, "success": 0, "error": 0, "incomplete": 2, "cut_at_end": 0}
    assert report["incomplete_reasons"] == {"timeout": 2}
    assert any("2 streams were cut" in line for line in report["diagnosis"])
    assert report["ttft"]["p50"] is not None  # the first token came before the cut
    assert report["profile"]["name"] == "long-answers"


@pytest.mark.integration
def test_probe_output_and_raw_metrics_read_the_same() -> None:
    with engine() as (base, _):
        httpx.post(base + "/v1/completions", json={"prompt": "hello there", "max_tokens": 5}, timeout=10)
        text = httpx.get(base + "/metrics", timeout=10).text
    raw = read_exposition(text)
    probe = read_exposition(render_probe(normalize(text), up=True, duration_s=0.01))
    assert raw == probe
    assert raw["llm_requests_running"] == 0 and "llm_kv_cache_usage_ratio" in raw


# --- usage errors and pure parts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--target", "http://127.0.0.1:9"],  # no mode
        ["--target", "http://127.0.0.1:9", "--rps", "1", "--sweep"],
        ["--target", "http://127.0.0.1:9", "--rps", "1", "--slo", "latency=1"],
        ["--target", "http://127.0.0.1:9", "--rps", "1", "--profile", "nope"],
        ["--rps", "1"],  # no target
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    from click.testing import CliRunner

    from observer.cli import cli

    result = CliRunner().invoke(cli, ["loadtest", *args], obj={})
    assert result.exit_code == 2, result.output


def test_unreachable_target_exits_2() -> None:
    from observer.netutil import free_port

    for model in ((), ("--model", "m")):
        proc = loadtest(
            "--target", f"http://127.0.0.1:{free_port()}", "--rps", "1", "--duration", "1", *model
        )
        assert proc.returncode == 2 and "cannot reach" in proc.stderr, proc.stderr


def test_slo_defaults_come_from_the_slo_settings_and_flags_override_them() -> None:
    slo = SloSettings(ttft_target_s=1.0, itl_p95_target_s=0.05, error_objective=0.99)
    defaults = default_slo(slo, LoadtestSettings(slo={"e2e_p95": 20}))
    assert defaults == {"ttft_p99": 1.0, "itl_p95": 0.05, "success": 0.99, "e2e_p95": 20.0}
    assert parse_slo("ttft_p99=0.5,tpot_p95=0.04", defaults)["ttft_p99"] == 0.5
    with pytest.raises(ValueError, match="success"):
        parse_slo("success=1.5", defaults)


def test_profiles_have_their_scenario_shapes() -> None:
    rng = random.Random(3)
    tools = load_profile("tools")
    body, _, _ = build_messages(tools.pick(rng), rng)
    assert len(body["tools"]) >= 3 and all(t["type"] == "function" for t in body["tools"])
    roles = [m["role"] for m in body["messages"]]
    assert "tool" in roles and any(m.get("tool_calls") for m in body["messages"])
    mixed = load_profile("mixed")
    kinds = {mixed.pick(rng).kind for _ in range(400)}
    assert kinds == {"chat", "rag", "tools", "code", "adversarial"}
    # Length distributions differ the way the scenarios do: RAG prompts long, code answers long.
    medians = {}
    for name in ("chat", "rag", "code"):
        profile = Profile(name, BUILTIN[name])
        draws = [build_messages(profile.pick(rng), rng)[1:] for _ in range(300)]
        medians[name] = (sorted(d[0] for d in draws)[150], sorted(d[1] for d in draws)[150])
    assert medians["rag"][0] > 5 * medians["chat"][0]
    assert medians["code"][1] > 1.5 * medians["chat"][1]


def test_profile_file_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios:\n  - kind: chat\n    prompt_tokens: {median: -1}\n")
    with pytest.raises(ValueError, match=r"scenarios\[0\]\.prompt_tokens"):
        load_profile(str(bad))
    bad.write_text("scenarios:\n  - kind: poetry\n")
    with pytest.raises(ValueError, match="poetry"):
        load_profile(str(bad))


def test_compare_verdict_direction() -> None:
    a = {"mode": "rate", "slo": {"pass": True}, "ttft": {"p95": 1.0}, "throughput": {"requests_per_s": 10}}
    b = {"mode": "rate", "slo": {"pass": True}, "ttft": {"p95": 0.5}, "throughput": {"requests_per_s": 8}}
    rows = {r["metric"]: r for r in compare(a, b, 0.1)["rows"]}
    assert rows["ttft_p95"]["verdict"] == "improved"
    assert rows["requests_per_s"]["verdict"] == "regressed"
    assert compare(a, a, 0.1)["regressions"] == []


def _sse_server_response(tokens: int, cut_after: int | None = None) -> list[bytes]:
    """A chunked SSE response like vLLM's, as the byte pieces a server would write."""
    events = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
    events += [
        b'data: {"choices":[{"index":0,"delta":{"content":" tok%d"},"finish_reason":null}]}\n\n' % i
        for i in range(tokens)
    ]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n')
    events.append(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":%d}}\n\n' % tokens)
    events.append(b"data: [DONE]\n\n")
    if cut_after is not None:
        events = events[: cut_after + 1]
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return [head, body + (b"0\r\n\r\n" if cut_after is None else b"")]


@pytest.mark.parametrize("cut_after", [None, 3])
def test_raw_client_decodes_chunks_split_anywhere_and_a_disconnect_is_incomplete(cut_after) -> None:
    """A loopback server writes the response a few bytes at a time (chunk sizes split mid-line);
    cutting the connection mid-stream must give an incomplete record, not a success or a crash."""
    import asyncio

    from observer.loadtest.driver import Driver

    async def main() -> list:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            data = b"".join(_sse_server_response(5, cut_after))
            for i in range(0, len(data), 7):
                writer.write(data[i : i + 7])
                await writer.drain()
                await asyncio.sleep(0)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        driver = Driver(f"http://127.0.0.1:{port}", "m", load_profile("chat"), request_timeout_s=10)
        result = await driver.run(concurrency=1, duration=5, max_requests=2)
        await driver.aclose()
        server.close()
        await server.wait_closed()
        return result.records

    records = asyncio.run(main())
    assert len(records) == 2
    for rec in records:
        if cut_after is None:
            assert rec.outcome == "success", rec
            assert rec.output_tokens == 5 and rec.prompt_tokens == 7 and len(rec.itl) <= 4
            assert rec.ttft is not None and rec.e2e >= rec.ttft and rec.tpot is not None
        else:
            assert (rec.outcome, rec.error) == ("incomplete", "IncompleteReadError"), rec
            assert rec.ttft is not None  # tokens arrived before the cut


def test_an_unmeasured_check_is_named_and_never_read_as_a_slow_decode():
    """Real vLLM can send a short response in one chunk: no inter-token latency can be measured. That
    fails the SLO (it cannot be shown to hold) but must not be diagnosed as "TPOT up, decode is slow"."""
    point = {"ttft": {"p95": 0.5}, "e2e": {"p95": 0.5}, "tpot": {"p95": 0.0}, "itl": {"p95": None}}
    slo = {
        "pass": False,
        "checks": [
            {"key": "ttft_p95", "target": 60.0, "actual": 0.5, "pass": True},
            {"key": "itl_p95", "target": 10.0, "actual": None, "pass": False},
        ],
    }
    text = " ".join(diagnose(point, slo, None, SloSettings()))
    assert "itl_p95 could not be measured" in text
    assert "decode step is slow" not in text
