#!/usr/bin/env bash
# Deployment checks without a cluster or a Docker engine (what `make test` runs in pytest, with
# the tools' own output):
#   1. refresh the chart's copies of ops/prometheus/alerts.yml and ops/grafana/invsync.json
#      (with CI=true: fail if they are stale instead of rewriting them);
#   2. helm lint --strict, default values and helm/values-production.yaml;
#   3. helm template both; the objects against the Kubernetes schemas (kubernetes-validate,
#      strict), prometheus-operator resources structurally;
#   4. bad values files (negative replicas; the ERP dispatcher forced on without a URL) must fail;
#   5. docker-compose.yml against the Compose specification (check-jsonschema's vendored schema);
#   6. pytest tests/deploy (wiring to invsync/settings.py: env vars, ports, channels, topics;
#      the worker, the Redis sink and the ERP dispatcher: commands, probes, scrape jobs).
# Needs helm (ops/install-helm.sh) and the dev extra in .venv (kubernetes-validate,
# check-jsonschema). Rendered manifests are kept in .stack/deploy/ for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ -n "${HELM:-}" ]; then :
elif [ -x .stack/tools/bin/helm ]; then HELM=.stack/tools/bin/helm
elif command -v helm >/dev/null 2>&1; then HELM=$(command -v helm)
else echo "helm is not installed: run ops/install-helm.sh" >&2; exit 1
fi
export HELM
for module in kubernetes_validate check_jsonschema; do
  if ! $PY -c "import $module" 2>/dev/null; then
    echo "$module is missing in .venv: .venv/bin/pip install -e '.[dev]'" >&2; exit 1
  fi
done
OUT=.stack/deploy
mkdir -p "$OUT"
started=$(date +%s)
step() { printf '\n== %s\n' "$*"; }

step "chart copies of ops/ files"
sync_copy() {  # sync_copy SOURCE COPY
  local source=$1 copy=$2
  if [ ! -f "$source" ]; then
    echo "$source does not exist yet: $copy stays a placeholder"
  elif cmp -s "$source" "$copy"; then
    echo "$copy = $source"
  elif [ "${CI:-}" = true ]; then
    echo "$copy differs from $source: run ops/check_deploy.sh and commit the copy" >&2
    return 1
  else
    cp "$source" "$copy"
    echo "$copy refreshed from $source (commit it)"
  fi
}
sync_copy ops/prometheus/alerts.yml helm/invsync/files/alerts.yml
sync_copy ops/grafana/invsync.json helm/invsync/files/invsync.json

step "helm lint ($("$HELM" version --template '{{.Version}}'))"
"$HELM" lint --strict helm/invsync
"$HELM" lint --strict helm/invsync -f helm/values-production.yaml

step "helm template + Kubernetes schemas"
"$HELM" template invsync helm/invsync -n invsync > "$OUT/default.yaml"
"$HELM" template invsync helm/invsync -n invsync -f helm/values-production.yaml > "$OUT/production.yaml"
for f in "$OUT/default.yaml" "$OUT/production.yaml"; do
  echo "$f: $(grep -c '^kind:' "$f") objects: $(grep '^kind:' "$f" | cut -d' ' -f2 | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}')"
done
$PY -c 'import sys; from tests.deploy import main; sys.exit(main(sys.argv[1:]))' \
  "$OUT/default.yaml" "$OUT/production.yaml"

step "bad values must fail"
printf 'replicaCount: -1\n' > "$OUT/bad-values.yaml"
if "$HELM" template invsync helm/invsync -f "$OUT/bad-values.yaml" > /dev/null 2> "$OUT/bad-values.err"; then
  echo "helm template accepted replicaCount: -1" >&2; exit 1
fi
echo "replicaCount: -1 rejected: $(grep -m1 replicaCount "$OUT/bad-values.err" | sed 's/^ *//')"
printf 'erpDispatcher:\n  enabled: true\n' > "$OUT/bad-erp.yaml"   # forced on, no ERP URL
if "$HELM" template invsync helm/invsync -f "$OUT/bad-erp.yaml" > /dev/null 2> "$OUT/bad-erp.err"; then
  echo "helm template accepted erpDispatcher.enabled: true without an ERP URL" >&2; exit 1
fi
echo "erpDispatcher.enabled: true without erp.url rejected: $(grep -o 'no ERP URL is set' "$OUT/bad-erp.err")"

step "docker-compose.yml against the Compose specification (not run: no Docker engine here)"
$PY -m check_jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

step "pytest tests/deploy"
$PY -m pytest -q tests/deploy

printf '\ndeployment checks passed in %ss\n' "$(( $(date +%s) - started ))"
