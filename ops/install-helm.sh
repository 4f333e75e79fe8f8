#!/usr/bin/env bash
# Install helm (v3) for the chart checks, built from the Go module proxy (helm.sh/helm/v3): the
# only registries this project's machines reach are package registries, so no release tarball.
# Idempotent: does nothing when the binary is there with the right version.
#
#   ops/install-helm.sh            # -> .stack/tools/bin/helm (git-ignored with .stack/)
#   HELM_VERSION=v3.22.0 INVSYNC_TOOLS_BIN=/some/bin ops/install-helm.sh
#
# Needs Go (>= 1.21; an older toolchain fetches the one helm's go.mod asks for from the proxy).
# The first build takes a few minutes on a 2-core machine; later runs are instant.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
BIN_DIR="${INVSYNC_TOOLS_BIN:-$PWD/.stack/tools/bin}"
HELM="$BIN_DIR/helm"

if [ -x "$HELM" ] && [ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "ops/install-helm.sh: needs Go to build helm: apt-get install -y golang-go" >&2
  exit 1
fi

echo "installing helm $HELM_VERSION into $BIN_DIR (go install from the module proxy; first time: minutes)"
start=$(date +%s)
export GOFLAGS="-mod=mod"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
# The Kubernetes version helm assumes for `lint`/`template` (.Capabilities.KubeVersion) is set at
# link time from the k8s.io/client-go it is built with, as helm's own Makefile does.
go mod download "helm.sh/helm/v3@$HELM_VERSION"
moddir="$(go env GOMODCACHE)/helm.sh/helm/v3@$HELM_VERSION"
client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$moddir/go.mod")"  # e.g. v0.37.0
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
mkdir -p "$BIN_DIR"
GOBIN="$BIN_DIR" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

got="$("$HELM" version --template '{{.Version}}')"
if [ "$got" != "$HELM_VERSION" ]; then
  echo "ops/install-helm.sh: built helm reports $got, expected $HELM_VERSION" >&2
  exit 1
fi
echo "helm $got installed in $(( $(date +%s) - start ))s: $HELM"
