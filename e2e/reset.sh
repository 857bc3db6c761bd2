#!/usr/bin/env bash
# reset.sh - start `make test` from nothing: stop a test bed that an earlier, interrupted run on
# this machine left running, and wipe the control plane's etcd data.
#
# Why: every suite reuses a running server (the up scripts are idempotent), so a pod runner,
# an operator Pod or a namespace left by a run that was cut off would take part in this run: an
# operator from another checkout, holding 127.0.0.1:8080 and reconciling this run's Backfills,
# or Events and Backfills of an earlier run in the test namespace.
#
# Only the PIDs in our own pidfiles under $MB_HOME are stopped (each down script checks that the
# PID still runs the program it started). Milvus and S3 data are kept (the suites make their own
# collections); the k8s keys and certificates are kept; the built binaries are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export MB_HOME
e2e/pod-runner/down.sh
e2e/k8s/down.sh
e2e/env-down.sh
rm -rf "$MB_HOME/k8s/state/etcd" "$MB_HOME/k8s/state/run/settings"
echo "reset.sh: no test bed runs; the control plane starts with empty etcd data"
