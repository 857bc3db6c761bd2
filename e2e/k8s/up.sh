#!/usr/bin/env bash
# up.sh - start a real Kubernetes control plane on loopback, built by build.sh:
#   * etcd                      127.0.0.1:$MB_K8S_ETCD_PORT (client), +1 (peer); plain HTTP
#   * kube-apiserver            https://127.0.0.1:$MB_K8S_PORT; --authorization-mode=Node,RBAC;
#                               client-cert authentication against our CA; service-account
#                               tokens signed with our key (issuer below)
#   * kube-controller-manager   https://127.0.0.1:$MB_K8S_KCM_PORT (healthz only); one
#                               ServiceAccount per controller (--use-service-account-credentials)
#                               and the controllers listed in $CONTROLLERS below: Job, CronJob,
#                               garbage collector, TTL-after-finished, namespace, serviceaccount,
#                               serviceaccount-token, Deployment/ReplicaSet/StatefulSet, ...
# There is no kubelet, container runtime or scheduler: Pods are created and stay Pending
# (a pod runner plays those parts; see README.md).
#
# Writes into $STATE (= $MB_HOME/k8s/state):
#   admin.kubeconfig   user "mb-admin" in group system:masters (client cert, all data embedded)
#   env                shell exports: KUBECONFIG, MB_K8S_BIN, MB_K8S_SERVER, PATH
#   pki/               CA, serving cert, client certs, service-account key pair (made once)
#   etcd/              etcd data (kept across down/up; MB_K8S_FRESH=1 wipes it)
#   run/*.pid          pidfiles (down.sh stops exactly these PIDs)
#   logs/*.log         one log per server
#
# Idempotent: a server that already runs (pidfile, live PID running our binary, with the
# same settings) is left alone and only re-checked. When the settings changed, down.sh
# runs first. Exit status 0 means: /readyz ok, controller-manager /healthz ok, and the
# serviceaccount controller made the `default` ServiceAccount in namespace `default`.
#
# Knobs (defaults in brackets):
#   MB_HOME            cache + state root [$HOME/.cache/milvus-backfill]
#   MB_K8S_PORT        kube-apiserver secure port [6443]
#   MB_K8S_ETCD_PORT   etcd client port, peer port is +1 [12379] (not 2379: e2e/env-up.sh's
#                      Milvus uses 2379/2380)
#   MB_K8S_KCM_PORT    kube-controller-manager secure port [10257]
#   MB_K8S_TIMEOUT     seconds to wait for readiness [180]
#   MB_K8S_FRESH=1     stop (if running) and wipe etcd data first (keys/certs are kept)
#   MB_K8S_VERBOSITY   klog -v for apiserver and controller-manager [1]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export MB_HOME
K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$HERE/build.sh")
BIN=$MB_HOME/k8s/$K8S_VERSION/bin
STATE=$MB_HOME/k8s/state
PKI=$STATE/pki
RUN=$STATE/run
LOGS=$STATE/logs
PORT=${MB_K8S_PORT:-6443}
ETCD_PORT=${MB_K8S_ETCD_PORT:-12379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
KCM_PORT=${MB_K8S_KCM_PORT:-10257}
TIMEOUT=${MB_K8S_TIMEOUT:-180}
VERB=${MB_K8S_VERBOSITY:-1}
SERVER=https://127.0.0.1:$PORT
SA_ISSUER=https://kubernetes.default.svc.cluster.local
SERVICE_CIDR=10.0.0.0/24 # only a value stored in Service objects; nothing routes or connects to it
CONTROLLERS=job-controller,cronjob-controller,garbage-collector-controller,ttl-after-finished-controller
CONTROLLERS+=,namespace-controller,serviceaccount-controller,serviceaccount-token-controller
CONTROLLERS+=,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller
CONTROLLERS+=,deployment-controller,replicaset-controller,statefulset-controller,disruption-controller
CONTROLLERS+=,resourcequota-controller,endpoints-controller,endpointslice-controller
# Left out on purpose: node-lifecycle-controller (it would taint/evict a runner's Node that
# misses a heartbeat), pod-garbage-collector-controller (pods belong to the runner),
# node-ipam, persistent volumes, CSR signing, cloud and the rest.

log() { echo "up.sh: $*"; }
die() { echo "up.sh: ERROR: $*" >&2; exit 1; }

for b in etcd kube-apiserver kube-controller-manager kubectl; do
	[ -x "$BIN/$b" ] || die "$BIN/$b missing: run e2e/k8s/build.sh first"
done
command -v openssl >/dev/null || die "openssl not found"
command -v curl >/dev/null || die "curl not found"
mkdir -p "$PKI" "$RUN" "$LOGS"
chmod 700 "$STATE" "$PKI"

# --- settings fingerprint: a running plane with other settings is restarted -------------
SETTINGS="k8s=$K8S_VERSION port=$PORT etcd=$ETCD_PORT kcm=$KCM_PORT v=$VERB controllers=$CONTROLLERS bin=$BIN"
if [ "${MB_K8S_FRESH:-0}" = 1 ]; then
	log "MB_K8S_FRESH=1: stopping and wiping etcd data"
	"$HERE/down.sh"
	rm -rf "$STATE/etcd"
elif [ -f "$RUN/settings" ] && [ "$(cat "$RUN/settings")" != "$SETTINGS" ]; then
	log "settings changed since the last start: restarting"
	"$HERE/down.sh"
fi

# running NAME -> 0 when run/NAME.pid names a live process executing $BIN/NAME
running() {
	local pid exe
	[ -f "$RUN/$1.pid" ] || return 1
	pid=$(cat "$RUN/$1.pid")
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
	# "(deleted)": build.sh replaced the binary while it ran; it is still ours (down.sh + up.sh
	# picks up the new one).
	[ -n "$pid" ] && [ "${exe% (deleted)}" = "$(readlink -f "$BIN/$1")" ]
}

# port_free PORT -> 0 when nothing listens on 127.0.0.1:PORT (or any address)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME ARGS... -> runs $BIN/NAME in its own session, logs to logs/NAME.log
start() {
	local name=$1
	shift
	log "starting $name"
	echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $name $*" >>"$LOGS/$name.log"
	# setsid execs in place (this background child is no group leader), so $! is the server.
	setsid "$BIN/$name" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN/$name.pid"
}

# wait_for NAME WHAT CMD... -> retries CMD until it succeeds; fails when server NAME exits
# or $TIMEOUT runs out
wait_for() {
	local name=$1 what=$2 deadline=$((SECONDS + TIMEOUT))
	shift 2
	until "$@" >/dev/null 2>&1; do
		if ! running "$name"; then
			tail -n 5 "$LOGS/$name.log" >&2
			die "$name exited while waiting for $what (log: $LOGS/$name.log)"
		fi
		[ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what (logs: $LOGS)"
		sleep 0.5
	done
}

# --- PKI (once) --------------------------------------------------------------------------
# new_ca NAME CN -> pki/NAME.{key,crt}, a self-signed CA
new_ca() {
	[ -s "$PKI/$1.crt" ] && [ -s "$PKI/$1.key" ] && return 0
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -out "$PKI/$1.crt" \
		-days 3650 -sha256 -subj "/CN=$2" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}
# issue NAME SUBJECT EXTENSIONS [CA] -> pki/NAME.{key,crt}, signed by pki/CA [ca]
issue() {
	local name=$1 subj=$2 ext=$3 ca=${4:-ca}
	[ -s "$PKI/$name.crt" ] && [ -s "$PKI/$name.key" ] && return 0
	openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
	printf '%s\n' "$ext" >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
		-CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
make_pki() {
	umask 077
	if [ ! -s "$PKI/ca.crt" ] || [ ! -s "$PKI/ca.key" ]; then
		log "generating CA, certificates and the service-account key pair in $PKI"
		rm -f "$PKI"/*.crt "$PKI"/*.key
		new_ca ca milvus-backfill-e2e-ca
	fi
	# A separate CA for the aggregation layer's request-header authentication (as kubeadm
	# does): with it the controller-manager's delegated authentication finds the
	# requestheader CA it looks for, and no client cert of the main CA can pose as the proxy.
	new_ca front-proxy-ca milvus-backfill-e2e-front-proxy-ca
	issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
	issue admin "/O=system:masters/CN=mb-admin" "$client"
	issue controller-manager "/CN=system:kube-controller-manager" "$client"
	issue front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca
	if [ ! -s "$PKI/sa.key" ] || [ ! -s "$PKI/sa.pub" ]; then
		openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
		openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	fi
	umask 022
}

# kubeconfig FILE USER CERTNAME -> a self-contained kubeconfig (all data embedded)
kubeconfig() {
	local file=$1 user=$2 cert=$3 tmp
	tmp=$(mktemp "$file.XXXXXX")
	cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mb-e2e
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: mb-e2e
  context:
    cluster: mb-e2e
    user: $user
    namespace: default
current-context: mb-e2e
EOF
	chmod 600 "$tmp"
	mv -f "$tmp" "$file"
}

make_pki
kubeconfig "$STATE/admin.kubeconfig" mb-admin admin
kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
cat >"$STATE/env" <<EOF
export KUBECONFIG='$STATE/admin.kubeconfig'
export MB_K8S_BIN='$BIN'
export MB_K8S_SERVER='$SERVER'
export MB_K8S_CA='$PKI/ca.crt'
export PATH='$BIN':"\$PATH"
EOF

T0=$(date +%s.%N)
started=0

# --- etcd ----------------------------------------------------------------------------------
if running etcd; then
	log "etcd already running (pid $(cat "$RUN/etcd.pid"))"
else
	port_free "$ETCD_PORT" || die "127.0.0.1:$ETCD_PORT is taken by another process (set MB_K8S_ETCD_PORT)"
	port_free "$ETCD_PEER_PORT" || die "127.0.0.1:$ETCD_PEER_PORT is taken by another process (set MB_K8S_ETCD_PORT)"
	mkdir -p "$STATE/etcd"
	chmod 700 "$STATE/etcd"
	# --unsafe-no-fsync: a throw-away test store; it makes writes much faster on slow disks.
	start etcd --name mb-e2e --data-dir "$STATE/etcd" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "mb-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
		--unsafe-no-fsync --log-level warn
	started=1
fi
wait_for etcd "etcd /health" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver --------------------------------------------------------------------------
if running kube-apiserver; then
	log "kube-apiserver already running (pid $(cat "$RUN/kube-apiserver.pid"))"
else
	port_free "$PORT" || die "127.0.0.1:$PORT is taken by another process (set MB_K8S_PORT)"
	# --endpoint-reconciler-type none: the default (lease) refuses to start with a loopback
	# advertise address ("may not be in the loopback range"). So the `kubernetes` Service has
	# no endpoints: clients use the kubeconfig's server URL, never the Service IP.
	start kube-apiserver \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$PORT" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" \
		--requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
		--requestheader-allowed-names front-proxy-client \
		--requestheader-username-headers X-Remote-User \
		--requestheader-uid-headers X-Remote-Uid \
		--requestheader-group-headers X-Remote-Group \
		--requestheader-extra-headers-prefix X-Remote-Extra- \
		--proxy-client-cert-file "$PKI/front-proxy-client.crt" \
		--proxy-client-key-file "$PKI/front-proxy-client.key" \
		--authorization-mode Node,RBAC \
		--service-account-issuer "$SA_ISSUER" \
		--service-account-key-file "$PKI/sa.pub" \
		--service-account-signing-key-file "$PKI/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--endpoint-reconciler-type none \
		--allow-privileged=true \
		--cert-dir "$STATE/apiserver-certs" \
		--profiling=false \
		--v "$VERB"
	started=1
fi
wait_for kube-apiserver "kube-apiserver /readyz" curl -fsS --cacert "$PKI/ca.crt" "$SERVER/readyz"

# --- kube-controller-manager -------------------------------------------------------------
if running kube-controller-manager; then
	log "kube-controller-manager already running (pid $(cat "$RUN/kube-controller-manager.pid"))"
else
	port_free "$KCM_PORT" || die "127.0.0.1:$KCM_PORT is taken by another process (set MB_K8S_KCM_PORT)"
	start kube-controller-manager \
		--kubeconfig "$STATE/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
		--authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
		--cert-dir "$STATE/controller-manager-certs" \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file "$PKI/sa.key" \
		--root-ca-file "$PKI/ca.crt" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--controllers "$CONTROLLERS" \
		--profiling=false \
		--v "$VERB"
	started=1
fi
echo "$SETTINGS" >"$RUN/settings"
wait_for kube-controller-manager "kube-controller-manager /healthz" curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
# The serviceaccount controller makes `default` in every namespace: proves the
# controller-manager talks to the apiserver and that Pods can be admitted.
wait_for kube-controller-manager "ServiceAccount default/default" \
	"$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" get serviceaccount default -n default

T1=$(date +%s.%N)
if [ "$started" = 1 ]; then
	log "control plane up in $(awk "BEGIN{printf \"%.1f\", $T1 - $T0}")s"
else
	log "control plane already up; re-checked in $(awk "BEGIN{printf \"%.1f\", $T1 - $T0}")s"
fi
log "server:     $SERVER (Kubernetes $K8S_VERSION)"
log "kubeconfig: $STATE/admin.kubeconfig"
log "env:        source $STATE/env"
