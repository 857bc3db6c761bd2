#!/usr/bin/env bash
# down.sh - stop mb-pod-runner started by up.sh. Only the PID in the pidfile is signalled,
# and only while it still runs mb-pod-runner: SIGTERM (the runner then SIGTERMs the process
# group of every container it runs, SIGKILLs after at most 5 s, and marks its Node NotReady),
# wait up to $MB_POD_RUNNER_STOP_TIMEOUT seconds [30], then SIGKILL. Idempotent.
set -euo pipefail

MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
PIDFILE=$MB_HOME/pod-runner/run/mb-pod-runner.pid
STOP_TIMEOUT=${MB_POD_RUNNER_STOP_TIMEOUT:-30}

[ -f "$PIDFILE" ] || { echo "down.sh: mb-pod-runner not running (no pidfile)"; exit 0; }
pid=$(cat "$PIDFILE")
exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
exe=${exe% (deleted)}
if [ -z "$pid" ] || [ "${exe##*/}" != mb-pod-runner ]; then
	echo "down.sh: mb-pod-runner not running (stale pidfile)"
	rm -f "$PIDFILE"
	exit 0
fi
echo "down.sh: stopping mb-pod-runner (pid $pid)"
kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + STOP_TIMEOUT))
while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
	[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
	sleep 0.2
done
if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
	echo "down.sh: mb-pod-runner (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
fi
rm -f "$PIDFILE"
echo "down.sh: mb-pod-runner stopped"
