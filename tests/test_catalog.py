"""The catalog holds our own metric names to Prometheus naming practice."""

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from observer.catalog import BASE_UNITS, CATALOG, make_metric, spec, vllm_request_tokens_buckets

OWNED = [s for s in CATALOG if s.owned]
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")


def test_names_unique():
    names = [s.name for s in CATALOG]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("s", OWNED, ids=lambda s: s.name)
def test_owned_metric_follows_conventions(s):
    assert NAME.match(s.name), "snake_case, no colons (colons are for recording rules)"
    assert s.help and s.help[0].isupper() and s.help.endswith("."), "help is a sentence"
    assert all(LABEL.match(lbl) for lbl in s.labels)
    assert len(set(s.labels)) == len(s.labels)
    assert not {"le", "quantile"} & set(s.labels), "reserved label"
    assert not any(lbl in ("user", "user_id", "prompt") for lbl in s.labels), "no per-user or content labels"
    if s.type == "counter":
        assert s.name.endswith("_total")
    else:
        assert not s.name.endswith("_total")
    if s.unit:
        assert s.unit in BASE_UNITS
        stem = s.name.removesuffix("_total")
        assert stem.endswith("_" + s.unit), f"unit {s.unit!r} must be the name's suffix"
    for forbidden in ("_milliseconds", "_percent", "_perc", "_kilobytes", "_megabytes", "_mib"):
        assert forbidden not in s.name, "use base units"
    if s.name.endswith("_info"):
        assert s.type in ("gauge", "info")


def test_every_owned_metric_registers_and_renders():
    registry = CollectorRegistry()
    for s in OWNED:
        if s.type in ("counter", "gauge", "histogram"):
            kwargs = {"buckets": (0.1, 1.0)} if s.type == "histogram" and not s.buckets else {}
            make_metric(s, registry, **kwargs)
    text = generate_latest(registry).decode()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    for s in OWNED:
        if s.type in ("counter", "gauge", "histogram") and not s.labels:
            sample = s.name + ("_count" if s.type == "histogram" else "")
            assert sample in exposed


def test_lookup_names_the_missing_metric():
    assert spec("llm_engine_up").type == "gauge"
    with pytest.raises(KeyError, match="llm_nope"):
        spec("llm_nope")


def test_vllm_token_buckets_are_1_2_5_capped():
    assert vllm_request_tokens_buckets(1000) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    assert vllm_request_tokens_buckets(4096)[-1] == 2000
