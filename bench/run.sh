#!/usr/bin/env bash
# Benchmark: `milvus-backfill segment` on one 1,000,000-row segment joined with a
# 10,000,000-row new-field file, against DuckDB and PySpark (local) doing the same
# left join + ORDER BY row_offset + write Parquet, on the same data in the same run.
# Knobs: MB_HOME, BENCH_ROWS [1000000], BENCH_SOURCE_ROWS [10000000], BENCH_REPEAT [3],
# BENCH_SPARK=0 to skip Spark.
set -euo pipefail
cd "$(dirname "$0")/.."
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
VENV=$MB_HOME/bench-venv
ROWS=${BENCH_ROWS:-1000000}
SRC=${BENCH_SOURCE_ROWS:-10000000}
DATA=$MB_HOME/bench-data-$ROWS-$SRC
if ! "$VENV/bin/python" -c 'import duckdb, pyspark, pyarrow' 2>/dev/null; then
  echo "[bench] installing duckdb, pyspark, pyarrow into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q duckdb pyspark pyarrow
fi
cargo build --release --locked --bin milvus-backfill --example bench_gen
if [ ! -f "$DATA/task.json" ]; then
  rm -rf "$DATA"
  target/release/examples/bench_gen "$DATA" "$ROWS" "$SRC"
fi
exec "$VENV/bin/python" bench/bench.py "$DATA" target/release/milvus-backfill
