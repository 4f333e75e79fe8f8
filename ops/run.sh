#!/usr/bin/env bash
# `make run`: the local stack, the worker and the simulator, until Ctrl-C stops all it started.
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
  echo; echo "stopping worker and simulator..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$stack_was_up" = 0 ]; then $INVSYNC stack down; fi
}
trap cleanup INT TERM EXIT

$INVSYNC worker > .stack/logs/worker.log 2>&1 &
pids+=($!)
$INVSYNC simulate --events 0 --rate "${SIM_RATE:-200}" > .stack/logs/simulator.log 2>&1 &
pids+=($!)

port="${INVSYNC_WEB_PORT:-6066}"
cat <<TXT

invsync is running (worker log: .stack/logs/worker.log, simulator log: .stack/logs/simulator.log)

  watch availability:   .venv/bin/invsync tail availability.web
  dead letters:         .venv/bin/invsync tail invsync.dead-letters
  metrics:              curl -s http://127.0.0.1:${port}/metrics | grep invsync_
  topics:               .venv/bin/invsync topics list

Ctrl-C stops the worker and the simulator$( [ "$stack_was_up" = 0 ] && echo ", then the stack" ).
TXT
wait -n "${pids[@]}" || true
if [ "$stopping" = 0 ]; then
  echo "the worker or the simulator exited; see .stack/logs/worker.log and .stack/logs/simulator.log"
fi
