#!/usr/bin/env bash
# with-control-plane.sh CMD [ARGS...] - runs CMD with the e2e/k8s control plane up: starts it
# (up.sh) unless it already runs, and afterwards stops it (down.sh) only if this script started
# it. Exits with CMD's status.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export MB_HOME
pidfile=$MB_HOME/k8s/state/run/kube-apiserver.pid
started=0
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
	"$HERE/up.sh" >&2
	started=1
fi
rc=0
"$@" || rc=$?
[ $started = 1 ] && "$HERE/down.sh" >&2
exit $rc
