#!/usr/bin/env bash
# Every check of ops/ (alerts, local Prometheus config, Grafana dashboard), in about 40 s:
#   1. promtool check rules / test rules (unit tests: each alert fires when it should, not when
#      it shouldn't) / check config;
#   2. the committed dashboard JSON is what ops/grafana/dashboard.py builds;
#   3. tests/ops: the same, plus every PromQL expression (panels and alerts) parses and uses only
#      the metrics contract, and every panel query returns data from a real Prometheus scraping
#      a fake worker (ops/dashboard_live.py).
# Installs only what these checks need, when missing: the Debian `prometheus` package (promtool,
# prometheus; through ops/install-prereqs.sh) and the two pinned Python packages into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_BIN=.venv/bin
# Keep in step with pyproject.toml's dev extra.
PY_PACKAGES=("grafana-foundation-sdk==1769699379!11.6.0" "promql-parser==0.12.0")

step() { printf '\n== %s\n' "$*"; }

if [ ! -x "$VENV_BIN/python" ]; then
  echo "check_ops: $VENV_BIN/python missing: run \`make install\` first" >&2
  exit 2
fi
if ! command -v promtool >/dev/null 2>&1 || [ ! -x /usr/bin/prometheus ]; then
  step "installing the Debian prometheus package"
  INVSYNC_WITH_PROMETHEUS=1 ops/install-prereqs.sh
fi
if ! "$VENV_BIN/python" -c "import grafana_foundation_sdk, promql_parser, yaml" 2>/dev/null; then
  step "installing ${PY_PACKAGES[*]} pyyaml into .venv"
  "$VENV_BIN/pip" install -q "${PY_PACKAGES[@]}" pyyaml
fi

started=$SECONDS
step "promtool check rules"
promtool check rules ops/prometheus/alerts.yml
step "promtool test rules"
promtool test rules ops/prometheus/tests/*.yml
step "promtool check config"
promtool check config ops/prometheus/prometheus.yml
step "dashboard JSON is generated"
"$VENV_BIN/python" -m ops.grafana.dashboard --check
step "pytest tests/ops (PromQL, metrics contract, live Prometheus)"
"$VENV_BIN/pytest" -q tests/ops
printf '\nops checks passed in %ss\n' "$((SECONDS - started))"
