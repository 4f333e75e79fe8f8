# invsync — the two commands are `make run` and `make test`; everything else is a step of them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INVSYNC := $(BIN)/invsync
BENCH_EVENTS ?= 1000000
export PYTHONUNBUFFERED := 1

.PHONY: help prereqs install helm stack-up stack-down topics run test unit integration lint \
	ops-check deploy-check dashboard bench bench-sinks clean

help:
	@echo "make run    - install what is missing, start the stack, worker and simulator (Ctrl-C stops all)"
	@echo "make test   - install what is missing, start the stack, run unit + integration tests, stop it"
	@echo "make lint   - ruff + mypy"
	@echo "make ops-check    - alerts (promtool), dashboard JSON, PromQL, panels on a real Prometheus"
	@echo "make deploy-check - helm lint/template + Kubernetes schemas, compose file vs. settings"
	@echo "make dashboard    - regenerate ops/grafana/invsync.json"
	@echo "make bench  - throughput and latency vs. a raw consumer baseline (BENCH_EVENTS=$(BENCH_EVENTS))"
	@echo "make bench-sinks - records published per channel, Redis writes/s, query API p50/p99, ERP catch-up after a 10-min outage (BENCH_EVENTS=$(BENCH_EVENTS))"

prereqs:
	@ops/install-prereqs.sh

# The venv is rebuilt when pyproject.toml changes; `.venv/bin/invsync` works after any target.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: prereqs $(VENV)/.installed

helm:
	@ops/install-helm.sh

stack-up: install
	$(INVSYNC) stack up

stack-down:
	@test -x $(INVSYNC) && $(INVSYNC) stack down || true

topics: stack-up
	$(INVSYNC) topics create

run: install
	@ops/run.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy ops/grafana/dashboard.py ops/dashboard_live.py

ops-check: install
	@ops/check_ops.sh

deploy-check: install helm
	@ops/check_deploy.sh

dashboard: install
	$(BIN)/python -m ops.grafana.dashboard

unit: install
	$(BIN)/pytest -q tests/unit

integration: stack-up
	$(BIN)/pytest -q -m integration tests/integration

# Stops the stack whatever the outcome; exits non-zero if lint or any test failed.
test: install helm
	@set -o pipefail; status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(INVSYNC) stack up && $(BIN)/pytest -q tests || status=1; \
	$(INVSYNC) stack down || true; \
	exit $$status

bench: topics
	$(BIN)/python -m bench.run --events $(BENCH_EVENTS)$(if $(filter compare,$(BENCH_METRICS)), --compare-metrics)

bench-sinks: topics
	$(BIN)/python -m bench.sinks --events $(BENCH_EVENTS)

clean: stack-down
	rm -rf .state .stack/data .stack/logs
