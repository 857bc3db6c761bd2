#!/usr/bin/env bash
# down.sh - stop the control plane started by up.sh: kube-controller-manager, then
# kube-apiserver, then etcd. Only the PIDs in $MB_HOME/k8s/state/run/*.pid are signalled,
# and only while that PID still runs the binary of the same name (no PID-reuse accidents):
# SIGTERM, wait up to $MB_K8S_STOP_TIMEOUT seconds [20], then SIGKILL.
# Data (etcd/, pki/, kubeconfigs) is kept; up.sh MB_K8S_FRESH=1 wipes etcd data.
set -euo pipefail

MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
RUN=$MB_HOME/k8s/state/run
STOP_TIMEOUT=${MB_K8S_STOP_TIMEOUT:-20}

stop() {
	local name=$1 pid exe deadline
	[ -f "$RUN/$name.pid" ] || return 0
	pid=$(cat "$RUN/$name.pid")
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
	exe=${exe% (deleted)} # the binary was rebuilt while it ran
	if [ -z "$pid" ] || [ "${exe##*/}" != "$name" ]; then
		echo "down.sh: $name: not running (stale pidfile)"
		rm -f "$RUN/$name.pid"
		return 0
	fi
	echo "down.sh: stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_TIMEOUT))
	while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
		# a zombie (exited, not yet reaped by its parent) counts as stopped
		[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
		echo "down.sh: $name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$RUN/$name.pid"
}

stop kube-controller-manager
stop kube-apiserver
stop etcd
rm -f "$RUN/settings"
echo "down.sh: control plane stopped"
