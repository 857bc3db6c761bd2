#!/usr/bin/env bash
# env-up.sh - start the end-to-end test environment of milvus-backfill:
#   * an S3 server (s3s-fs 0.14.1) on 127.0.0.1:$MB_S3_PORT with the buckets
#     `milvus-bucket` (Milvus' own storage) and `backfill-data` (new-field Parquet);
#   * a real Milvus 2.3.5 standalone (PyPI wheel `milvus==2.3.5`) whose storage is that S3
#     server (rootPath `files`), with a small insert buffer so segments get several binlogs.
# Then it writes "$MB_STATE/env" (shell exports for tests and tools).
#
# Idempotent: when both servers already run with the same settings it only re-checks them
# and rewrites the env file. When the settings differ it restarts them (data is kept).
# Stop with env-down.sh, which only kills the PIDs from our pidfiles.
#
# Knobs (defaults in brackets):
#   MB_HOME                  cache + state root [$HOME/.cache/milvus-backfill]
#   MB_STATE                 runtime state (pidfiles, logs, Milvus data, S3 data) [$MB_HOME/e2e]
#   MB_VENV                  python venv with milvus/pymilvus/boto3/pyarrow [$MB_HOME/venv]
#   S3S_FS_BIN               s3s-fs binary [$MB_HOME/s3s-fs/bin/s3s-fs, cargo-installed there if missing]
#   MB_MILVUS_BIN_BASE       where the wheel's LZMA binaries are unpacked (bin/) [$MB_HOME/milvus-2.3.5]
#   MB_S3_PORT               S3 port [9000]
#   MB_S3_ACCESS_KEY / MB_S3_SECRET_KEY   [minioadmin / minioadmin]
#   MB_MILVUS_BUCKET [milvus-bucket]  MB_DATA_BUCKET [backfill-data]  MB_ROOT_PATH [files]
#   MB_PORT_OFFSET           added to every Milvus port [0]: gRPC 19530, metrics/healthz 9091,
#                            etcd 2379/2380, rootCoord 22100, proxy-internal 19529, queryCoord 19531,
#                            queryNode 21123, indexCoord 22930, indexNode 21121, dataCoord 13333,
#                            dataNode 21124.
#   MB_INSERT_BUF            dataNode.segment.insertBufSize in bytes [65536]
#   MB_GC_INTERVAL           dataCoord.gc.interval, seconds [3600]
#   MB_GC_MISSING_TOLERANCE  dataCoord.gc.missingTolerance, seconds [3600]
#   MB_GC_DROP_TOLERANCE     dataCoord.gc.dropTolerance, seconds [10800]
#   MB_GC_ENABLE             dataCoord.enableGarbageCollection [true]
#   MB_HEALTH_TIMEOUT        seconds to wait for Milvus /healthz [180]
#   MB_FRESH=1               stop our servers (if running) and wipe Milvus + S3 data first
#
# NB: Milvus 2.3's own gRPC/HTTP servers listen on all interfaces (the config has no bind
# address); we advertise 127.0.0.1 (`*.ip`) and bind etcd and S3 to 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
STATE=${MB_STATE:-$MB_HOME/e2e}
VENV=${MB_VENV:-$MB_HOME/venv}
S3S_BIN=${S3S_FS_BIN:-$MB_HOME/s3s-fs/bin/s3s-fs}
MV_BIN_BASE=${MB_MILVUS_BIN_BASE:-$MB_HOME/milvus-2.3.5}
S3_PORT=${MB_S3_PORT:-9000}
AK=${MB_S3_ACCESS_KEY:-minioadmin}
SK=${MB_S3_SECRET_KEY:-minioadmin}
BUCKET=${MB_MILVUS_BUCKET:-milvus-bucket}
DATA_BUCKET=${MB_DATA_BUCKET:-backfill-data}
ROOT_PATH=${MB_ROOT_PATH:-files}
OFF=${MB_PORT_OFFSET:-0}
INSERT_BUF=${MB_INSERT_BUF:-65536}
GC_INTERVAL=${MB_GC_INTERVAL:-3600}
GC_MISSING=${MB_GC_MISSING_TOLERANCE:-3600}
GC_DROP=${MB_GC_DROP_TOLERANCE:-10800}
GC_ENABLE=${MB_GC_ENABLE:-true}
HEALTH_TIMEOUT=${MB_HEALTH_TIMEOUT:-180}

MV_PORT=$((19530 + OFF))
METRICS_PORT=$((9091 + OFF))
ETCD_PORT=$((2379 + OFF))
ETCD_PEER_PORT=$((2380 + OFF))
PY=$VENV/bin/python
RUN=$STATE/run
LOGS=$STATE/logs
MV_DIR=$STATE/milvus
S3_DIR=$STATE/s3
T_START=$SECONDS

log() { echo "[env-up $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$RUN" "$LOGS"
exec 9>"$RUN/up.lock"
flock -w 600 9 || die "another env-up.sh holds $RUN/up.lock"

# Settings that need a restart when they change.
SIG="s3=$S3_PORT ak=$AK bucket=$BUCKET data=$DATA_BUCKET root=$ROOT_PATH off=$OFF buf=$INSERT_BUF"
SIG="$SIG gc=$GC_ENABLE/$GC_INTERVAL/$GC_MISSING/$GC_DROP bin=$MV_BIN_BASE"

if [ "${MB_FRESH:-0}" = 1 ]; then
  if alive "$RUN/milvus.pid" || alive "$RUN/s3.pid"; then
    log "MB_FRESH=1: stopping the running servers first"
    MB_STATE=$STATE "$HERE/env-down.sh"
  fi
  log "MB_FRESH=1: wiping $MV_DIR/{data,configs,logs} and $S3_DIR"
  rm -rf "$MV_DIR/data" "$MV_DIR/configs" "$MV_DIR/logs" "$MV_DIR/run" "$S3_DIR"
elif { alive "$RUN/milvus.pid" || alive "$RUN/s3.pid"; } && [ "$(cat "$RUN/settings" 2>/dev/null)" != "$SIG" ]; then
  log "settings changed (was: $(cat "$RUN/settings" 2>/dev/null || echo '?')); restarting (data kept)"
  MB_STATE=$STATE "$HERE/env-down.sh"
fi
mkdir -p "$S3_DIR"

# ------------------------------------------------------------------------- venv
if ! "$PY" -c 'import milvus, pymilvus, boto3, pyarrow' 2>/dev/null; then
  log "creating venv $VENV (milvus==2.3.5 pymilvus==2.3.7 boto3 pyarrow; ~1 min)"
  command -v python3 >/dev/null || die "python3 not found"
  python3 -m venv "$VENV"
  # Pins: pymilvus 2.3.7 imports pkg_resources (gone from setuptools>=70); environs (a pymilvus dep)
  # breaks with marshmallow 4; protobuf<5 matches the generated code of pymilvus 2.3.
  "$VENV/bin/pip" install -q --disable-pip-version-check "milvus==2.3.5" "pymilvus==2.3.7" \
    "setuptools<70" "protobuf<5" "marshmallow<4" boto3 pyarrow >&2
  "$PY" -c 'import milvus, pymilvus, boto3, pyarrow' || die "venv $VENV is not usable"
fi

# ------------------------------------------------------------------------ s3s-fs
if [ ! -x "$S3S_BIN" ]; then
  [ -z "${S3S_FS_BIN:-}" ] || die "S3S_FS_BIN=$S3S_FS_BIN is not an executable"
  command -v cargo >/dev/null || die "s3s-fs missing and no cargo to build it"
  log "building s3s-fs 0.14.1 into $MB_HOME/s3s-fs (3-7 min; later versions need rustc >= 1.96)"
  cargo install s3s-fs@0.14.1 --locked --features binary --root "$MB_HOME/s3s-fs" >&2
  S3S_BIN=$MB_HOME/s3s-fs/bin/s3s-fs
fi

if alive "$RUN/s3.pid"; then
  log "S3 already running (pid $(cat "$RUN/s3.pid"))"
else
  port_busy "$S3_PORT" && die "port 127.0.0.1:$S3_PORT is taken by a process we did not start (set MB_S3_PORT)"
  # s3s-fs keeps objects as plain files ROOT/<bucket>/<key>; a bucket is a directory.
  nohup "$S3S_BIN" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AK" --secret-key "$SK" "$S3_DIR" \
    >>"$LOGS/s3.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/s3.pid"
  for _ in $(seq 1 150); do
    curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break
    alive "$RUN/s3.pid" || die "s3s-fs exited; see $LOGS/s3.log"
    sleep 0.2
  done
  curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" || die "s3s-fs not answering; see $LOGS/s3.log"
  log "S3 (s3s-fs) up on 127.0.0.1:$S3_PORT, pid $(cat "$RUN/s3.pid")"
fi

"$PY" - "$S3_PORT" "$AK" "$SK" "$BUCKET" "$DATA_BUCKET" <<'PY'
import sys, boto3
from botocore.config import Config
port, ak, sk, *buckets = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=ak,
                  aws_secret_access_key=sk, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for b in buckets:
    if b not in have:
        s3.create_bucket(Bucket=b)
        print(f"[env-up] created bucket {b}", file=sys.stderr)
PY

# ------------------------------------------------------------------------ Milvus
milvus_healthy() { curl -sf "http://127.0.0.1:$METRICS_PORT/healthz" 2>/dev/null | grep -q OK; }

if alive "$RUN/milvus.pid" && milvus_healthy; then
  log "Milvus already running and healthy (pid $(cat "$RUN/milvus.pid"))"
else
  if ! alive "$RUN/milvus.pid"; then
    for p in "$MV_PORT" "$METRICS_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT"; do
      port_busy "$p" && die "port $p is taken by a process we did not start (set MB_PORT_OFFSET)"
    done
    mkdir -p "$MV_DIR" "$MV_BIN_BASE"
    # Render configs/milvus.yaml with the wheel's own template engine and unpack bin/ once.
    MV_DIR=$MV_DIR MV_BIN_BASE=$MV_BIN_BASE OFF=$OFF S3_PORT=$S3_PORT AK=$AK SK=$SK BUCKET=$BUCKET \
    ROOT_PATH=$ROOT_PATH INSERT_BUF=$INSERT_BUF ETCD_PORT=$ETCD_PORT ETCD_PEER_PORT=$ETCD_PEER_PORT \
    GC_ENABLE=$GC_ENABLE GC_INTERVAL=$GC_INTERVAL GC_MISSING=$GC_MISSING GC_DROP=$GC_DROP "$PY" - <<'PY'
import os, socket
import milvus

E = os.environ
off = int(E["OFF"])
# Every port lies below Linux's ephemeral range (32768-60999): the wheel's default rootCoord port,
# 53100, is in it, and a client socket of an earlier suite holding it failed a CI run
# ("set root_coord_port=53100, but bind failed").
base_ports = dict(etcd_port=2379, root_coord_port=22100, proxy_port=19530, proxy_internal_port=19529,
                  query_coord_port=19531, query_node_port=21123, index_coord_port=22930,
                  index_node_port=21121, data_coord_port=13333, data_node_port=21124)
cfg = milvus.MilvusServerConfig(data_dir=E["MV_DIR"], **{k: v + off for k, v in base_ports.items()})

def try_bind(port):
    # The wheel's port check binds without SO_REUSEADDR and so fails on a TIME_WAIT socket
    # left by the previous run ("set etcd_port=2379, but bind failed").
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port)); s.listen(); return s
    except OSError:
        s.close(); return None
cfg.try_bind_port = try_bind

settings = {
    "common.storageType": "minio",          # "minio" = any S3 API; the template says "local"
    "minio.address": "127.0.0.1",
    "minio.port": int(E["S3_PORT"]),
    "minio.accessKeyID": E["AK"],
    "minio.secretAccessKey": E["SK"],
    "minio.bucketName": E["BUCKET"],
    "minio.rootPath": E["ROOT_PATH"],
    "minio.useSSL": "false",
    "minio.useVirtualHost": "false",
    "dataNode.segment.insertBufSize": int(E["INSERT_BUF"]),
    "dataCoord.enableGarbageCollection": E["GC_ENABLE"],
    "dataCoord.gc.interval": int(E["GC_INTERVAL"]),
    "dataCoord.gc.missingTolerance": int(E["GC_MISSING"]),
    "dataCoord.gc.dropTolerance": int(E["GC_DROP"]),
    # The dataset records each segment's rows; a background compaction merging small segments
    # would change them under the tests.
    "dataCoord.compaction.enableAutoCompaction": "false",
}
for comp in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"):
    settings[f"{comp}.ip"] = "127.0.0.1"     # advertised address (listening stays on all interfaces)
for k, v in settings.items():
    cfg.set(k, v)
cfg.resolve()        # checks the ports and writes <data_dir>/configs/milvus.yaml (+ glog.conf)
milvus._initialize_data_files(E["MV_BIN_BASE"])   # <base>/bin/*, LZMA, ~250 MB, skipped by md5 marker

conf_dir = os.path.join(cfg.base_data_dir, "configs")
y_path = os.path.join(conf_dir, "milvus.yaml")
y = open(y_path).read()
# The embedded etcd ignores etcd.endpoints for its own listeners (always :2379/:2380); an embed
# config file moves them. The template has no etcd.config key, so edit the rendered file.
embed = os.path.join(conf_dir, "embedEtcd.yaml")
cu, pu = f"http://127.0.0.1:{E['ETCD_PORT']}", f"http://127.0.0.1:{E['ETCD_PEER_PORT']}"
with open(embed, "w") as f:
    f.write(f"name: default\ndata-dir: {os.path.join(cfg.base_data_dir, 'data', 'etcd.data')}\n"
            f"listen-client-urls: {cu}\nadvertise-client-urls: {cu}\n"
            f"listen-peer-urls: {pu}\ninitial-advertise-peer-urls: {pu}\n"
            f"initial-cluster: default={pu}\n")
y = y.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {embed}\n", 1)
y = y.replace(f"endpoints: localhost:{E['ETCD_PORT']}", f"endpoints: 127.0.0.1:{E['ETCD_PORT']}", 1)
open(y_path, "w").write(y)
# Check that every setting landed (cfg.set silently ignores keys the template lacks).
seen, stack = {}, []
for line in y.splitlines():
    body = line.split("#", 1)[0].rstrip()
    if not body.strip() or ":" not in body:
        continue
    level = (len(body) - len(body.lstrip())) // 2
    key, _, val = body.strip().partition(":")
    stack = stack[:level] + [key]
    seen[".".join(stack)] = val.strip()
bad = {k: seen.get(k) for k, v in settings.items() if seen.get(k) != str(v)}
if bad:
    raise SystemExit(f"config keys not applied as expected: {bad}")
PY
    (
      cd "$MV_DIR"
      DEPLOY_MODE=STANDALONE METRICS_PORT=$METRICS_PORT MILVUS_RUN_DIR=$MV_DIR/run \
      MILVUSCONF=$MV_DIR/configs LD_LIBRARY_PATH=$MV_BIN_BASE/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        nohup "$MV_BIN_BASE/bin/milvus" run standalone \
        >>"$LOGS/milvus.stdout.log" 2>>"$LOGS/milvus.stderr.log" </dev/null 9>&- &
      echo $! >"$RUN/milvus.pid"
    )
    log "Milvus started (pid $(cat "$RUN/milvus.pid")); waiting for /healthz on :$METRICS_PORT"
  else
    log "Milvus pid $(cat "$RUN/milvus.pid") alive but not healthy yet; waiting"
  fi
  t0=$SECONDS
  until milvus_healthy; do
    if ! alive "$RUN/milvus.pid"; then
      tail -n 20 "$LOGS/milvus.stdout.log" "$LOGS/milvus.stderr.log" >&2 || true
      die "Milvus exited; see $LOGS/ and $MV_DIR/logs/"
    fi
    [ $((SECONDS - t0)) -lt "$HEALTH_TIMEOUT" ] || die "Milvus not healthy after ${HEALTH_TIMEOUT}s"
    sleep 0.2
  done
  log "Milvus healthy on 127.0.0.1:$MV_PORT after $((SECONDS - t0))s"
fi
echo "$SIG" >"$RUN/settings"

cat >"$STATE/env.tmp" <<EOF
export MILVUS_URI=http://127.0.0.1:$MV_PORT
export S3_ENDPOINT=127.0.0.1:$S3_PORT
export S3_BUCKET=$BUCKET
export DATA_BUCKET=$DATA_BUCKET
export MILVUS_ROOT_PATH=$ROOT_PATH
export AWS_ACCESS_KEY_ID=$AK
export AWS_SECRET_ACCESS_KEY=$SK
export AWS_REGION=us-east-1
export MB_PY=$PY
export MB_STATE=$STATE
export MILVUS_METRICS_URL=http://127.0.0.1:$METRICS_PORT
EOF
mv "$STATE/env.tmp" "$STATE/env"
log "ready in $((SECONDS - T_START))s; source $STATE/env"
