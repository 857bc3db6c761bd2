# server.sh - sourced by ../test.sh --server: tests against a real kube-apiserver (the
# e2e/k8s control plane; KUBECONFIG from its env file). Uses the functions and variables of
# test.sh (ok, ko, HELM, KUBECTL, CHART, WORK, SCENARIOS). Everything it creates lives in
# namespaces prefixed mbt- and is deleted at the end; the Backfill CRD is deleted only when
# this test created it.

K() { "$KUBECTL" "$@"; }
echo "== server: $(K version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') at $MB_K8S_SERVER"
K get --raw /readyz >/dev/null || { ko "kube-apiserver reachable (run e2e/k8s/up.sh)"; return 0; }

SNS=mbt-system
CRD=backfills.milvusbackfill.io
crd_preexisting=0
K get crd $CRD >/dev/null 2>&1 && crd_preexisting=1
CRDFLAG=()
if [ $crd_preexisting = 1 ]; then
	echo "WARN the Backfill CRD already exists (not owned by this test): installing with crds.install=false"
	CRDFLAG=(--set crds.install=false)
fi
server_cleanup() {
	"$HELM" uninstall mbt -n $SNS --wait >/dev/null 2>&1 || true
	K delete backfill -n mbt-a sample --ignore-not-found --wait=false >/dev/null 2>&1 || true
	# Waits, so that a control plane stopped right after finds no half-deleted namespace.
	K delete ns $SNS mbt-a mbt-b --ignore-not-found --wait=true --timeout=90s >/dev/null 2>&1 || true
	if [ $crd_preexisting = 0 ]; then K delete crd $CRD --ignore-not-found >/dev/null 2>&1 || true; fi
}
# Namespaces of an earlier run may still be terminating (its control plane stopped too soon).
K wait --for=delete ns/$SNS ns/mbt-a ns/mbt-b --timeout=120s >/dev/null 2>&1 || true
for ns in $SNS mbt-a mbt-b; do K create ns $ns --dry-run=client -o yaml | K apply -f - >/dev/null; done
# Pod Security Admission "restricted" in the release namespace: the ReplicaSet cannot create
# the operator pod unless its security context complies.
K label ns $SNS pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null

echo "== server-side dry run of every configuration"
for sc in "${SCENARIOS[@]}"; do
	name=${sc%%|*} flags=${sc#*|}
	# team-a/team-b -> mbt-a/mbt-b (they exist); the ServiceMonitor needs the Prometheus
	# Operator's CRD, which this control plane does not have: checked offline only.
	flags=${flags//team-a/mbt-a}; flags=${flags//team-b/mbt-b}
	flags=${flags//serviceMonitor.enabled=true/serviceMonitor.enabled=false}
	# shellcheck disable=SC2086
	if "$HELM" template mbt "$CHART" -n $SNS $flags "${CRDFLAG[@]}" >"$WORK/s-$name.yaml" &&
		K apply --server-side --dry-run=server --field-manager=chart-test -f "$WORK/s-$name.yaml" >"$WORK/out" 2>&1; then
		ok "kubectl apply --server-side --dry-run=server ($name): $(wc -l <"$WORK/out") objects"
	else
		cat "$WORK/out"; ko "kubectl apply --dry-run=server ($name)"
	fi
done

echo "== helm install (all namespaces, 1 replica)"
SA=system:serviceaccount:$SNS:mbt-milvus-backfill
WSA=system:serviceaccount:$SNS:mbt-milvus-backfill-worker
can() { # expect(yes|no) as verb resource ns [subresource]
	local sub=() what=$4
	if [ -n "${6:-}" ]; then sub=(--subresource="$6"); what="$4 (subresource $6)"; fi
	local got; got=$(K auth can-i --as="$2" "$3" "$4" "${sub[@]}" -n "$5" 2>/dev/null || true)
	if [ "$got" = "$1" ]; then ok "can-i $3 $what -n $5 as ${2##*:}: $got"; else ko "can-i $3 $what -n $5 as ${2##*:}: got '$got', want $1"; fi
}
if "$HELM" install mbt "$CHART" -n $SNS "${CRDFLAG[@]}" >"$WORK/out" 2>&1; then ok "helm install"; else cat "$WORK/out"; ko "helm install"; fi
K wait --for condition=Established crd/$CRD --timeout=60s >/dev/null && ok "CRD Established" || ko "CRD Established"
cat >"$WORK/sample.yaml" <<'YAML'
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {name: sample, namespace: mbt-a}
spec:
  milvus: {uri: "http://milvus.milvus:19530", collection: c1, tokenSecretRef: {name: milvus-auth, key: token}}
  storage: {endpoint: "minio.milvus:9000", bucket: milvus-bucket, credentialsSecretRef: {name: minio-creds}}
  source: {path: "s3://data/new_fields/"}
YAML
if K apply -f "$WORK/sample.yaml" >"$WORK/out" 2>&1; then ok "a sample Backfill is accepted by the CRD"; else cat "$WORK/out"; ko "a sample Backfill is accepted by the CRD"; fi
K get bf -n mbt-a sample >/dev/null 2>&1 && ok "short name bf works" || ko "short name bf works"
for ns in default mbt-a; do
	# Exactly what the operator's code calls (templates/_helpers.tpl).
	can yes $SA create jobs.batch $ns; can yes $SA patch jobs.batch $ns; can no $SA delete jobs.batch $ns
	can no $SA update jobs.batch $ns
	can yes $SA watch backfills.milvusbackfill.io $ns; can yes $SA patch backfills.milvusbackfill.io $ns status
	can yes $SA get backfills.milvusbackfill.io $ns status; can no $SA update backfills.milvusbackfill.io $ns status
	can yes $SA update backfills.milvusbackfill.io $ns finalizers
	can no $SA patch backfills.milvusbackfill.io $ns; can no $SA update backfills.milvusbackfill.io $ns
	can no $SA create backfills.milvusbackfill.io $ns; can no $SA delete backfills.milvusbackfill.io $ns
	can no $SA watch pods $ns; can no $SA create pods $ns; can no $SA delete pods $ns
	can no $SA create events $ns; can yes $SA create events.events.k8s.io $ns
	# Planning Jobs (the default): the operator reads no Secret at all.
	can no $SA get secrets $ns; can no $SA list secrets $ns; can no $SA watch secrets $ns
	can no $SA get configmaps $ns
done
# Leader election is on by default: Leases in the release namespace only.
can yes $SA create leases.coordination.k8s.io $SNS; can yes $SA update leases.coordination.k8s.io $SNS
can no $SA delete leases.coordination.k8s.io $SNS; can no $SA create leases.coordination.k8s.io default
for v in get list create; do can no $WSA $v pods mbt-a; done
can no $WSA get secrets $SNS; can no $WSA get backfills.milvusbackfill.io mbt-a
[ "$(K get sa -n $SNS mbt-milvus-backfill-worker -o jsonpath='{.automountServiceAccountToken}')" = false ] &&
	ok "worker SA automountServiceAccountToken false (live)" || ko "worker SA automountServiceAccountToken false (live)"
# No kubelet here: the ReplicaSet still creates the pod (admission checks it); it stays Pending.
for _ in $(seq 30); do K get pods -n $SNS -l app.kubernetes.io/instance=mbt -o name | grep -q . && break; sleep 1; done
pod=$(K get pods -n $SNS -l app.kubernetes.io/instance=mbt -o jsonpath='{.items[0].spec.serviceAccountName}' 2>/dev/null || true)
[ "$pod" = mbt-milvus-backfill ] && ok "operator pod admitted under Pod Security \"restricted\" (created by the ReplicaSet, operator SA)" || ko "operator pod created (SA: '$pod')"

echo "== helm upgrade --set leaderElection.enabled=false"
if "$HELM" upgrade mbt "$CHART" -n $SNS --reuse-values --set leaderElection.enabled=false >"$WORK/out" 2>&1; then ok "helm upgrade"; else cat "$WORK/out"; ko "helm upgrade"; fi
can no $SA create leases.coordination.k8s.io $SNS
[ "$(K get deploy -n $SNS mbt-milvus-backfill -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="LEADER_ELECTION")].value}/{.spec.strategy.type}')" = false/Recreate ] &&
	ok "LEADER_ELECTION=false and strategy Recreate (live)" || ko "LEADER_ELECTION=false and strategy Recreate (live)"

echo "== helm upgrade --set planning.mode=inProcess (the operator plans: it reads Secrets)"
if "$HELM" upgrade mbt "$CHART" -n $SNS --reuse-values --set planning.mode=inProcess >"$WORK/out" 2>&1; then ok "helm upgrade"; else cat "$WORK/out"; ko "helm upgrade"; fi
for ns in default mbt-a; do
	can yes $SA get secrets $ns; can no $SA list secrets $ns; can no $SA watch secrets $ns
done
[ "$(K get deploy -n $SNS mbt-milvus-backfill -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="PLANNING")].value}')" = in-process ] &&
	ok "PLANNING=in-process (live)" || ko "PLANNING=in-process (live)"

if [ $crd_preexisting = 0 ]; then
	echo "== helm upgrade with a changed CRD (the CRD upgrade path)"
	rm -rf "$WORK/chart2"; cp -r "$CHART" "$WORK/chart2"
	sed -i 's|description: segments done/total$|description: segments done/total (upgraded)|' "$WORK/chart2"/files/crds/*.yaml
	if "$HELM" upgrade mbt "$WORK/chart2" -n $SNS --reuse-values >"$WORK/out" 2>&1; then ok "helm upgrade with a changed CRD"; else cat "$WORK/out"; ko "helm upgrade with a changed CRD"; fi
	K get crd $CRD -o jsonpath='{.spec.versions[0].additionalPrinterColumns[?(@.name=="Segments")].description}' | grep -q upgraded &&
		ok "helm upgrade updated the live CRD" || ko "helm upgrade updated the live CRD"
	K get bf -n mbt-a sample >/dev/null 2>&1 && ok "Backfill survives the CRD upgrade" || ko "Backfill survives the CRD upgrade"
fi

echo "== helm upgrade --set watchNamespaces={mbt-a,mbt-b} (namespaced RBAC)"
if "$HELM" upgrade mbt "$CHART" -n $SNS --reuse-values --set 'watchNamespaces={mbt-a,mbt-b}' >"$WORK/out" 2>&1; then ok "helm upgrade"; else cat "$WORK/out"; ko "helm upgrade"; fi
can yes $SA create jobs.batch mbt-a; can yes $SA create jobs.batch mbt-b; can yes $SA get secrets mbt-b
can no $SA create jobs.batch default; can no $SA get secrets default; can no $SA watch backfills.milvusbackfill.io default
K get clusterrole mbt-milvus-backfill >/dev/null 2>&1 && ko "ClusterRole removed" || ok "ClusterRole removed"
[ "$(K get sa -n mbt-b mbt-milvus-backfill-worker -o jsonpath='{.automountServiceAccountToken}' 2>/dev/null)" = false ] &&
	ok "worker SA created in watched namespace mbt-b" || ko "worker SA created in watched namespace mbt-b"

echo "== helm uninstall"
if "$HELM" uninstall mbt -n $SNS --wait >"$WORK/out" 2>&1; then ok "helm uninstall"; else cat "$WORK/out"; ko "helm uninstall"; fi
if [ $crd_preexisting = 0 ]; then
	K get crd $CRD >/dev/null 2>&1 && ok "CRD kept after uninstall (resource-policy keep)" || ko "CRD kept after uninstall"
fi
K get bf -n mbt-a sample >/dev/null 2>&1 && ok "Backfill kept after uninstall" || ko "Backfill kept after uninstall"
K get role -n mbt-a mbt-milvus-backfill >/dev/null 2>&1 && ko "Roles removed" || ok "Roles removed"
if [ $crd_preexisting = 0 ]; then
	echo "== reinstall adopts the kept CRD"
	if "$HELM" install mbt "$CHART" -n $SNS >"$WORK/out" 2>&1; then ok "helm install again (CRD kept from the previous release)"; else cat "$WORK/out"; ko "helm install again over the kept CRD"; fi
fi
server_cleanup
