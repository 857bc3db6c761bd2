#!/usr/bin/env python3
"""TEST-ONLY: probes what the official milvus-storage library (wheel 0.1.0.dev1) accepts when a column
group is committed the way DataCoord commits backfill `ops`. Prints one JSON line per probe and a
summary; README.md records the outcome. run.sh does not call it (selftest.sh does).

    probe_library.py SCRATCH_DIR
"""
import json
import os
import sys

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loon  # noqa: E402
from common import parquet_bytes, row_group_metadata  # noqa: E402

ROWS = 1000


def fld(fid, t, nullable=False):
    return pa.field(str(fid), t, nullable=nullable, metadata={b"PARQUET:field_id": str(fid).encode()})


def main():
    scratch = os.path.abspath(sys.argv[1])
    bucket_dir = os.path.join(scratch, "bkt")
    os.makedirs(bucket_dir, exist_ok=True)
    lib = loon.Library.get()
    fsp = loon.local_fs(bucket_dir)
    props = lib.properties(fsp)
    results = []
    seq = [0]

    def segment():
        seq[0] += 1
        base = f"files/insert_log/1/2/{seq[0]}"
        t = pa.table([pa.array(range(ROWS), pa.int64()), pa.array(range(ROWS), pa.int64()),
                      pa.array([i * 7 for i in range(ROWS)], pa.int64())],
                     schema=pa.schema([fld(0, pa.int64()), fld(1, pa.int64()), fld(100, pa.int64())]))
        loon.write_table(lib, fsp, base, t.slice(0, 600))
        loon.write_table(lib, fsp, base, t.slice(600))
        return base

    def col_file(base, rows, name="0_probe.parquet", compression="zstd", offset=0, kv=True):
        t = pa.table([pa.array([float(i + offset) for i in range(rows)], pa.float64())],
                     schema=pa.schema([fld(103, pa.float64(), True)]))
        kvs = {"row_group_metadata": row_group_metadata(t, 256), "storage_version": "1.0.0"} if kv else None
        with open(os.path.join(bucket_dir, base, "_data", name), "wb") as fh:
            fh.write(parquet_bytes(t, 256, compression, kvs))
        return name

    def stored_paths(base, version):
        raw = open(os.path.join(bucket_dir, base, "_metadata", f"manifest-{version}.avro"), "rb").read()
        return raw

    def attempt(name, base, files, expect_values=None):
        rec = {"probe": name}
        try:
            with loon.Transaction(lib, props, base) as tx:
                tx.add_column_group(["103"], files)
                v = tx.commit()
            rec["commit"] = f"accepted (v{v})"
            raw = stored_paths(base, v)
            stored = set()
            for f in files:
                if "/" in f["path"] and f["path"].encode() in raw:
                    stored.add(f"as given ({f['path']})")
                else:
                    stored.add("bare name" if os.path.basename(f["path"]).encode() in raw else "?")
            rec["storedInManifest"] = sorted(stored)
            _v, m = loon.manifest_at(lib, props, base, v)
            g = [g for g in m["column_groups"] if "103" in g["columns"]][0]
            rec["manifestPaths"] = [f["path"] for f in g["files"]]
            if any("metadata" in f for f in g["files"]):
                rec["metadataRoundTrip"] = [f.get("metadata", b"").decode(errors="replace") for f in g["files"]]
            try:
                _v, t = loon.read_table(lib, props, base, pa.schema([fld(100, pa.int64()), fld(103, pa.float64(), True)]), v)
                got = t.column("103").to_pylist()
                rec["read"] = f"ok ({t.num_rows} rows)"
                if expect_values is not None:
                    rec["valuesAsExpected"] = got == expect_values
            except loon.LoonError as e:
                rec["read"] = f"refused: {e.library_message[:200]}"
        except loon.LoonError as e:
            rec["commit"] = f"refused: {e.library_message[:200]}"
        results.append(rec)
        print(json.dumps(rec))

    full = [float(i) for i in range(ROWS)]

    def one_file(name, path=lambda base, n: n, **extra):
        """A new segment and one full-length column file, committed as `path(base, file name)`."""
        b = segment()
        n = col_file(b, ROWS)
        attempt(name, b, [{"path": path(b, n), "start_index": 0, "end_index": ROWS, **extra}], full)

    one_file("bare file name")
    one_file("full bucket-relative key {base}/_data/name", lambda b, n: f"{b}/_data/{n}")
    one_file("_data/name (wrong)", lambda b, n: f"_data/{n}")
    one_file("bucket-prefixed key bkt/{base}/_data/name", lambda b, n: f"bkt/{b}/_data/{n}")
    one_file("file metadata bytes (the only per-file extra this FFI has; no properties map)",
             metadata=b"file_size=123;footer_size=45")
    b = segment()
    n = col_file(b, ROWS)
    attempt("one file as two ranges [0,400) + [400,1000)", b,
            [{"path": n, "start_index": 0, "end_index": 400}, {"path": n, "start_index": 400, "end_index": ROWS}], full)
    b = segment()
    n = col_file(b, 1500, offset=-250)  # values -250..1249: rows 250..1249 are 0..999
    attempt("partial range [250,1250) of a 1500-row file", b, [{"path": n, "start_index": 250, "end_index": 1250}], full)
    b = segment()
    n1, n2 = col_file(b, 700, "0_a.parquet"), col_file(b, 400, "0_b.parquet", offset=700)
    attempt("two files, the second used for [0,300) only", b,
            [{"path": n1, "start_index": 0, "end_index": 700}, {"path": n2, "start_index": 0, "end_index": 300}], full)
    b = segment()
    attempt("file with 999 rows for a 1000-row segment (negative)", b,
            [{"path": col_file(b, ROWS - 1), "start_index": 0, "end_index": ROWS - 1}])
    b = segment()
    attempt("endIndex 1000 on a 999-row file (negative)", b,
            [{"path": col_file(b, ROWS - 1), "start_index": 0, "end_index": ROWS}])
    b = segment()
    attempt("Snappy-compressed file (negative)", b,
            [{"path": col_file(b, ROWS, compression="snappy"), "start_index": 0, "end_index": ROWS}], full)
    b = segment()
    attempt("file without row_group_metadata/storage_version key-values", b,
            [{"path": col_file(b, ROWS, kv=False), "start_index": 0, "end_index": ROWS}], full)
    # adding an existing column (what a retried `add` does)
    b = segment()
    n = col_file(b, ROWS)
    attempt("first add", b, [{"path": n, "start_index": 0, "end_index": ROWS}], full)
    attempt("add of an existing column (a retried add, negative)", b, [{"path": n, "start_index": 0, "end_index": ROWS}])
    # concurrent publication between begin and commit
    b = segment()
    n = col_file(b, ROWS)
    rec = {"probe": "commit after another version was published since begin"}
    with loon.Transaction(lib, props, b) as tx:
        tx.add_column_group(["103"], [{"path": n, "start_index": 0, "end_index": ROWS}])
        extra = pa.table([pa.array(range(ROWS), pa.int64())], schema=pa.schema([fld(999, pa.int64())]))
        loon.write_table(lib, fsp, b, extra, new_groups=True)
        try:
            rec["commit"] = f"accepted (v{tx.commit()})"
        except loon.LoonError as e:
            rec["commit"] = f"refused: {e.library_message[:200]}"
    results.append(rec)
    print(json.dumps(rec))
    rec = {"probe": "begin at a version that does not exist"}
    try:
        loon.manifest_at(lib, props, b, 99)
        rec["begin"] = "accepted"
    except loon.LoonError as e:
        rec["begin"] = f"refused: {e.library_message[:160]}"
    results.append(rec)
    print(json.dumps(rec))
    print(json.dumps({"dropColumnFunction": lib.has_drop_column, "loonFunctions": len(lib.symbols)}))


if __name__ == "__main__":
    main()
