"""The ``observer loadtest`` command group (registered in observer/cli.py).

Exit codes, CI-friendly like k6 thresholds: 0 every SLO holds (a sweep: some level met them all),
1 an SLO failed (``compare``: a metric regressed), 2 usage error or the target could not be reached.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


@click.group("loadtest", invoke_without_command=True)
@click.option("--target", help="Base URL of an OpenAI-compatible server (http://host:port).")
@click.option("--model", help="Model to request (default: the first from /v1/models).")
@click.option(
    "--profile",
    default="chat",
    show_default=True,
    help="chat|rag|tools|code|mixed or a FILE.yaml with scenarios and length distributions.",
)
@click.option("--rps", type=float, help="Open loop: Poisson arrivals at this mean rate (req/s).")
@click.option("--concurrency", type=int, help="Closed loop: this many requests always in flight.")
@click.option("--sweep", is_flag=True, help="Find the highest rate that meets every SLO (capacity).")
@click.option("--duration", type=float, help="Seconds to send for (per level in a sweep).")
@click.option("--max-requests", type=int, help="Stop a level after this many requests.")
@click.option(
    "--slo",
    help="KEY=VALUE,... over the settings' SLO: ttft_p95 ttft_p99 tpot_p95 itl_p95 e2e_p95 e2e_p99 "
    "(seconds), success (ratio).",
)
@click.option("--metrics", "metrics_url", help="The engine's /metrics (or the engine exporter's probe URL).")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Write report.json and report.html here."
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed for arrivals and prompts.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the table.")
@click.pass_context
def loadtest(ctx: click.Context, **opts: Any) -> None:
    """Load-test an inference server against an SLO; sweep for capacity and cost per token.

    \b
    observer loadtest --target http://gpu1:8000 --profile mixed --rps 5 --metrics http://gpu1:8000/metrics
    observer loadtest --target http://gpu1:8000 --sweep --slo ttft_p95=1,tpot_p95=0.05 --out qual/
    observer loadtest compare before/report.json after/report.json
    """
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    import httpx

    from observer.loadtest.analysis import default_slo, parse_slo
    from observer.loadtest.profiles import load_profile
    from observer.loadtest.report import print_table, write_report
    from observer.loadtest.runner import LoadtestOptions, exit_code, run_loadtest

    settings = ctx.obj["settings"]
    if not opts["target"]:
        raise click.UsageError("--target is required")
    modes = [opts["rps"] is not None, opts["concurrency"] is not None, opts["sweep"]]
    if sum(modes) != 1:
        raise click.UsageError("give exactly one of --rps, --concurrency or --sweep")
    if opts["rps"] is not None and opts["rps"] <= 0:
        raise click.UsageError("--rps must be positive")
    if opts["concurrency"] is not None and opts["concurrency"] < 1:
        raise click.UsageError("--concurrency must be at least 1")
    if opts["duration"] is not None and opts["duration"] <= 0:
        raise click.UsageError("--duration must be positive")
    if opts["max_requests"] is not None and opts["max_requests"] < 1:
        raise click.UsageError("--max-requests must be at least 1")
    target = opts["target"]
    if not target.startswith(("http://", "https://")):
        target = "http://" + target
    try:
        profile = load_profile(opts["profile"])
        slo = parse_slo(opts["slo"], default_slo(settings.slo, settings.loadtest))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run_opts = LoadtestOptions(
        target=target,
        profile=profile,
        slo=slo,
        model=opts["model"],
        rps=opts["rps"],
        concurrency=opts["concurrency"],
        sweep=opts["sweep"],
        duration=opts["duration"] or settings.loadtest.duration_s,
        max_requests=opts["max_requests"],
        metrics_url=opts["metrics_url"],
        seed=opts["seed"],
        progress=not opts["as_json"],
    )
    try:
        report = asyncio.run(run_loadtest(run_opts, settings))
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach {target}: {exc!r}", err=True)
        sys.exit(2)
    if opts["out_dir"]:
        json_path, html_path = write_report(report, Path(opts["out_dir"]))
        click.echo(f"wrote {json_path} and {html_path}", err=True)
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
    else:
        print_table(report)
    sys.exit(exit_code(report))


@loadtest.command("compare")
@click.argument("baseline", type=click.Path(exists=True, dir_okay=False))
@click.argument("candidate", type=click.Path(exists=True, dir_okay=False))
@click.option("--tolerance", type=float, help="Relative change that counts (default: settings).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.pass_context
def compare_cmd(
    ctx: click.Context, baseline: str, candidate: str, tolerance: float | None, as_json: bool
) -> None:
    """What changed from BASELINE (A) to CANDIDATE (B) report.json, with a verdict per metric.

    Exits 1 when a metric regressed beyond the tolerance or the SLO verdict went from pass to fail.
    """
    from observer.loadtest.report import compare, print_compare

    settings = ctx.find_root().obj["settings"]
    reports = []
    for path in (baseline, candidate):
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"{path}: not a report.json: {exc}") from None
    tol = settings.loadtest.compare_tolerance if tolerance is None else tolerance
    result = compare(reports[0], reports[1], tol)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_compare(result)
    sys.exit(1 if result["regressions"] else 0)
