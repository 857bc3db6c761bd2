#!/usr/bin/env bash
# Operator scenarios on the real test bed (same setup as e2e/operator-e2e.sh: kube-apiserver +
# controller-manager from e2e/k8s, the pod runner in place of kubelet, the Helm chart, real
# Milvus 2.3.5 + s3s-fs from e2e/env-up.sh). One function per scenario; each prints PASS or
# FAIL; the script exits non-zero if any failed. Stops what it started unless MB_KEEP_ENV=1.
#
#   1 cel        invalid specs refused by the API server (batchSize 0, immutable source.path)
#   2 invalid    a spec the operator refuses (reserved worker.env) -> Failed/InvalidSpec, Event, no Jobs
#   3 suspend    created suspended: no planning, no Jobs; resumed -> Succeeded
#   4 flaky      a segment whose PK binlog is missing for the first attempt only -> Succeeded
#   5 restart    the operator Pod deleted mid-run -> Succeeded, one Job per task, no duplicates
#   6 failing    a segment whose PK binlog is gone -> Failed, failedSegments [seg, attempts 2]
#
# Holding Jobs back without suspend (suspend before planning also stops planning): the Backfill's
# worker.env takes a variable from a Secret that does not exist yet, so the worker containers
# wait (CreateContainerConfigError, as with a kubelet) until the script creates it ("the gate").
# Scenario 6 deletes binlogs of the dataset's opsc_int64 for good, so it runs last.
#
# Pick scenarios with MB_OPSC_SCENARIOS="cel invalid" (default: all, in the order above).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
NS=${MB_E2E_NS:-backfill-e2e}
COLL=opsc_int64
log() { echo "[operator-scenarios $(date +%H:%M:%S)] $*" >&2; }
T0=$(date +%s)

# shellcheck source=e2e/operator-testbed.sh
source e2e/operator-testbed.sh
DATA=$REPO/target/operator-scenarios
mkdir -p "$DATA"
log "dataset opsc"
"$MB_PY" e2e/dataset.py --out "$DATA" --name opsc >"$DATA/dataset.log" 2>&1 || { cat "$DATA/dataset.log"; exit 1; }
EXP=$DATA/expected.json
NSEG=$("$MB_PY" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['$COLL']['segments']))" "$EXP")
log "$COLL has $NSEG segments"

log "helm install (in-process planning)"
# The gates below hold every Pod that takes spec.worker.env, a planning Job's too, and the
# scenarios open them only once task Jobs exist: so the operator plans in-process here.
# e2e/operator-e2e.sh runs planning Jobs.
testbed_install --set planning.mode=inProcess

TS=$(date +%s)
# backfill_yaml NAME [extra spec lines (2-space indented)...]
backfill_yaml() {
  local name=$1
  shift
  cat <<YAML
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {name: $name, namespace: $NS}
spec:
  milvus: {uri: "$MILVUS_URI", collection: $COLL}
  storage: {endpoint: "$S3_ENDPOINT", bucket: $S3_BUCKET, credentialsSecretRef: {name: minio-creds}}
  source: {path: "s3://$DATA_BUCKET/$COLL/multi/"}
  output: {path: "s3://$S3_BUCKET/backfill-out/$name"}
  segmentsPerJob: 1
YAML
  for l in "$@"; do echo "  $l"; done
}
gated_worker() { echo "worker: {image: milvus-backfill:e2e, env: [{name: OPSC_GATE, valueFrom: {secretKeyRef: {name: $1, key: open}}}]}"; }
open_gate() { kubectl -n "$NS" create secret generic "$1" --from-literal=open=yes >/dev/null; }
OPSEL=app.kubernetes.io/name=milvus-backfill,app.kubernetes.io/component=operator
phase_is() { [ "$(phase_of "$1")" = "$2" ]; }
has_jobs() { [ "$(jobs_of "$1")" -ge "$2" ]; }
phase_of() { kubectl -n "$NS" get bf "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true; }
jobs_of() { kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$1,milvusbackfill.io/task" -o name 2>/dev/null | wc -l; }
# wait_final NAME TIMEOUT_S: waits for Succeeded or Failed, prints the phase
wait_final() {
  local p="" i
  for i in $(seq 1 "$2"); do
    p=$(phase_of "$1")
    case "$p" in Succeeded | Failed) break ;; esac
    sleep 1
  done
  echo "$p"
}
# wait_for DESC TIMEOUT_S CMD...: polls CMD every second
wait_for() {
  local desc=$1 t=$2 i
  shift 2
  for i in $(seq 1 "$t"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "timed out after ${t}s waiting for $desc"
  return 1
}
planned() { [ -n "$(kubectl -n "$NS" get bf "$1" -o jsonpath='{.status.runId}')" ] && [ "$(kubectl -n "$NS" get bf "$1" -o jsonpath='{.status.conditions[?(@.type=="Planned")].status}')" = True ]; }
dump() {
  kubectl -n "$NS" get bf "$1" -o yaml >"$DATA/$1.yaml" 2>&1 || true
  kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$1" -o wide >"$DATA/$1.jobs.txt" 2>&1 || true
  kubectl -n "$NS" get events --field-selector "involvedObject.name=$1" >"$DATA/$1.events.txt" 2>&1 || true
}
check() { "$MB_PY" e2e/operator-scenarios/s3check.py "$@"; }
# ck CONDITION-DESCRIPTION CMD...: runs CMD; on failure records the problem in $problems
problems=()
ck() {
  local d=$1
  shift
  if ! "$@"; then
    problems+=("$d")
    log "  not ok: $d"
  fi
}

# ---------------------------------------------------------------------------------------------
# refused NAME FIELD VALUE: a Backfill with spec.FIELD = VALUE must be refused, naming FIELD
refused() {
  local name=$1 field=$2 value=$3 out
  backfill_yaml "$name" "$field: $value" "suspend: true" "worker: {image: milvus-backfill:e2e}" >"$DATA/$name.yaml"
  if out=$(kubectl apply -f "$DATA/$name.yaml" 2>&1); then
    problems+=("$field $value was accepted: $out")
    kubectl -n "$NS" delete bf "$name" --wait=false >/dev/null 2>&1 || true
  else
    log "  $field $value refused: $out"
    ck "the refusal names $field" grep -q "$field" <<<"$out"
  fi
}

sc_cel() {
  local n=sc1-$TS out
  refused "$n-bs0" batchSize 0
  refused "$n-p0" parallelism 0
  backfill_yaml "$n" "suspend: true" "worker: {image: milvus-backfill:e2e}" | kubectl apply -f - >/dev/null
  if out=$(kubectl -n "$NS" patch bf "$n" --type merge -p "{\"spec\":{\"source\":{\"path\":\"s3://$DATA_BUCKET/elsewhere/\"}}}" 2>&1); then
    problems+=("spec.source.path change was accepted: $out")
  else
    log "  source.path change refused: $out"
    ck "the refusal says immutable" grep -q "spec.source is immutable" <<<"$out"
  fi
  ck "source.path unchanged" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.spec.source.path}')" = "s3://$DATA_BUCKET/$COLL/multi/"
  # mutable fields stay mutable
  ck "parallelism is mutable" kubectl -n "$NS" patch bf "$n" --type merge -p '{"spec":{"parallelism":3}}'
  kubectl -n "$NS" delete bf "$n" >/dev/null
}

sc_invalid() {
  local n=sc2-$TS
  backfill_yaml "$n" "worker: {image: milvus-backfill:e2e, env: [{name: AWS_SECRET_ACCESS_KEY, value: leaked}]}" | kubectl apply -f - >/dev/null
  wait_for "phase Failed" 60 phase_is "$n" Failed || true
  sleep 3 # no Job may appear later either
  dump "$n"
  ck "phase Failed (got $(phase_of "$n"))" test "$(phase_of "$n")" = Failed
  ck "condition Failed=True/InvalidSpec" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Failed")].status}/{.status.conditions[?(@.type=="Failed")].reason}')" = True/InvalidSpec
  ck "kstatus Stalled=True/InvalidSpec, Ready=False" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Stalled")].status}/{.status.conditions[?(@.type=="Stalled")].reason}/{.status.conditions[?(@.type=="Ready")].status}')" = True/InvalidSpec/False
  ck "the condition message names the field" grep -q "spec.worker.env\[0\].name AWS_SECRET_ACCESS_KEY is reserved" <(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Failed")].message}')
  ck "a Warning Event InvalidSpec" grep -q . <(kubectl -n "$NS" get events --field-selector "involvedObject.name=$n,type=Warning,reason=InvalidSpec" -o name)
  ck "no runId (not planned)" test -z "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.runId}')"
  ck "no Jobs" test "$(jobs_of "$n")" = 0
  # fixing the spec (worker is mutable) lets it run
  kubectl -n "$NS" patch bf "$n" --type merge -p '{"spec":{"worker":{"image":"milvus-backfill:e2e","env":[{"name":"OPSC_OK","value":"1"}]}}}' >/dev/null
  local p
  p=$(wait_final "$n" 180)
  dump "$n"
  ck "after the fix: Succeeded (got $p)" test "$p" = Succeeded
  [ "$p" = Succeeded ] && { kubectl -n "$NS" get bf "$n" -o json >"$DATA/$n.json"; ck "status and manifests after the fix" check check "$DATA/$n.json" "$EXP" "$COLL" "$n"; }
  kubectl -n "$NS" delete bf "$n" >/dev/null
}

sc_suspend() {
  local n=sc3-$TS i p bad=0
  backfill_yaml "$n" "suspend: true" "parallelism: 2" "worker: {image: milvus-backfill:e2e}" | kubectl apply -f - >/dev/null
  for i in $(seq 1 12); do
    p=$(phase_of "$n")
    [ "$(jobs_of "$n")" = 0 ] || bad=1
    sleep 1
  done
  dump "$n"
  ck "phase Suspended while suspended (got $p)" test "$p" = Suspended
  ck "condition Suspended=True" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Suspended")].status}')" = True
  ck "kstatus Ready=False/Suspended while suspended" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}')" = False/Suspended
  ck "no Jobs for 12 s" test "$bad" = 0
  ck "not planned while suspended" test -z "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.runId}')"
  kubectl -n "$NS" patch bf "$n" --type merge -p '{"spec":{"suspend":false}}' >/dev/null
  p=$(wait_final "$n" 180)
  dump "$n"
  ck "resumed: Succeeded (got $p)" test "$p" = Succeeded
  ck "kubectl wait --for=condition=Ready after resuming" kubectl -n "$NS" wait --for=condition=Ready "bf/$n" --timeout=10s
  ck "condition Suspended not True" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Suspended")].status}')" != True
  # resumed before planning: Events Suspended, Resumed and Planning
  local reasons
  reasons=$(kubectl -n "$NS" get events --field-selector "involvedObject.name=$n" -o jsonpath='{.items[*].reason}' | tr ' ' '\n' | sort -u | tr '\n' ' ')
  ck "Events Suspended, Resumed, Planning (got: $reasons)" grep -q "Planning Resumed .*Suspended" <<<"$reasons"
  ck "one Job per segment" test "$(jobs_of "$n")" = "$NSEG"
  [ "$p" = Succeeded ] && { kubectl -n "$NS" get bf "$n" -o json >"$DATA/$n.json"; ck "status and manifests" check check "$DATA/$n.json" "$EXP" "$COLL" "$n"; }
  kubectl -n "$NS" delete bf "$n" >/dev/null

  # B: suspended mid-run (planned, one Job held at the gate, parallelism 1)
  n=sc3b-$TS
  local gate=sc3b-gate-$TS
  backfill_yaml "$n" "parallelism: 1" "$(gated_worker "$gate")" | kubectl apply -f - >/dev/null
  wait_for "a Job of bf/$n" 120 has_jobs "$n" 1 || true
  kubectl -n "$NS" patch bf "$n" --type merge -p '{"spec":{"suspend":true}}' >/dev/null
  wait_for "phase Suspended" 30 phase_is "$n" Suspended || true
  open_gate "$gate"
  sleep 10 # the held Job runs to its end; no new Job starts
  dump "$n"
  ck "mid-run: phase Suspended (got $(phase_of "$n"))" phase_is "$n" Suspended
  ck "mid-run: still 1 Job while suspended (got $(jobs_of "$n"))" test "$(jobs_of "$n")" = 1
  ck "mid-run: the running Job finished" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.segments.succeeded}')" = 1
  kubectl -n "$NS" patch bf "$n" --type merge -p '{"spec":{"suspend":false}}' >/dev/null
  p=$(wait_final "$n" 180)
  dump "$n"
  ck "mid-run resume: Succeeded (got $p)" test "$p" = Succeeded
  ck "mid-run resume: Event Resumed" grep -q Resumed <(kubectl -n "$NS" get events --field-selector "involvedObject.name=$n" -o jsonpath='{.items[*].reason}')
  ck "mid-run: one Job per segment" test "$(jobs_of "$n")" = "$NSEG"
  kubectl -n "$NS" get bf "$n" -o json >"$DATA/$n.json"
  ck "mid-run: status and manifests" check check "$DATA/$n.json" "$EXP" "$COLL" "$n"
  kubectl -n "$NS" delete bf "$n" >/dev/null
  kubectl -n "$NS" delete secret "$gate" >/dev/null
}

# first_failed_job NAME: a Job of the Backfill with status.failed >= 1
first_failed_job() { kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$1" -o jsonpath='{range .items[?(@.status.failed>=1)]}{.metadata.name}{"\n"}{end}' | grep -q .; }

sc_flaky() {
  local n=sc4-$TS gate=sc4-gate-$TS seg p stash=$DATA/stash-sc4
  backfill_yaml "$n" "parallelism: 3" "retry: {maxAttempts: 3, backoffSeconds: 8}" "$(gated_worker "$gate")" | kubectl apply -f - >/dev/null
  wait_for "bf/$n planned" 120 planned "$n" || true
  ck "planned" planned "$n"
  seg=$(check pick "$EXP" "$COLL")
  rm -rf "$stash"
  check stash "$EXP" "$COLL" "$seg" "$stash" >&2
  open_gate "$gate"
  wait_for "a failed Job" 120 first_failed_job "$n" || true
  check restore "$EXP" "$COLL" "$seg" "$stash" >&2
  ck "a Job failed while the binlog was away" first_failed_job "$n"
  p=$(wait_final "$n" 180)
  dump "$n"
  ck "Succeeded (got $p)" test "$p" = Succeeded
  ck "one retry Job: $NSEG + 1 Jobs" test "$(jobs_of "$n")" = $((NSEG + 1))
  ck "an Event Retrying" grep -q Retrying <(kubectl -n "$NS" get events --field-selector "involvedObject.name=$n" -o jsonpath='{.items[*].reason}')
  kubectl -n "$NS" get bf "$n" -o json >"$DATA/$n.json"
  ck "status (no failed segments) and manifests" check check "$DATA/$n.json" "$EXP" "$COLL" "$n"
  kubectl -n "$NS" delete bf "$n" >/dev/null
  kubectl -n "$NS" delete secret "$gate" >/dev/null
}

sc_restart() {
  local n=sc5-$TS gate=sc5-gate-$TS p old new names
  backfill_yaml "$n" "parallelism: 1" "$(gated_worker "$gate")" | kubectl apply -f - >/dev/null
  wait_for "a Job of bf/$n" 120 has_jobs "$n" 1 || true
  old=$(kubectl -n "$NS" get pods -l "$OPSEL" -o jsonpath='{.items[0].metadata.name}')
  # Kill the operator mid-run: its first Job exists (held at the gate), two tasks are still to
  # start. Then open the gate: the worker runs while no operator (or a fresh one) is up. The new
  # operator must take over the live Job and create only the two missing ones.
  log "  deleting operator pod $old ($(jobs_of "$n") Jobs so far; worker pods: $(kubectl -n "$NS" get pods -l "milvusbackfill.io/backfill=$n" -o jsonpath='{range .items[*]}{.metadata.name}={.status.phase} {end}'))"
  kubectl -n "$NS" delete pod "$old" --wait=false >/dev/null
  open_gate "$gate"
  wait_for "a new operator pod" 120 sh -c "kubectl -n $NS get pods -l $OPSEL -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}' | grep -v '^$old ' | grep -q ' Running'" || true
  new=$(kubectl -n "$NS" get pods -l "$OPSEL" -o jsonpath='{.items[*].metadata.name}')
  log "  operator pods now: $new"
  ck "a new operator pod" test -n "$(tr ' ' '\n' <<<"$new" | grep -vx "$old")"
  p=$(wait_final "$n" 240)
  dump "$n"
  ck "Succeeded after the restart (got $p)" test "$p" = Succeeded
  names=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$n" -o jsonpath='{range .items[*]}{.metadata.labels.milvusbackfill\.io/task}-{.metadata.labels.milvusbackfill\.io/attempt}{"\n"}{end}')
  log "  Jobs (task-attempt): $(tr '\n' ' ' <<<"$names")"
  ck "one Job per task ($NSEG), all attempt 0" test "$(grep -c -- '-0$' <<<"$names")" = "$NSEG" -a "$(wc -l <<<"$names")" = "$NSEG"
  ck "no duplicate task Jobs" test "$(sort -u <<<"$names" | wc -l)" = "$NSEG"
  kubectl -n "$NS" get bf "$n" -o json >"$DATA/$n.json"
  # The bucket's ledger agrees: one outcome per task, all of attempt 0.
  local outcomes
  outcomes=$(check outcomes "$DATA/$n.json")
  log "  outcomes (task-attempt): $(tr '\n' ' ' <<<"$outcomes")"
  ck "one outcome per task, attempt 0" test "$(grep -c -- '-0$' <<<"$outcomes")" = "$NSEG" -a "$(wc -l <<<"$outcomes")" = "$NSEG"
  ck "status and manifests" check check "$DATA/$n.json" "$EXP" "$COLL" "$n"
  kubectl -n "$NS" rollout status deploy -l app.kubernetes.io/name=milvus-backfill --timeout=120s >/dev/null
  kubectl -n "$NS" delete bf "$n" >/dev/null
  kubectl -n "$NS" delete secret "$gate" >/dev/null
}

sc_failing() {
  local n=sc6-$TS gate=sc6-gate-$TS seg p
  backfill_yaml "$n" "parallelism: 3" "retry: {maxAttempts: 2, backoffSeconds: 1}" "$(gated_worker "$gate")" | kubectl apply -f - >/dev/null
  wait_for "bf/$n planned" 120 planned "$n" || true
  ck "planned" planned "$n"
  seg=$(check pick "$EXP" "$COLL")
  check stash "$EXP" "$COLL" "$seg" "$DATA/stash-sc6" >&2 # not restored: dataset.py rebuilds it
  open_gate "$gate"
  p=$(wait_final "$n" 240)
  dump "$n"
  ck "Failed (got $p)" test "$p" = Failed
  ck "condition Failed=True/SegmentsFailed" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Failed")].status}/{.status.conditions[?(@.type=="Failed")].reason}')" = True/SegmentsFailed
  ck "kstatus Stalled=True/SegmentsFailed, Ready=False" test "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.conditions[?(@.type=="Stalled")].status}/{.status.conditions[?(@.type=="Stalled")].reason}/{.status.conditions[?(@.type=="Ready")].status}')" = True/SegmentsFailed/False
  ck "$NSEG + 1 Jobs (one retry)" test "$(jobs_of "$n")" = $((NSEG + 1))
  kubectl -n "$NS" get bf "$n" -o json >"$DATA/$n.json"
  ck "failedSegments [$seg, attempts 2], the rest succeeded with manifests" check check "$DATA/$n.json" "$EXP" "$COLL" "$n" --failed "$seg" --attempts 2
  ck "Warning Events Retrying, SegmentsFailed, Failed" test "$(kubectl -n "$NS" get events --field-selector "involvedObject.name=$n,type=Warning" -o jsonpath='{.items[*].reason}' | tr ' ' '\n' | grep -cx 'Retrying\|SegmentsFailed\|Failed')" = 3
  ck "result.json written" test -n "$(kubectl -n "$NS" get bf "$n" -o jsonpath='{.status.resultPath}')"
  kubectl -n "$NS" delete bf "$n" >/dev/null
  kubectl -n "$NS" delete secret "$gate" >/dev/null
}

# ---------------------------------------------------------------------------------------------
results=()
rc=0
for sc in ${MB_OPSC_SCENARIOS:-cel invalid suspend flaky restart failing}; do
  problems=()
  t=$(date +%s)
  log "scenario $sc"
  if ! "sc_$sc"; then problems+=("the scenario function itself failed (set -e)"); fi
  if [ ${#problems[@]} = 0 ]; then
    r="PASS $sc ($(($(date +%s) - t)) s)"
  else
    r="FAIL $sc ($(($(date +%s) - t)) s): $(printf '%s; ' "${problems[@]}")"
    rc=1
  fi
  echo "$r"
  results+=("$r")
done
log "summary ($(($(date +%s) - T0)) s in all):"
printf '  %s\n' "${results[@]}" >&2
exit $rc
