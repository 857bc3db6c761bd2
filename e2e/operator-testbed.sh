# Sourced by the operator end-to-end scripts: builds what is missing, brings up the real test
# bed (Milvus 2.3.5 + s3s-fs, kube-apiserver + controller-manager, the pod runner), installs
# the Helm chart and the storage Secret in $NS, and on exit stops only what it started
# (unless MB_KEEP_ENV=1). Expects REPO, MB_HOME and NS; sets MB_STATE and the env files' exports.

# Always: a stale binary would test old code (a no-op build takes a second).
cargo build --release --workspace --all-targets --locked
testbed_started=()
testbed_cleanup() {
  [ "${MB_KEEP_ENV:-0}" = 1 ] && return
  for s in "${testbed_started[@]}"; do "$s" >/dev/null 2>&1 || true; done
}
trap testbed_cleanup EXIT

testbed_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
MB_STATE=${MB_STATE:-$MB_HOME/e2e}
e2e/k8s/build.sh
testbed_alive "$MB_STATE/run/milvus.pid" || testbed_started+=(e2e/env-down.sh)
e2e/env-up.sh
testbed_alive "$MB_HOME/k8s/state/run/kube-apiserver.pid" || testbed_started=(e2e/k8s/down.sh "${testbed_started[@]}")
e2e/k8s/up.sh
testbed_alive "$MB_HOME/pod-runner/run/mb-pod-runner.pid" || testbed_started=(e2e/pod-runner/down.sh "${testbed_started[@]}")
e2e/pod-runner/up.sh
# shellcheck disable=SC1091
source "$MB_STATE/env"
# shellcheck disable=SC1091
source "$MB_HOME/k8s/state/env"

# testbed_install [helm flags...]: the storage credentials Secret `minio-creds`, then the chart
# (operator bound to loopback, as the pod runner runs it on the host). The chart's default plans
# with planning Jobs, and the operator reaches the bucket with its own keys: the same Secret,
# through operator.storageCredentials (the kubelet resolves it; the operator reads no Secret).
testbed_install() {
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create secret generic minio-creds --from-literal=accesskey="$AWS_ACCESS_KEY_ID" \
    --from-literal=secretkey="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # Pod Security Admission "restricted": the operator Pod and every worker Pod must comply (the
  # API server refuses them otherwise), which proves the default security contexts.
  kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
  # Recreate: every Pod of the pod runner shares the host's network, so during a rolling update
  # the new operator Pod could not listen on 8080 while the old one runs (a chart changed since
  # the last run on this machine rolls the Deployment).
  helm upgrade --install mbf charts/milvus-backfill -n "$NS" --wait --timeout 120s \
    --set logFormat=plain --set-json 'operator.extraArgs=["--http-addr","127.0.0.1:8080"]' \
    --set-json 'updateStrategy={"type":"Recreate"}' --set operator.storageCredentials.existingSecret=minio-creds \
    "$@" >/dev/null
  kubectl -n "$NS" rollout status deploy -l app.kubernetes.io/name=milvus-backfill --timeout=120s >/dev/null
}
