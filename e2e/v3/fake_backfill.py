#!/usr/bin/env python3
"""TEST-ONLY stand-in for `milvus-backfill run` on StorageV3 collections: used to test
commit_and_verify.py before the Rust CLI supports V3. run.sh never calls it.

    fake_backfill.py --storage storage.json --snapshot LOC --source SOURCE.parquet --result OUT.json [options]

It does what the Rust side is meant to do: read the snapshot metadata, read every segment's PKs through
the official reader AT THE SNAPSHOT'S MANIFEST VERSION, left-join them with the source on the PK, and
write per segment and per new field one Parquet file `{base}/_data/0_<uuid4>.parquet` (one column named
by the field ID, PARQUET:field_id, nullable, ZSTD, footer key-values `row_group_metadata` and
`storage_version=1.0.0`), then a result JSON with `ops` of type `replace`.

Options that bend the output to exercise the checker (each must be refused or handled):
  --path-style bare|full|bucket|data   file path in ops: bare name (default), bucket-relative key,
                                       key prefixed with the bucket name, or `_data/<name>` (wrong)
  --split-ranges                       describe each file as two entries [0,k) and [k,R) of the same file
  --two-files                          write each field as two files
  --no-properties                      omit files[].properties
  --short-file                         write one file with one row less than the segment (negative)
  --wrong-value                        flip one value in one file (negative: the oracle must notice)
  --snappy                             Snappy instead of ZSTD (negative: the official reader lacks it)
  --type add                           op type `add` instead of `replace`
  --source-version                     set sourceVersion = the snapshot's manifest version (Milvus
                                       refuses it where the manifest has moved since: negative)
  --v3-commit manifest                 what `spec.output.v3Commit: manifest` asks of the run: commit the
                                       new groups with the official transaction onto the latest manifest N
                                       and write `version: N+1, sourceVersion: N` without `ops`
  --claim-only                         with --v3-commit manifest: write the entries but commit nothing
                                       (negative: the manifest the result names does not exist)
"""
import argparse
import glob
import json
import os
import struct
import sys
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loon  # noqa: E402
import common  # noqa: E402
from make_collection import arrow_type, arrow_field, pyarrow_fs, key_prefix, written_arrow_type  # noqa: E402
from common import VECTOR_TYPES, vector_bytes  # noqa: E402

ROW_GROUP_ROWS = 512


def read_location(storage, loc):
    if loc.startswith("s3://"):
        with pyarrow_fs(storage).open_input_stream(loc[len("s3://"):]) as fh:
            return fh.read()
    with open(loc, "rb") as fh:
        return fh.read()


def parquet_bytes(table, compression):
    """Parquet with the V3 footer key-values; row groups of ROW_GROUP_ROWS rows."""
    # no ARROW:schema key (the official writer writes none); key-values added explicitly
    data = common.parquet_bytes(table, ROW_GROUP_ROWS, compression, {
        "row_group_metadata": common.row_group_metadata(table, ROW_GROUP_ROWS), "storage_version": "1.0.0"})
    assert data[-4:] == b"PAR1"
    footer_size = struct.unpack("<I", data[-8:-4])[0] + 8
    return data, footer_size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--path-style", choices=["bare", "full", "bucket", "data"], default="bare")
    ap.add_argument("--split-ranges", action="store_true")
    ap.add_argument("--two-files", action="store_true")
    ap.add_argument("--no-properties", action="store_true")
    ap.add_argument("--short-file", action="store_true")
    ap.add_argument("--wrong-value", action="store_true")
    ap.add_argument("--snappy", action="store_true")
    ap.add_argument("--type", default="replace")
    ap.add_argument("--source-version", action="store_true")
    ap.add_argument("--v3-commit", choices=["ops", "manifest"], default="ops")
    ap.add_argument("--claim-only", action="store_true")
    args = ap.parse_args()

    storage = json.load(open(args.storage))
    bucket = storage["bucket"]
    lib = loon.Library.get()
    props = lib.properties(loon.storage_fs(storage))
    fs, prefix = pyarrow_fs(storage), key_prefix(storage)
    snap = json.loads(read_location(storage, args.snapshot))
    schema = snap["collection"]["schema"]
    coll_id = snap["snapshot-info"]["collection_id"]
    pk = next(f for f in schema["fields"] if f.get("is_primary_key"))
    source = pq.read_table(args.source)
    # A source written for spec.columnMapping: renamed as its expectation (beside it) says.
    for p in glob.glob(os.path.join(os.path.dirname(args.source), "expected-*.json")):
        exp = json.load(open(p))
        if os.path.abspath(exp["source"]) == os.path.abspath(args.source):
            source = common.as_mapped(source, exp)
    src_cols = set(source.column_names) - {"pk"}
    key_index = {k: i for i, k in enumerate(source.column("pk").to_pylist())}

    segments, new_names, parts = {}, None, set()
    tampered = False
    for entry in snap["storagev2-manifest-list"]:
        seg = entry["segmentID"]
        man = json.loads(entry["manifest"])
        base = man["base_path"]
        if base.startswith(bucket + "/"):
            base = base[len(bucket) + 1:]
        part = int(base.rstrip("/").split("/")[-2])
        parts.add(part)
        ver, manifest = loon.manifest_at(lib, props, base, man["ver"])
        present = {c for g in manifest["column_groups"] for c in g["columns"]}
        new_fields = [f for f in schema["fields"]
                      if f.get("fieldID", 0) >= 100 and f["name"] in src_cols and str(f["fieldID"]) not in present]
        if new_names is None:
            new_names = [f["name"] for f in new_fields]
        pk_schema = pa.schema([arrow_field(pk["fieldID"], arrow_type(pk), False)])
        _v, pks = loon.read_table(lib, props, base, pk_schema, version=man["ver"])
        pks = pks.column(0).to_pylist()
        rows = len(pks)
        idx = [key_index.get(k) for k in pks]
        ops = []
        for f in new_fields:
            col = source.column(f["name"]).to_pylist()
            if f["data_type"] in VECTOR_TYPES:
                col = [None if v is None else vector_bytes({"dataType": f["data_type"]}, v) for v in col]
            vals = [None if i is None else col[i] for i in idx]
            if args.wrong_value and not tampered:
                j = next(j for j, v in enumerate(vals) if v is not None)
                if isinstance(vals[j], float):  # not v+1: inf+1 == inf, and NaN stays NaN
                    vals[j] = 0.25 if vals[j] != 0.25 else 0.5
                else:
                    vals[j] = vals[j] + "x"
                tampered = True
            wt = written_arrow_type({**f, "nullable": True})
            t = pa.table([pa.array(vals, wt)], schema=pa.schema([arrow_field(f["fieldID"], wt, True)]))
            pieces = [(0, rows)]
            if args.two_files and rows > 1:
                pieces = [(0, rows // 3), (rows // 3, rows)]
            files = []
            for (a, b) in pieces:
                part_t = t.slice(a, b - a)
                if args.short_file and not files and f is new_fields[0]:
                    part_t = part_t.slice(0, part_t.num_rows - 1)
                data, footer = parquet_bytes(part_t, "snappy" if args.snappy else "zstd")
                name = f"0_{uuid.uuid4()}.parquet"
                key = f"{base}/_data/{name}"
                with fs.open_output_stream(prefix + key) as out:
                    out.write(data)
                path = {"bare": name, "full": key, "bucket": f"{bucket}/{key}", "data": f"_data/{name}"}[args.path_style]
                n = b - a
                ranges = [(0, n)]
                if args.split_ranges and n > 1:
                    ranges = [(0, n // 2), (n // 2, n)]
                for (s, e) in ranges:
                    fe = {"path": path, "startIndex": s, "endIndex": e}
                    if not args.no_properties:
                        fe["properties"] = {"file_size": str(len(data)), "footer_size": str(footer)}
                    files.append(fe)
            ops.append({"type": args.type, "columns": [str(f["fieldID"])], "format": "parquet",
                        "files": files, "rowCount": rows})
        segments[str(seg)] = {"segmentId": seg, "partitionId": part, "rowCount": rows, "outputPath": base,
                              "ops": ops}
        if args.source_version:
            segments[str(seg)]["sourceVersion"] = ver
        if args.v3_commit == "manifest":
            entry = segments[str(seg)]
            with loon.Transaction(lib, props, base, -1) as tx:
                latest = tx.read_version
                for op in entry.pop("ops"):
                    tx.add_column_group(op["columns"], [
                        {"path": os.path.basename(f["path"]), "start_index": f["startIndex"],
                         "end_index": f["endIndex"]} for f in op["files"]], "parquet")
                new_ver = latest + 1 if args.claim_only else tx.commit()
            entry.update(version=new_ver, sourceVersion=latest)
    result = {"success": True, "collectionId": coll_id, "partitionId": parts.pop() if len(parts) == 1 else 0,
              "schemaVersion": schema.get("version", 0), "newFieldNames": new_names or [], "segments": segments}
    with open(args.result, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"fake_backfill: {len(segments)} segments, fields {new_names} -> {args.result}", file=sys.stderr)


if __name__ == "__main__":
    main()
