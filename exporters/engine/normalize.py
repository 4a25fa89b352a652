"""Detect the engine behind an exposition and rewrite its metrics into the ``llm_*`` schema."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from exporters.engine.mappings import ENGINES, EngineMapping, Source, known_engines_text
from exporters.engine.parse import iter_samples
from observer.catalog import spec
from observer.exposition import LabelKey, fmt, header, line

_HIST_SUFFIXES = ("_bucket", "_sum", "_count")

# sample name -> [(labels, value)]
Samples = dict[str, list[tuple[dict[str, str], float]]]


class UnknownEngine(ValueError):
    pass


class NotPrometheusText(UnknownEngine):
    """The body is JSON (TensorRT-LLM's /metrics, llama.cpp router mode's error): try the next path."""


@cache
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(m) for m in markers)
    return re.compile(rf"(?:^|\n)(?:# (?:HELP|TYPE) )?(?:{alts})")


def detect(text: str) -> EngineMapping:
    """The engine whose metric names start lines of this exposition."""
    for engine in ENGINES:
        if _marker_pattern(engine.markers).search(text):
            return engine
    if text.lstrip()[:1] in ("{", "["):
        raise NotPrometheusText("the body is JSON, not Prometheus text")
    for _ in iter_samples(text, ()):  # garbage is a parse error, valid text of another kind is not
        pass
    raise UnknownEngine(f"no metric names of a known engine ({known_engines_text()})")


@dataclass
class Normalized:
    kind: str
    schema: str
    engine: EngineMapping
    # output sample name -> {label key -> value}
    series: dict[str, dict[LabelKey, float]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # catalog names present, in output order
    models: set[tuple[str, str]] = field(default_factory=set)  # (model, dp_rank)

    def model_of(self, raw: str | None, default_model: str) -> str:
        return self.engine.model_name(raw, default_model)

    def models_on_rank(self, rank: str) -> set[str]:
        return {model for model, r in self.models if r == rank}

    def add(self, target: str, dest: dict[LabelKey, float]) -> None:
        """Add a whole series set computed by a hook (nothing if empty)."""
        if not dest:
            return
        self.series[target] = dest
        if target not in self.targets:
            self.targets.append(target)
        self.models.update((dict(k)["model"], dict(k)["dp_rank"]) for k in dest)


def normalize(text: str, default_model: str = "", *, max_samples: int | None = None) -> Normalized:
    """Raises UnknownEngine (NotPrometheusText for JSON) or parse.ParseError; unknown metrics are
    ignored."""
    engine = detect(text)
    by_name: Samples = {}
    for name, labels, value in iter_samples(text, engine.wanted(), max_samples=max_samples):
        by_name.setdefault(name, []).append((labels, value))

    schema = engine.schema(by_name) if engine.schema else "v1"
    out = Normalized(kind=engine.kind, schema=schema, engine=engine)

    for concept in engine.concepts:
        chosen = next(
            (alt for alt in concept.alternatives if any(n in by_name for s in alt for n in s.sample_names())),
            None,
        )
        if chosen is None:
            continue
        replicas: dict[str, dict[LabelKey, dict[LabelKey, float]]] = {}
        for source in chosen:
            _apply(source, concept.target, concept.combine, engine, by_name, out, default_model, replicas)
        for out_name, by_key in replicas.items():  # copies of one value per replica: max, then combine
            dest = out.series.setdefault(out_name, {})
            for key, per_replica in by_key.items():
                value = max(per_replica.values())
                if key in dest:
                    dest[key] = dest[key] + value if concept.combine == "sum" else max(dest[key], value)
                else:
                    dest[key] = value
        if any(out.series.get(concept.target + s) for s in ("", *_HIST_SUFFIXES)):
            out.targets.append(concept.target)

    for hook in engine.hooks:
        hook(by_name, out, default_model)
    return out


def _apply(
    source: Source,
    target: str,
    combine: str,
    engine: EngineMapping,
    by_name: Samples,
    out: Normalized,
    default_model: str,
    replicas: dict[str, dict[LabelKey, dict[LabelKey, float]]],
) -> None:
    replica_labels = engine.replica_labels
    relabel = source.relabel
    model_label, dp_label = engine.model_label, engine.dp_label
    keep, fixed = source.keep_labels, source.set_labels
    prefixes: dict[tuple[str | None, str], LabelKey] = {}  # (engine model, engine rank) -> key prefix
    for sample_name in source.sample_names():
        samples = by_name.get(sample_name)
        if not samples:
            continue
        if source.component or source.kind != "histogram":
            out_name = target
        else:
            out_name = target + sample_name[len(source.name) :]
        buckets = out_name.endswith("_bucket")
        dest = out.series.setdefault(out_name, {})
        for labels, value in samples:
            if source.match and any(labels.get(k) != v for k, v in source.match):
                continue
            raw = (
                labels.get(model_label) if model_label else None,
                labels.get(dp_label, "0") if dp_label else "0",
            )
            prefix = prefixes.get(raw)
            if prefix is None:
                model = engine.model_name(raw[0], default_model)
                prefix = prefixes[raw] = (("model", model), ("dp_rank", raw[1]))
                out.models.add((model, raw[1]))
            extra: list[tuple[str, str]] = []
            if relabel is not None:
                mapped = relabel.values(labels.get(relabel.source, ""))
                if mapped is None:
                    continue  # e.g. a client-side failure: not an engine finish
                extra.append((relabel.target, mapped))
            if keep:
                extra.extend((k, labels[k]) for k in keep if k in labels)
            if fixed:
                extra.extend(fixed)
            if buckets and "le" in labels:
                extra.append(("le", _canonical_le(labels["le"])))
            lk = prefix + tuple(extra) if extra else prefix
            replica = tuple((k, labels[k]) for k in replica_labels if k in labels) if replica_labels else ()
            if replica:
                per_replica = replicas.setdefault(out_name, {}).setdefault(lk, {})
                per_replica[replica] = per_replica.get(replica, 0.0) + value
            elif lk in dest:
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
