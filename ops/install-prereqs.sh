#!/usr/bin/env bash
# Install the system packages invsync's local stack and checks need, if any is missing:
# a JDK (Kafka, Apicurio), Maven (fetches their jars), redis-server, Python 3.11+ with venv,
# Prometheus + promtool (alert rules, dashboard queries), Go (builds helm from the Go proxy).
# Idempotent: does nothing when everything is there. Needs root (or sudo) only to install.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v python3.11 >/dev/null 2>&1 && ! command -v python3.12 >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
{ command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/prometheus ]; } || missing+=(prometheus)
command -v go >/dev/null 2>&1 || missing+=(golang-go)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "missing ${missing[*]}: run as root: apt-get install -y ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
