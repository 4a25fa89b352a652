"""The simulator's /metrics has the shape of real vLLM 0.32's: the same families, types, label names and
histogram bucket bounds as the committed capture (tests/fixtures/engines/real/, README there says how it
was made). Any difference fails unless it is listed below with its reason."""

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import simulator

REAL = Path(__file__).parent / "fixtures" / "engines" / "real" / "vllm-0.32.0-load.txt"

# family -> why the simulator does not have it (or has it differently). Keep this list short and true.
KNOWN_DIFFERENCES = {
    **{
        f"vllm:estimated_{what}_per_gpu": "MFU estimates need model weights and kernel shapes the simulator "
        "does not have; no exporter mapping or dashboard reads them"
        for what in ("flops", "read_bytes", "write_bytes")
    },
    **{
        name: "HTTP-layer metrics of prometheus-fastapi-instrumentator (no model_name); the exporter and the "
        "dashboards read none of them, and the simulator's HTTP server is not vLLM's"
        for name in (
            "http_requests",
            "http_request_size_bytes",
            "http_response_size_bytes",
            "http_request_duration_highr_seconds",
            "http_request_duration_seconds",
        )
    },
}


def shape(text: str) -> dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]]:
    """family -> (type, label names, bucket bounds); ``_created`` families fold into their parent, as
    prometheus_client's parser reports them as gauges of their own."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removesuffix("_created") if family.type == "gauge" else family.name
        if name != family.name:
            continue  # a _created gauge: present exactly when its counter/histogram is
        if name.startswith(("python_", "process_")):
            continue  # prometheus_client's default collectors: the same library on both sides
        labels: set[str] = set()
        bounds: set[float] = set()
        for s in family.samples:
            labels |= set(s.labels) - {"le", "quantile"}
            if s.name.endswith("_bucket"):
                bounds.add(float(s.labels["le"]))
        out[name] = (family.type, tuple(sorted(labels)), tuple(sorted(bounds)))
    return out


def test_simulator_metrics_have_real_vllm_0_32_shape():
    real = shape(REAL.read_text())
    # The capture's server ran with --max-model-len 2048 (token-count buckets are capped by it).
    with simulator("--model", "tiny-llama", "--max-model-len", "2048") as (base, _):
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "n": 2}
        assert httpx.post(base + "/v1/chat/completions", json=body, timeout=30).status_code == 200
        text = httpx.get(base + "/metrics", timeout=10).text
    sim = shape(text)
    assert len(real) > 40, "the capture is whole"
    differences = {
        name: (real.get(name), sim.get(name))
        for name in set(real) | set(sim)
        if real.get(name) != sim.get(name) and name not in KNOWN_DIFFERENCES
    }
    assert differences == {}, (
        "simulator /metrics differs from real vLLM 0.32 (fix it or list it with a reason)"
    )
    stale = {name for name in KNOWN_DIFFERENCES if real.get(name) == sim.get(name)}
    assert stale == set(), "listed as different but now the same: drop them from KNOWN_DIFFERENCES"
    assert set(KNOWN_DIFFERENCES) <= set(real), "every listed difference is a real vLLM family"
