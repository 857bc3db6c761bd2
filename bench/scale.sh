#!/usr/bin/env bash
# Scale benchmark: `milvus-backfill segment --task` over S segments joined with an N-row
# new-field file, against DuckDB (one query: join, order by segment and row_offset, one file
# per segment) and PySpark local doing the same, on the same files in the same run. Prints
# wall, peak RSS and bytes read of each, and our ratios. See docs/benchmarks.md.
# Knobs: MB_HOME, BENCH_SEGMENTS [200], BENCH_ROWS (all segments) [5000000],
# BENCH_SOURCE_ROWS [10000000], BENCH_SPARK=0 to skip Spark, BENCH_MEMORY_MIB to override the
# task's memoryMiB (a small one sends the segments through the exchange).
set -euo pipefail
cd "$(dirname "$0")/.."
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
VENV=$MB_HOME/bench-venv
SEGMENTS=${BENCH_SEGMENTS:-200}
ROWS=${BENCH_ROWS:-5000000}
SRC=${BENCH_SOURCE_ROWS:-10000000}
DATA=$MB_HOME/bench-scale-$SEGMENTS-$ROWS-$SRC
if ! "$VENV/bin/python" -c 'import duckdb, pyspark, pyarrow, matplotlib' 2>/dev/null; then
  echo "[bench-scale] installing duckdb, pyspark, pyarrow into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q duckdb pyspark pyarrow matplotlib
fi
cargo build --release --locked --bin milvus-backfill --example bench_gen
if [ ! -f "$DATA/task.json" ]; then
  rm -rf "$DATA"
  target/release/examples/bench_gen "$DATA" "$ROWS" "$SRC" "$SEGMENTS"
fi
exec "$VENV/bin/python" bench/scale.py "$DATA" target/release/milvus-backfill
