"""Times milvus-backfill, DuckDB and PySpark on the same left join, in one run.

Each contender reads the segment's keys (ours: the V1 PK binlogs; the peers: a
Parquet of (row_offset, pk) derived from the same keys), left-joins the new-field
file on pk, orders by row_offset and writes the new columns as ZSTD Parquet.
Wall time is the best of BENCH_REPEAT runs (Spark: one run); peak RSS comes from
/usr/bin/time. The outputs are compared, so a fast wrong answer cannot win.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq

DATA, OURS = sys.argv[1], os.path.abspath(sys.argv[2])
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
KEYS = os.path.join(DATA, "segment_keys.parquet")
SRC = os.path.join(DATA, "source", "new_fields.parquet")
PY = sys.executable

DUCK = r"""
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f'''COPY (SELECT s.score, s.label FROM read_parquet('{sys.argv[1]}') k
  LEFT JOIN read_parquet('{sys.argv[2]}') s ON k.pk = s.pk ORDER BY k.row_offset)
  TO '{sys.argv[3]}' (FORMAT parquet, COMPRESSION zstd)''')
"""

SPARK = r"""
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").appName("bench")
         .config("spark.ui.enabled", "false").config("spark.driver.memory", "2g")
         .config("spark.sql.shuffle.partitions", "8").getOrCreate())
k = spark.read.parquet(sys.argv[1]); s = spark.read.parquet(sys.argv[2])
(k.join(s, "pk", "left").orderBy("row_offset").select("score", "label")
  .coalesce(1).write.option("compression", "zstd").mode("overwrite").parquet(sys.argv[3]))
spark.stop()
"""


def timed(cmd, env=None):
    """(wall seconds, peak RSS KiB) of one command."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rss = int(p.stderr.strip().splitlines()[-1])
    return wall, rss


def best(cmd, n, env=None, before=None):
    runs = []
    for _ in range(n):
        if before:
            before()
        runs.append(timed(cmd, env))
    return min(r[0] for r in runs), max(r[1] for r in runs)


def column(path, name):
    return pq.read_table(path, columns=[name]).column(name).to_pylist()


def main():
    tmp = tempfile.mkdtemp(prefix="mb-bench-")
    task = json.load(open(os.path.join(DATA, "task.json")))
    out_dir = "/" + task["segments"][0]["outputDir"]
    env = dict(os.environ, LOG_FORMAT="plain")
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)

    ours = best([OURS, "segment", "--task", os.path.join(DATA, "task.json")], REPEAT, env,
                before=lambda: shutil.rmtree(out_dir, ignore_errors=True))
    manifest = json.load(open(os.path.join(out_dir, "manifest.json")))
    ours_label = []
    for f in manifest["files"]:
        ours_label += column("/" + f["path"], "label")

    duck_out = os.path.join(tmp, "duck.parquet")
    duck = best([PY, "-c", DUCK, KEYS, SRC, duck_out], REPEAT)
    assert column(duck_out, "label") == ours_label, "DuckDB and milvus-backfill disagree"

    spark = None
    if os.environ.get("BENCH_SPARK", "1") != "0":
        spark_out = os.path.join(tmp, "spark")
        spark = best([PY, "-c", SPARK, KEYS, SRC, spark_out], 1)
        part = [f for f in sorted(os.listdir(spark_out)) if f.endswith(".parquet")]
        assert column(os.path.join(spark_out, part[0]), "label") == ours_label, "Spark and milvus-backfill disagree"

    rows = manifest["rowCount"]
    matched = sum(1 for v in ours_label if v is not None)
    print(f"segment rows {rows}, source rows {pq.ParquetFile(SRC).metadata.num_rows}, matched {matched}")
    print(f"{'contender':<16}{'wall s':>10}{'peak RSS MiB':>15}{'ours / it':>12}")
    for name, r in [("milvus-backfill", ours), ("duckdb", duck)] + ([("pyspark", spark)] if spark else []):
        print(f"{name:<16}{r[0]:>10.2f}{r[1] / 1024:>15.0f}{ours[0] / r[0]:>12.3f}")
    print(f"targets: ours/duckdb <= 1.0 -> {ours[0] / duck[0]:.3f}; "
          + (f"ours/pyspark <= 0.1 -> {ours[0] / spark[0]:.3f}; " if spark else "")
          + f"peak RSS <= 256 MiB -> {ours[1] / 1024:.0f} MiB")
    shutil.rmtree(tmp, ignore_errors=True)


main()
