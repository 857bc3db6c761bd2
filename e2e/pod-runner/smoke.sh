#!/usr/bin/env bash
# smoke.sh - prove mb-pod-runner against the real control plane (e2e/k8s): real Job,
# ReplicaSet/Deployment and garbage-collector controllers, RBAC on, Pods run as local processes.
# Starts the control plane and the runner when they are down and stops again what it
# started (MB_SMOKE_KEEP=1 keeps them). Last line: "smoke: N passed, M failed"; exit 0 only
# when nothing failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export MB_HOME
NS=pr-smoke
PODLOGS=$MB_HOME/pod-runner/pod-logs
PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "smoke: ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "smoke: FAIL - $*"; }
check() {
	local what=$1
	shift
	if "$@"; then ok "$what"; else bad "$what"; fi
}
eventually() { # eventually SECONDS CMD... -> 0 once CMD succeeds
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -ge "$deadline" ] && return 1
		sleep 0.3
	done
}

started_plane=0
started_runner=0
alive() { # alive PIDFILE BINARY-NAME
	local pid exe
	pid=$(cat "$1" 2>/dev/null) || return 1
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	exe=${exe% (deleted)}
	[ "${exe##*/}" = "$2" ]
}
alive "$MB_HOME/k8s/state/run/kube-apiserver.pid" kube-apiserver || started_plane=1
alive "$MB_HOME/pod-runner/run/mb-pod-runner.pid" mb-pod-runner || started_runner=1
cleanup() {
	[ "${MB_SMOKE_KEEP:-0}" = 1 ] && return 0
	"$KUBECTL" delete ns "$NS" --wait=false >/dev/null 2>&1 || true
	[ "$started_runner" = 1 ] && "$HERE/down.sh"
	[ "$started_plane" = 1 ] && "$REPO/e2e/k8s/down.sh"
	return 0
}
"$REPO/e2e/k8s/up.sh" >/dev/null || { echo "smoke: control plane did not start"; exit 1; }
# shellcheck disable=SC1091
. "$MB_HOME/k8s/state/env"
KUBECTL=$MB_K8S_BIN/kubectl
trap cleanup EXIT
"$HERE/up.sh" || { echo "smoke: runner did not start"; exit 1; }
k() { "$KUBECTL" "$@"; }
kn() { "$KUBECTL" -n "$NS" "$@"; }

# Fresh namespace.
if k get ns "$NS" >/dev/null 2>&1; then
	k delete ns "$NS" --wait=true --timeout=60s >/dev/null
fi
k create ns "$NS" >/dev/null
eventually 20 kn get sa default >/dev/null 2>&1

# job NAME BACKOFF_LIMIT SCRIPT [extra pod-spec yaml lines, indented 6] -> Job manifest
job() {
	local name=$1 backoff=$2 script=$3 extra=${4:-}
	cat <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name, namespace: $NS}
spec:
  backoffLimit: $backoff
  template:
    spec:
      restartPolicy: ${RESTART_POLICY:-Never}
$extra
      containers:
      - name: main
        image: busybox:1.36
        command: ["/bin/sh", "-c", $(printf '%s' "$script" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
${CONTAINER_EXTRA:-}
YAML
}
pod_of() { kn get pods -l "batch.kubernetes.io/job-name=$1" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
job_cond() { [ "$(kn get job "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].status}" 2>/dev/null)" = True ]; }
logfile() { echo "$PODLOGS/$NS/$(pod_of "$1")/main.log"; }
log_has() { grep -q -- "$2" "$(logfile "$1")" 2>/dev/null; }
pod_json() { kn get pod "$(pod_of "$1")" -o jsonpath="$2" 2>/dev/null; }

# 1. Node and Lease.
check "node mb-pod-runner is Ready" \
	test "$(k get node mb-pod-runner -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True
check "lease kube-node-lease/mb-pod-runner renewed by the runner" \
	test "$(k -n kube-node-lease get lease mb-pod-runner -o jsonpath='{.spec.holderIdentity}')" = mb-pod-runner

# 2. A Job that succeeds.
job hello 0 'echo hi; exit 0' | kn apply -f - >/dev/null
check "job hello: Complete (real Job controller)" eventually 30 job_cond hello Complete
check "job hello: pod bound to mb-pod-runner" test "$(pod_json hello '{.spec.nodeName}')" = mb-pod-runner
check "job hello: pod Succeeded, exitCode 0, reason Completed" \
	test "$(pod_json hello '{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}')" = "Succeeded 0 Completed"
check "job hello: log $(logfile hello) says hi" log_has hello '^hi$'

# 3. A Job that exits 3 with backoffLimit 0.
job three 0 'echo failing >&2; exit 3' | kn apply -f - >/dev/null
check "job three: Failed (BackoffLimitExceeded)" eventually 30 job_cond three Failed
check "job three: reason BackoffLimitExceeded" \
	test "$(kn get job three -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}')" = BackoffLimitExceeded
check "job three: pod Failed with exitCode 3, reason Error" \
	test "$(pod_json three '{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}')" = "Failed 3 Error"
check "job three: stderr in the log" log_has three failing

# 4. Environment: secretKeyRef, configMapKeyRef, envFrom with prefix, fieldRef, $(VAR), optional.
kn create secret generic smoke-secret --from-literal=password=s3cr3t-Value-42 >/dev/null
kn create configmap smoke-cm --from-literal=color=blue --from-literal=size=XL >/dev/null
CONTAINER_EXTRA='        envFrom:
        - configMapRef: {name: smoke-cm}
          prefix: CM_
        - secretRef: {name: absent-secret, optional: true}
        env:
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: smoke-secret, key: password}}
        - name: COLOR
          valueFrom: {configMapKeyRef: {name: smoke-cm, key: color}}
        - name: MISSING
          valueFrom: {secretKeyRef: {name: absent-secret, key: x, optional: true}}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NS
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: POD_UID
          valueFrom: {fieldRef: {fieldPath: metadata.uid}}
        - name: SA
          valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: GREETING
          value: "$(COLOR)-$(CM_size)"
        - name: CPU_LIMIT
          valueFrom: {resourceFieldRef: {resource: limits.cpu}}
        - name: MEM_MI
          valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
        resources: {limits: {cpu: 500m, memory: 64Mi}}' \
	job envjob 0 'echo "PASSWORD=$PASSWORD"; echo "COLOR=$COLOR GREETING=$GREETING CM_color=$CM_color"; echo "MISSING=${MISSING-unset}"; echo "POD=$POD_NAME NS=$POD_NS UID=$POD_UID SA=$SA NODE=$NODE IP=$IP"; echo "KSH=${KUBERNETES_SERVICE_HOST-unset} KSP=${KUBERNETES_SERVICE_PORT-unset}"; echo "PWD=$PWD"; echo "CPU=$CPU_LIMIT MEM=$MEM_MI"' |
	kn apply -f - >/dev/null
check "job envjob: Complete" eventually 30 job_cond envjob Complete
check "job envjob: secretKeyRef value in the log" log_has envjob '^PASSWORD=s3cr3t-Value-42$'
check "job envjob: configMapKeyRef, envFrom prefix and \$(VAR) expansion" log_has envjob '^COLOR=blue GREETING=blue-XL CM_color=blue$'
check "job envjob: optional missing secret key skipped" log_has envjob '^MISSING=unset$'
P=$(pod_of envjob)
U=$(kn get pod "$P" -o jsonpath='{.metadata.uid}')
check "job envjob: fieldRefs (name, namespace, uid, SA, node, podIP)" log_has envjob "^POD=$P NS=$NS UID=$U SA=default NODE=mb-pod-runner IP=127.0.0.1$"
check "job envjob: KUBERNETES_SERVICE_HOST/PORT not set" log_has envjob '^KSH=unset KSP=unset$'
check "job envjob: resourceFieldRef limits.cpu 500m -> 1, limits.memory 64Mi / 1Mi -> 64" log_has envjob '^CPU=1 MEM=64$'
check "job envjob: working dir is the per-pod dir" log_has envjob "^PWD=$MB_HOME/pod-runner/pods/$NS/$P-"

# A required secret that does not exist: CreateContainerConfigError, then it runs once created.
CONTAINER_EXTRA='        env:
        - name: LATE
          valueFrom: {secretKeyRef: {name: late-secret, key: v}}' \
	job late 0 'echo "LATE=$LATE"' | kn apply -f - >/dev/null
check "job late: pod waits with CreateContainerConfigError" \
	eventually 20 sh -c "[ \"\$('$KUBECTL' -n $NS get pod -l batch.kubernetes.io/job-name=late -o jsonpath='{.items[0].status.containerStatuses[0].state.waiting.reason}')\" = CreateContainerConfigError ]"
kn create secret generic late-secret --from-literal=v=arrived >/dev/null
check "job late: runs once the secret exists" eventually 30 job_cond late Complete
check "job late: value in the log" log_has late '^LATE=arrived$'

# 5. ServiceAccount identity (TokenRequest) under RBAC.
kn create sa reader >/dev/null
kn create sa nobody >/dev/null
kn create role pod-reader --verb=get,list --resource=pods >/dev/null
kn create rolebinding reader-pods --role=pod-reader --serviceaccount="$NS:reader" >/dev/null
SA_SCRIPT="$MB_K8S_BIN/kubectl get pods -o name; echo \"rc=\$?\"; $MB_K8S_BIN/kubectl get secrets; echo \"rc2=\$?\"; $MB_K8S_BIN/kubectl auth whoami -o jsonpath='{.status.userInfo.username}'; echo"
job sa-reader 0 "$SA_SCRIPT" "      serviceAccountName: reader" | kn apply -f - >/dev/null
job sa-nobody 0 "$SA_SCRIPT" "      serviceAccountName: nobody" | kn apply -f - >/dev/null
check "job sa-reader: Complete" eventually 30 job_cond sa-reader Complete
check "job sa-nobody: Complete" eventually 30 job_cond sa-nobody Complete
check "sa-reader: kubectl get pods allowed (lists its own pod)" log_has sa-reader "^pod/$(pod_of sa-reader)$"
check "sa-reader: rc=0 for pods" log_has sa-reader '^rc=0$'
check "sa-reader: secrets forbidden" log_has sa-reader 'cannot list resource "secrets"'
check "sa-reader: identity is system:serviceaccount:$NS:reader" log_has sa-reader "^system:serviceaccount:$NS:reader$"
check "sa-nobody: pods forbidden for system:serviceaccount:$NS:nobody" \
	log_has sa-nobody "User \"system:serviceaccount:$NS:nobody\" cannot list resource \"pods\""
check "sa-nobody: rc=1" log_has sa-nobody '^rc=1$'

# 6. Deleting a running Job kills its process (SIGTERM to the process group).
job sleeper 0 'echo started; sleep 1000' | kn apply -f - >/dev/null
check "job sleeper: pod Running" eventually 30 sh -c "[ \"\$('$KUBECTL' -n $NS get pod -l batch.kubernetes.io/job-name=sleeper -o jsonpath='{.items[0].status.phase}')\" = Running ]"
SP=$(pod_of sleeper)
PID=$(kn get pod "$SP" -o jsonpath='{.status.containerStatuses[0].containerID}')
PID=${PID#mb-pod-runner://}
check "job sleeper: process $PID runs, and its sleep child" sh -c "kill -0 $PID && pgrep -g $PID sleep >/dev/null"
t0=$SECONDS
kn delete job sleeper --wait=false >/dev/null
check "job sleeper deleted: process group $PID gone" eventually 20 sh -c "! kill -0 $PID 2>/dev/null && ! pgrep -g $PID >/dev/null"
check "job sleeper deleted: pod $SP gone" eventually 20 sh -c "! '$KUBECTL' -n $NS get pod $SP >/dev/null 2>&1"
echo "smoke:        (delete -> process and pod gone in $((SECONDS - t0)) s)"

# A process that ignores SIGTERM gets SIGKILL after terminationGracePeriodSeconds.
job stubborn 0 'trap "" TERM; echo started; sleep 1000' "      terminationGracePeriodSeconds: 3" | kn apply -f - >/dev/null
eventually 30 sh -c "[ \"\$('$KUBECTL' -n $NS get pod -l batch.kubernetes.io/job-name=stubborn -o jsonpath='{.items[0].status.phase}')\" = Running ]"
SP=$(pod_of stubborn)
PID=$(kn get pod "$SP" -o jsonpath='{.status.containerStatuses[0].containerID}')
PID=${PID#mb-pod-runner://}
kn delete pod "$SP" --wait=false >/dev/null
sleep 1.5
check "pod stubborn: still alive 1.5 s after delete (grace 3 s, SIGTERM ignored)" kill -0 "$PID"
check "pod stubborn: SIGKILLed after the grace period" eventually 10 sh -c "! kill -0 $PID 2>/dev/null"
kn delete job stubborn --wait=false >/dev/null

# 7. Job activeDeadlineSeconds: the Job controller fails the Job and deletes the pod.
cat <<YAML | kn apply -f - >/dev/null
apiVersion: batch/v1
kind: Job
metadata: {name: deadline, namespace: $NS}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 3
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: x, command: ["/bin/sh", "-c", "sleep 1000"]}
YAML
eventually 20 sh -c "[ -n \"\$('$KUBECTL' -n $NS get pod -l batch.kubernetes.io/job-name=deadline -o jsonpath='{.items[0].status.containerStatuses[0].state.running}')\" ]"
DPID=$(pod_json deadline '{.status.containerStatuses[0].containerID}')
DPID=${DPID#mb-pod-runner://}
check "job deadline: Failed with DeadlineExceeded" eventually 30 sh -c "[ \"\$('$KUBECTL' -n $NS get job deadline -o jsonpath='{.status.conditions[?(@.type==\"Failed\")].reason}')\" = DeadlineExceeded ]"
check "job deadline: process $DPID killed" eventually 20 sh -c "! kill -0 $DPID 2>/dev/null"

# 8. restartPolicy OnFailure: the container is restarted in the same pod until it succeeds.
RESTART_POLICY=OnFailure job onfailure 2 'n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n >count; echo "run $n"; [ $n -ge 2 ]' |
	kn apply -f - >/dev/null
check "job onfailure: Complete" eventually 40 job_cond onfailure Complete
check "job onfailure: one pod, restartCount 1, lastState exitCode 1" \
	test "$(pod_json onfailure '{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.exitCode}')" = "1 1"
check "job onfailure: log has both runs" sh -c "grep -q '^run 1$' '$(logfile onfailure)' && grep -q '^run 2$' '$(logfile onfailure)'"

# Init containers run first, in order, in the same per-pod working dir.
job withinit 0 'cat shared.txt' '      initContainers:
      - {name: prep1, image: x, command: ["/bin/sh", "-c", "echo one > shared.txt"]}
      - {name: prep2, image: x, command: ["/bin/sh", "-c", "echo two >> shared.txt"]}' | kn apply -f - >/dev/null
check "job withinit: Complete" eventually 30 job_cond withinit Complete
check "job withinit: main saw both init containers' output, in order" \
	test "$(tr '\n' ' ' <"$(logfile withinit)")" = "one two "
check "job withinit: initContainerStatuses terminated with exitCode 0" \
	test "$(pod_json withinit '{.status.initContainerStatuses[*].state.terminated.exitCode}')" = "0 0"

# 9. Command paths: an unmapped missing binary fails clearly; a mapped one runs our build.
job nobin 0 'unused' | sed 's#"/bin/sh", "-c", .*#"/usr/local/bin/not-there", "--flag"]#' | kn apply -f - >/dev/null
check "job nobin: Failed" eventually 30 job_cond nobin Failed
check "job nobin: StartError 128 with a clear message" sh -c "'$KUBECTL' -n $NS get pod -l batch.kubernetes.io/job-name=nobin -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.reason} {.items[0].status.containerStatuses[0].state.terminated.exitCode} {.items[0].status.containerStatuses[0].state.terminated.message}' | grep -q 'StartError 128 exec: /usr/local/bin/not-there: no such file on this host'"
if [ -x "$REPO/target/release/milvus-backfill" ]; then
	job mapped 0 'unused' | sed 's#"/bin/sh", "-c", .*#"/usr/local/bin/milvus-backfill", "--version"]#' | kn apply -f - >/dev/null
	check "job mapped: /usr/local/bin/milvus-backfill -> target/release/milvus-backfill runs (--version)" eventually 30 job_cond mapped Complete
	check "job mapped: log has the version" log_has mapped 'milvus-backfill'
	# The operator's Jobs run the bare name "milvus-backfill": resolved like the image's PATH.
	job mapped-bare 0 'unused' | sed 's#"/bin/sh", "-c", .*#"milvus-backfill", "--version"]#' | kn apply -f - >/dev/null
	check "job mapped-bare: bare 'milvus-backfill' resolves through the /usr/local/bin map" eventually 30 job_cond mapped-bare Complete
fi

# 10. Deployment (restartPolicy Always) with an httpGet readinessProbe on 127.0.0.1.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat <<YAML | kn apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: main
        image: python:3
        command: ["/bin/sh", "-c", "sleep 2; exec python3 -m http.server $PORT --bind 127.0.0.1"]
        ports: [{name: http, containerPort: $PORT}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
YAML
check "deployment web: Available through the readinessProbe (ReplicaSet controller)" \
	eventually 40 sh -c "[ \"\$('$KUBECTL' -n $NS get deploy web -o jsonpath='{.status.readyReplicas}')\" = 1 ]"
WP=$(kn get pod -l app=web -o jsonpath='{.items[0].metadata.name}')
WPID=$(kn get pod "$WP" -o jsonpath='{.status.containerStatuses[0].containerID}')
WPID=${WPID#mb-pod-runner://}
kill -9 "$WPID" 2>/dev/null
check "deployment web: killed process restarted (restartCount 1) and Ready again" \
	eventually 40 sh -c "[ \"\$('$KUBECTL' -n $NS get pod $WP -o jsonpath='{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}')\" = '1 true' ]"
WPID=$(kn get pod "$WP" -o jsonpath='{.status.containerStatuses[0].containerID}')
WPID=${WPID#mb-pod-runner://}
kn delete deploy web --wait=false >/dev/null
check "deployment web deleted: server process killed, pod gone" \
	eventually 30 sh -c "! kill -0 $WPID 2>/dev/null && ! '$KUBECTL' -n $NS get pod $WP >/dev/null 2>&1"

# A bare Pod (restartPolicy Always) whose livenessProbe fails is restarted; deleting it kills it.
LPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat <<YAML | kn apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: unlive, namespace: $NS}
spec:
  containers:
  - name: main
    image: x
    command: ["sleep", "1000"]
    livenessProbe: {tcpSocket: {port: $LPORT}, periodSeconds: 1, failureThreshold: 2}
YAML
check "pod unlive: restarted after failed liveness probes (restartCount >= 1)" \
	eventually 30 sh -c "[ \"\$('$KUBECTL' -n $NS get pod unlive -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -ge 1 ] 2>/dev/null"
check "pod unlive: lastState says why" \
	test "$(kn get pod unlive -o jsonpath='{.status.containerStatuses[0].lastState.terminated.message}')" = "liveness probe failed"
eventually 20 sh -c "[ -n \"\$('$KUBECTL' -n $NS get pod unlive -o jsonpath='{.status.containerStatuses[0].state.running}')\" ]"
UPID=$(kn get pod unlive -o jsonpath='{.status.containerStatuses[0].containerID}')
UPID=${UPID#mb-pod-runner://}
kn delete pod unlive --wait=false >/dev/null
check "pod unlive deleted: process $UPID gone, pod gone" \
	eventually 20 sh -c "! kill -0 $UPID 2>/dev/null && ! '$KUBECTL' -n $NS get pod unlive >/dev/null 2>&1"

# 11. Stopping the runner kills what it runs and marks the Node NotReady.
job last 0 'sleep 1000' | kn apply -f - >/dev/null
eventually 30 sh -c "[ \"\$('$KUBECTL' -n $NS get pod -l batch.kubernetes.io/job-name=last -o jsonpath='{.items[0].status.phase}')\" = Running ]"
LPID=$(pod_json last '{.status.containerStatuses[0].containerID}')
LPID=${LPID#mb-pod-runner://}
"$HERE/down.sh" >/dev/null
check "runner down.sh: its process $LPID is gone" eventually 10 sh -c "! kill -0 $LPID 2>/dev/null"
check "runner down.sh: node NotReady" \
	test "$(k get node mb-pod-runner -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = False
kn delete job last --wait=false >/dev/null
if [ "$started_runner" = 0 ] || [ "${MB_SMOKE_KEEP:-0}" = 1 ]; then
	"$HERE/up.sh" >/dev/null # it was running before: leave it running
fi

echo "smoke: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
