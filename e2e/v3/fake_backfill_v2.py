#!/usr/bin/env python3
"""TEST-ONLY stand-in for `milvus-backfill run` on a StorageV2 snapshot, used by selftest.sh to test
check_v2.py without the Rust CLI. run.sh never calls it.

    fake_backfill_v2.py --storage storage.json --snapshot LOC --source SRC.parquet --result OUT.json [options]

Reads the snapshot metadata and its `manifest-list` (fastavro, format 4), takes the column group whose
child_fields hold the PK, reads its files in ascending log ID, left-joins the PKs with the source and
writes per segment and new field the packed file(s) `{root}/insert_log/{c}/{p}/{s}/{fid}/{logID}` and a
result with V2 entries.

Options that bend the output (each must be refused or caught by check_v2.py):
  --files N          N files per field, rows split as Milvus spreads row_count (default 1)
  --uneven           with --files 2: split 1/3 + 2/3 (Milvus would record other EntriesNum)
  --descending       with --files 2: list the files in descending log ID
  --name-by-id       name the column "103" (the V3 convention) instead of the field name
  --no-field-id      no PARQUET:field_id on the column
  --no-group-list    no group_field_id_list footer key
  --store-schema     also write the ARROW:schema footer key (the packed writer writes none)
  --low-log-id       log IDs below 2^62 (may collide with Milvus' own)
  --string-order     read the PK group's files sorted as strings (rows misaligned in segment 4004)
  --wrong-value      flip one value
  --stray            also write an object under {fid}/ that the result does not list
  --clean            first delete what an earlier run wrote under {seg}/{fid}/ (so one layout serves many runs)
"""
import argparse
import io
import json
import os
import sys

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parquet_bytes, row_group_metadata  # noqa: E402
from make_collection import key_prefix, pyarrow_fs  # noqa: E402
from make_v2_collection import PARSED_SCHEMA  # noqa: E402
from fake_backfill import read_location  # noqa: E402


def by_field_id(table, fid):
    return next(i for i, f in enumerate(table.schema) if (f.metadata or {}).get(b"PARQUET:field_id") == str(fid).encode())


def put(fs, storage, path, data):
    if storage["kind"] == "local":
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def packed(table, fid, args):
    rg = 300
    kv = {} if args.no_group_list else {"group_field_id_list": str(fid)}
    kv.update({"row_group_metadata": row_group_metadata(table, rg), "storage_version": "1.0.0"})
    return parquet_bytes(table, rg, "zstd", kv, store_schema=args.store_schema)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ("--storage", "--snapshot", "--source", "--result"):
        ap.add_argument(a, required=True)
    ap.add_argument("--files", type=int, default=1)
    for a in ("--uneven", "--descending", "--name-by-id", "--no-field-id", "--no-group-list", "--store-schema",
              "--low-log-id", "--string-order", "--wrong-value", "--stray", "--clean"):
        ap.add_argument(a, action="store_true")
    args = ap.parse_args()
    storage = json.load(open(args.storage))
    fs, prefix = pyarrow_fs(storage), key_prefix(storage)
    snap = json.loads(read_location(storage, args.snapshot))
    root = "files"
    schema = snap["collection"]["schema"]
    coll = snap["snapshot-info"]["collection_id"]
    pk = next(f for f in schema["fields"] if f.get("is_primary_key"))
    source = pq.read_table(args.source)
    new_fields = [f for f in schema["fields"] if f["name"] in set(source.column_names) - {"pk"}]
    index = {k: i for i, k in enumerate(source.column("pk").to_pylist())}
    log_id = (1 << 40) if args.low_log_id else (1 << 62) + 12345
    segments, tampered = {}, False
    for rel in snap["manifest-list"]:
        with fs.open_input_stream(prefix + f"{root}/{rel}") as fh:
            e = fastavro.schemaless_reader(io.BytesIO(fh.read()), PARSED_SCHEMA, None)
        seg, part, rows = e["segment_id"], e["partition_id"], e["num_of_rows"]
        seg_prefix = f"{root}/insert_log/{coll}/{part}/{seg}"
        g = next(g for g in e["binlog_files"] if pk["fieldID"] in g["child_fields"])
        order = sorted(g["binlogs"], key=(lambda b: str(b["log_id"])) if args.string_order else (lambda b: b["log_id"]))
        pks = []
        for b in order:
            t = pq.read_table(prefix + f"{seg_prefix}/{g['field_id']}/{b['log_id']}", filesystem=fs)
            pks += t.column(by_field_id(t, pk["fieldID"])).to_pylist()
        groups = []
        for f in new_fields:
            if args.clean:
                fs.delete_dir_contents(prefix + f"{seg_prefix}/{f['fieldID']}", missing_dir_ok=True)
            col = source.column(f["name"]).to_pylist()
            vals = [None if index.get(k) is None else col[index[k]] for k in pks]
            if args.wrong_value and not tampered:
                j = next(j for j, v in enumerate(vals) if v is not None)
                vals[j] = 0.25 if vals[j] != 0.25 else 0.5
                tampered = True
            meta = None if args.no_field_id else {b"PARQUET:field_id": str(f["fieldID"]).encode()}
            field = pa.field(str(f["fieldID"]) if args.name_by_id else f["name"], pa.float64(), True, metadata=meta)
            t = pa.table([pa.array(vals, pa.float64())], schema=pa.schema([field]))
            n = args.files
            if args.uneven and n == 2:
                spans = [(0, rows // 3), (rows // 3, rows)]
            else:
                per = rows // n
                spans = [(i * per, (i + 1) * per if i < n - 1 else rows) for i in range(n)]
            keys = []
            for a, b in spans:
                key = f"{seg_prefix}/{f['fieldID']}/{log_id}"
                log_id += 1
                put(fs, storage, prefix + key, packed(t.slice(a, b - a), f["fieldID"], args))
                keys.append(key)
            if args.descending:
                keys.reverse()
            if args.stray:
                put(fs, storage, prefix + f"{seg_prefix}/{f['fieldID']}/{log_id + 1000}.tmp", b"partial")
            groups.append({"field_ids": [f["fieldID"]], "binlog_files": keys, "row_count": rows})
        segments[str(seg)] = {"segmentId": seg, "partitionId": part, "rowCount": rows, "outputPath": seg_prefix,
                              "storage_version": 2, "version": -1, "column_groups": groups}
    result = {"success": True, "collectionId": coll, "partitionId": snap["snapshot-info"]["partition_ids"][0],
              "schemaVersion": schema.get("version", 0), "newFieldNames": [f["name"] for f in new_fields],
              "segments": segments}
    with open(args.result, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"fake_backfill_v2: {len(segments)} segments -> {args.result}", file=sys.stderr)


if __name__ == "__main__":
    main()
