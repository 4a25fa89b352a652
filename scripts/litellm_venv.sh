#!/usr/bin/env bash
# A cached virtual environment with a real LiteLLM proxy for the gateway tests, outside the clone
# (about 2 minutes and 600 MB the first time, nothing after). Prints the venv's bin directory.
set -euo pipefail
version=1.100.5
dir=${LLM_OBSERVER_CACHE:-$HOME/.cache/llm-observer}/litellm-$version
if [ ! -x "$dir/bin/litellm" ] || [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q "litellm[proxy]==$version" \
    "opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp-proto-http==1.45.2" >&2
  touch "$dir/.complete"
fi
echo "$dir/bin"
