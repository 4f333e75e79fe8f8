#!/usr/bin/env bash
# `make run`: the local stack, the worker, the sinks (Redis read model, ERP dispatcher against the
# ERP simulator) and the simulator, until Ctrl-C stops all it started.
set -euo pipefail
cd "$(dirname "$0")/.."
INVSYNC=.venv/bin/invsync
mkdir -p .stack/logs

stack_was_up=0
$INVSYNC stack status >/dev/null 2>&1 && stack_was_up=1
$INVSYNC stack up
$INVSYNC topics create

pids=()
stopping=0
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  echo; echo "stopping worker, sinks, ERP simulator and simulator..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$stack_was_up" = 0 ]; then $INVSYNC stack down; fi
}
trap cleanup INT TERM EXIT

$INVSYNC worker > .stack/logs/worker.log 2>&1 &
pids+=($!)
$INVSYNC sink redis > .stack/logs/redis-sink.log 2>&1 &
pids+=($!)
$INVSYNC erp-simulator --port 18090 --db .stack/data/erp-simulator.sqlite > .stack/logs/erp-simulator.log 2>&1 &
pids+=($!)
INVSYNC_ERP_URL="${INVSYNC_ERP_URL:-http://127.0.0.1:18090/v1/stock-deltas}" \
  $INVSYNC sink erp > .stack/logs/erp-sink.log 2>&1 &
pids+=($!)
$INVSYNC simulate --events 0 --rate "${SIM_RATE:-200}" > .stack/logs/simulator.log 2>&1 &
pids+=($!)

port="${INVSYNC_WEB_PORT:-6066}"
cat <<TXT

invsync is running (logs in .stack/logs: worker, redis-sink, erp-sink, erp-simulator, simulator)

  watch availability:   .venv/bin/invsync tail availability.web
  dead letters:         .venv/bin/invsync tail invsync.dead-letters
  metrics:              curl -s http://127.0.0.1:${port}/metrics | grep invsync_
  read model:           redis-cli -p ${INVSYNC_REDIS_PORT:-16379} --scan --pattern 'invsync:avail:*' | head
  ERP deltas:           .venv/bin/invsync tail erp.stock-deltas; curl -s http://127.0.0.1:18090/v1/state | head -c 600
  sink metrics:         curl -s http://127.0.0.1:6067/metrics (Redis), :6068/metrics (ERP)
  topics:               .venv/bin/invsync topics list

Ctrl-C stops them all$( [ "$stack_was_up" = 0 ] && echo ", then the stack" ).
TXT
wait -n "${pids[@]}" || true
if [ "$stopping" = 0 ]; then
  echo "a process exited; see .stack/logs (worker, redis-sink, erp-sink, erp-simulator, simulator)"
fi
