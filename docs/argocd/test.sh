#!/usr/bin/env bash
# test.sh - unit tests of the Argo CD health check docs/argocd-health.lua against the sample
# Backfills in testdata/ (expected results: health_test.yaml, Argo CD's format), and a check
# that argocd-cm.yaml embeds the current script.
#
# Argo CD runs health checks with gopher-lua (Lua 5.1). No Lua interpreter is assumed on the
# machine: the script runs in Lua 5.1 and 5.4 through the PyPI package lupa (it bundles both),
# installed into a venv at $MB_HOME/lua-venv (default ~/.cache/milvus-backfill/lua-venv).
#
#   docs/argocd/test.sh              run the tests
#   docs/argocd/test.sh --write-cm   regenerate argocd-cm.yaml from argocd-health.lua first
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
VENV=$MB_HOME/lua-venv
if ! "$VENV/bin/python" -c 'import lupa.lua51, lupa.lua54, yaml' 2>/dev/null; then
	echo "test.sh: installing lupa and PyYAML into $VENV"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q 'lupa==2.8' 'PyYAML>=6,<7'
fi
"$VENV/bin/python" "$HERE/test_health.py" "$@"
echo "test.sh: kstatus (fluxcd/cli-utils) of every sample"
(cd "$HERE/kstatus" && go test -count=1 ./...)
