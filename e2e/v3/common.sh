# Sourced by run.sh and selftest.sh: the venv with the official milvus-storage library, and moto_server.
# Sets VENV and PY. Needs log() from the caller.
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
VENV=$MB_HOME/v3-venv
V3_PINS="milvus-storage==0.1.0.dev1 pyarrow==26.0.1 moto[server]==5.2.5 fastavro==1.13.1"
PY="$VENV/bin/python"

ensure_v3_venv() {
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$V3_PINS" ]; then
    log "creating $VENV ($V3_PINS)"
    "${PYTHON:-python3}" -m venv "$VENV" || return 1
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check $V3_PINS || return 1
    echo "$V3_PINS" > "$VENV/.pins"
  fi
  "$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import loon; loon.Library.get()' "$HERE"
}

# Starts moto_server on 127.0.0.1 at a free port: sets MOTO_PID and MOTO_PORT, exports dummy AWS
# credentials (moto accepts any). Log in $1. The caller's EXIT trap must call stop_moto.
MOTO_PID=""
start_moto() {
  local logf=$1
  MOTO_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
  export AWS_REGION=${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > "$logf" 2>&1 &
  MOTO_PID=$!
  log "moto_server pid $MOTO_PID on 127.0.0.1:$MOTO_PORT"
  local _
  for _ in $(seq 1 60); do
    if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "http://127.0.0.1:$MOTO_PORT/" 2>/dev/null; then return 0; fi
    kill -0 "$MOTO_PID" 2>/dev/null || { log "moto_server exited: $(tail -n 5 "$logf")"; return 1; }
    sleep 0.5
  done
  log "moto_server did not answer on 127.0.0.1:$MOTO_PORT"
  return 1
}

# Stops only the moto_server this script started (by its PID).
stop_moto() {
  if [ -n "$MOTO_PID" ]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    MOTO_PID=""
  fi
}
