#!/usr/bin/env bash
# build.sh - build a real Kubernetes control plane (plus kubectl and helm) from Go modules,
# through the Go module proxy (no git clones), into a per-version cache outside the repo:
#
#     ${MB_HOME:-$HOME/.cache/milvus-backfill}/k8s/<K8S_VERSION>/bin/
#
# Versions (pinned by the go.mod/go.sum files under e2e/k8s/go/):
#   Go toolchain              go1.26.x (the machine's; k8s.io/kubernetes v1.37.2 needs >= 1.26.0)
#   kube-apiserver            k8s.io/kubernetes v1.37.2  cmd/kube-apiserver          (go/kube)
#   kube-controller-manager   k8s.io/kubernetes v1.37.2  cmd/kube-controller-manager (go/kube)
#   kubectl                   k8s.io/kubernetes v1.37.2  cmd/kubectl                 (go/kube)
#   etcd                      go.etcd.io/etcd/server/v3 v3.7.3 via etcdmain.Main     (go/etcd)
#   helm                      helm.sh/helm/v3 v3.22.0    cmd/helm                    (go/helm)
# go/kube/go.mod replaces every staging module of k8s.io/kubernetes (required there as
# v0.0.0) with the matching published k8s.io/<name> v0.37.2.
#
# Each binary is skipped when it is already in the cache with a matching stamp (a hash of
# its module's go.mod/go.sum/sources, the ldflags and the Go version), so a cached rerun
# takes about a second. Timings go to stdout and are appended to
#   ${MB_HOME}/k8s/<K8S_VERSION>/build-times.log
#
# Knobs:
#   MB_HOME               cache root [$HOME/.cache/milvus-backfill]
#   MB_K8S_BUILD_JOBS     `go build -p` (packages built in parallel) [$(nproc)]
#   MB_K8S_ONLY           space-separated subset of: etcd kube-apiserver
#                         kube-controller-manager kubectl helm [all]
#   MB_K8S_FORCE=1        rebuild even when the cache is up to date
# Prints the bin dir on the last line of stdout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v3.22.0
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
ROOT=$MB_HOME/k8s/$K8S_VERSION
BIN=$ROOT/bin
JOBS=${MB_K8S_BUILD_JOBS:-$(nproc)}
ONLY=${MB_K8S_ONLY:-etcd kube-apiserver kube-controller-manager kubectl helm}
FORCE=${MB_K8S_FORCE:-0}
TIMES=$ROOT/build-times.log
mkdir -p "$BIN"

command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }
GOVER=$(go env GOVERSION)

# Version strings the real release builds stamp in (hack/lib/version.sh, helm's Makefile).
# Without them kube-apiserver reports v0.0.0-master, and kubectl/helm version checks trip.
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
kube_ldflags() {
	local f="-s -w" p
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
		f+=" -X $p.gitTreeState=clean -X $p.gitCommit=module-$K8S_VERSION -X $p.buildDate=$BUILD_DATE"
	done
	echo "$f"
}
helm_ldflags() {
	local f="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
	f+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	# helm's default Capabilities / deprecation checks follow its client-go (v0.37.x).
	f+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37"
	f+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
	echo "$f"
}

# stamp MODDIR LDFLAGS -> a hash of what the binary is built from (build date excluded).
stamp() {
	local moddir=$1 ldflags=$2
	{
		cat "$moddir"/go.mod "$moddir"/go.sum "$moddir"/*.go
		echo "$GOVER"
		echo "${ldflags//$BUILD_DATE/}"
	} | sha256sum | cut -d' ' -f1
}

# build NAME MODDIR PKG LDFLAGS
build() {
	local name=$1 moddir=$2 pkg=$3 ldflags=$4
	case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
	local want have=""
	want=$(stamp "$moddir" "$ldflags")
	[ -f "$BIN/.$name.stamp" ] && have=$(cat "$BIN/.$name.stamp")
	if [ "$FORCE" != 1 ] && [ -x "$BIN/$name" ] && [ "$want" = "$have" ]; then
		echo "build.sh: $name: cached ($BIN/$name)"
		return 0
	fi
	echo "build.sh: $name: building $pkg (go build -p $JOBS, $GOVER) ..."
	local t0 t1
	t0=$(date +%s)
	# Build into a temp name and rename, so an interrupted build never leaves a broken binary.
	(cd "$moddir" && CGO_ENABLED=0 go build -p "$JOBS" -mod=readonly -trimpath \
		-ldflags "$ldflags" -o "$BIN/.$name.tmp" "$pkg")
	mv -f "$BIN/.$name.tmp" "$BIN/$name"
	echo "$want" >"$BIN/.$name.stamp"
	t1=$(date +%s)
	echo "build.sh: $name: built in $((t1 - t0))s"
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $name $((t1 - t0))s go-build-p=$JOBS nproc=$(nproc) $GOVER" >>"$TIMES"
}

T0=$(date +%s)
build etcd                    "$HERE/go/etcd" .                                       "-s -w"
build kube-apiserver          "$HERE/go/kube" k8s.io/kubernetes/cmd/kube-apiserver          "$(kube_ldflags)"
build kube-controller-manager "$HERE/go/kube" k8s.io/kubernetes/cmd/kube-controller-manager "$(kube_ldflags)"
build kubectl                 "$HERE/go/kube" k8s.io/kubernetes/cmd/kubectl                 "$(kube_ldflags)"
build helm                    "$HERE/go/helm" helm.sh/helm/v3/cmd/helm                      "$(helm_ldflags)"
cat >"$ROOT/versions" <<EOF
kubernetes $K8S_VERSION
etcd $ETCD_VERSION
helm $HELM_VERSION
go $GOVER
EOF
echo "build.sh: done in $(($(date +%s) - T0))s"
echo "$BIN"
