# Sourced by run.sh and selftest.sh: the venv with the official milvus-storage library.
# Sets VENV and PY. Needs log() from the caller.
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
VENV=$MB_HOME/v3-venv
V3_PINS="milvus-storage==0.1.0.dev1 pyarrow==26.0.1 moto[server]==5.2.5"
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
