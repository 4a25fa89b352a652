"""The ``observer`` command: one subcommand per component.

Every subcommand reads the one settings object (``--config`` / ``$OBSERVER_CONFIG`` / environment)
and lets a few flags override it, so a flag and a config key never disagree about a name.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from observer.config import ConfigError, Settings, load_settings
from observer.netutil import parse_listen


class ListenType(click.ParamType):
    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        try:
            return parse_listen(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


LISTEN = ListenType()


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _override(ctx: click.Context, section: str, **values: Any) -> Settings:
    try:
        return _settings(ctx).with_overrides(section, **values)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def serve_app(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="OBSERVER_CONFIG",
    help="YAML settings file (default: ./observer.yaml if present). "
    "Env OBSERVER_<SECTION>__<KEY> overrides it.",
)
@click.version_option(package_name="llm-observer")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """LLM Observer: observability and alerting for self-hosted LLM inference."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.ensure_object(dict)
    ctx.obj["settings"] = settings


@cli.command()
@click.option(
    "--listen", type=LISTEN, default="127.0.0.1:8000", show_default=True, help="Address to serve on."
)
@click.option("--model", help="Served model name (vLLM's --served-model-name).")
@click.option("--num-gpu-blocks", type=int, help="KV cache size in blocks.")
@click.option("--block-size", type=int, help="Tokens per KV block.")
@click.option("--max-num-seqs", type=int, help="Most requests in the running batch.")
@click.option("--max-num-batched-tokens", type=int, help="Token budget per engine step (chunked prefill).")
@click.option("--max-model-len", type=int, help="Context length.")
@click.option(
    "--speed-factor", type=float, help="Multiplier on the step-time model; 0 = no simulated GPU time."
)
@click.option("--data-parallel-rank", type=int, help="Value of vLLM's `engine` label.")
@click.option("--otlp-traces-endpoint", help="OTLP/HTTP collector URL for llm_request spans.")
@click.option("--seed", type=int, help="Seed for output lengths.")
@click.pass_context
def simulate(ctx: click.Context, listen: tuple[str, int], **flags: Any) -> None:
    """A vLLM-like engine: OpenAI API, continuous batching over a paged KV cache, vLLM /metrics and spans."""
    from observer.simulator.server import create_app

    settings = _override(ctx, "simulator", **flags)
    host, port = listen
    click.echo(
        f"simulating vLLM model {settings.simulator.model!r} on http://{host}:{port} "
        f"({settings.simulator.num_gpu_blocks} KV blocks x {settings.simulator.block_size} tokens)",
        err=True,
    )
    serve_app(create_app(settings.simulator), host, port)


def _engine_exporter_help() -> str:
    from exporters.engine.mappings import ENGINES  # the registry names the engines, nothing else does

    titles = "/".join(e.title for e in ENGINES)
    return f"Multi-target exporter: /probe?target=URL normalizes {titles} metrics."


@cli.command("engine-exporter", help=_engine_exporter_help())
@click.option("--listen", type=LISTEN, default="0.0.0.0:9400", show_default=True, help="Address to serve on.")
@click.option(
    "--allow-target",
    "allowed_targets",
    multiple=True,
    help="Allowed probe target: CIDR, host name or re:REGEX (repeatable; replaces the default list).",
)
@click.option(
    "--allow-any-target",
    is_flag=True,
    default=None,
    help="Admit any target outside engine_exporter.denied_targets (metadata, link-local); trusted networks.",
)
@click.option("--timeout", "default_timeout_s", type=float, help="Probe timeout when Prometheus sends none.")
@click.option("--max-body-bytes", type=int, help="Largest /metrics body accepted from an engine.")
@click.option("--max-concurrent-probes", type=int, help="Probes fetching at once; others wait.")
@click.pass_context
def engine_exporter(
    ctx: click.Context, listen: tuple[str, int], allowed_targets: tuple[str, ...], **flags: Any
) -> None:
    from exporters.engine.server import create_app

    settings = _override(ctx, "engine_exporter", allowed_targets=list(allowed_targets) or None, **flags)
    host, port = listen
    click.echo(f"engine exporter on http://{host}:{port}/probe?target=...", err=True)
    serve_app(create_app(settings.engine_exporter, listen=(host, port)), host, port)


@cli.command("gpu-exporter")
@click.option("--listen", type=LISTEN, default="0.0.0.0:9835", show_default=True, help="Address to serve on.")
@click.option("--fake-gpus", type=int, help="Simulate N H100-like GPUs instead of real NVML (demos, tests).")
@click.option("--fake-processes", type=int, default=1, show_default=True, help="Processes per fake GPU.")
@click.option("--fake-load-from", help="A /metrics URL whose running requests drive the fake GPUs' load.")
@click.option(
    "--dcgm-compat/--no-dcgm-compat", default=None, help="Also emit dcgm-exporter's DCGM_FI_* names."
)
@click.option(
    "--native/--no-native", "native_names", default=None, help="Emit the gpu_* names (default: on)."
)
@click.option("--interval", "interval_s", type=float, help="Seconds between NVML samples.")
@click.option("--hostname", help="Hostname label (default: this machine's).")
@click.option(
    "--dcgm-hostname-label",
    type=click.Choice(["Hostname", "hostname", "none"]),
    help="Compat mode's hostname label: Hostname (dcgm-exporter releases, default), hostname (its main).",
)
@click.pass_context
def gpu_exporter(
    ctx: click.Context,
    listen: tuple[str, int],
    fake_gpus: int | None,
    fake_processes: int,
    fake_load_from: str | None,
    **flags: Any,
) -> None:
    """GPU metrics from NVML (nvidia-ml-py), sampled in the background, failure-isolated per GPU."""
    from exporters.gpu.sampler import GpuSampler
    from exporters.gpu.server import MetricsLoadSignal, create_app

    settings = _override(ctx, "gpu_exporter", **flags).gpu_exporter
    if fake_gpus is not None:
        from exporters.gpu.fake import FakeNvml

        load = MetricsLoadSignal(fake_load_from) if fake_load_from else None
        backend: Any = FakeNvml(fake_gpus, processes_per_gpu=fake_processes, load=load)
    else:
        from exporters.gpu.nvml import NvmlUnavailable, PynvmlBackend

        backend = PynvmlBackend()
        try:  # fail fast and clearly on a machine without the driver
            backend.init()
            backend.shutdown()
        except NvmlUnavailable as exc:
            raise click.ClickException(
                f"no NVIDIA driver here ({exc}); use --fake-gpus N to simulate a GPU node"
            ) from None
    if not settings.native_names and not settings.dcgm_compat:
        raise click.UsageError("--no-native needs --dcgm-compat: there would be nothing to export")
    sampler = GpuSampler(backend, settings, native=settings.native_names, dcgm=settings.dcgm_compat)
    host, port = listen
    click.echo(f"GPU exporter on http://{host}:{port}/metrics", err=True)
    serve_app(create_app(sampler), host, port)


@cli.command()
@click.option(
    "--listen", type=LISTEN, default="127.0.0.1:4318", show_default=True, help="Address to serve on."
)
@click.option(
    "--db", "db_url", help="SQLAlchemy URL (default sqlite:///observer.db; postgresql://... in production)."
)
@click.option(
    "--auth-token",
    help="Write token for /v1/traces and feedback (prefer OBSERVER_COLLECTOR__AUTH_TOKEN: "
    "a flag shows in `ps`). Read, metrics and webhook tokens: see README Security.",
)
@click.pass_context
def serve(ctx: click.Context, listen: tuple[str, int], db_url: str | None, auth_token: str | None) -> None:
    """OTLP/HTTP trace receiver + request store + usage /metrics + JSON API + scheduled jobs."""
    from observer.api.guard import run
    from observer.config import redact_url
    from observer.server import create_app

    settings = _override(ctx, "store", url=db_url)
    try:
        settings = settings.with_overrides("collector", auth_token=auth_token)
    except ConfigError as exc:  # e.g. --auth-token "" (an unset variable): refuse, never echo it
        raise click.UsageError(str(exc)) from None
    host, port = listen
    click.echo(
        f"observer serve on http://{host}:{port} (OTLP: POST /v1/traces), "
        f"store {redact_url(settings.store.url)}",
        err=True,
    )
    run(create_app(settings), host, port, settings.collector)


@cli.command()
@click.option("--db", "db_url", help="SQLAlchemy URL of the request store (default: store.url).")
@click.option("--date", "day", help="Report as of this day (YYYY-MM-DD, company time zone; default today).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (dau, wau, mau, stickiness, ...)."
)
@click.option(
    "--csv", "csv_table", type=click.Choice(["departments", "cohorts", "cost", "daily"]), help="CSV export."
)
@click.option("--refresh/--no-refresh", default=True, show_default=True, help="Update the rollups first.")
@click.pass_context
def analytics(
    ctx: click.Context,
    db_url: str | None,
    day: str | None,
    as_json: bool,
    csv_table: str | None,
    refresh: bool,
) -> None:
    """Adoption and cost for analysts: DAU/WAU/MAU, stickiness, retention, cohorts, departments, cost."""
    import datetime as dt
    import json

    from observer.analytics.service import AnalyticsService
    from observer.config import redact_url
    from observer.store.db import Store, StoreUnavailable

    settings = _override(ctx, "store", url=db_url)
    try:
        when = dt.date.fromisoformat(day) if day else None
    except ValueError:
        raise click.BadParameter(f"must be YYYY-MM-DD, got {day!r}", param_hint="--date") from None
    store = Store(settings.store.url)
    try:
        store.migrate()
    except StoreUnavailable as exc:
        raise click.ClickException(
            f"cannot reach the store at {redact_url(settings.store.url)}: {redact_url(str(exc))}"
        ) from None
    service = AnalyticsService(store, settings)
    if refresh:
        done = service.rollups.refresh()
        click.echo(f"rollups refreshed: {len(done.days)} day(s) in {done.seconds:.2f}s", err=True)
    if csv_table:
        click.echo(service.csv(csv_table, when), nl=False)
        return
    summary = service.summary(when)
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else render_summary(summary.to_dict()))


def render_summary(s: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    depts = ", ".join(f"{d['department']} {d['active_users']} users" for d in s["departments"][:8])
    lines = [
        f"as of {s['date']}",
        f"  DAU {s['dau']}   WAU {s['wau']}   MAU {s['mau']}   stickiness (DAU/MAU) {pct(s['stickiness'])}",
        f"  new users today {s['new_users']}   retention m2m {pct(s['retention_m2m'])} (month to date), "
        f"{pct(s['retention_m2m_complete'])} (last complete months)",
        f"  departments (30 days): {depts}",
    ]
    for c in s["cohorts"][-4:]:
        lines.append(
            f"  cohort {c['cohort']} (n={c['size']}): " + " ".join(f"{r:.0%}" for r in c["retention"])
        )
    if s.get("cost"):
        c = s["cost"]
        lines.append(
            f"  cost (30 days, {c['currency']}): self-hosted {c['self_hosted_cost']:,.2f} vs "
            f"{c['public_api_model']} {c['public_api_cost']:,.2f} -> savings {c['savings']:,.2f}; "
            f"per 1M tokens {c['self_hosted_per_million_tokens']} vs {c['public_api_per_million_tokens']}"
        )
    return "\n".join(lines)


@cli.command()
@click.option("--target", required=True, help="Base URL of an OpenAI-compatible server (http://host:port).")
@click.option("--model", help="Model name to request (default: the first from /v1/models).")
@click.option("--users", type=int, default=50, show_default=True, help="Synthetic users in the population.")
@click.option(
    "--rps", type=float, default=2.0, show_default=True, help="Mean request rate (Poisson arrivals)."
)
@click.option("--duration", type=float, default=30.0, show_default=True, help="Seconds to send for.")
@click.option(
    "--max-requests", type=int, help="Stop after this many requests (default: unbounded within duration)."
)
@click.option("--concurrency", type=int, default=256, show_default=True, help="Most requests in flight.")
@click.option("--mix", default="chat=0.6,rag=0.25,code=0.15", show_default=True, help="Workload mix.")
@click.option(
    "--otlp-traces-endpoint", help="Send gateway spans (user, department) to this OTLP/HTTP collector."
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def load(**opts: Any) -> None:
    """Drive an OpenAI-compatible endpoint with synthetic users (bounded in requests and time)."""
    import asyncio
    import json

    from observer.load.generator import LoadConfig, run_load

    as_json = opts.pop("as_json")
    try:
        cfg = LoadConfig.from_cli(**opts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    summary = asyncio.run(run_load(cfg))
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.render())


@cli.command()
@click.option("--engines", type=int, default=2, show_default=True, help="Simulated engines to start.")
@click.option("--users", type=int, default=300, show_default=True, help="Synthetic users per engine.")
@click.option("--rps", type=float, default=6.0, show_default=True, help="Total request rate.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
@click.option(
    "--tsdb",
    type=click.Choice(["prometheus", "victoriametrics"]),
    default="prometheus",
    show_default=True,
    help="Metrics store: Prometheus, or vmagent + VictoriaMetrics + vmalert (same scrape config and rules).",
)
def demo(engines: int, users: int, rps: float, duration: float | None, tsdb: str) -> None:
    """The stack on this machine without Docker, with synthetic users and a live terminal view."""
    import asyncio

    from observer.demo import run_demo

    asyncio.run(run_demo(engines=engines, users=users, rps=rps, duration=duration, tsdb=tsdb))


def _register_loadtest() -> None:
    from observer.loadtest.cli import loadtest

    cli.add_command(loadtest)


_register_loadtest()


def main() -> None:
    try:
        cli(obj={})
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
