#!/usr/bin/env bash
# up.sh - start mb-pod-runner (stand-in for kubelet + container runtime + scheduler) against
# the control plane of e2e/k8s/up.sh, with the admin kubeconfig from its env file.
#
# Idempotent: when the pidfile names a live process running our binary with the same settings
# (binary, maps, arguments), nothing is started; with other settings it is restarted.
# Builds the binary first (cargo build --release -p mb-pod-runner) when it is missing or older
# than e2e/pod-runner/src, unless MB_POD_RUNNER_NO_BUILD=1.
# Waits until the Node is Ready. Exit status 0 means: runner running, Node Ready.
#
# Paths (all outside the repo):
#   $MB_HOME/pod-runner/run/mb-pod-runner.pid   pidfile (down.sh stops exactly this PID)
#   $MB_HOME/pod-runner/logs/mb-pod-runner.log  the runner's own log (appended)
#   $MB_HOME/pod-runner/pod-logs/<ns>/<pod>/<container>.log   container stdout+stderr
#   $MB_HOME/pod-runner/pods/<ns>/<pod>-<uid8>/  per-pod working dir (kubeconfig, token, HOME)
#
# Knobs (defaults in brackets):
#   MB_HOME                  [$HOME/.cache/milvus-backfill]
#   MB_POD_RUNNER_NODE       node name [mb-pod-runner]
#   MB_POD_RUNNER_MAPS       extra space-separated FROM=TO command maps; always mapped:
#                            /usr/local/bin/milvus-backfill=$REPO/target/release/milvus-backfill
#                            /usr/local/bin/milvus-backfill-operator=$REPO/target/release/milvus-backfill-operator
#   MB_POD_RUNNER_ARGS       extra arguments for mb-pod-runner
#   MB_POD_RUNNER_TIMEOUT    seconds to wait for the Node to be Ready [60]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
ENV_FILE=$MB_HOME/k8s/state/env
BASE=$MB_HOME/pod-runner
RUN=$BASE/run
PIDFILE=$RUN/mb-pod-runner.pid
LOG=$BASE/logs/mb-pod-runner.log
NODE=${MB_POD_RUNNER_NODE:-mb-pod-runner}
TIMEOUT=${MB_POD_RUNNER_TIMEOUT:-60}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release/mb-pod-runner

[ -f "$ENV_FILE" ] || { echo "up.sh: $ENV_FILE missing: run e2e/k8s/up.sh first" >&2; exit 1; }
# shellcheck disable=SC1090
. "$ENV_FILE"
mkdir -p "$RUN" "$BASE/logs" "$BASE/pod-logs" "$BASE/pods"

running() {
	local pid exe
	[ -f "$PIDFILE" ] || return 1
	pid=$(cat "$PIDFILE")
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
	exe=${exe% (deleted)}
	[ -n "$pid" ] && [ "${exe##*/}" = mb-pod-runner ]
}

MAPS=(
	"/usr/local/bin/milvus-backfill=$TARGET_DIR/release/milvus-backfill"
	"/usr/local/bin/milvus-backfill-operator=$TARGET_DIR/release/milvus-backfill-operator"
)
# shellcheck disable=SC2206
MAPS+=(${MB_POD_RUNNER_MAPS:-})
ARGS=(--kubeconfig "$KUBECONFIG" --node-name "$NODE"
	--log-dir "$BASE/pod-logs" --work-dir "$BASE/pods")
for m in "${MAPS[@]}"; do ARGS+=(--map "$m"); done
# shellcheck disable=SC2206
ARGS+=(${MB_POD_RUNNER_ARGS:-})

# A runner started with other settings (another checkout's binaries in its maps, other
# arguments) would run this checkout's Pods with the wrong programs: restart it.
SETTINGS="$BIN ${ARGS[*]}"
if running && [ "$(cat "$RUN/settings" 2>/dev/null)" != "$SETTINGS" ]; then
	echo "up.sh: mb-pod-runner runs with other settings (another checkout or other arguments): restarting"
	"$HERE/down.sh"
fi

if running; then
	echo "up.sh: mb-pod-runner already running (pid $(cat "$PIDFILE"))"
else
	# Build only when the binary is missing or older than its sources (a no-op cargo build
	# still waits for the target dir's lock while other builds run).
	if [ "${MB_POD_RUNNER_NO_BUILD:-0}" != 1 ] &&
		{ [ ! -x "$BIN" ] || [ -n "$(find "$HERE/src" "$HERE/Cargo.toml" -newer "$BIN" -print -quit)" ]; }; then
		(cd "$REPO" && cargo build --release -p mb-pod-runner)
	fi
	[ -x "$BIN" ] || { echo "up.sh: $BIN missing" >&2; exit 1; }
	kubectl version >/dev/null 2>&1 || { echo "up.sh: the apiserver does not answer: run e2e/k8s/up.sh" >&2; exit 1; }
	echo "$SETTINGS" >"$RUN/settings"
	echo "=== $(date -u +%FT%TZ) $BIN ${ARGS[*]}" >>"$LOG"
	# setsid: the runner (and its process groups) survive this shell
	setsid "$BIN" "${ARGS[@]}" >>"$LOG" 2>&1 </dev/null &
	echo $! >"$PIDFILE"
	echo "up.sh: started mb-pod-runner (pid $!), log $LOG"
fi

deadline=$((SECONDS + TIMEOUT))
until [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
	if ! running; then
		echo "up.sh: mb-pod-runner exited; last log lines:" >&2
		tail -n 20 "$LOG" >&2
		exit 1
	fi
	if [ "$SECONDS" -ge "$deadline" ]; then
		echo "up.sh: node $NODE not Ready after ${TIMEOUT}s" >&2
		tail -n 20 "$LOG" >&2
		exit 1
	fi
	sleep 0.3
done
echo "up.sh: node $NODE Ready; container logs under $BASE/pod-logs/<namespace>/<pod>/<container>.log"
