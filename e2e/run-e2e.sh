#!/usr/bin/env bash
# Runs the integration tests on the real environment: Milvus 2.3.5 + s3s-fs on
# loopback. Starts them if needed and stops them afterwards only if it started them
# (MB_KEEP_ENV=1 keeps them up for debugging).
set -euo pipefail
cd "$(dirname "$0")/.."
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
STATE=$MB_HOME/e2e
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
was_up=0
if alive "$STATE/run/milvus.pid" && alive "$STATE/run/s3.pid"; then was_up=1; fi
t0=$(date +%s)
e2e/env-up.sh
if [ "$was_up" = 0 ] && [ "${MB_KEEP_ENV:-0}" != 1 ]; then
  trap 'e2e/env-down.sh' EXIT
fi
# shellcheck disable=SC1091
source "$STATE/env"
DATA=$PWD/target/e2e-data
mkdir -p "$DATA"
"$MB_PY" e2e/dataset.py --out "$DATA" --name e2e
MB_E2E_DATA=$DATA MB_REQUIRE_E2E=1 cargo test --release --workspace --test real_env --locked -- --test-threads=2
echo "[run-e2e] done in $(( $(date +%s) - t0 ))s"
