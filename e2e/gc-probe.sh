#!/usr/bin/env bash
# gc-probe.sh - does Milvus 2.3.5's garbage collector delete foreign files that we put under
# {root}/insert_log/{coll}/{part}/{seg}/new_field/... of a live flushed segment?
#
# Starts its OWN environment (env-up.sh with a separate state dir and ports, MB_FRESH=1) with a
# short GC, runs gc_probe.py (puts test objects + controls, drops a second collection, waits for
# several GC rounds), prints the verdict and stops that environment again (MB_GC_KEEP=1 keeps it).
# The venv, s3s-fs and the unpacked Milvus binaries are shared with the main env via MB_HOME.
#
# Knobs [defaults]: MB_HOME, MB_VENV, S3S_FS_BIN as for env-up.sh;
#   MB_GC_STATE [$MB_HOME/e2e-gcprobe]  MB_GC_PORT_OFFSET [300]  MB_GC_S3_PORT [9300]
#   MB_GC_INTERVAL [10]  MB_GC_MISSING_TOLERANCE [20]  MB_GC_DROP_TOLERANCE [20]  (seconds)
#   MB_GC_SCANS [3] GC scans to observe after the test objects passed missingTolerance
#   MB_GC_MAX_WAIT [derived]  MB_GC_KEEP=1 (leave the probe env running)
# Result: $MB_GC_STATE/gc-probe-result.json; the verdict table goes to stdout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export MB_STATE=${MB_GC_STATE:-$MB_HOME/e2e-gcprobe}
export MB_PORT_OFFSET=${MB_GC_PORT_OFFSET:-300}
export MB_S3_PORT=${MB_GC_S3_PORT:-9300}
export MB_GC_INTERVAL=${MB_GC_INTERVAL:-10}
export MB_GC_MISSING_TOLERANCE=${MB_GC_MISSING_TOLERANCE:-20}
export MB_GC_DROP_TOLERANCE=${MB_GC_DROP_TOLERANCE:-20}
export MB_GC_ENABLE=true

cleanup() {
  if [ "${MB_GC_KEEP:-0}" = 1 ]; then
    echo "[gc-probe] MB_GC_KEEP=1: probe env left running; stop it with MB_STATE=$MB_STATE $HERE/env-down.sh" >&2
  else
    "$HERE/env-down.sh" || true
  fi
}
trap cleanup EXIT

MB_FRESH=1 "$HERE/env-up.sh"
# shellcheck disable=SC1091
source "$MB_STATE/env"
"$MB_PY" "$HERE/gc_probe.py" --interval "$MB_GC_INTERVAL" --missing "$MB_GC_MISSING_TOLERANCE" \
  --drop "$MB_GC_DROP_TOLERANCE" --milvus-log "$MB_STATE/logs/milvus.stdout.log" \
  --out "$MB_STATE/gc-probe-result.json" ${MB_GC_MAX_WAIT:+--max-wait "$MB_GC_MAX_WAIT"} \
  ${MB_GC_SCANS:+--scans "$MB_GC_SCANS"}
