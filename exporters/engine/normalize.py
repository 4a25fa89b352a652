"""Detect the engine behind an exposition and rewrite its metrics into the ``llm_*`` schema."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from exporters.engine.mappings import ENGINES, EngineMapping, Source
from exporters.engine.parse import iter_samples
from observer.catalog import spec
from observer.exposition import LabelKey, fmt, header, line

_HIST_SUFFIXES = ("_bucket", "_sum", "_count")
_VLLM_CACHE_INFO = "vllm:cache_config_info"


class UnknownEngine(ValueError):
    pass


@cache
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(m) for m in markers)
    return re.compile(rf"(?:^|\n)(?:# (?:HELP|TYPE) )?(?:{alts})")


def detect(text: str) -> EngineMapping:
    """The engine whose metric names start lines of this exposition."""
    for engine in ENGINES:
        if _marker_pattern(engine.markers).search(text):
            return engine
    for _ in iter_samples(text, ()):  # garbage is a parse error, valid text of another kind is not
        pass
    raise UnknownEngine("no metric names of a known engine (vllm, sglang, tgi, llama.cpp, trtllm)")


@cache
def _wanted(engine: EngineMapping) -> frozenset[str]:
    names = engine.wanted()
    if engine.kind == "vllm":
        names.add(_VLLM_CACHE_INFO)
    return frozenset(names)


@dataclass
class Normalized:
    kind: str
    schema: str
    # output sample name -> {label key -> value}
    series: dict[str, dict[LabelKey, float]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # catalog names present, in output order
    models: set[tuple[str, str]] = field(default_factory=set)  # (model, dp_rank)


def normalize(text: str, default_model: str = "") -> Normalized:
    """Raises UnknownEngine or parse.ParseError; unknown extra metrics are ignored."""
    engine = detect(text)
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in iter_samples(text, _wanted(engine)):
        by_name.setdefault(name, []).append((labels, value))

    schema = "v1"
    if engine.kind == "vllm":
        any_labels = next((lbls for samples in by_name.values() for lbls, _ in samples), {})
        schema = "v1" if "engine" in any_labels else "v0"
    out = Normalized(kind=engine.kind, schema=schema)

    for concept in engine.concepts:
        chosen = next(
            (alt for alt in concept.alternatives if any(n in by_name for s in alt for n in s.sample_names())),
            None,
        )
        if chosen is None:
            continue
        out.targets.append(concept.target)
        for source in chosen:
            _apply(source, concept.target, concept.combine, engine, by_name, out, default_model)

    if engine.kind == "vllm" and _VLLM_CACHE_INFO in by_name:
        _kv_capacity(by_name[_VLLM_CACHE_INFO], out)
    return out


def _apply(
    source: Source,
    target: str,
    combine: str,
    engine: EngineMapping,
    by_name: dict[str, list[tuple[dict[str, str], float]]],
    out: Normalized,
    default_model: str,
) -> None:
    for sample_name in source.sample_names():
        samples = by_name.get(sample_name)
        if not samples:
            continue
        if source.component or source.kind != "histogram":
            out_name = target
        else:
            out_name = target + sample_name[len(source.name) :]
        dest = out.series.setdefault(out_name, {})
        for labels, value in samples:
            if source.match and any(labels.get(k) != v for k, v in source.match):
                continue
            model = labels.get(engine.model_label, default_model) if engine.model_label else default_model
            dp_rank = labels.get(engine.dp_label, "0") if engine.dp_label else "0"
            out.models.add((model, dp_rank))
            key: list[tuple[str, str]] = [("model", model), ("dp_rank", dp_rank)]
            key.extend((k, labels[k]) for k in source.keep_labels if k in labels)
            key.extend(source.set_labels)
            if "le" in labels and out_name.endswith("_bucket"):
                key.append(("le", _canonical_le(labels["le"])))
            lk = tuple(key)
            if lk in dest:
                dest[lk] = dest[lk] + value if combine == "sum" else max(dest[lk], value)
            else:
                dest[lk] = value


@cache
def _canonical_le(le: str) -> str:
    """``5``, ``5.0`` and ``5e0`` are one bucket: render every engine's bounds the same way (the
    way prometheus_client does) so one PromQL query matches all engines."""
    try:
        return fmt(float(le))
    except ValueError:
        return le


def _kv_capacity(samples: list[tuple[dict[str, str], float]], out: Normalized) -> None:
    """llm_kv_cache_capacity_tokens = num_gpu_blocks x block_size, per DP rank and model."""
    models_by_rank: dict[str, set[str]] = {}
    for model, rank in out.models:
        models_by_rank.setdefault(rank, set()).add(model)
    dest: dict[LabelKey, float] = {}
    for labels, _ in samples:
        try:
            capacity = int(labels["num_gpu_blocks"]) * int(labels["block_size"])
        except (KeyError, ValueError):
            continue  # num_gpu_blocks is "None" until profiling finished
        rank = labels.get("engine", "0")
        for model in models_by_rank.get(rank, {""}):
            dest[(("model", model), ("dp_rank", rank))] = float(capacity)
    if dest:
        out.series["llm_kv_cache_capacity_tokens"] = dest
        out.targets.append("llm_kv_cache_capacity_tokens")


# --- rendering ---------------------------------------------------------------------------------


def render_probe(
    normalized: Normalized | None, up: bool, duration_s: float, error_reason: str | None = None
) -> str:
    """The text a probe returns: up, duration, an error reason or the normalized metrics."""
    lines = [*header("llm_engine_up"), line("llm_engine_up", (), 1.0 if up else 0.0)]
    lines += header("llm_engine_scrape_duration_seconds")
    lines.append(line("llm_engine_scrape_duration_seconds", (), duration_s))
    if error_reason:
        lines += header("llm_engine_probe_error")
        lines.append(line("llm_engine_probe_error", (("reason", error_reason),), 1.0))
    if normalized is not None:
        lines += header("llm_engine_info")
        for model, rank in sorted(normalized.models) or [("", "0")]:
            key = (
                ("kind", normalized.kind),
                ("schema", normalized.schema),
                ("model", model),
                ("dp_rank", rank),
            )
            lines.append(line("llm_engine_info", key, 1.0))
        for target in normalized.targets:
            lines += header(target)
            if spec(target).type == "histogram":
                for suffix in _HIST_SUFFIXES:
                    for key, value in normalized.series.get(target + suffix, {}).items():
                        lines.append(line(target + suffix, key, value))
            else:
                for key, value in normalized.series.get(target, {}).items():
                    lines.append(line(target, key, value))
    return "\n".join(lines) + "\n"
