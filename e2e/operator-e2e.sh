#!/usr/bin/env bash
# End-to-end run of the operator on the real test bed: kube-apiserver + controller-manager
# (e2e/k8s), the pod runner in place of kubelet, the Helm chart, and the real Milvus 2.3.5 +
# s3s-fs (e2e/env-up.sh). Installs the chart, applies a Secret and a Backfill with kubectl,
# waits for Complete, then checks the status totals against the dataset's ground truth and
# that every segment has a manifest. Stops what it started unless MB_KEEP_ENV=1.
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
  active=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN" -o jsonpath='{range .items[*]}{.status.active}{"\n"}{end}' | grep -c '^1$' || true)
  [ "$active" -gt "$max_jobs" ] && max_jobs=$active
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 2
done
kubectl -n "$NS" get bf "$RUN" | tee "$DATA/get-bf.txt"
[ "$phase" = Succeeded ] || { kubectl -n "$NS" get bf "$RUN" -o yaml; fail "phase $phase"; }
[ "$max_jobs" -le 2 ] || fail "$max_jobs Jobs ran at once with parallelism 2"
grep -q "PHASE" "$DATA/get-bf.txt" && grep -q "SEGMENTS" "$DATA/get-bf.txt" || fail "printer columns missing"
kubectl -n "$NS" get events --field-selector "involvedObject.name=$RUN" -o name | grep -q . || fail "no Events for the Backfill"
spec_after=$(kubectl -n "$NS" get bf "$RUN" -o jsonpath='{.spec}')
[ "$spec_before" = "$spec_after" ] || fail "the operator changed the spec"

kubectl -n "$NS" get bf "$RUN" -o json >"$DATA/bf.json"
"$MB_PY" - "$DATA/bf.json" "$DATA/expected.json" "$RUN" <<'PY'
import json, os, sys, boto3
bf, exp, run = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))["op_int64"], sys.argv[3]
st = bf["status"]
total = sum(s["numRows"] for s in exp["segments"].values())
assert st["segments"]["total"] == len(exp["segments"]) == st["segments"]["succeeded"], st["segments"]
assert st["rows"]["written"] == total, (st["rows"], total)
assert st["rows"]["matched"] == exp["newField"]["matchedKeys"], (st["rows"], exp["newField"]["matchedKeys"])
s3 = boto3.client("s3", endpoint_url="http://" + os.environ["S3_ENDPOINT"])
coll = exp["collectionId"]
for sid, s in exp["segments"].items():
    key = f"backfill-out/{run}/{coll}/{s['partitionId']}/{sid}/new_field/manifest.json"
    m = json.loads(s3.get_object(Bucket=os.environ["S3_BUCKET"], Key=key)["Body"].read())
    assert m["rowCount"] == s["numRows"], (key, m["rowCount"], s["numRows"])
print(f"status and {len(exp['segments'])} manifests match the ground truth ({total} rows)")
PY
log "deleting the Backfill: its Jobs go with it"
kubectl -n "$NS" delete bf "$RUN" --wait=true >/dev/null
for _ in $(seq 1 30); do
  n=$(kubectl -n "$NS" get jobs -l "milvusbackfill.io/backfill=$RUN" -o name | wc -l)
  [ "$n" = 0 ] && break
  sleep 1
done
[ "$n" = 0 ] || fail "$n Jobs left after deleting the Backfill"
log "PASS"
