#!/usr/bin/env bash
# env-down.sh - stop what env-up.sh started: Milvus first, then the S3 server.
# Only the PIDs in "$MB_STATE/run/{milvus,s3}.pid" are signalled, and only while
# /proc/PID/cmdline still names the program we started (guards against PID reuse).
# SIGTERM, wait up to MB_STOP_TIMEOUT seconds [30], then SIGKILL. Idempotent.
#
# Knobs: MB_HOME [$HOME/.cache/milvus-backfill], MB_STATE [$MB_HOME/e2e],
#        MB_STOP_TIMEOUT [30], MB_WIPE=1 also deletes Milvus and S3 data.
set -euo pipefail

MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
STATE=${MB_STATE:-$MB_HOME/e2e}
RUN=$STATE/run
TIMEOUT=${MB_STOP_TIMEOUT:-30}

log() { echo "[env-down $(date +%H:%M:%S)] $*" >&2; }

stop_one() { # stop_one NAME CMDLINE-PATTERN
  local name=$1 pattern=$2 f=$RUN/$1.pid pid t0
  if [ ! -f "$f" ]; then log "$name: no pidfile, nothing to stop"; return 0; fi
  pid=$(cat "$f")
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$name: pid $pid is not running"; rm -f "$f"; return 0
  fi
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"; then
    log "$name: pid $pid is no longer '$pattern'; leaving it alone"; rm -f "$f"; return 0
  fi
  t0=$SECONDS
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: pid $pid still alive after ${TIMEOUT}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$f"
  log "$name: stopped pid $pid in $((SECONDS - t0))s"
}

stop_one milvus "milvus run standalone"
stop_one s3 "s3s-fs"
rm -f "$RUN/settings"

if [ "${MB_WIPE:-0}" = 1 ]; then
  rm -rf "$STATE/milvus/data" "$STATE/milvus/configs" "$STATE/milvus/logs" "$STATE/milvus/run" "$STATE/s3"
  log "wiped Milvus and S3 data under $STATE"
fi
