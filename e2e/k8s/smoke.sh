#!/usr/bin/env bash
# smoke.sh - prove the local control plane (up.sh) does what the e2e tests need, with kubectl
# (and curl for raw status codes), in a fresh namespace:
#   1. the apiserver reports the version build.sh stamped in;
#   2. Namespace + ServiceAccount are created; the serviceaccount controller adds `default`;
#   3. a Job makes the Job controller create a Pod (owned by the Job), which stays Pending
#      (no kubelet, no scheduler);
#   4. deleting that Job with propagationPolicy=Background makes the garbage collector
#      delete its Pod;
#   5. a second Job (ttlSecondsAfterFinished: 0) whose Pod we mark Succeeded the way a
#      kubelet would: the Job controller marks the Job Complete, the TTL-after-finished
#      controller deletes it, and the garbage collector its Pod;
#   6. RBAC is enforced: a ServiceAccount token (TokenRequest API) without permissions gets
#      403 Forbidden, a bad token 401; after a Role + RoleBinding it may list pods but still
#      not read secrets;
#   7. the serviceaccount-token controller fills a legacy service-account-token Secret, and
#      that token authenticates too;
#   8. helm installs and uninstalls a tiny chart (kubeVersion constraint checked against
#      the server's version);
#   9. deleting the namespace (namespace controller) removes it and all of the above.
# If the control plane is not up, it is started and stopped again at the end
# (MB_K8S_KEEP=1 keeps it). Knobs: MB_HOME, MB_K8S_PORT & co. as for up.sh;
# MB_K8S_SMOKE_TIMEOUT seconds per wait [90].
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export MB_HOME
STATE=$MB_HOME/k8s/state
TIMEOUT=${MB_K8S_SMOKE_TIMEOUT:-90}
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); echo "smoke: ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "smoke: FAIL - $*"; }
# check DESCRIPTION CMD... -> ok/bad by CMD's exit status
check() {
	local what=$1
	shift
	if "$@"; then ok "$what"; else bad "$what"; fi
}
# eventually DESCRIPTION CMD... -> ok when CMD succeeds within $TIMEOUT
eventually() {
	local what=$1 deadline=$((SECONDS + TIMEOUT)) t0=$SECONDS
	shift
	until "$@" >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			bad "$what (not within ${TIMEOUT}s)"
			return 1
		fi
		sleep 0.5
	done
	ok "$what (after ~$((SECONDS - t0))s)"
}

# --- bring it up if needed ------------------------------------------------------------------
WAS_UP=0
if [ -f "$STATE/env" ] && [ -f "$STATE/run/kube-apiserver.pid" ] &&
	curl -fsS --cacert "$STATE/pki/ca.crt" "$(sed -n "s/^export MB_K8S_SERVER='\(.*\)'/\1/p" "$STATE/env")/readyz" >/dev/null 2>&1; then
	WAS_UP=1
fi
"$HERE/up.sh" || { echo "smoke: up.sh failed"; exit 1; }
if [ "$WAS_UP" = 0 ] && [ "${MB_K8S_KEEP:-0}" != 1 ]; then
	trap '"$HERE/down.sh"' EXIT
fi
# shellcheck disable=SC1091
source "$STATE/env" # KUBECONFIG, MB_K8S_BIN, MB_K8S_SERVER, MB_K8S_CA, PATH
KUBECTL=$MB_K8S_BIN/kubectl
k() { "$KUBECTL" "$@"; }
NS=mb-smoke-$(date +%s)-$RANDOM
echo "smoke: kubectl $("$KUBECTL" version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | head -1), namespace $NS"

# --- 1. version --------------------------------------------------------------------------------
want=$(sed -n 's/^K8S_VERSION=//p' "$HERE/build.sh")
have=$(curl -fsS --cacert "$MB_K8S_CA" "$MB_K8S_SERVER/version" | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p')
check "apiserver /version is $want (got $have)" [ "$have" = "$want" ]

# --- 2. namespace + serviceaccount ------------------------------------------------------------
check "create namespace $NS" k create namespace "$NS"
check "create serviceaccount smoke" k create serviceaccount smoke -n "$NS"
eventually "serviceaccount controller creates $NS/default" k get serviceaccount default -n "$NS"

job() { # job NAME [TTL]
	cat <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: $1, namespace: $NS}
spec:
  backoffLimit: 0
  ${2:+ttlSecondsAfterFinished: $2}
  template:
    spec:
      serviceAccountName: smoke
      restartPolicy: Never
      containers:
      - name: main
        image: milvus-backfill:e2e
        command: ["/usr/local/bin/milvus-backfill", "--help"]
EOF
}
apply_job() { job "$@" | k apply -f -; }
has_pod() { [ -n "$(pod_of "$1")" ]; }
pod_of() { k get pods -n "$NS" -l "batch.kubernetes.io/job-name=$1" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
gone() { # gone KIND NAME -> 0 when the object no longer exists
	local out
	out=$(k get "$1" "$2" -n "$NS" -o name 2>&1) && return 1
	grep -q NotFound <<<"$out"
}

# --- 3. Job -> Pod ------------------------------------------------------------------------------
check "create Job smoke-gc" apply_job smoke-gc
eventually "Job controller creates a Pod for smoke-gc" has_pod smoke-gc
POD=$(pod_of smoke-gc)
owner=$(k get pod "$POD" -n "$NS" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}')
check "Pod $POD is owned by Job smoke-gc (ownerRef $owner)" [ "$owner" = "Job/smoke-gc/true" ]
phase=$(k get pod "$POD" -n "$NS" -o jsonpath='{.status.phase}')
check "Pod $POD is Pending (no kubelet; got '$phase')" [ "$phase" = Pending ]
sa=$(k get pod "$POD" -n "$NS" -o jsonpath='{.spec.serviceAccountName}')
check "Pod runs as ServiceAccount smoke (got '$sa')" [ "$sa" = smoke ]

# --- 4. delete with propagationPolicy=Background -> GC deletes the Pod -----------------------
out=$(k delete job smoke-gc -n "$NS" --cascade=background --wait=false -v=8 2>&1)
check "DELETE Job smoke-gc sent propagationPolicy=Background" grep -Eq 'propagationPolicy\\?":\\?"Background' <<<"$out"
eventually "Job smoke-gc is gone" gone job smoke-gc
eventually "garbage collector deletes Pod $POD" gone pod "$POD"

# Control: with propagationPolicy=Orphan the garbage collector must keep the Pod (and only
# drop its ownerReference), so the deletion above was the collector's doing.
check "create Job smoke-orphan" apply_job smoke-orphan
eventually "Job controller creates a Pod for smoke-orphan" has_pod smoke-orphan
POD3=$(pod_of smoke-orphan)
check "DELETE Job smoke-orphan with propagationPolicy=Orphan" k delete job smoke-orphan -n "$NS" --cascade=orphan --wait=false
eventually "Job smoke-orphan is gone" gone job smoke-orphan
no_owner() { [ -z "$(k get pod "$1" -n "$NS" -o jsonpath='{.metadata.ownerReferences}')" ]; }
eventually "garbage collector orphans Pod $POD3 (ownerReferences removed)" no_owner "$POD3"
sleep 2
check "orphaned Pod $POD3 still exists" k get pod "$POD3" -n "$NS" -o name
check "delete orphaned Pod $POD3" k delete pod "$POD3" -n "$NS" --wait=true --timeout=30s

# --- 5. Job completes (Pod marked Succeeded as a kubelet would) -> TTL controller -> GC --------
check "create Job smoke-ttl (ttlSecondsAfterFinished: 0)" apply_job smoke-ttl 0
eventually "Job controller creates a Pod for smoke-ttl" has_pod smoke-ttl
POD2=$(pod_of smoke-ttl)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
status=$(
	cat <<EOF
{"status":{"phase":"Succeeded",
 "conditions":[{"type":"Ready","status":"False","reason":"PodCompleted","lastTransitionTime":"$now"}],
 "containerStatuses":[{"name":"main","image":"milvus-backfill:e2e","imageID":"","ready":false,"restartCount":0,
   "state":{"terminated":{"exitCode":0,"reason":"Completed","startedAt":"$now","finishedAt":"$now"}}}]}}
EOF
)
check "mark Pod $POD2 Succeeded (status subresource, as a kubelet)" \
	k patch pod "$POD2" -n "$NS" --subresource=status --type=merge -p "$status"
# The TTL controller may delete the Job before we look; seeing either is fine.
complete_or_gone() {
	local c
	c=$(k get job "$1" -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="Complete")].status}' 2>&1)
	[ "$c" = True ] || grep -q NotFound <<<"$c"
}
eventually "Job controller marks smoke-ttl Complete (or TTL already removed it)" complete_or_gone smoke-ttl
eventually "TTL-after-finished controller deletes Job smoke-ttl" gone job smoke-ttl
eventually "garbage collector deletes Pod $POD2" gone pod "$POD2"

# --- 6. RBAC --------------------------------------------------------------------------------
TOKEN=$(k create token smoke -n "$NS" --duration=10m)
check "TokenRequest API issues a token for $NS/smoke" [ -n "$TOKEN" ]
code() { # code TOKEN PATH -> HTTP status
	curl -sS -o /dev/null -w '%{http_code}' --cacert "$MB_K8S_CA" -H "Authorization: Bearer $1" "$MB_K8S_SERVER$2"
}
c=$(code "$TOKEN" "/api/v1/namespaces/$NS/pods")
check "ServiceAccount without permissions: list pods -> 403 (got $c)" [ "$c" = 403 ]
out=$(k --kubeconfig=/dev/null --server="$MB_K8S_SERVER" --certificate-authority="$MB_K8S_CA" --token="$TOKEN" get pods -n "$NS" 2>&1)
check "kubectl as the ServiceAccount is forbidden ($(head -c 120 <<<"$out")...)" \
	grep -q "forbidden: User \"system:serviceaccount:$NS:smoke\" cannot list resource \"pods\"" <<<"$out"
c=$(code "not-a-token" "/api/v1/namespaces/$NS/pods")
check "bad token -> 401 (got $c)" [ "$c" = 401 ]
check "create Role pod-reader" k create role pod-reader -n "$NS" --verb=get,list,watch --resource=pods
check "create RoleBinding pod-reader -> smoke" k create rolebinding smoke-pod-reader -n "$NS" --role=pod-reader --serviceaccount="$NS:smoke"
code_is() { [ "$(code "$1" "$2")" = "$3" ]; }
eventually "after the RoleBinding: list pods -> 200" code_is "$TOKEN" "/api/v1/namespaces/$NS/pods" 200
c=$(code "$TOKEN" "/api/v1/namespaces/$NS/secrets")
check "still no secrets: list secrets -> 403 (got $c)" [ "$c" = 403 ]
cani=$(k auth can-i delete pods -n "$NS" --as="system:serviceaccount:$NS:smoke" 2>&1)
check "kubectl auth can-i delete pods --as the ServiceAccount says no (got $cani)" [ "$cani" = no ]

# --- 7. serviceaccount-token controller ------------------------------------------------------
legacy_secret() {
	k apply -f - <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: smoke-token
  namespace: $NS
  annotations: {kubernetes.io/service-account.name: smoke}
type: kubernetes.io/service-account-token
EOF
}
has_token() { [ -n "$(k get secret smoke-token -n "$NS" -o jsonpath='{.data.token}')" ]; }
check "create a legacy service-account-token Secret for smoke" legacy_secret
eventually "serviceaccount-token controller fills the Secret's token" has_token
LEGACY=$(k get secret smoke-token -n "$NS" -o jsonpath='{.data.token}' | base64 -d)
c=$(code "$LEGACY" "/api/v1/namespaces/$NS/pods")
check "the legacy token authenticates as smoke: list pods -> 200 (got $c)" [ "$c" = 200 ]

# --- 8. helm install / uninstall of a tiny chart ---------------------------------------------
HELM=$MB_K8S_BIN/helm
CHART=$(mktemp -d)
mkdir -p "$CHART/templates"
cat >"$CHART/Chart.yaml" <<EOF
apiVersion: v2
name: mb-smoke
version: 0.1.0
kubeVersion: ">= 1.30.0-0"
EOF
cat >"$CHART/templates/cm.yaml" <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata: {name: "{{ .Release.Name }}-cm"}
data: {kubeVersion: "{{ .Capabilities.KubeVersion.Version }}"}
EOF
check "helm install (chart kubeVersion >= 1.30)" "$HELM" install mb-smoke "$CHART" -n "$NS" --wait --timeout 60s
kv=$(k get configmap mb-smoke-cm -n "$NS" -o jsonpath='{.data.kubeVersion}')
check "helm rendered .Capabilities.KubeVersion from the server ($kv)" [ "$kv" = "$want" ]
check "helm uninstall" "$HELM" uninstall mb-smoke -n "$NS" --wait
check "helm uninstall removed the ConfigMap" gone configmap mb-smoke-cm
rm -rf "$CHART"

# --- 9. namespace deletion ------------------------------------------------------------------
check "delete namespace $NS" k delete namespace "$NS" --wait=false
ns_gone() { local out; out=$(k get namespace "$NS" 2>&1) && return 1; grep -q NotFound <<<"$out"; }
eventually "namespace controller removes $NS" ns_gone

echo "smoke: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
