#!/usr/bin/env sh
# Write .env for `docker compose` with random secrets (once: an existing .env is left alone).
# docker-compose.yml refuses to start without these; README "Security" says what each one guards.
set -eu
cd "$(dirname "$0")/.."
if [ -e .env ]; then
  echo ".env exists; not overwriting it (delete it to generate new secrets)" >&2
  exit 0
fi
secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
{
  echo "# Written by scripts/compose-env.sh. Keep it private; it is git-ignored."
  echo "GRAFANA_ADMIN_PASSWORD=$(secret)"
  echo "# spans (OTLP) and feedback"
  echo "OBSERVER_WRITE_TOKEN=$(secret)"
  echo "# /api/v1 reads (raw user ids, analytics, incidents)"
  echo "OBSERVER_READ_TOKEN=$(secret)"
  echo "# Prometheus scraping observer's /metrics"
  echo "OBSERVER_METRICS_TOKEN=$(secret)"
  echo "# Alertmanager posting to /api/v1/alerts/webhook"
  echo "OBSERVER_WEBHOOK_TOKEN=$(secret)"
  echo "# Publish the ports beyond this machine (put TLS in front first):"
  echo "# OBSERVER_BIND=0.0.0.0"
} > .env
echo "wrote .env (Grafana: user admin, password in .env)" >&2
