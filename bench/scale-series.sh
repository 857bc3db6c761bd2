#!/usr/bin/env bash
# The scale benchmark at several segment counts (BENCH_SERIES, default "1 10 50 200 1000"), each
# row appended to $MB_HOME/bench-scale.csv, then the plot in docs/bench-scale.png.
set -euo pipefail
cd "$(dirname "$0")/.."
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
export BENCH_CSV=${BENCH_CSV:-$MB_HOME/bench-scale.csv}
for s in ${BENCH_SERIES:-1 10 50 200 1000}; do
  echo "== $s segments"
  BENCH_SEGMENTS=$s bench/scale.sh
done
"$MB_HOME/bench-venv/bin/python" bench/plot.py "$BENCH_CSV" docs/bench-scale.png
