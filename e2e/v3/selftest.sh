#!/usr/bin/env bash
# TEST-ONLY: tests the V3 harness itself (make_collection.py, commit_and_verify.py, loon.py) without
# the Rust CLI, using fake_backfill.py as a stand-in writer. Not part of run.sh.
#
#   e2e/v3/selftest.sh [WORK_DIR]      (env V3_LEGS="local s3", KEEP_WORK=1)
#
# Per leg: positive runs (bare and full-key paths, split ranges, two files, no properties, a retry),
# then negatives that commit_and_verify must refuse before committing (exit 2) or catch after (exit 1);
# the same for results of `spec.output.v3Commit: manifest` (commit_and_verify --already-committed) and
# for StorageV2 results (check_v2.py, with fake_backfill_v2.py); and the library probe once.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LEGS=${V3_LEGS:-local s3}
log() { echo "[v3-selftest $(date +%H:%M:%S)] $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
# shellcheck source=common.sh
. "$HERE/common.sh"
ensure_v3_venv || die "no venv"

if [ $# -ge 1 ]; then WORK=$(mkdir -p "$1" && cd "$1" && pwd); OWN=0
else WORK=$(mktemp -d "${TMPDIR:-/tmp}/mb-v3-selftest.XXXXXX"); OWN=1; fi
cleanup() {
  local rc=$?
  stop_moto
  if [ $rc -eq 0 ] && [ $OWN = 1 ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"
  elif [ $rc -ne 0 ]; then log "work dir kept: $WORK"; fi
}
trap cleanup EXIT

PASSED=0 FAILED=0
# expect NAME RC PATTERN -- command...   (PATTERN: grep -E on stdout+stderr; '' = any)
expect() {
  local name=$1 want=$2 pat=$3; shift 4
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" = "$want" ] && { [ -z "$pat" ] || grep -Eq -- "$pat" <<<"$out"; }; then
    PASSED=$((PASSED + 1)); log "ok   $name (exit $rc)"
  else
    FAILED=$((FAILED + 1)); log "FAIL $name: exit $rc (want $want), pattern '$pat'"; tail -n 15 <<<"$out" >&2
  fi
}

build() {  # build LEG TARGET N -> sets D; each build gets its own bucket (dir or S3 bucket)
  D="$WORK/$1/build$3"
  mkdir -p "$D"
  "$PY" "$HERE/make_collection.py" "$2" "$D" --bucket "bucket-$3" > /dev/null 2>"$D/make.log" \
    || { cat "$D/make.log" >&2; die "make_collection"; }
}
fake() {  # fake COLL OUT [fake args...]
  local c=$1 out=$2; shift 2
  local e="$D/expected-$c.json"
  "$PY" "$HERE/fake_backfill.py" --storage "$D/storage.json" --snapshot "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot"])' "$e")" \
    --source "$D/source-$([ "$c" = v3_int64 ] && echo a || echo b).parquet" --result "$out" "$@" 2>/dev/null
}
verify() {  # verify COLL RESULT [args]
  local c=$1 r=$2; shift 2
  "$PY" "$HERE/commit_and_verify.py" --result "$r" --expected "$D/expected-$c.json" --storage "$D/storage.json" "$@"
}
mutate() {  # mutate IN OUT PYTHON-EXPR-ON-r
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); $3; json.dump(r, open(sys.argv[2],'w'))" "$1" "$2"
}

leg() {
  local L=$1 T=$2
  log "=== leg $L ($T)"
  # build 1: refusals before any commit, then a good commit with a retry, then a replace over it
  build "$L" "$T" 1
  local A=v3_int64 B=v3_varchar
  fake $A "$D/good-a.json"
  fake $A "$D/short.json" --short-file;        expect "$L short file refused" 2 'endIndex .* > the file' -- verify $A "$D/short.json"
  fake $A "$D/snappy.json" --snappy;           expect "$L snappy refused" 2 'snappy' -- verify $A "$D/snappy.json"
  fake $A "$D/data.json" --path-style data;    expect "$L _data/ path refused" 2 '_data/<name>' -- verify $A "$D/data.json"
  fake $A "$D/bucket.json" --path-style bucket;  expect "$L bucket-prefixed path refused" 2 'neither a bare file name' -- verify $A "$D/bucket.json"
  fake $A "$D/sv.json" --source-version;       expect "$L stale sourceVersion refused" 2 'sourceVersion 3 != the current manifest version 4' -- verify $A "$D/sv.json"
  mutate "$D/good-a.json" "$D/m1.json" 'r["schemaVersion"]=2';                  expect "$L schemaVersion fence" 2 'schemaVersion 2' -- verify $A "$D/m1.json"
  mutate "$D/good-a.json" "$D/m2.json" 'r["partitionId"]=-1';                   expect "$L partitionId -1" 2 'partitionId -1' -- verify $A "$D/m2.json"
  mutate "$D/good-a.json" "$D/m2b.json" 'r["partitionId"]=2002';                expect "$L partitionId of a multi-partition result" 2 'partitionId 2002' -- verify $A "$D/m2b.json"
  mutate "$D/good-a.json" "$D/m3.json" 'r["success"]=False';                    expect "$L success false" 2 'success must be true' -- verify $A "$D/m3.json"
  mutate "$D/good-a.json" "$D/m4.json" 'r["segments"].pop("2006")';             expect "$L missing segment" 2 'segment 2006 of the snapshot is missing' -- verify $A "$D/m4.json"
  mutate "$D/good-a.json" "$D/m5.json" 's=r["segments"]["2003"]; s["ops"][1]["columns"]=["103"]'; expect "$L column in two ops" 2 'already in op 0' -- verify $A "$D/m5.json"
  mutate "$D/good-a.json" "$D/m6.json" 's=r["segments"]["2003"]; s["ops"][0]["files"][0]["endIndex"]-=1'; expect "$L sum of ranges" 2 'sum\(endIndex - startIndex\) = 2999' -- verify $A "$D/m6.json"
  mutate "$D/good-a.json" "$D/m7.json" 's=r["segments"]["2003"]; s["ops"][0]["files"][0]["properties"]["footer_size"]="1"'; expect "$L footer_size exact" 2 'footer_size 1 !=' -- verify $A "$D/m7.json"
  mutate "$D/good-a.json" "$D/m8.json" 's=r["segments"]["2003"]; s["ops"][0]["columns"]=["score"]'; expect "$L column named by field name" 2 "column 'score' is not a field-ID string" -- verify $A "$D/m8.json"
  mutate "$D/good-a.json" "$D/m9.json" 'r["newFieldNames"]=["score"]';          expect "$L newFieldNames" 2 'newFieldNames' -- verify $A "$D/m9.json"
  mutate "$D/good-a.json" "$D/m10.json" 'r["collectionId"]=3001';               expect "$L collectionId" 2 'collectionId 3001' -- verify $A "$D/m10.json"
  mutate "$D/good-a.json" "$D/m11.json" 's=r["segments"]["2003"]; s["ops"][0]["format"]="vortex"'; expect "$L format" 2 "format 'vortex'" -- verify $A "$D/m11.json"
  expect "$L A bare paths, retry idempotent" 0 'OK: 4 segments committed, 7500 rows and 15000 values checked, 0 mismatches' -- verify $A "$D/good-a.json" --retry
  fake $A "$D/again.json"
  expect "$L replace over a committed column (no drop-column)" 2 'has no drop-column' -- verify $A "$D/again.json"
  fake $B "$D/good-b.json" --path-style full
  expect "$L B full keys, retry idempotent" 0 'OK: 2 segments committed, 2200 rows and 2200 values checked' -- verify $B "$D/good-b.json" --retry

  # build 2: other shapes of a correct result
  build "$L" "$T" 2
  fake $A "$D/shapes-a.json" --path-style full --split-ranges --two-files --no-properties
  expect "$L A split ranges, two files, full keys, no properties" 0 'OK: 4 segments committed' -- verify $A "$D/shapes-a.json" --retry
  fake $B "$D/shapes-b.json" --split-ranges
  expect "$L B split ranges" 0 'OK: 2 segments committed' -- verify $B "$D/shapes-b.json"

  # build 3: errors found only after a commit
  build "$L" "$T" 3
  fake $A "$D/add.json" --type add
  expect "$L op add is not retryable" 2 'round 2.*an `add` cannot be retried' -- verify $A "$D/add.json" --retry
  fake $B "$D/wrong.json" --wrong-value
  expect "$L a wrong value is caught" 1 'FAILED: 1 mismatch' -- verify $B "$D/wrong.json"

  # build 4: spec.output.v3Commit: manifest, the run commits the transaction itself (hand-made results:
  # fake_backfill --v3-commit manifest commits with the official transaction), checked with --already-committed
  build "$L" "$T" 4
  fake $A "$D/man-a.json" --v3-commit manifest
  expect "$L manifest mode: A committed by the run" 0 'OK: 4 segments committed by the run, 7500 rows and 15000 values checked, 0 mismatches' -- verify $A "$D/man-a.json" --already-committed
  expect "$L manifest mode: version-only entries are no ops entries" 2 'no ops' -- verify $A "$D/man-a.json"
  mutate "$D/man-a.json" "$D/m20.json" 's=r["segments"]["2003"]; s["version"]+=1'; expect "$L manifest mode: version != sourceVersion+1" 2 'version 5 != 4' -- verify $A "$D/m20.json" --already-committed
  mutate "$D/man-a.json" "$D/m21.json" 's=r["segments"]["2007"]; s["sourceVersion"]=3'; expect "$L manifest mode: sourceVersion = snapshot ver, not latest" 2 'sourceVersion 3 != 4, the latest' -- verify $A "$D/m21.json" --already-committed
  mutate "$D/man-a.json" "$D/m22.json" 's=r["segments"]["2006"]; s["ops"]=[]'; expect "$L manifest mode: ops key present" 2 'has ops' -- verify $A "$D/m22.json" --already-committed
  fake $B "$D/claim-b.json" --v3-commit manifest --claim-only
  expect "$L manifest mode: version claimed, nothing published" 2 'the latest manifest version is 1, the result says 2' -- verify $B "$D/claim-b.json" --already-committed
  fake $B "$D/man-b-wrong.json" --v3-commit manifest --wrong-value
  expect "$L manifest mode: a wrong value is caught" 1 'FAILED: 1 mismatch' -- verify $B "$D/man-b-wrong.json" --already-committed

  # StorageV2: make_v2_collection + fake_backfill_v2 (each run first removes the previous run's files)
  D2="$WORK/$L/v2"
  mkdir -p "$D2"
  "$PY" "$HERE/make_v2_collection.py" "$T" "$D2" --bucket bucket-v2 > /dev/null 2>"$D2/make.log" \
    || { cat "$D2/make.log" >&2; die "make_v2_collection"; }
  V2SNAP=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot"])' "$D2/expected-v2_int64.json")
  expect "$L v2 one file per field" 0 'OK: 2 segments, 3500 rows, 3500 values, 2 files checked, 0 mismatches' -- v2case one
  expect "$L v2 three files per field (Milvus' split)" 0 'OK: 2 segments, 3500 rows, 3500 values, 6 files checked' -- v2case three --files 3
  expect "$L v2 uneven files (Milvus' EntriesNum)" 2 'Milvus records EntriesNum 500' -- v2case uneven --files 2 --uneven
  expect "$L v2 files listed in descending log ID" 2 'log IDs not ascending' -- v2case desc --files 2 --descending
  expect "$L v2 column named by field ID" 2 "column is named '103'" -- v2case byid --name-by-id
  expect "$L v2 no PARQUET:field_id" 2 'no single column with PARQUET:field_id 103' -- v2case nofid --no-field-id
  expect "$L v2 no group_field_id_list" 2 'group_field_id_list None' -- v2case nogl --no-group-list
  expect "$L v2 extra footer key ARROW:schema" 2 "footer keys \\['ARROW:schema'" -- v2case schema --store-schema
  expect "$L v2 log ID below 2^62" 2 'not in \(2\^62, 2\^63\)' -- v2case low --low-log-id
  expect "$L v2 PK files read in string order" 1 'FAILED: [0-9]+ mismatch' -- v2case strorder --string-order
  expect "$L v2 a wrong value is caught" 1 'FAILED: 1 mismatch' -- v2case wrong --wrong-value
  expect "$L v2 unlisted object left behind" 2 'is in no column group' -- v2case stray --stray
}

v2case() {  # v2case NAME [fake_backfill_v2 args]: a fake V2 run, then check_v2
  local n=$1; shift
  "$PY" "$HERE/fake_backfill_v2.py" --storage "$D2/storage-v2.json" --snapshot "$V2SNAP" \
    --source "$D2/source-v2.parquet" --result "$D2/$n.json" --clean "$@" 2>/dev/null || return 99
  "$PY" "$HERE/check_v2.py" --result "$D2/$n.json" --expected "$D2/expected-v2_int64.json" --storage "$D2/storage-v2.json"
}

for L in $LEGS; do
  case $L in
    local) leg local "$WORK/local/milvus-data" ;;
    s3) mkdir -p "$WORK/s3"; start_moto "$WORK/s3/moto.log" || die "moto"; leg s3 "s3://127.0.0.1:$MOTO_PORT"; stop_moto ;;
    *) die "unknown leg $L" ;;
  esac
done

log "=== library probe"
"$PY" "$HERE/probe_library.py" "$WORK/probe" > "$WORK/probe.jsonl"
probe() {  # probe NAME KEY PATTERN
  if "$PY" -c 'import json,sys,re
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("probe") == sys.argv[2]:
        sys.exit(0 if re.search(sys.argv[4], str(r.get(sys.argv[3]))) else 1)
sys.exit(1)' "$WORK/probe.jsonl" "$1" "$2" "$3"; then PASSED=$((PASSED + 1)); log "ok   probe: $1 -> $2 ~ $3"
  else FAILED=$((FAILED + 1)); log "FAIL probe: $1 -> $2 !~ $3"; grep -F "\"$1\"" "$WORK/probe.jsonl" >&2 || true; fi
}
probe "bare file name" read '^ok'
probe "full bucket-relative key {base}/_data/name" storedInManifest 'bare name'
probe "_data/name (wrong)" read 'refused'
probe "bucket-prefixed key bkt/{base}/_data/name" read 'refused'
probe "one file as two ranges [0,400) + [400,1000)" valuesAsExpected True
probe "partial range [250,1250) of a 1500-row file" valuesAsExpected True
probe "file with 999 rows for a 1000-row segment (negative)" commit 'accepted'
probe "file with 999 rows for a 1000-row segment (negative)" read 'different number of rows'
probe "Snappy-compressed file (negative)" read 'snappy'
probe "add of an existing column (a retried add, negative)" commit 'already exists'
probe "commit after another version was published since begin" commit 'concurrent transaction'

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
