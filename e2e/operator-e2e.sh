#!/usr/bin/env bash
# End-to-end run of the operator on the real test bed: kube-apiserver + controller-manager
# (e2e/k8s), the pod runner in place of kubelet, the Helm chart, and the real Milvus 2.3.5 +
# s3s-fs (e2e/env-up.sh). Stops what it started unless MB_KEEP_ENV=1.
#   1. helm install; kubectl apply a Secret and a Backfill; wait for Succeeded; check Jobs <=
#      parallelism, the printer columns, the Events, the spec untouched, the status totals and
#      every output row against the dataset's ground truth.
#      It is planned by a planning Job (the chart's default): the operator's ServiceAccount cannot
#      get Secrets; a Backfill naming a missing collection fails with PrecheckFailed from the Job's
#      answer.
#   2. helm upgrade with changed values: two replicas with leader election, JSON logs, planning
#      in-process (the operator reads the Backfill's Secrets). One
#      Lease holder; a second Backfill runs; the leader Pod is deleted mid-run; the standby
#      takes the Lease over; the new leader is killed (no release); after the lease expires
#      another takes over and finishes the run with one Job per task and every row right. That
#      run is staged (`routing: Staged`): the leader goes while the route stage runs, and no
#      finished route, join or write task is run again; the source is read once and the
#      exchange is deleted.
#   3. Deleting a Backfill deletes its Jobs.
#   4. helm uninstall: the CRD and the remaining Backfill stay.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
NS=${MB_E2E_NS:-backfill-e2e}
log() { echo "[operator-e2e $(date +%H:%M:%S)] $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# shellcheck source=e2e/operator-testbed.sh
source e2e/operator-testbed.sh
DATA=$REPO/target/operator-e2e
mkdir -p "$DATA"
"$MB_PY" e2e/dataset.py --out "$DATA" --name op >"$DATA/dataset.log" 2>&1 || { cat "$DATA/dataset.log"; exit 1; }

log "helm install"
testbed_install
RUN=op-$(date +%s)
cat >"$DATA/backfill.yaml" <<YAML
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {name: $RUN, namespace: $NS}
spec:
  milvus: {uri: "$MILVUS_URI", collection: op_int64}
  storage: {endpoint: "$S3_ENDPOINT", bucket: $S3_BUCKET, credentialsSecretRef: {name: minio-creds}}
  source: {path: "s3://$DATA_BUCKET/op_int64/multi/"}
  output: {path: "s3://$S3_BUCKET/backfill-out/$RUN"}
  parallelism: 2
  worker: {image: milvus-backfill:e2e}
YAML
spec_before=$(kubectl create --dry-run=client -f "$DATA/backfill.yaml" -o jsonpath='{.spec}')
kubectl apply -f "$DATA/backfill.yaml" >/dev/null
log "waiting for bf/$RUN to complete"
max_jobs=0
for _ in $(seq 1 150); do
  phase=$(kubectl -n "$NS" get bf "$RUN" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  active=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN,milvusbackfill.io/task" -o jsonpath='{range .items[*]}{.status.active}{"\n"}{end}' | grep -c '^1$' || true)
  [ "$active" -gt "$max_jobs" ] && max_jobs=$active
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 2
done
kubectl -n "$NS" get bf "$RUN" | tee "$DATA/get-bf.txt"
[ "$phase" = Succeeded ] || { kubectl -n "$NS" get bf "$RUN" -o yaml; fail "phase $phase"; }
[ "$max_jobs" -le 2 ] || fail "$max_jobs Jobs ran at once with parallelism 2"
grep -q "PHASE" "$DATA/get-bf.txt" && grep -q "READY" "$DATA/get-bf.txt" && grep -q "SEGMENTS" "$DATA/get-bf.txt" || fail "printer columns missing"
# kstatus, as Flux and kpt read it: Ready=True, Reconciling and Stalled False.
kubectl -n "$NS" wait --for=condition=Ready "bf/$RUN" --timeout=10s >/dev/null || fail "kubectl wait --for=condition=Ready"
[ "$(kubectl -n "$NS" get bf "$RUN" -o jsonpath='{.status.conditions[?(@.type=="Reconciling")].status}/{.status.conditions[?(@.type=="Stalled")].status}')" = False/False ] ||
  fail "a succeeded Backfill is still Reconciling or Stalled"
# The operator's event recorder writes asynchronously: a fast run can be Succeeded before its
# Events reach the API server, so look for up to 30 s. On failure, show what the API server holds
# and what the operator said about publishing them.
events_seen() { kubectl -n "$NS" get events --field-selector "involvedObject.name=$RUN" -o name | grep -q .; }
for _ in $(seq 60); do events_seen && break; sleep 0.5; done
if ! events_seen; then
  kubectl -n "$NS" get events -o wide || true
  kubectl get events.events.k8s.io -A -o wide || true
  cat "$MB_HOME"/pod-runner/pod-logs/"$NS"/*/operator.log 2>/dev/null | grep -i -E "event|warn|error" | tail -40 || true
  fail "no Events for the Backfill"
fi
spec_after=$(kubectl -n "$NS" get bf "$RUN" -o jsonpath='{.spec}')
[ "$spec_before" = "$spec_after" ] || fail "the operator changed the spec"

kubectl -n "$NS" get bf "$RUN" -o json >"$DATA/bf.json"
"$MB_PY" e2e/operator-scenarios/s3check.py check "$DATA/bf.json" "$DATA/expected.json" op_int64 "$RUN" ||
  fail "status or output rows of $RUN"

# ---- 1b. planning Jobs: the operator reads no Secret ------------------------------------------
OPSA=$(kubectl -n "$NS" get deploy -l app.kubernetes.io/name=milvus-backfill,app.kubernetes.io/component=operator -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
[ "$(kubectl auth can-i get secrets --as="system:serviceaccount:$NS:$OPSA" -n "$NS" 2>/dev/null || true)" = no ] ||
  fail "the operator may read Secrets with planning Jobs"
plan_jobs=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN,app.kubernetes.io/component=planner" -o jsonpath='{range .items[*]}{.metadata.name}={.status.succeeded}{"\n"}{end}')
[ "$plan_jobs" = "$RUN-plan-1-0=1" ] || fail "expected one succeeded planning Job $RUN-plan-1-0, got: $plan_jobs"
# Least privilege: the chart grants what the operator's code calls and nothing more.
for denied in "list pods" "create events" "delete jobs" "patch backfills" "update backfills" "update backfills --subresource=status"; do
  # shellcheck disable=SC2086
  [ "$(kubectl auth can-i $denied --as="system:serviceaccount:$NS:$OPSA" -n "$NS" 2>/dev/null || true)" = no ] ||
    fail "the operator's ServiceAccount may $denied"
done
for granted in "watch backfills" "patch backfills --subresource=status" "patch jobs" "create events.events.k8s.io"; do
  # shellcheck disable=SC2086
  [ "$(kubectl auth can-i $granted --as="system:serviceaccount:$NS:$OPSA" -n "$NS" 2>/dev/null || true)" = yes ] ||
    fail "the operator's ServiceAccount may not $granted"
done
log "planned by Job $RUN-plan-1-0; the operator's ServiceAccount $OPSA cannot get Secrets, Pods, core Events, delete Jobs or write a spec"
RUN_UID=$(kubectl -n "$NS" get bf "$RUN" -o jsonpath='{.metadata.uid}')
"$MB_PY" e2e/operator-scenarios/s3check.py precheck "s3://$S3_BUCKET/files/backfill/planning/$RUN_UID/1-0/precheck.json" passed >&2 ||
  fail "$RUN: no passed precheck report beside its planning attempt"
# A permanent planning failure comes back through the Job's answer: Failed/PrecheckFailed, one Job.
BAD=$RUN-nocoll
sed -e "s/name: $RUN,/name: $BAD,/" -e "s/collection: op_int64/collection: no_such_collection/" "$DATA/backfill.yaml" | kubectl apply -f - >/dev/null
for _ in $(seq 1 60); do
  [ "$(kubectl -n "$NS" get bf "$BAD" -o jsonpath='{.status.phase}' 2>/dev/null)" = Failed ] && break
  sleep 1
done
bad_reason=$(kubectl -n "$NS" get bf "$BAD" -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}|{.status.conditions[?(@.type=="Failed")].message}')
case "$bad_reason" in
  "PrecheckFailed|ConfigError: "*no_such_collection*) log "a missing collection: $bad_reason" ;;
  *) kubectl -n "$NS" get bf "$BAD" -o yaml; fail "$BAD: expected PrecheckFailed naming no_such_collection, got: $bad_reason" ;;
esac
[ "$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$BAD" -o name | wc -l)" = 1 ] || fail "$BAD: expected its one planning Job and no task Job"
# The condition names the stored report; it failed at the collection check, the rest not run.
report_uri=$(grep -o 's3://[^)]*/precheck.json' <<<"$bad_reason" || true)
[ -n "$report_uri" ] || fail "$BAD: the Failed condition names no precheck report: $bad_reason"
"$MB_PY" e2e/operator-scenarios/s3check.py precheck "$report_uri" collection >&2 || fail "$BAD: precheck report $report_uri"
kubectl -n "$NS" delete bf "$BAD" >/dev/null

# ---- 2. helm upgrade: two replicas, leader election --------------------------------------------
# Every Pod of the pod runner shares the host's network, so the two replicas cannot both listen on
# 8080: they take an ephemeral port, and the HTTP probes are off (a test-bed limit, not the chart's).
log "helm upgrade: replicaCount=2 (leader election), logFormat=json, in-process planning"
helm upgrade mbf charts/milvus-backfill -n "$NS" --wait --timeout 180s --reuse-values \
  --set replicaCount=2 --set logFormat=json --set planning.mode=inProcess --set livenessProbe=null --set readinessProbe=null \
  --set-json 'operator.extraArgs=["--http-addr","127.0.0.1:0"]' >/dev/null
kubectl -n "$NS" rollout status deploy -l app.kubernetes.io/name=milvus-backfill --timeout=180s >/dev/null
OPSEL=app.kubernetes.io/name=milvus-backfill,app.kubernetes.io/component=operator
LEASE=$(kubectl -n "$NS" get deploy -l "$OPSEL" -o jsonpath='{.items[0].spec.template.spec.containers[0].env[?(@.name=="LEASE_NAME")].value}')
[ -n "$LEASE" ] || fail "no LEASE_NAME in the Deployment"
[ "$(kubectl -n "$NS" get deploy -l "$OPSEL" -o jsonpath='{.items[0].spec.template.spec.containers[0].env[?(@.name=="LEADER_ELECTION")].value}')" = true ] ||
  fail "LEADER_ELECTION is not true with replicaCount=2"
running_ops() { kubectl -n "$NS" get pods -l "$OPSEL" -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' | grep -v '^$' || true; }
holder() { kubectl -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true; }
for _ in $(seq 1 60); do
  pods=$(running_ops)
  [ "$(wc -l <<<"$pods")" = 2 ] && grep -qx "$(holder)" <<<"$pods" && break
  sleep 1
done
log "operator pods: $(tr '\n' ' ' <<<"$pods"); Lease $LEASE held by $(holder)"
[ "$(wc -l <<<"$pods")" = 2 ] || fail "expected 2 running operator Pods, got: $pods"
LEADER=$(holder)
grep -qx "$LEADER" <<<"$pods" || fail "the Lease holder '$LEADER' is not a running operator Pod"
STANDBY=$(grep -vx "$LEADER" <<<"$pods")
podlog() { cat "$MB_HOME/pod-runner/pod-logs/$NS/$1/operator.log" 2>/dev/null || true; }
for _ in $(seq 1 20); do podlog "$STANDBY" | grep -q "standing by" && break; sleep 1; done
podlog "$STANDBY" | grep -q '"standing by; another replica leads"' || fail "the standby $STANDBY did not log (in JSON) that it stands by"
podlog "$LEADER" | grep -q '"became the leader"' || fail "the leader $LEADER did not log that it leads"
transitions0=$(kubectl -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.leaseTransitions}')

RUN2=op2-$(date +%s)
GATE=$RUN2-gate
sed -e "s/name: $RUN,/name: $RUN2,/" -e "s#backfill-out/$RUN\"#backfill-out/$RUN2\"#" -e 's/parallelism: 2/parallelism: 1\n  segmentsPerJob: 1\n  routing: Staged/' \
  -e "s#worker: {image: milvus-backfill:e2e}#worker: {image: milvus-backfill:e2e, env: [{name: OP_GATE, valueFrom: {secretKeyRef: {name: $GATE, key: open}}}]}#" \
  "$DATA/backfill.yaml" >"$DATA/backfill2.yaml"
grep -q "$GATE" "$DATA/backfill2.yaml" || fail "backfill2.yaml was not derived"
kubectl apply -f "$DATA/backfill2.yaml" >/dev/null
# The first Job waits at its gate (a Secret that does not exist yet): the run is mid-way.
for _ in $(seq 1 120); do
  [ "$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN2,milvusbackfill.io/task" -o name | wc -l)" -ge 1 ] && break
  sleep 1
done
for _ in $(seq 1 10); do
  stage=$(kubectl -n "$NS" get bf "$RUN2" -o jsonpath='{.status.stage}')
  [ "$stage" = Route ] && break
  sleep 1
done
[ "$stage" = Route ] || { kubectl -n "$NS" get bf "$RUN2" -o yaml; fail "$RUN2 at its first Job: stage '$stage', expected Route"; }
log "deleting the leader Pod $LEADER mid-run, in the route stage ($(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN2,milvusbackfill.io/task" -o name | wc -l) Job(s))"
kubectl -n "$NS" delete pod "$LEADER" --wait=false >/dev/null
kubectl -n "$NS" create secret generic "$GATE" --from-literal=open=yes >/dev/null
# next_leader OLD: waits up to 60 s for a holder other than OLD, sets $h to it
next_leader() {
  for _ in $(seq 1 60); do
    h=$(holder)
    [ -n "$h" ] && [ "$h" != "$1" ] && break
    sleep 1
  done
  log "Lease $LEASE now held by $h"
  [ -n "$h" ] && [ "$h" != "$1" ] || fail "no new leader after $1 went (holder: '$h')"
}
next_leader "$LEADER"
# A crash this time: the process is killed, the Lease is not released, and a standby takes it
# only once it has stopped changing for a whole lease duration (15 s).
LEADER2=$h
log "killing the new leader $LEADER2 (force delete: no release)"
kubectl -n "$NS" delete pod "$LEADER2" --grace-period=0 --force >/dev/null 2>&1
next_leader "$LEADER2"
for _ in $(seq 1 120); do
  phase=$(kubectl -n "$NS" get bf "$RUN2" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 2
done
[ "$phase" = Succeeded ] || { kubectl -n "$NS" get bf "$RUN2" -o yaml; fail "$RUN2 after the failover: phase $phase"; }
[ "$(kubectl -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.leaseTransitions}')" -gt "$transitions0" ] || fail "leaseTransitions did not grow"
names=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN2,milvusbackfill.io/task" -o jsonpath='{range .items[*]}{.metadata.labels.milvusbackfill\.io/task}-{.metadata.labels.milvusbackfill\.io/attempt}{"\n"}{end}')
ntasks=$(kubectl -n "$NS" get bf "$RUN2" -o jsonpath='{.status.tasks}')
[ "$(wc -l <<<"$names")" = "$ntasks" ] && [ "$(grep -c -- '-0$' <<<"$names")" = "$ntasks" ] ||
  fail "expected one Job per task ($ntasks, attempt 0), got: $(tr '\n' ' ' <<<"$names")"
kubectl -n "$NS" get bf "$RUN2" -o json >"$DATA/bf2.json"
"$MB_PY" e2e/operator-scenarios/s3check.py check "$DATA/bf2.json" "$DATA/expected.json" op_int64 "$RUN2" ||
  fail "status or output rows of $RUN2"
"$MB_PY" e2e/operator-scenarios/s3check.py staged "$DATA/bf2.json" || fail "the staged run $RUN2"
log "failover ok: $LEADER -> $LEADER2 -> $h, $ntasks Jobs, one per task"

# ---- 3. deleting a Backfill deletes its Jobs ----------------------------------------------------
log "deleting bf/$RUN2: its Jobs go with it"
kubectl -n "$NS" delete bf "$RUN2" --wait=true >/dev/null
kubectl -n "$NS" delete secret "$GATE" >/dev/null
for _ in $(seq 1 30); do
  n=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN2,milvusbackfill.io/task" -o name | wc -l)
  [ "$n" = 0 ] && break
  sleep 1
done
[ "$n" = 0 ] || fail "$n Jobs left after deleting the Backfill"

# ---- 4. helm uninstall keeps the CRD and the Backfills ------------------------------------------
log "helm uninstall: the CRD and bf/$RUN stay"
helm uninstall mbf -n "$NS" --wait --timeout 120s >/dev/null
kubectl get crd backfills.milvusbackfill.io >/dev/null || fail "the CRD went with helm uninstall"
[ "$(kubectl -n "$NS" get bf "$RUN" -o jsonpath='{.status.phase}')" = Succeeded ] || fail "bf/$RUN went with helm uninstall"
[ -z "$(kubectl -n "$NS" get deploy -l "$OPSEL" -o name)" ] || fail "the operator Deployment is still there"
kubectl -n "$NS" delete bf "$RUN" >/dev/null
log "PASS"
