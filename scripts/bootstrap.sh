#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine: system packages the tests and demo need, then a
# virtual environment with the project and its dev extras. Fast when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
  || need+=(prometheus-alertmanager)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)  # also vmalert, vmagent
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # loadtest HTML report test
command -v npm >/dev/null 2>&1 || need+=(npm)  # Grafana's own front-end logic (dashboard tests)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # TLS engine certificate (exporter tests)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${need[*]}" >&2
  $sudo apt-get update -qq
  mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# @grafana/data (pinned in its package-lock.json): dashboards are rendered by Grafana's own code in tests.
logic=dashboards/grafana_logic
if [ ! -f "$logic/node_modules/.package-lock.json" ] || ! cmp -s "$logic/package-lock.json" "$logic/.installed-lock"; then
  npm ci --prefix "$logic" --no-audit --no-fund --silent
  cp "$logic/package-lock.json" "$logic/.installed-lock"
fi
