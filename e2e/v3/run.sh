#!/usr/bin/env bash
# StorageV3 ("loon") end-to-end oracle for `milvus-backfill run`, against the OFFICIAL milvus-storage
# library (PyPI wheel milvus-storage==0.1.0.dev1). See e2e/v3/README.md.
#
#   e2e/v3/run.sh [WORK_DIR]
#
# Env: BIN (default target/release/milvus-backfill, relative to the repo root), MB_HOME (venv cache,
# default ~/.cache/milvus-backfill), V3_LEGS ("local s3", the default, or one of them), KEEP_WORK=1
# (keep the work dir after success), PYTHON (interpreter for the venv, default python3).
#
# LEG local: segments written on a local directory that holds the bucket (spec endpoint file:///DIR).
# LEG s3:    the same against moto_server on 127.0.0.1 (spec endpoint 127.0.0.1:PORT).
# Each leg: make_collection.py -> milvus-backfill run -f spec --result result (per collection)
#           -> commit_and_verify.py --retry (official transaction commit + official reader check).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LEGS=${V3_LEGS:-local s3}
BUCKET=a-bucket
COLLECTIONS="v3_int64 v3_varchar"

log() { echo "[v3-e2e $(date +%H:%M:%S)] $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

cd "$REPO"
BIN=${BIN:-target/release/milvus-backfill}
case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
[ -x "$BIN" ] || die "no milvus-backfill binary at $BIN (cargo build --release, or set BIN)"

# ---------------------------------------------------------------- venv with the official library
# shellcheck source=common.sh
. "$HERE/common.sh"
ensure_v3_venv || die "could not set up the venv with the official milvus-storage library"

# ---------------------------------------------------------------- work dir
if [ $# -ge 1 ]; then
  WORK=$(mkdir -p "$1" && cd "$1" && pwd); OWN_WORK=0
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/mb-v3.XXXXXX"); OWN_WORK=1
fi
log "work dir $WORK; binary $BIN; legs: $LEGS"

cleanup() {
  local rc=$?
  stop_moto
  if [ $rc -eq 0 ] && [ "$OWN_WORK" = 1 ] && [ "${KEEP_WORK:-0}" != 1 ]; then
    rm -rf "$WORK"
  elif [ $rc -ne 0 ]; then
    log "work dir kept for inspection: $WORK"
  fi
}
trap cleanup EXIT

# run one leg: $1 = leg name, $2 = make_collection target
run_leg() {
  local leg=$1 target=$2 dir="$WORK/$1"
  mkdir -p "$dir"
  log "[$leg] make_collection (official writer) -> $target"
  "$PY" "$HERE/make_collection.py" "$target" "$dir" --bucket "$BUCKET" > "$dir/make_collection.json" \
    || die "[$leg] make_collection failed"
  local c
  for c in $COLLECTIONS; do
    log "[$leg] $c: milvus-backfill run -f spec-$c.yaml"
    if ! "$BIN" run -f "$dir/spec-$c.yaml" --result "$dir/result-$c.json" > "$dir/run-$c.log" 2>&1; then
      tail -n 40 "$dir/run-$c.log" >&2
      die "[$leg] $c: milvus-backfill run failed (log: $dir/run-$c.log)"
    fi
    [ -s "$dir/result-$c.json" ] || die "[$leg] $c: no result JSON at $dir/result-$c.json"
    log "[$leg] $c: commit_and_verify (official transaction + reader, with a retry)"
    if ! "$PY" "$HERE/commit_and_verify.py" --result "$dir/result-$c.json" \
        --expected "$dir/expected-$c.json" --storage "$dir/storage.json" --retry > "$dir/verify-$c.json"; then
      cat "$dir/verify-$c.json" >&2 || true
      die "[$leg] $c: commit_and_verify failed"
    fi
    "$PY" - "$dir/verify-$c.json" "$leg" "$c" <<'EOF' >&2
import json, sys
s = json.load(open(sys.argv[1]))
print(f"[v3-e2e] [{sys.argv[2]}] {sys.argv[3]}: OK {s['segmentsCommitted']} segments committed, "
      f"{s['rowsChecked']} rows / {s['valuesChecked']} values checked, {s['rowsWithSourceKey']} rows matched, "
      f"{s['mismatches']} mismatches; retry {s['retry']}")
EOF
  done
}

for leg in $LEGS; do
  case $leg in
    local)
      run_leg local "$WORK/local/milvus-data"
      ;;
    s3)
      mkdir -p "$WORK/s3"
      start_moto "$WORK/s3/moto.log" || die "[s3] moto_server did not start"
      run_leg s3 "s3://127.0.0.1:$MOTO_PORT"
      stop_moto
      ;;
    *) die "unknown leg $leg (local, s3)" ;;
  esac
done
log "PASS: StorageV3 oracle ($LEGS)"
