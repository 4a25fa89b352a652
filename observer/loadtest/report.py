"""report.json, a self-contained report.html (plots embedded as PNG data URIs) and the terminal table."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"))


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report))
    return json_path, html_path


# --- plots -----------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _points(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report.get("points") or [report]


def _load_axis(report: dict[str, Any]) -> tuple[str, list[float]]:
    points = _points(report)
    if report.get("mode") == "concurrency":
        return "concurrent requests", [p.get("level", 0) for p in points]
    return "offered load (req/s)", [p.get("rate") or p.get("level", 0) for p in points]


def plot_latency(report: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    xlabel, xs = _load_axis(report)
    points = _points(report)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    styles = {"p50": ":", "p95": "-", "p99": "--"}
    colors = {"ttft": "tab:blue", "tpot": "tab:green", "e2e": "tab:red", "itl": "tab:purple"}
    for metric in ("ttft", "e2e", "tpot"):
        for q, style in styles.items():
            ys = [(p.get(metric) or {}).get(q) for p in points]
            pairs = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
            if pairs:
                ax.plot(
                    *zip(*pairs, strict=False),
                    style,
                    marker="o",
                    color=colors[metric],
                    label=f"{metric.upper()} {q}",
                )
    for key, target in (report.get("slo_targets") or {}).items():
        metric = key.split("_")[0]
        if metric in ("ttft", "e2e", "tpot"):
            ax.axhline(target, color=colors[metric], alpha=0.35, linewidth=1)
            ax.annotate(
                f"SLO {key}",
                (1.0, target),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                ha="right",
                va="bottom",
                color=colors[metric],
            )
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seconds (log)")
    ax.set_title("Latency percentiles vs load")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, ncol=3)
    return _png(fig)


def plot_throughput(report: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    xlabel, xs = _load_axis(report)
    points = _points(report)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    rps = [(p.get("throughput") or {}).get("requests_per_s") for p in points]
    toks = [(p.get("throughput") or {}).get("output_tokens_per_s") for p in points]
    ax.plot(xs, rps, marker="o", color="tab:blue", label="served req/s (success)")
    passed = [bool((p.get("slo") or {}).get("pass")) for p in points]
    ax.scatter(
        [x for x, ok in zip(xs, passed, strict=False) if not ok],
        [y for y, ok in zip(rps, passed, strict=False) if not ok],
        s=160,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=2,
        zorder=5,
        label="SLO failed",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("requests/s", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, toks, marker="s", color="tab:orange", label="output tokens/s")
    ax2.set_ylabel("output tokens/s", color="tab:orange")
    cap = report.get("capacity")
    if cap:
        ax.axvline(cap["offered_requests_per_s"], color="tab:green", linestyle="--")
        ax.scatter(
            [cap["offered_requests_per_s"]],
            [cap["requests_per_s"]],
            marker="*",
            s=260,
            color="tab:green",
            zorder=6,
            label=f"capacity {cap['requests_per_s']:.2f} req/s",
        )
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    ax.set_title("Throughput vs load")
    ax.grid(True, alpha=0.25)
    return _png(fig)


def plot_timeline(report: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    timeline = report.get("timeline") or {}
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ttft = timeline.get("ttft") or []
    if ttft:
        ax.scatter(
            [t for t, _ in ttft],
            [v for _, v in ttft],
            s=6,
            alpha=0.5,
            color="tab:blue",
            label="TTFT per request",
        )
    ax.set_xlabel("time since start (s), by request send time")
    ax.set_ylabel("TTFT (s)", color="tab:blue")
    server = timeline.get("server") or []
    if server:
        ax2 = ax.twinx()
        kv = [(s["t"], s["kv"] * 100) for s in server if s.get("kv") is not None]
        if kv:
            ax2.plot([t for t, _ in kv], [v for _, v in kv], color="tab:red", label="KV cache usage %")
        ax2.set_ylim(0, 105)
        ax2.set_ylabel("KV cache usage (%)", color="tab:red")
        ax2.legend(fontsize=7, loc="upper right")
    else:
        ax.text(
            0.5,
            0.95,
            "no engine metrics (pass --metrics)",
            transform=ax.transAxes,
            ha="center",
            fontsize=8,
            color="gray",
        )
    for p in report.get("points") or []:
        if p.get("window"):
            ax.axvline(p["window"][0], color="gray", alpha=0.2, linewidth=0.8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("TTFT over time against KV cache usage")
    ax.grid(True, alpha=0.25)
    return _png(fig)


# --- html ------------------------------------------------------------------------------------------


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_target(key: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2%}" if key == "success" else _fmt_s(v)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
td:first-child{text-align:left}.ok td:last-child{color:#176117}
.bad td:last-child{color:#b00020;font-weight:bold}
.big{font-size:1.2em}figure{display:inline-block;margin:.5em}img{max-width:100%}
"""


def render_html(report: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    e = html.escape
    plots = [
        ("Latency percentiles vs load", plot_latency(report)),
        ("Throughput vs load", plot_throughput(report)),
        ("TTFT over time against KV cache usage", plot_timeline(report)),
    ]
    slo = report.get("slo") or {"pass": False, "checks": []}
    verdict = "PASS" if _passed(report) else "FAIL"
    rows = "".join(
        f"<tr><td>{e(label)}</td>"
        + "".join(f"<td>{_fmt_s((report.get(key) or {}).get(q))}</td>" for q in ("p50", "p95", "p99"))
        + "</tr>"
        for key, label in LATENCIES
    )
    checks = "".join(
        f"<tr class='{'ok' if c['pass'] else 'bad'}'><td>{e(c['key'])}</td>"
        f"<td>{_fmt_target(c['key'], c['target'])}</td><td>{_fmt_target(c['key'], c['actual'])}</td>"
        f"<td>{'pass' if c['pass'] else 'FAIL'}</td></tr>"
        for c in slo["checks"]
    )
    tp = report.get("throughput") or {}
    counts = report.get("counts") or {}
    server = report.get("server")
    server_html = ""
    if server:
        server_html = (
            "<h2>Engine</h2><table>"
            + "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in server.items())
            + "</table>"
        )
    cap_html = ""
    cap = report.get("capacity")
    if report.get("mode") == "sweep":
        if cap:
            cost = report.get("cost_per_million_tokens") or {}
            cap_html = (
                f"<h2>Capacity</h2><p class='big'>{cap['requests_per_s']:.2f} req/s, "
                f"{cap['output_tokens_per_s']:.0f} output tokens/s within the SLO "
                f"(offered {cap['offered_requests_per_s']:g} req/s).</p>"
            )
            if cost:
                cap_html += (
                    f"<p>Cost per million tokens at capacity on {cost['gpus']} GPU(s): "
                    f"<b>{cost['self_hosted']:.4f} {e(cost['currency'])}</b> self-hosted vs "
                    f"<b>{cost['public_api']:.4f} {e(cost['currency'])}</b> on {e(cost['public_api_model'])} "
                    f"for the same token mix ({cost['input_share']:.0%} input).</p>"
                )
        else:
            cap_html = "<h2>Capacity</h2><p class='big'>No load level met every SLO.</p>"
        cap_html += (
            "<h2>Sweep points</h2><table><tr><th>offered req/s</th><th>served req/s</th>"
            "<th>TTFT p95</th><th>TPOT p95</th><th>E2E p95</th><th>success</th><th>KV peak</th>"
            "<th>SLO</th></tr>"
        )
        for p in report.get("points") or []:
            kv = (p.get("server") or {}).get("kv_cache_usage_peak")
            verdict_txt = (
                "pass" if p["slo"]["pass"] else "FAIL" + (" (early stop)" if p.get("stopped_early") else "")
            )
            cap_html += (
                f"<tr class='{'ok' if p['slo']['pass'] else 'bad'}'><td>{p['rate']:g}</td>"
                f"<td>{p['throughput']['requests_per_s']:.2f}</td><td>{_fmt_s(p['ttft']['p95'])}</td>"
                f"<td>{_fmt_s(p['tpot']['p95'])}</td><td>{_fmt_s(p['e2e']['p95'])}</td>"
                f"<td>{(p.get('success_ratio') or 0):.1%}</td>"
                f"<td>{'n/a' if kv is None else f'{kv:.0%}'}</td>"
                f"<td>{verdict_txt}</td></tr>"
            )
        cap_html += "</table>"
    diagnosis = "".join(f"<li>{e(d)}</li>" for d in report.get("diagnosis") or [])
    imgs = "".join(
        f"<figure><img alt='{e(title)}' src='{src}'><figcaption>{e(title)}</figcaption></figure>"
        for title, src in plots
    )
    profile = report.get("profile") or {}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Load test {e(str(report.get("model")))}: {verdict}</title>
<style>{_CSS}
.verdict{{font-size:1.6em;font-weight:bold;color:{"#176117" if verdict == "PASS" else "#b00020"}}}
</style></head><body>
<h1>Load test report <span class="verdict">{verdict}</span></h1>
<p>Target <code>{e(str(report.get("target")))}</code>, model <code>{e(str(report.get("model")))}</code>,
profile <b>{e(str(profile.get("name")))}</b>, mode <b>{e(str(report.get("mode")))}</b>,
{e(str(report.get("created")))}.</p>
<h2>Diagnosis</h2><ul>{diagnosis}</ul>
{cap_html}
<h2>SLO</h2><table><tr><th>key</th><th>target</th><th>actual</th><th>verdict</th></tr>{checks}</table>
<h2>Latency</h2><table><tr><th></th><th>p50</th><th>p95</th><th>p99</th></tr>{rows}</table>
<h2>Throughput</h2><p>{tp.get("requests_per_s", 0):.2f} req/s,
{tp.get("output_tokens_per_s", 0):.1f} output tokens/s, {tp.get("total_tokens_per_s", 0):.1f} total tokens/s.
Requests: {counts.get("success", 0)} success, {counts.get("error", 0)} error,
{counts.get("incomplete", 0)} incomplete.</p>
{server_html}
<h2>Plots</h2>{imgs}
<script>
// Marks the page once every plot decoded (used by CI screenshots; harmless in a browser).
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-plots-loaded", ok + "/" + imgs.length);
}});
</script>
</body></html>
"""


def _passed(report: dict[str, Any]) -> bool:
    if report.get("mode") == "sweep":
        return bool(report.get("capacity"))
    return bool((report.get("slo") or {}).get("pass"))


# --- terminal --------------------------------------------------------------------------------------


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(
        title=f"Load test: {report.get('model')} ({report.get('mode')}, "
        f"profile {(report.get('profile') or {}).get('name')})"
    )
    table.add_column("metric")
    for q in ("p50", "p95", "p99"):
        table.add_column(q, justify="right")
    for key, label in LATENCIES:
        d = report.get(key) or {}
        table.add_row(label, *(_fmt_s(d.get(q)) for q in ("p50", "p95", "p99")))
    console.print(table)
    tp = report.get("throughput") or {}
    counts = report.get("counts") or {}
    console.print(
        f"throughput {tp.get('requests_per_s', 0):.2f} req/s  "
        f"{tp.get('output_tokens_per_s', 0):.1f} out tok/s  "
        f"{tp.get('total_tokens_per_s', 0):.1f} total tok/s   success {counts.get('success', 0)}  "
        f"error {counts.get('error', 0)}  incomplete {counts.get('incomplete', 0)}"
    )
    server = report.get("server")
    if server:
        kv = server.get("kv_cache_usage_peak")
        console.print(
            f"engine: KV cache peak {'n/a' if kv is None else f'{kv:.0%}'}  waiting peak "
            f"{server.get('requests_waiting_peak')}  preemptions {server.get('preemptions')}"
        )
    slo = Table(title="SLO")
    for col in ("key", "target", "actual", "verdict"):
        slo.add_column(col)
    for c in (report.get("slo") or {}).get("checks", []):
        slo.add_row(
            c["key"],
            _fmt_target(c["key"], c["target"]),
            _fmt_target(c["key"], c["actual"]),
            "[green]pass[/]" if c["pass"] else "[bold red]FAIL[/]",
        )
    console.print(slo)
    if report.get("mode") == "sweep":
        cap = report.get("capacity")
        if cap:
            console.print(
                f"capacity: {cap['requests_per_s']:.2f} req/s, {cap['output_tokens_per_s']:.0f} out tok/s "
                f"(offered {cap['offered_requests_per_s']:g} req/s)"
            )
            cost = report.get("cost_per_million_tokens")
            if cost:
                console.print(
                    f"cost per 1M tokens at capacity: {cost['self_hosted']:.4f} {cost['currency']} "
                    f"self-hosted vs {cost['public_api']:.4f} on {cost['public_api_model']}"
                )
        else:
            console.print("[bold red]capacity: no load level met every SLO[/]")
    for line in report.get("diagnosis") or []:
        console.print(f"- {line}")
    console.print(f"verdict: {'[green]PASS[/]' if _passed(report) else '[bold red]FAIL[/]'}")


# --- compare ---------------------------------------------------------------------------------------

# (label, path, direction): +1 = higher is better, -1 = lower is better.
COMPARED: tuple[tuple[str, tuple[str, ...], int], ...] = (
    *((f"{m}_{q}", (m, q), -1) for m in ("ttft", "tpot", "itl", "e2e") for q in ("p50", "p95", "p99")),
    ("requests_per_s", ("throughput", "requests_per_s"), +1),
    ("output_tokens_per_s", ("throughput", "output_tokens_per_s"), +1),
    ("total_tokens_per_s", ("throughput", "total_tokens_per_s"), +1),
    ("success_ratio", ("success_ratio",), +1),
    ("capacity_requests_per_s", ("capacity", "requests_per_s"), +1),
    ("capacity_output_tokens_per_s", ("capacity", "output_tokens_per_s"), +1),
    ("cost_self_hosted_per_million", ("cost_per_million_tokens", "self_hosted"), -1),
    ("kv_cache_usage_peak", ("server", "kv_cache_usage_peak"), 0),
    ("preemptions", ("server", "preemptions"), -1),
)


def _get(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = report
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, int | float) and not isinstance(node, bool) else None


def compare(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """B against A (the baseline): per metric the change and a verdict; regressions first."""
    rows = []
    for label, path, direction in COMPARED:
        va, vb = _get(a, path), _get(b, path)
        if va is None and vb is None:
            continue
        change = None
        verdict = "same"
        if va is None or vb is None:
            verdict = "missing" if vb is None else "new"
        else:
            if va != 0:
                change = (vb - va) / abs(va)
            elif vb != 0:
                change = float("inf") if vb > 0 else float("-inf")
            else:
                change = 0.0
            if direction and abs(change) > tolerance:
                verdict = "improved" if change * direction > 0 else "regressed"
            elif not direction and abs(change) > tolerance:
                verdict = "changed"
        rows.append({"metric": label, "a": va, "b": vb, "change": change, "verdict": verdict})
    slo_a, slo_b = _passed(a), _passed(b)
    if slo_a and not slo_b:
        rows.insert(0, {"metric": "slo_pass", "a": 1, "b": 0, "change": None, "verdict": "regressed"})
    elif slo_b and not slo_a:
        rows.insert(0, {"metric": "slo_pass", "a": 0, "b": 1, "change": None, "verdict": "improved"})
    regressions = [r["metric"] for r in rows if r["verdict"] == "regressed"]
    return {
        "tolerance": tolerance,
        "rows": rows,
        "regressions": regressions,
        "verdict": "regressed" if regressions else "ok",
    }


def print_compare(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"B vs A (tolerance {result['tolerance']:.0%})")
    for col in ("metric", "A", "B", "change", "verdict"):
        table.add_column(col, justify="right" if col in ("A", "B", "change") else "left")
    style = {"regressed": "bold red", "improved": "green", "changed": "yellow"}
    for r in result["rows"]:
        change = "" if r["change"] is None else f"{r['change']:+.1%}"

        def fmt(v):
            return "n/a" if v is None else f"{v:.4g}"

        verdict = r["verdict"]
        table.add_row(
            r["metric"],
            fmt(r["a"]),
            fmt(r["b"]),
            change,
            f"[{style[verdict]}]{verdict}[/]" if verdict in style else verdict,
        )
    console.print(table)
    if result["regressions"]:
        console.print(f"[bold red]regressed:[/] {', '.join(result['regressions'])}")
    else:
        console.print("[green]no regression[/]")
