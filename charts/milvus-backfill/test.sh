#!/usr/bin/env bash
# test.sh - offline tests of the chart: helm lint, helm template in several configurations,
# and checks of the rendered objects (tests/check_render.py, standard-library Python, on
# objects parsed by `kubectl label --local -o json`; no cluster needed).
#
#   charts/milvus-backfill/test.sh            offline tests
#   charts/milvus-backfill/test.sh --server   also against the e2e/k8s control plane (must be
#                                             up: e2e/k8s/up.sh): server-side dry-run of every
#                                             configuration, then a real install, RBAC checks
#                                             with `kubectl auth can-i`, upgrade, uninstall
#                                             (the CRD must stay), all in throw-away namespaces
#
# helm and kubectl: $MB_K8S_BIN, else ~/.cache/milvus-backfill/k8s/v1.37.2/bin (e2e/k8s/build.sh),
# else PATH.
set -euo pipefail

CHART=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
BIN=${MB_K8S_BIN:-$MB_HOME/k8s/v1.37.2/bin}
HELM=$BIN/helm; [ -x "$HELM" ] || HELM=$(command -v helm || true)
KUBECTL=$BIN/kubectl; [ -x "$KUBECTL" ] || KUBECTL=$(command -v kubectl || true)
if [ -z "$HELM" ] || [ -z "$KUBECTL" ]; then
	echo "test.sh: helm and kubectl needed: run e2e/k8s/build.sh (or put them on PATH)" >&2
	exit 2
fi
SERVER=0
[ "${1:-}" = --server ] && SERVER=1
NS=mb-system
REL=t
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
pass=0 fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
ko() { echo "FAIL $*"; fail=$((fail + 1)); }

echo "== helm $($HELM version --short), kubectl $($KUBECTL version --client 2>/dev/null | sed -n 's/^Client Version: //p')"

# name|helm flags
SCENARIOS=(
	"default|"
	"watch-namespaces|--set watchNamespaces={team-a,team-b}"
	"replicas-2|--set replicaCount=2"
	"no-leader-election|--set leaderElection.enabled=false"
	"monitoring|--set serviceMonitor.enabled=true --set networkPolicy.enabled=true --set serviceMonitor.labels.release=prom"
	"in-process|--set planning.mode=inProcess"
	"no-secrets|--set planning.mode=inProcess --set operator.readSecrets=false"
	"operator-storage|--set operator.storageCredentials.existingSecret=ops-s3"
	"no-crds|--set crds.install=false"
	"tuned|--set concurrency=8 --set leaderElection.leaseDurationSeconds=30 --set leaderElection.renewDeadlineSeconds=20 --set leaderElection.retryPeriodSeconds=4 --set podDisruptionBudget.enabled=true --set commonLabels.team=search --set extraVolumes[0].name=ca --set extraVolumes[0].configMap.name=ca-bundle --set extraVolumeMounts[0].name=ca --set extraVolumeMounts[0].mountPath=/etc/ssl/ca"
)

echo "== lint"
for sc in "${SCENARIOS[@]}"; do
	name=${sc%%|*} flags=${sc#*|}
	# shellcheck disable=SC2086
	if out=$($HELM lint --strict "$CHART" $flags 2>&1); then ok "helm lint --strict ($name)"; else echo "$out"; ko "helm lint --strict ($name)"; fi
done

echo "== template + checks"
for sc in "${SCENARIOS[@]}"; do
	name=${sc%%|*} flags=${sc#*|}
	# shellcheck disable=SC2086
	if ! $HELM template "$REL" "$CHART" -n "$NS" $flags >"$WORK/$name.yaml" 2>"$WORK/err"; then
		cat "$WORK/err"; ko "helm template ($name)"; continue
	fi
	ok "helm template ($name): $(grep -c '^kind:' "$WORK/$name.yaml") objects"
	# kubectl parses every object (a malformed manifest fails here) and prints JSON.
	if ! KUBECONFIG=/dev/null "$KUBECTL" label --local -f "$WORK/$name.yaml" "test.sh=1" -o json >"$WORK/$name.json" 2>"$WORK/err"; then
		cat "$WORK/err"; ko "kubectl parses the rendered objects ($name)"; continue
	fi
	if python3 "$CHART/tests/check_render.py" "$name" "$NS" <"$WORK/$name.json" >"$WORK/out" 2>&1; then
		ok "checks ($name): $(grep -c '^  ok' "$WORK/out") passed"
	else
		grep -v '^  ok' "$WORK/out"; ko "checks ($name)"
	fi
	[ "${VERBOSE:-0}" = 1 ] && cat "$WORK/out"
done

echo "== values.schema.json rejects bad values"
reject() { # what, flags...
	local what=$1; shift
	if $HELM template "$REL" "$CHART" "$@" >/dev/null 2>"$WORK/err"; then ko "schema rejects $what"
	elif grep -q "don't meet the specifications" "$WORK/err"; then ok "schema rejects $what"
	else cat "$WORK/err"; ko "schema rejects $what (other error)"; fi
}
reject "an unknown top-level key" --set unknownKey=1
reject "an unknown nested key" --set operator.readSecret=false
reject "logFormat=xml" --set logFormat=xml
reject "logLevel=loud" --set logLevel=loud
reject "a namespace that is not a DNS label" --set 'watchNamespaces={Team_A}'
reject "a string replicaCount" --set-string replicaCount=two
reject "a bad pullPolicy" --set image.pullPolicy=Sometimes
reject "concurrency=0" --set concurrency=0
reject "leaderElection.retryPeriodSeconds=0" --set leaderElection.retryPeriodSeconds=0
reject "a non-string commonLabels value" --set-json 'commonLabels={"tier":1}'

echo "== docs: every value in values.schema.json has a row in README.md"
# values.yaml cannot hold a key the schema lacks (additionalProperties: false, checked by
# helm lint above), so schema -> README covers every value.
if python3 - "$CHART/values.schema.json" "$CHART/README.md" <<'PY'; then ok "README documents every value"; else ko "README documents every value"; fi
import json, re, sys
schema = json.load(open(sys.argv[1]))
readme = open(sys.argv[2]).read()
documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
def leaves(node, prefix=""):
    for k, v in node.get("properties", {}).items():
        if k == "global":
            continue
        if "properties" in v and prefix + k not in documented:
            yield from leaves(v, prefix + k + ".")
        else:
            yield prefix + k
missing = [k for k in leaves(schema) if k not in documented]
extra = [k for k in documented if k not in set(leaves(schema))]
if missing or extra:
    print("missing in README:", missing, "not in schema:", extra)
    sys.exit(1)
PY

echo "== CRD template"
cp -r "$CHART" "$WORK/chart"
rm -f "$WORK/chart/files/crds/"*.yaml
if $HELM template "$REL" "$WORK/chart" >/dev/null 2>"$WORK/err"; then ko "an empty files/crds/ fails the render"
elif grep -q "sync-crds.sh" "$WORK/err"; then ok "an empty files/crds/ fails the render, naming sync-crds.sh"
else cat "$WORK/err"; ko "an empty files/crds/ fails with the sync hint"; fi
if $HELM template "$REL" "$WORK/chart" --set crds.install=false >/dev/null 2>&1; then ok "crds.install=false renders without files/crds/"
else ko "crds.install=false renders without files/crds/"; fi
# The rendered CRD equals the copied file (apart from metadata labels/annotations).
for f in "$CHART"/files/crds/*.yaml; do
	KUBECONFIG=/dev/null "$KUBECTL" label --local -f "$f" "test.sh=1" -o json
done >"$WORK/crd-files.json"
if python3 - "$WORK/crd-files.json" "$WORK/default.json" <<'PY'; then ok "rendered CRD spec == files/crds/ spec"; else ko "rendered CRD spec == files/crds/ spec"; fi
import json, sys
def load(p):
    text, dec, pos, out = open(p).read(), json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        o, pos = dec.raw_decode(text, pos)
        out.append(o)
def norm(x):  # helm's fromYaml/toYaml writes 0.0 as 0
    if isinstance(x, dict): return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list): return [norm(v) for v in x]
    if isinstance(x, float) and x.is_integer(): return int(x)
    return x
files = {o["metadata"]["name"]: o for o in load(sys.argv[1])}
rendered = {o["metadata"]["name"]: o for o in load(sys.argv[2]) if o["kind"] == "CustomResourceDefinition"}
assert files and files.keys() == rendered.keys(), (files.keys(), rendered.keys())
for n in files:
    assert norm(files[n]["spec"]) == norm(rendered[n]["spec"]), n
PY

echo "== sync-crds.sh --check"
if compgen -G "$CHART/../../crds/*.yaml" >/dev/null; then
	if "$CHART/sync-crds.sh" --check; then ok "files/crds/ is current with crds/"; else ko "files/crds/ is stale: run sync-crds.sh"; fi
else
	echo "WARN crds/ has no *.yaml yet: files/crds/ is a snapshot of \`milvus-backfill-operator crd\`; run sync-crds.sh once crds/ is generated"
fi

if [ $SERVER = 1 ]; then
	# shellcheck source=/dev/null
	. "${MB_HOME}/k8s/state/env"
	. "$CHART/tests/server.sh"
fi

echo "== summary: $pass passed, $fail failed"
[ $fail = 0 ]
