"""One settings object for every component.

Sources, later ones winning:
  1. defaults in the models below (everything works with no file),
  2. a YAML file: ``--config PATH``, else ``$OBSERVER_CONFIG``, else ``./observer.yaml`` if present,
  3. environment variables ``OBSERVER_<SECTION>__<KEY>`` (e.g. ``OBSERVER_SIMULATOR__NUM_GPU_BLOCKS=512``),
  4. command-line flags (applied by the CLI through :meth:`Settings.with_overrides`).

Unknown keys are errors (a typo in a threshold must not silently fall back to a default), and every
error names the dotted key and the offending value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "OBSERVER_"
DEFAULT_CONFIG_FILE = "observer.yaml"


class ConfigError(ValueError):
    """A configuration problem, worded for the person who has to fix the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Keys whose values are credentials: never echoed in errors, taken verbatim from the environment, and
# refused when YAML would have cut them at " #" (see _check_secret_comments).
SECRET_KEYS = frozenset({"auth_token", "read_token", "metrics_token", "webhook_token", "pseudonymize_key"})


def _secret_token(value: Any) -> str:
    if not isinstance(value, str):
        # YAML reads `auth_token: 0123` as the number 83: a silently different secret.
        raise ValueError("must be a quoted string (YAML read it as a number or other non-string)")
    if not value.strip():
        raise ValueError("is empty: an unset ${VAR}? Remove the key to turn this off")
    if "${" in value or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("contains whitespace, a control character or an unexpanded ${VAR}")
    return value


SecretToken = Annotated[Any, BeforeValidator(_secret_token)]


class SimulatorSettings(_Section):
    """The vLLM-like engine: KV cache geometry, scheduler limits and the step-time model.

    Step time (seconds) = speed_factor * (step_base_s + step_per_seq_s * running
                                          + prefill_per_token_s * prefill tokens computed this step).
    speed_factor 0 turns the time model off: the engine steps as fast as the CPU allows.
    """

    model: str = "Qwen/Qwen3-8B"
    num_gpu_blocks: int = Field(2048, ge=1)
    block_size: int = Field(16, ge=1, le=1024)
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    max_model_len: int = Field(32768, ge=16)
    step_base_s: float = Field(0.006, ge=0)
    step_per_seq_s: float = Field(0.00012, ge=0)
    prefill_per_token_s: float = Field(0.00002, ge=0)
    speed_factor: float = Field(1.0, ge=0)
    enable_prefix_caching: bool = True
    # Mean output length (tokens) at which the simulated model emits EOS when the request does not
    # force a length (ignore_eos / min_tokens). Lognormal around it, deterministic per prompt.
    mean_output_tokens: int = Field(180, ge=1)
    seed: int = 0
    data_parallel_rank: int = Field(0, ge=0)
    otlp_traces_endpoint: str | None = None

    @model_validator(mode="after")
    def _batch_fits_a_sequence(self) -> Self:
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError("max_num_batched_tokens must be at least block_size")
        return self


class EngineExporterSettings(_Section):
    """The multi-target engine exporter (``/probe?target=``)."""

    # SSRF guard. The default admits loopback and the RFC 1918 ranges where self-hosted engines live
    # and refuses everything else. IPv6 ULA (fc00::/7) is not admitted by default: AWS serves instance
    # metadata at fd00:ec2::254; add your own ULA prefix (e.g. "fd12:3456:789a::/48") to allow engines there.
    allowed_targets: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "localhost",
        ]
    )
    # Refused even when an allowed entry or allow_any_target covers them: metadata services
    # (169.254.169.254, fd00:ec2::254, 100.100.100.200), link-local, "this host". Edit to allow one.
    denied_targets: list[str] = Field(
        default_factory=lambda: [
            "169.254.0.0/16",
            "fe80::/10",
            "fd00:ec2::/32",
            "100.100.100.200/32",
            "0.0.0.0/8",
            "::/128",
        ]
    )
    allow_any_target: bool = False  # any target outside denied_targets; only on a trusted network
    default_timeout_s: float = Field(10.0, gt=0)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Fetches at once (sockets and bodies in memory). Targets whose last probe failed or that never
    # answered share at most half of them, so dead targets cannot starve live ones.
    max_concurrent_probes: int = Field(64, ge=2)
    max_probes_per_target: int = Field(2, ge=1)  # fetches at once per engine address
    # Wanted samples read from one exposition; past it the probe fails (too_many_series).
    max_series: int = Field(50_000, ge=100)
    parse_threads: int = Field(4, ge=1)  # parsing runs off the event loop, in these threads


class GpuExporterSettings(_Section):
    """The NVML GPU exporter."""

    interval_s: float = Field(1.0, gt=0)
    nvml_call_timeout_s: float = Field(2.0, gt=0)
    dcgm_compat: bool = False
    native_names: bool = True
    # Processes beyond this many per GPU fold into process="other" to bound cardinality.
    max_processes_per_gpu: int = Field(16, ge=1)
    hostname: str | None = None
    # Compat mode's hostname label: dcgm-exporter releases (<= 4.5.3-4.8.2) spell it "Hostname", its
    # main branch "hostname" (#655); "none" leaves it out like its -n/--no-hostname.
    dcgm_hostname_label: str = Field("Hostname", pattern="^(Hostname|hostname|none)$")
    # GPM activity is the mean between two samples; much closer ones measure too little (nvidia_gpu_exporter
    # drops pairs under 1 s). Half the default interval, so a cycle that starts a little early still samples.
    gpm_min_span_s: float = Field(0.5, ge=0)
    # XID codes whose counters exist (at 0) from the start, so the first event is an increase that
    # increase()/rate() can see. Hardware-side codes: ECC/row remap, NVLink, fallen off the bus, GSP.
    critical_xids: list[int] = Field(default_factory=lambda: [48, 63, 64, 74, 79, 92, 94, 95, 119, 120])


# Defaults of CollectorSettings.user_attributes / department_attributes (and of the collector's
# MappingRules): OpenTelemetry (user.id, enduser.id), LiteLLM (llm.user, metadata.*), common team keys.
USER_ATTRIBUTES = (
    "user.id",
    "enduser.id",
    "llm.user",
    "metadata.user_api_key_end_user_id",
    "metadata.user_api_key_user_id",
    "user.hash",
)
DEPARTMENT_ATTRIBUTES = (
    "department",
    "user.department",
    "team",
    "enduser.department",
    "org.unit",
    "metadata.user_api_key_team_alias",
)


class CollectorSettings(_Section):
    """The OTLP/HTTP trace receiver inside ``observer serve``."""

    # Bearer tokens of `observer serve` (README "Security"). Auth is on as soon as one is set; then every
    # endpoint but /healthz needs its token, and one whose token is unset answers 401 (fail closed).
    # auth_token is the WRITE token: /v1/traces and feedback (and the webhook when webhook_token is unset).
    auth_token: SecretToken | None = None
    read_token: SecretToken | None = None  # GET /api/v1/* (and /metrics when metrics_token is unset)
    metrics_token: SecretToken | None = None  # GET /metrics, Prometheus' own credential
    webhook_token: SecretToken | None = None  # POST /api/v1/alerts/webhook, Alertmanager's credential
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # OTLP body after decompression (OTLP spec)
    max_api_body_bytes: int = Field(1024 * 1024, ge=1024)  # webhook and feedback bodies
    # Estimated memory of all bodies being read, decoded and ingested at once (body bytes times the
    # expansion measured for the worst body of each encoding); beyond it a request gets 429 + Retry-After.
    inflight_budget_bytes: int = Field(512 * 1024 * 1024, ge=1024 * 1024)
    protobuf_expansion: float = Field(60.0, ge=1)  # 8 MiB of empty attributes decode to ~220 MiB
    json_expansion: float = Field(48.0, ge=1)  # 8 MiB of `[{},{},..]` parse to ~215 MiB, then to protobuf
    max_spans_per_request: int = Field(20_000, ge=1)  # counted before the full decode; 413 beyond
    max_json_depth: int = Field(64, ge=8)  # OTLP's own nesting is ~12 deep; deeper is AnyValue abuse
    # Objects + arrays in one OTLP/JSON body (~45 per span): protobuf's JSON mapping is pure Python
    # (~30k objects/s), so this bounds the seconds one JSON body can hold the GIL. Protobuf has no such cost.
    max_json_nodes: int = Field(100_000, ge=1000)
    max_concurrent_ingests: int = Field(4, ge=1)  # decode+map+store at once (CPU-bound under the GIL)
    retry_after_s: int = Field(5, ge=1)
    # Slow clients: a request head must arrive within header_timeout_s and its body within
    # body_timeout_s (408); idle keep-alive connections close after keepalive_timeout_s. Beyond
    # max_connections the connection waiting longest for its request head is closed.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(2048, ge=16)
    max_header_bytes: int = Field(64 * 1024, ge=4096)
    # Span attributes that carry the user, first match wins; looked up on the request's spans, then on
    # their ancestors in the trace (the app's own request span), so baggage copied onto spans counts.
    # Defaults cover OpenTelemetry (user.id, enduser.id) and LiteLLM (llm.user, metadata.*).
    user_attributes: list[str] = Field(default_factory=lambda: list(USER_ATTRIBUTES))
    # Span attributes that carry the department/team, first match wins (same lookup as users).
    department_attributes: list[str] = Field(default_factory=lambda: list(DEPARTMENT_ATTRIBUTES))
    # Models the fleet serves, always kept as `model` label values. Beyond these, the first
    # top_models models an engine confirmed (on its span, or in the response it sent) keep their
    # name; a model name that only a caller typed folds into "other" (callers control that string).
    models: list[str] = Field(default_factory=list)
    top_models: int = Field(20, ge=0)
    # Spans are kept this long to join halves that arrive late (app spans flush after the call's).
    join_window_s: float = Field(3600.0, ge=60)
    # A trace keeps at most this many spans (each batch re-reads the traces it touches); further spans
    # of it are refused with a reason (OTLP partial success). A request chain needs a handful.
    max_spans_per_trace: int = Field(2000, ge=16)
    # Spans starting further in the future than this (clock skew) are rejected with a reason.
    max_clock_skew_s: float = Field(300.0, ge=0)
    # Departments always kept as labels; beyond these, the first top_departments distinct values seen
    # keep their name and the rest fold into "other" (bounded Prometheus cardinality).
    departments: list[str] = Field(default_factory=list)
    top_departments: int = Field(20, ge=0)
    # Keyed HMAC-SHA256 of user ids before storage when set (pseudonymization); None = store as given.
    pseudonymize_key: str | None = None
    # A request that is not settled (its engine half or an ancestor may still come) is counted as it
    # is once no span of it has arrived for this long.
    join_grace_s: float = Field(10.0, ge=0)


class StoreSettings(_Section):
    url: str = "sqlite:///observer.db"
    retention_days: int = Field(30, ge=1)  # raw request rows; daily rollups are kept
    # How long a SQLite write waits for a lock held elsewhere (a backup, another writer) before the
    # collector answers 503 + Retry-After instead of holding the sender's request open.
    sqlite_busy_timeout_s: float = Field(5.0, gt=0)
    cleanup_interval_s: float = Field(3600, gt=0)


class PublicApiPrice(_Section):
    """What the same tokens would cost on a public API (per 1M tokens)."""

    model: str = "gpt-4o"
    input_per_million: float = Field(2.50, ge=0)
    output_per_million: float = Field(10.00, ge=0)


class CostSettings(_Section):
    """Self-hosted cost: GPU-hours (rented, or hardware amortized) plus energy."""

    currency: str = "USD"
    reference: PublicApiPrice = Field(default_factory=PublicApiPrice)
    gpus: int = Field(8, ge=0)  # GPUs serving the assistant
    # Either a GPU-hour price (cloud/colo) or hardware amortization; the price wins when both are set.
    gpu_hour_price: float | None = Field(None, ge=0)
    gpu_purchase_price: float = Field(30_000, ge=0)
    amortization_years: float = Field(4, gt=0)
    hosting_per_gpu_hour: float = Field(0.0, ge=0)  # rack, cooling, network, staff share
    electricity_per_kwh: float = Field(0.15, ge=0)
    # Energy comes from gpu_energy_joules_total in Prometheus when prometheus_url is set; otherwise
    # this average draw per GPU is assumed.
    assumed_gpu_power_watts: float = Field(450, ge=0)
    prometheus_url: str | None = None

    @property
    def gpu_hour_cost(self) -> float:
        if self.gpu_hour_price is not None:
            return self.gpu_hour_price
        return self.gpu_purchase_price / (self.amortization_years * 365 * 24) + self.hosting_per_gpu_hour


class AnalyticsSettings(_Section):
    timezone: str = "UTC"  # the company's day boundaries (IANA name)
    refresh_interval_s: float = Field(300, gt=0)
    top_departments: int = Field(20, ge=1)  # department gauges beyond this fold into "other"
    feedback_keep_comments: bool = False  # free text is content: dropped unless explicitly enabled
    feedback_reasons: list[str] = Field(
        default_factory=lambda: ["wrong", "incomplete", "slow", "unsafe", "off_topic", "helpful", "other"]
    )

    @model_validator(mode="after")
    def _known_timezone(self) -> Self:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {self.timezone!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return self


class BurnWindow(_Section):
    """One multi-window multi-burn-rate pair (SRE workbook, table 5-8)."""

    long: str
    short: str
    factor: float = Field(gt=0)
    severity: str = Field(pattern="^(critical|warning)$")
    for_: str = Field("0m", alias="for")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _workbook_windows() -> list[BurnWindow]:
    return [
        BurnWindow(long="1h", short="5m", factor=14.4, severity="critical", **{"for": "2m"}),
        BurnWindow(long="6h", short="30m", factor=6, severity="critical", **{"for": "15m"}),
        BurnWindow(long="1d", short="2h", factor=3, severity="warning", **{"for": "1h"}),
        BurnWindow(long="3d", short="6h", factor=1, severity="warning", **{"for": "3h"}),
    ]


class SloSettings(_Section):
    """Targets and thresholds shared by alerts and dashboards (one source of truth).

    The TTFT SLO counts a request as good when its TTFT is at most ``ttft_target_s``; that value
    must be one of vLLM's TTFT bucket bounds, since the SLI is ``count - bucket{le=target}``.
    """

    ttft_target_s: float = Field(2.5, gt=0)
    ttft_objective: float = Field(0.99, gt=0, lt=1)
    error_objective: float = Field(0.995, gt=0, lt=1)  # share of requests not ending in error/abort
    period_days: int = Field(30, ge=1)
    burn_windows: list[BurnWindow] = Field(default_factory=_workbook_windows)
    itl_p95_target_s: float = Field(0.1, gt=0)
    kv_cache_warning_ratio: float = Field(0.90, gt=0, le=1)
    kv_cache_critical_ratio: float = Field(0.98, gt=0, le=1)
    queue_waiting_threshold: float = Field(10, ge=0)
    ttft_spike_factor: float = Field(3.0, gt=1)
    ttft_spike_floor_s: float = Field(1.0, ge=0)  # below this p95, a relative spike is noise
    preemptions_per_second_threshold: float = Field(1.0, gt=0)
    gpu_temperature_warning_celsius: float = Field(85, gt=0)
    gpu_memory_warning_ratio: float = Field(0.97, gt=0, le=1)  # vLLM preallocates 0.9 by default
    collector_rejected_ratio: float = Field(0.05, gt=0, le=1)
    dau_drop_ratio: float = Field(0.3, gt=0, lt=1)  # week-over-week drop of DAU that opens a ticket
    # Clock-throttle reasons that slow decode (NVML names); sw_power_cap and gpu_idle are normal.
    gpu_throttle_reasons: list[str] = Field(
        default_factory=lambda: [
            "hw_slowdown",
            "hw_thermal_slowdown",
            "sw_thermal_slowdown",
            "hw_power_brake_slowdown",
        ],
        min_length=1,
    )
    gpu_throttled_share: float = Field(0.5, gt=0, lt=1)  # share of 10 minutes throttled that opens a ticket

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        from observer.catalog import VLLM_TTFT_BUCKETS

        if self.kv_cache_warning_ratio >= self.kv_cache_critical_ratio:
            raise ValueError("kv_cache_warning_ratio must be below kv_cache_critical_ratio")
        if self.ttft_target_s not in VLLM_TTFT_BUCKETS:
            raise ValueError(f"ttft_target_s must be a TTFT bucket bound, one of {list(VLLM_TTFT_BUCKETS)}")
        return self


class LoadtestSettings(_Section):
    """``observer loadtest``: SLO overrides, sweep search, sampling and the GPUs behind the target.

    The default SLO comes from the ``slo`` section (TTFT p99 <= ttft_target_s, ITL p95 <=
    itl_p95_target_s, success >= error_objective); ``slo`` here adds or replaces keys
    (ttft_p95, ttft_p99, tpot_p95, itl_p95, e2e_p95, e2e_p99 in seconds, success as a ratio).
    """

    slo: dict[str, float] = Field(default_factory=dict)
    gpus: int = Field(1, ge=1)  # GPUs behind the target: cost at capacity is for this many
    duration_s: float = Field(30, gt=0)  # per run, and per sweep step
    drain_s: float = Field(30, ge=0)  # in-flight requests get this long after sending stops
    request_timeout_s: float = Field(300, gt=0)  # a stream running longer is cut (incomplete)
    metrics_interval_s: float = Field(0.5, gt=0)  # /metrics sampling period
    sweep_start_rps: float = Field(1.0, gt=0)
    sweep_max_rps: float = Field(2000, gt=0)
    sweep_max_steps: int = Field(10, ge=2)
    sweep_precision: float = Field(0.1, gt=0, lt=1)  # binary search stops at this relative gap
    sweep_min_requests: int = Field(30, ge=1)  # a step at a low rate runs longer to send this many
    # A sweep step stops early once this share of its requests already broke a latency target
    # (finished late, or still without a first token past the TTFT target), after min_requests.
    early_stop_share: float = Field(0.3, gt=0, le=1)
    early_stop_min_requests: int = Field(20, ge=1)
    compare_tolerance: float = Field(0.1, ge=0)  # relative change that counts as a regression
    # Diagnosis of a sweep: a p95 this many times the lightest level's counts as "up", else "flat".
    diagnosis_growth: float = Field(1.5, gt=1)
    progress_min_s: float = Field(10, ge=0)  # progress bar for runs at least this long


class AlertingSettings(_Section):
    """Where the metrics come from (scrape job names) and where runbooks live."""

    engine_job: str = "llm-engines"
    engine_exporter_job: str = "llm-engine-exporter"
    gpu_job: str = "gpu"
    observer_job: str = "observer"
    runbook_url: str = "https://github.com/llm-observer/llm-observer/blob/main/docs/runbooks.md"
    # Per-alert "for" durations replacing the built-in ones, e.g. {LLMKVCacheSaturated: 5m}.
    for_overrides: dict[str, str] = Field(default_factory=dict)


class DashboardSettings(_Section):
    """Colour bands of dashboard panels that no alert owns (alert thresholds come from ``slo``)."""

    # DAU/MAU: below the first an occasional tool (red), above the second a daily habit (green).
    stickiness_occasional_below: float = Field(0.2, gt=0, lt=1)
    stickiness_habit_above: float = Field(0.5, gt=0, lt=1)
    # Month-to-month retention bands, read the same way.
    retention_low_below: float = Field(0.3, gt=0, lt=1)
    retention_good_above: float = Field(0.6, gt=0, lt=1)
    # Error budget remaining: red below the first, orange below the second, green above.
    budget_critical_below: float = Field(0.25, gt=0, lt=1)
    budget_warning_below: float = Field(0.5, gt=0, lt=1)
    # A latency stat turns orange at this fraction of its target, red at the target.
    near_target_fraction: float = Field(0.8, gt=0, lt=1)
    # The hottest-GPU gauge turns orange this many degrees below the alert threshold.
    temperature_notice_margin_celsius: float = Field(5, ge=0)
    # Waiting requests turn orange from this many (red at slo.queue_waiting_threshold).
    waiting_requests_notice: float = Field(1, ge=0)
    # uid of the provisioned Alertmanager data source that alertlist panels read.
    alertmanager_datasource_uid: str = "alertmanager"

    @model_validator(mode="after")
    def _bands_ordered(self) -> Self:
        for low, high in (
            ("stickiness_occasional_below", "stickiness_habit_above"),
            ("retention_low_below", "retention_good_above"),
            ("budget_critical_below", "budget_warning_below"),
        ):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} must be below {high}")
        return self


class Settings(_Section):
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    engine_exporter: EngineExporterSettings = Field(default_factory=EngineExporterSettings)
    gpu_exporter: GpuExporterSettings = Field(default_factory=GpuExporterSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    slo: SloSettings = Field(default_factory=SloSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    dashboards: DashboardSettings = Field(default_factory=DashboardSettings)
    loadtest: LoadtestSettings = Field(default_factory=LoadtestSettings)

    def with_overrides(self, section: str, **values: Any) -> Settings:
        """A copy with some keys of one section replaced (``None`` values are ignored), re-validated."""
        data = self.model_dump()
        data[section].update({k: v for k, v in values.items() if v is not None})
        return _validate(data, source="command line")


def _format_error(exc: ValidationError, data: dict[str, Any], source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (from {source})")
        elif SECRET_KEYS & {str(p) for p in err["loc"]} or isinstance(value, dict):
            # A secret (or a whole section holding one) is named, never printed.
            lines.append(f"{key}: {err['msg']} (from {source}; value not shown)")
        else:
            lines.append(f"{key} = {redact_url(repr(value))}: {err['msg']} (from {source})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def redact_url(text: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db`` (anywhere in the text)."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def _check_secret_comments(text: str, origin: str) -> None:
    """Refuse `auth_token: abc #def`: YAML reads "abc" and the rest as a comment, a silently cut secret."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return  # safe_load reports it
    lines = text.splitlines()
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    while stack:
        node, path = stack.pop()
        if not isinstance(node, yaml.MappingNode):
            continue
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            if isinstance(value_node, yaml.MappingNode):
                stack.append((value_node, key))
            elif (
                key_node.value in SECRET_KEYS
                and isinstance(value_node, yaml.ScalarNode)
                and value_node.style is None
                and lines[value_node.end_mark.line][value_node.end_mark.column :].lstrip().startswith("#")
            ):
                raise ConfigError(
                    f"{origin}: {key}: an unquoted value followed by ' #' (YAML cuts the value there and "
                    "reads the rest as a comment); quote the value and put comments on their own line"
                )


def _validate(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, data, source)) from None


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``OBSERVER_SIMULATOR__NUM_GPU_BLOCKS=512`` -> ``{"simulator": {"num_gpu_blocks": "512"}}``.

    Values are parsed as YAML scalars/flow collections so lists and booleans work
    (``OBSERVER_ENGINE_EXPORTER__ALLOWED_TARGETS='[10.0.0.0/8]'``).
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "OBSERVER_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if path[-1] in SECRET_KEYS:
            node[path[-1]] = raw  # verbatim: YAML would cut "abc #def" to "abc" and read 0123 as 83
            continue
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config_path(explicit: str | os.PathLike[str] | None, environ: dict[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get("OBSERVER_CONFIG"):
        return Path(environ["OBSERVER_CONFIG"])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Load, merge and validate. Raises :class:`ConfigError` with the bad key and value."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    source = "defaults"
    config_path = resolve_config_path(path, environ)
    if config_path is not None:
        if not config_path.exists():
            raise ConfigError(f"config file not found: {config_path}")
        text = config_path.read_text()
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: top level must be a mapping of sections")
        _check_secret_comments(text, str(config_path))
        data = loaded
        source = str(config_path)
    env = _env_overrides(environ)
    if env:
        data = _merge(data, env)
        source = f"{source} + environment"
    return _validate(data, source)
