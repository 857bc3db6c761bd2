#!/usr/bin/env bash
# control-plane-check.sh - the operator against a real kube-apiserver + controller-manager
# (e2e/k8s, no kubelet) and a real S3 server (s3s-fs), with workers played by this script:
#
#   * the committed CRD is accepted (structural schema, CEL cost) and its CEL rules hold
#     server-side (immutable plan fields, parallelism >= 1, mutable suspend/parallelism);
#   * an invalid spec gives phase Failed, condition Failed/InvalidSpec and a Warning Event;
#   * a planning error (no Milvus) gives Planned=False/PlanningError and backs off (no hot loop);
#   * a run (plan seeded in the bucket, recorded in status as the planner would) creates at most
#     `parallelism` Jobs, with credentials only as secretKeyRef env; a pod that fails without an
#     outcome gets one recorded by the operator and a retry Job; a task out of attempts fails its
#     segment; the result JSON is stored before the status turns final; deleting the Backfill
#     garbage-collects its Jobs.
#
# Needs: e2e/k8s/build.sh done (binaries in $MB_HOME/k8s/v1.37.2/bin), an s3s-fs binary
# (S3S_FS_BIN), python3 with boto3, openssl, curl. Uses its own state dir and ports, so it
# does not touch a control plane started by e2e/k8s/up.sh. Stops what it started (by PID).
#
# Knobs: MBO_STATE [/tmp/mbo-check]  MBO_PORT_BASE [16400]  S3S_FS_BIN  MB_HOME  KEEP=1 (leave running)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MB_HOME_REAL=${MB_HOME:-$HOME/.cache/milvus-backfill}
K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$ROOT/e2e/k8s/build.sh")
STATE=${MBO_STATE:-/tmp/mbo-check}
BASE=${MBO_PORT_BASE:-16400}
S3_PORT=$((BASE + 1))
HTTP_PORT=$((BASE + 2))
S3S_FS_BIN=${S3S_FS_BIN:-$MB_HOME_REAL/s3s-fs/bin/s3s-fs}
NS=bf-check
export MBO_S3_URL=http://127.0.0.1:$S3_PORT MBO_S3_AK=mbo-ak MBO_S3_SK=mbo-sk

PASS=0
FAIL=0
check() { # check NAME CMD...
	local name=$1
	shift
	if "$@" >/dev/null 2>&1; then
		PASS=$((PASS + 1))
		echo "ok   $name"
	else
		FAIL=$((FAIL + 1))
		echo "FAIL $name"
	fi
}
wait_until() { # wait_until SECONDS CMD...
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.5
	done
}

[ -x "$MB_HOME_REAL/k8s/$K8S_VERSION/bin/kube-apiserver" ] || {
	echo "no control plane binaries: run e2e/k8s/build.sh" >&2
	exit 2
}
[ -x "$S3S_FS_BIN" ] || {
	echo "no s3s-fs at $S3S_FS_BIN (set S3S_FS_BIN)" >&2
	exit 2
}
python3 -c 'import boto3' || {
	echo "python3 needs boto3" >&2
	exit 2
}

# Fresh every time: no S3 data, and up.sh wipes etcd (MB_K8S_FRESH=1).
rm -rf "$STATE/s3"
mkdir -p "$STATE/home/k8s/$K8S_VERSION" "$STATE/s3/milvus-bucket" "$STATE/run"
ln -sfn "$MB_HOME_REAL/k8s/$K8S_VERSION/bin" "$STATE/home/k8s/$K8S_VERSION/bin"
plane() { MB_HOME=$STATE/home MB_K8S_PORT=$BASE MB_K8S_ETCD_PORT=$((BASE + 10)) MB_K8S_KCM_PORT=$((BASE + 12)) "$@"; }

cleanup() {
	for p in operator s3s-fs; do
		[ -f "$STATE/run/$p.pid" ] && kill "$(cat "$STATE/run/$p.pid")" 2>/dev/null || true
		rm -f "$STATE/run/$p.pid"
	done
	plane "$ROOT/e2e/k8s/down.sh" >/dev/null 2>&1 || true
}
[ "${KEEP:-0}" = 1 ] || trap cleanup EXIT

echo "== building the operator"
(cd "$ROOT" && cargo build --release --workspace --all-targets --locked 2>&1 | tail -1)
OP=$ROOT/target/release/milvus-backfill-operator

echo "== control plane on :$BASE, S3 on :$S3_PORT"
MB_K8S_FRESH=1 plane "$ROOT/e2e/k8s/up.sh" | tail -1
# shellcheck disable=SC1091
source "$STATE/home/k8s/state/env"
setsid "$S3S_FS_BIN" --host 127.0.0.1 --port "$S3_PORT" --access-key "$MBO_S3_AK" --secret-key "$MBO_S3_SK" \
	"$STATE/s3" >"$STATE/run/s3s-fs.log" 2>&1 </dev/null &
echo $! >"$STATE/run/s3s-fs.pid"
wait_until 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$S3_PORT"

echo "== CRD"
check "the committed CRD is accepted" kubectl apply --server-side --force-conflicts -f "$ROOT/crds/backfills.milvusbackfill.io.yaml"
# Polled rather than `kubectl wait`, which gave up at once in one CI run on a control plane
# seconds old (the CRD was established a second later).
crd_established() {
	[ "$(kubectl get crd/backfills.milvusbackfill.io -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ]
}
check "the CRD is established" wait_until 30 crd_established
kubectl create ns "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create secret generic minio --from-literal=accesskey="$MBO_S3_AK" --from-literal=secretkey="$MBO_S3_SK" \
	--dry-run=client -o yaml | kubectl apply -f - >/dev/null

bf() { # bf NAME EXTRA-SPEC-LINES
	cat <<EOF
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {name: $1, namespace: $NS}
spec:
  milvus: {uri: "http://127.0.0.1:$((BASE + 3))", collection: c}
  storage: {endpoint: "127.0.0.1:$S3_PORT", bucket: milvus-bucket, credentialsSecretRef: {name: minio}}
  source: {path: "s3://data/new.parquet"}
$2
EOF
}
bf cel "  parallelism: 2
  suspend: true" | kubectl apply --server-side --force-conflicts -f - >/dev/null
check "CEL: milvus is immutable" bash -c "! kubectl -n $NS patch bf cel --type=merge -p '{\"spec\":{\"milvus\":{\"collection\":\"x\"}}}'"
check "CEL: output cannot be added" bash -c "! kubectl -n $NS patch bf cel --type=merge -p '{\"spec\":{\"output\":{\"path\":\"s3://b/o\"}}}'"
check "CEL: columnMapping cannot be added" bash -c "! kubectl -n $NS patch bf cel --type=merge -p '{\"spec\":{\"columnMapping\":{\"k\":\"id\",\"s\":\"score\"}}}'"
check "CEL: mode cannot be added" bash -c "! kubectl -n $NS patch bf cel --type=merge -p '{\"spec\":{\"mode\":\"overwrite\"}}'"
check "CEL: runId cannot be added" bash -c "! kubectl -n $NS patch bf cel --type=merge -p '{\"spec\":{\"runId\":\"r1\"}}'"
check "CEL: parallelism >= 1" bash -c "! kubectl -n $NS patch bf cel --type=merge -p '{\"spec\":{\"parallelism\":0}}'"
check "CEL: parallelism and suspend are mutable" kubectl -n "$NS" patch bf cel --type=merge -p '{"spec":{"parallelism":5,"suspend":false}}'
bf typo '  paralelism: 2' >"$STATE/run/typo.yaml"
bf badmode '  mode: merge' >"$STATE/run/badmode.yaml"
check "an unknown spec.mode is rejected" bash -c "! kubectl apply --server-side -f $STATE/run/badmode.yaml"
bf goodmode '  mode: overwrite
  suspend: true' >"$STATE/run/goodmode.yaml"
check "a known spec.mode is accepted" kubectl apply --server-side -f "$STATE/run/goodmode.yaml"
kubectl -n "$NS" delete bf goodmode >/dev/null
check "unknown fields are rejected" bash -c "! kubectl apply --server-side -f $STATE/run/typo.yaml"
kubectl get ns milvus >/dev/null 2>&1 || kubectl create ns milvus >/dev/null
check "the examples pass a server-side dry run" kubectl apply --server-side --dry-run=server \
  -f "$ROOT/examples/secrets.yaml" -f "$ROOT/examples/backfill-v1-export.yaml" -f "$ROOT/examples/backfill-v3-snapshot-commit.yaml"
kubectl -n "$NS" delete bf cel >/dev/null

echo "== operator"
bf invalid '  source: {path: "/local/x.parquet"}' | sed '/s3:\/\/data/d' | kubectl apply --server-side --force-conflicts -f - >/dev/null
bf plan-fail "" | kubectl apply --server-side --force-conflicts -f - >/dev/null
bf seeded "  parallelism: 2
  retry: {maxAttempts: 2, backoffSeconds: 2}
  suspend: true" | kubectl apply --server-side --force-conflicts -f - >/dev/null
python3 "$HERE/bucket.py" seed 3
RUN=20261127t042500-abc123 # bucket.py's run
# As the planner would have recorded it (planning itself needs a Milvus; see worker tests).
kubectl -n "$NS" patch bf seeded --subresource=status --type=merge -p \
	"{\"status\":{\"runId\":\"$RUN\",\"collectionId\":4242,\"segmentsPerJob\":1,\"tasks\":3}}" >/dev/null
AWS_ACCESS_KEY_ID=$MBO_S3_AK AWS_SECRET_ACCESS_KEY=$MBO_S3_SK HTTP_ADDR=127.0.0.1:$HTTP_PORT WATCH_NAMESPACES=$NS \
	WORKER_IMAGE=reg/milvus-backfill:check setsid "$OP" run >"$STATE/run/operator.log" 2>&1 </dev/null &
echo $! >"$STATE/run/operator.pid"
check "readyz" wait_until 30 curl -sf "127.0.0.1:$HTTP_PORT/readyz"
phase() { kubectl -n "$NS" get bf "$1" -o jsonpath='{.status.phase}'; }
cond() { kubectl -n "$NS" get bf "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].reason}"; }
check "invalid spec: phase Failed" wait_until 20 bash -c "[ \"\$(kubectl -n $NS get bf invalid -o jsonpath='{.status.phase}')\" = Failed ]"
check "invalid spec: condition Failed/InvalidSpec" bash -c "[ \"$(cond invalid Failed)\" = InvalidSpec ]"
check "invalid spec: Warning Event" bash -c "kubectl -n $NS get events.events.k8s.io --field-selector regarding.name=invalid -o jsonpath='{.items[*].reason}' | grep -q InvalidSpec"
check "planning error: Planned=False/PlanningError" wait_until 20 bash -c "[ \"\$(kubectl -n $NS get bf plan-fail -o jsonpath='{.status.conditions[?(@.type==\"Planned\")].reason}')\" = PlanningError ]"
check "suspended run: no Job" bash -c "[ \"$(phase seeded)\" = Suspended ] && [ -z \"\$(kubectl -n $NS get jobs -o name)\" ]"

kubectl -n "$NS" patch bf seeded --type=merge -p '{"spec":{"suspend":false}}' >/dev/null
check "resumed: parallelism Jobs" wait_until 20 bash -c "[ \$(kubectl -n $NS get jobs -o name | wc -l) -eq 2 ]"
sleep 2
check "never more than parallelism Jobs" bash -c "[ \$(kubectl -n $NS get jobs -o name | wc -l) -eq 2 ]"
JOB0=$(kubectl -n "$NS" get jobs -l milvusbackfill.io/task=0 -o name)
check "secrets only as secretKeyRef env" bash -c "kubectl -n $NS get $JOB0 -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name==\"AWS_SECRET_ACCESS_KEY\")].valueFrom.secretKeyRef.key}' | grep -qx secretkey && ! kubectl -n $NS get $JOB0 -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q $MBO_S3_SK"
check "controller ownerReference" bash -c "kubectl -n $NS get $JOB0 -o jsonpath='{.metadata.ownerReferences[0].controller}' | grep -qx true"
check "task JSON stored before the Job" bash -c "[ \"\$(python3 $HERE/bucket.py exists files/backfill/4242/$RUN/tasks/$RUN-0.json)\" = yes ]"

pod() { kubectl -n "$NS" get pods -l "milvusbackfill.io/task=$1,milvusbackfill.io/attempt=$2" -o name; }
finish() { kubectl -n "$NS" patch "$(pod "$1" "$2")" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"$3\"}}" >/dev/null; }
# Task 0 succeeds; task 1's pod dies without an outcome; task 2 fails twice (out of attempts).
python3 "$HERE/bucket.py" outcome 0 0 ok
finish 0 0 Succeeded
finish 1 0 Failed
check "a dead pod gets an outcome recorded" wait_until 20 bash -c "[ \"\$(python3 $HERE/bucket.py exists files/backfill/4242/$RUN/outcomes/$RUN-1-0.json)\" = yes ]"
check "and a retry Job" wait_until 20 bash -c "[ -n \"\$(kubectl -n $NS get pods -l milvusbackfill.io/task=1,milvusbackfill.io/attempt=1 -o name)\" ]"
check "task 2 starts when a slot frees" wait_until 20 bash -c "[ -n \"\$(kubectl -n $NS get pods -l milvusbackfill.io/task=2,milvusbackfill.io/attempt=0 -o name)\" ]"
python3 "$HERE/bucket.py" outcome 1 1 ok
finish 1 1 Succeeded
python3 "$HERE/bucket.py" outcome 2 0 fail
finish 2 0 Failed
check "task 2 retried" wait_until 20 bash -c "[ -n \"\$(kubectl -n $NS get pods -l milvusbackfill.io/task=2,milvusbackfill.io/attempt=1 -o name)\" ]"
python3 "$HERE/bucket.py" outcome 2 1 fail
finish 2 1 Failed
check "the run ends Failed" wait_until 30 bash -c "[ \"\$(kubectl -n $NS get bf seeded -o jsonpath='{.status.phase}')\" = Failed ]"
check "2/3 segments, 1 failed" bash -c "[ \"\$(kubectl -n $NS get bf seeded -o jsonpath='{.status.progress} {.status.segments.failed}')\" = '2/3 1' ]"
check "the result JSON is stored" bash -c "python3 $HERE/bucket.py get files/backfill/4242/$RUN/result.json | grep -q '\"segmentsProcessed\": 2'"
check "status.resultPath names it" bash -c "kubectl -n $NS get bf seeded -o jsonpath='{.status.resultPath}' | grep -q result.json"
check "no attempt 2 (maxAttempts 2)" bash -c "[ -z \"\$(kubectl -n $NS get jobs -l milvusbackfill.io/attempt=2 -o name)\" ]"
check "metrics" bash -c "curl -sf 127.0.0.1:$HTTP_PORT/metrics | grep -q '^milvus_backfill_operator_jobs_created_total 5$'"
check "phase gauge" bash -c "curl -sf 127.0.0.1:$HTTP_PORT/metrics | grep -q '^milvus_backfill_operator_backfills{phase=\"Failed\"} 2$'"
ERRS=$(kubectl -n "$NS" get events.events.k8s.io --field-selector regarding.name=plan-fail -o jsonpath='{range .items[*]}{.series.count}{" "}{end}')
check "planning retries back off (not a hot loop): ${ERRS:-0}" bash -c "for n in $ERRS 0; do [ \$n -lt 20 ] || exit 1; done"
kubectl -n "$NS" delete bf seeded >/dev/null
check "deleting the Backfill deletes its Jobs" wait_until 30 bash -c "[ -z \"\$(kubectl -n $NS get jobs -o name)\" ]"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
