#!/usr/bin/env bash
# StorageV3 ("loon") and StorageV2 (packed) end-to-end oracle for `milvus-backfill run`, against the
# OFFICIAL milvus-storage library (PyPI wheel milvus-storage==0.1.0.dev1) and pyarrow. See e2e/v3/README.md.
#
#   e2e/v3/run.sh [WORK_DIR]
#
# Env: BIN (default target/release/milvus-backfill, relative to the repo root), MB_HOME (venv cache,
# default ~/.cache/milvus-backfill), V3_LEGS ("local s3", the default, or one of them), V3_CASES
# ("ops manifest v2", the default, or a subset), KEEP_WORK=1 (keep the work dir after success), PYTHON
# (interpreter for the venv, default python3), V2_EXTRA_SEGMENT_ROWS=N (opt-in: the v2 case gets a third
# segment 4005 of N rows; N > 2^20 makes milvus-backfill write several files per field; about +15 s).
#
# LEG local: segments written on a local directory that holds the buckets (spec endpoint file:///DIR).
# LEG s3:    the same against moto_server on 127.0.0.1 (spec endpoint 127.0.0.1:PORT).
# Per leg, the cases of V3_CASES:
#   ops       make_collection.py -> milvus-backfill run (per collection) -> commit_and_verify.py --retry
#             (the official transaction commits the result's ops, the official reader checks); bucket a-bucket
#   manifest  the same collections with spec.output.v3Commit: manifest -> milvus-backfill run (it publishes
#             the manifests itself) -> commit_and_verify.py --already-committed; bucket m-bucket. SKIPPED, with
#             a message, when the binary refuses the field (unknown field `v3Commit`)
#   v2        make_v2_collection.py (StorageV2 packed files, format-4 snapshot manifests encoded by fastavro)
#             -> milvus-backfill run -> check_v2.py (pyarrow only); bucket v2-bucket
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LEGS=${V3_LEGS:-local s3}
CASES=${V3_CASES:-ops manifest v2}
COLLECTIONS="v3_int64 v3_varchar v3_vectors v3_joinkey"
SKIPPED=()

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
log "work dir $WORK; binary $BIN; legs: $LEGS; cases: $CASES"

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

# run_bin LABEL SPEC RESULT LOG: runs the binary; returns 3 if it refuses spec.output.v3Commit, dies otherwise.
run_bin() {
  local what=$1 spec=$2 result=$3 runlog=$4
  log "$what: milvus-backfill run -f $(basename "$spec")"
  if ! "$BIN" run -f "$spec" --result "$result" > "$runlog" 2>&1; then
    if grep -q 'unknown field `v3Commit`' "$runlog"; then return 3; fi
    tail -n 40 "$runlog" >&2
    die "$what: milvus-backfill run failed (log: $runlog)"
  fi
  [ -s "$result" ] || die "$what: no result JSON at $result"
}

# summarize JSON LABEL: one line from a commit_and_verify.py or check_v2.py summary
summarize() {
  "$PY" - "$1" "$2" <<'EOF' >&2
import json, sys
s = json.load(open(sys.argv[1]))
v2 = "filesChecked" in s
segs = len(s["segments"]) if v2 else s["segmentsCommitted"]
what = f"segments checked, {s['filesChecked']} new files" if v2 else "segments committed"
retry = f"; retry {s['retry']}" if s.get("retry") else ""
print(f"[v3-e2e] {sys.argv[2]}: OK {segs} {what}, {s['rowsChecked']} rows / {s['valuesChecked']} values checked, "
      f"{s['rowsWithSourceKey']} rows matched, {s['mismatches']} mismatches{retry}")
EOF
}

# case ops: $1 = leg, $2 = make_collection target
run_ops_case() {
  local leg=$1 target=$2 dir="$WORK/$1" c
  mkdir -p "$dir"
  log "[$leg] ops: make_collection (official writer) -> $target, bucket a-bucket"
  "$PY" "$HERE/make_collection.py" "$target" "$dir" --bucket a-bucket > "$dir/make_collection.json" \
    || die "[$leg] make_collection failed"
  for c in $COLLECTIONS; do
    run_bin "[$leg] ops $c" "$dir/spec-$c.yaml" "$dir/result-$c.json" "$dir/run-$c.log" \
      || die "[$leg] ops $c: unexpected exit"
    log "[$leg] ops $c: commit_and_verify (official transaction + reader, with a retry)"
    if ! "$PY" "$HERE/commit_and_verify.py" --result "$dir/result-$c.json" \
        --expected "$dir/expected-$c.json" --storage "$dir/storage.json" --retry > "$dir/verify-$c.json"; then
      cat "$dir/verify-$c.json" >&2 || true
      die "[$leg] ops $c: commit_and_verify failed"
    fi
    summarize "$dir/verify-$c.json" "[$leg] ops $c"
  done
}

# case manifest: $1 = leg, $2 = make_collection target
run_manifest_case() {
  local leg=$1 target=$2 dir="$WORK/$1/manifest" c rc msg
  mkdir -p "$dir"
  log "[$leg] manifest: make_collection --v3-commit manifest (official writer) -> $target, bucket m-bucket"
  "$PY" "$HERE/make_collection.py" "$target" "$dir" --bucket m-bucket --v3-commit manifest \
    > "$dir/make_collection.json" || die "[$leg] make_collection failed"
  # v3_rebackfill: a field backfilled before, coalesced now (its group is replaced: manifest case only).
  for c in $COLLECTIONS v3_rebackfill; do
    rc=0
    run_bin "[$leg] manifest $c" "$dir/spec-$c.yaml" "$dir/result-$c.json" "$dir/run-$c.log" || rc=$?
    if [ $rc = 3 ]; then
      msg=$(grep -o 'unknown field `v3Commit`[^"]*' "$dir/run-$c.log" | head -n 1)
      log "SKIP [$leg] manifest: this binary refuses spec.output.v3Commit ($msg): case not run"
      SKIPPED+=("[$leg] manifest: the binary refuses spec.output.v3Commit ($msg)")
      return 0
    fi
    log "[$leg] manifest $c: commit_and_verify --already-committed (manifests published by the run)"
    if ! "$PY" "$HERE/commit_and_verify.py" --result "$dir/result-$c.json" --expected "$dir/expected-$c.json" \
        --storage "$dir/storage.json" --already-committed > "$dir/verify-$c.json"; then
      cat "$dir/verify-$c.json" >&2 || true
      die "[$leg] manifest $c: commit_and_verify --already-committed failed"
    fi
    summarize "$dir/verify-$c.json" "[$leg] manifest $c"
  done
}

# case v2: $1 = leg, $2 = make_v2_collection target
run_v2_case() {
  local leg=$1 target=$2 dir="$WORK/$1/v2"
  mkdir -p "$dir"
  log "[$leg] v2: make_v2_collection (pyarrow packed files, fastavro snapshot manifests) -> $target, bucket v2-bucket"
  "$PY" "$HERE/make_v2_collection.py" "$target" "$dir" --bucket v2-bucket \
    ${V2_EXTRA_SEGMENT_ROWS:+--extra-segment-rows "$V2_EXTRA_SEGMENT_ROWS"} > "$dir/make.json" \
    || die "[$leg] make_v2_collection failed"
  run_bin "[$leg] v2 v2_int64" "$dir/spec-v2_int64.yaml" "$dir/result.json" "$dir/run.log" \
    || die "[$leg] v2: unexpected exit"
  log "[$leg] v2 v2_int64: check_v2 (pyarrow: result entries, file footers, values)"
  if ! "$PY" "$HERE/check_v2.py" --result "$dir/result.json" --expected "$dir/expected-v2_int64.json" \
      --storage "$dir/storage-v2.json" > "$dir/check.json"; then
    cat "$dir/check.json" >&2 || true
    die "[$leg] v2: check_v2 failed"
  fi
  summarize "$dir/check.json" "[$leg] v2 v2_int64"
}

run_cases() {  # $1 = leg, $2 = target
  local case
  for case in $CASES; do
    case $case in
      ops) run_ops_case "$1" "$2" ;;
      manifest) run_manifest_case "$1" "$2" ;;
      v2) run_v2_case "$1" "$2" ;;
      *) die "unknown case $case (ops, manifest, v2)" ;;
    esac
  done
}

for leg in $LEGS; do
  case $leg in
    local)
      run_cases local "$WORK/local/milvus-data"
      ;;
    s3)
      mkdir -p "$WORK/s3"
      start_moto "$WORK/s3/moto.log" || die "[s3] moto_server did not start"
      run_cases s3 "s3://127.0.0.1:$MOTO_PORT"
      stop_moto
      ;;
    *) die "unknown leg $leg (local, s3)" ;;
  esac
done
for s in ${SKIPPED[@]+"${SKIPPED[@]}"}; do log "SKIPPED $s"; done
log "PASS: StorageV3/V2 oracle (legs: $LEGS; cases: $CASES; ${#SKIPPED[@]} skipped)"
