"""Times milvus-backfill, DuckDB and PySpark on the whole job over S segments, in one run.

Each contender reads the segments' keys (ours: the V1 PK binlogs; the peers: a Parquet of
(segment_id, row_offset, pk) derived from the same keys), left-joins the new-field file on pk,
orders by segment and row_offset and writes one ZSTD Parquet output per segment. For each
contender this prints wall time, peak RSS (wait4's ru_maxrss) and bytes read (`rchar` of
/proc/<pid>/io, read at exit while the process is a zombie), and our ratios. Outputs of a few
segments are compared row by row, so a fast wrong answer cannot win.
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
KEYS = os.path.join(DATA, "segment_keys.parquet")
SRC = os.path.join(DATA, "source", "new_fields.parquet")
PY = sys.executable

DUCK = r"""
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f'''COPY (SELECT k.segment_id, k.row_offset, s.score, s.label FROM read_parquet('{sys.argv[1]}') k
  LEFT JOIN read_parquet('{sys.argv[2]}') s ON k.pk = s.pk ORDER BY k.segment_id, k.row_offset)
  TO '{sys.argv[3]}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (segment_id))''')
"""

SPARK = r"""
import sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").appName("bench-scale")
         .config("spark.ui.enabled", "false").config("spark.driver.memory", "2g")
         .config("spark.sql.shuffle.partitions", "8").getOrCreate())
k = spark.read.parquet(sys.argv[1]); s = spark.read.parquet(sys.argv[2])
(k.join(s, "pk", "left").repartition("segment_id").sortWithinPartitions("segment_id", "row_offset")
  .select("segment_id", "row_offset", "score", "label")
  .write.option("compression", "zstd").partitionBy("segment_id").mode("overwrite").parquet(sys.argv[3]))
spark.stop()
"""


def measure(cmd, env=None):
    """(wall s, peak RSS KiB, rchar bytes) of one command run to completion."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        rchar = 0
        with open(f"/proc/{p.pid}/io") as io:
            for line in io:
                if line.startswith("rchar:"):
                    rchar = int(line.split()[1])
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            sys.exit(f"{cmd[:3]} failed ({p.returncode}):\n{err.read()[-3000:].decode(errors='replace')}")
        return wall, usage.ru_maxrss, rchar


def labels(path):
    return pq.read_table(path, columns=["label"]).column("label").to_pylist()


def ours_labels(out_dir):
    manifest = json.load(open(os.path.join(out_dir, "manifest.json")))
    got = []
    for f in manifest["files"]:
        got += labels("/" + f["path"])
    return got


def partition_labels(root, seg):
    """A peer's labels of one segment in row_offset order: a partitioned write keeps the rows of
    a partition but not always their order (DuckDB splits a large partition over threads)."""
    d = os.path.join(root, f"segment_id={seg}")
    got = []
    for f in sorted(os.listdir(d)):
        if f.endswith(".parquet"):
            t = pq.read_table(os.path.join(d, f), columns=["row_offset", "label"])
            got += zip(t.column("row_offset").to_pylist(), t.column("label").to_pylist())
    return [label for _, label in sorted(got, key=lambda r: r[0])]


def record(segments, rows, runs):
    """Appends this run's figures to BENCH_CSV (for bench/plot.py), if set."""
    path = os.environ.get("BENCH_CSV")
    if not path:
        return
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("time,segments,segment_rows,contender,wall_s,peak_rss_kib,rchar\n")
        for name, (wall, rss, rchar) in runs:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')},{segments},{rows},{name},{wall:.3f},{rss},{rchar}\n")


def main():
    tmp = tempfile.mkdtemp(prefix="mb-bench-scale-")
    task = json.load(open(os.path.join(DATA, "task.json")))
    segs = task["segments"]
    out_root = "/" + os.path.dirname(os.path.dirname(os.path.dirname(segs[0]["outputDir"])))
    env = dict(os.environ, LOG_FORMAT="plain")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    shutil.rmtree(out_root, ignore_errors=True)
    task_file = os.path.join(DATA, "task.json")
    if os.environ.get("BENCH_MEMORY_MIB"):
        # A smaller pass budget: the segments no longer fit one pass and go through the exchange.
        task["memoryMiB"] = int(os.environ["BENCH_MEMORY_MIB"])
        task_file = os.path.join(tmp, "task.json")
        json.dump(task, open(task_file, "w"))
    ours = measure([OURS, "segment", "--task", task_file], env)
    checked = [segs[0], segs[len(segs) // 2], segs[-1]]
    duck_out = os.path.join(tmp, "duck")
    duck = measure([PY, "-c", DUCK, KEYS, SRC, duck_out])
    for s in checked:
        assert partition_labels(duck_out, s["segmentId"]) == ours_labels("/" + s["outputDir"]), \
            f"DuckDB and milvus-backfill disagree on segment {s['segmentId']}"
    spark = None
    if os.environ.get("BENCH_SPARK", "1") != "0":
        spark_out = os.path.join(tmp, "spark")
        spark = measure([PY, "-c", SPARK, KEYS, SRC, spark_out])
        for s in checked:
            assert partition_labels(spark_out, s["segmentId"]) == ours_labels("/" + s["outputDir"]), \
                f"Spark and milvus-backfill disagree on segment {s['segmentId']}"
    inputs = os.path.getsize(SRC) + sum(b["size"] for s in segs for b in s["pkBinlogs"])
    rows = sum(s["numRows"] for s in segs)
    print(f"segments {len(segs)}, segment rows {rows}, source rows {pq.ParquetFile(SRC).metadata.num_rows}, "
          f"source + PK binlogs {inputs / 1e6:.1f} MB")
    print(f"{'contender':<16}{'wall s':>9}{'peak RSS MiB':>14}{'read MB':>10}{'read / input':>14}{'ours / it':>11}")
    for name, r in [("milvus-backfill", ours), ("duckdb", duck)] + ([("pyspark (driver)", spark)] if spark else []):
        print(f"{name:<16}{r[0]:>9.2f}{r[1] / 1024:>14.0f}{r[2] / 1e6:>10.1f}{r[2] / inputs:>14.2f}{ours[0] / r[0]:>11.3f}")
    ours_name = f"milvus-backfill (memoryMiB {task['memoryMiB']})"
    record(len(segs), rows, [(ours_name if os.environ.get("BENCH_MEMORY_MIB") else "milvus-backfill", ours), ("duckdb", duck)] + ([("pyspark", spark)] if spark else []))
    print(f"targets: wall ours/duckdb <= 1.0 -> {ours[0] / duck[0]:.3f}; "
          f"bytes read <= 1.3x input -> {ours[2] / inputs:.2f}x; peak RSS <= 512 MiB -> {ours[1] / 1024:.0f} MiB")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_root, ignore_errors=True)


main()
