#!/usr/bin/env python3
"""Lays out a Milvus StorageV2 collection as Milvus writes it, plus a Milvus 3.0 snapshot (format
version 4) that lists its segments in `manifest-list`, a source, a Backfill spec and the expectations
for `check_v2.py`. Nothing here uses the Rust code.

    make_v2_collection.py TARGET WORK [--bucket B] [--region R] [--seed N]

TARGET / WORK as for make_collection.py (a local directory containing the bucket, or s3://HOST:PORT).

Collection `v2_int64` (4001), partition 4002, schema version 2:
  0 RowID Int64, 1 Timestamp Int64, 100 `pk` Int64 PK, 101 `price` Double nullable,
  102 `vec` BinaryVector dim 128 (fixed_size_binary[16]); new field 103 `score` Double nullable.
Segments: 4003 (1000 rows, one file per group), 4004 (2500 rows in two files per group, whose log IDs
have different digit counts so that a string sort would put them in the wrong order); with
--extra-segment-rows N also 4005 (N rows, one file per group).

Data files: packed Parquet `files/insert_log/{coll}/{part}/{seg}/{groupID}/{logID}` (decimal log ID, no
extension); group 0 = fields 0,1,100,101, group 102 = field 102. Columns are named by FIELD NAMES and
carry `PARQUET:field_id`; footer key-values `group_field_id_list` = "0,1,100,101;102", `row_group_metadata`,
`storage_version` = "1.0.0"; ZSTD, dictionary pages. Written with pyarrow: the wheel's library has
milvus-storage's packed writer only as C++ classes (`milvus_storage::PackedRecordBatchWriter`, no C
entry point), which ctypes cannot construct.

Snapshot manifests: `files/snapshots/4001/manifests/data-file-manifest-<uuid>.avro`, each ONE raw Avro
binary record (no container header) of Milvus' `ManifestEntry` schema, format version 4
(milvus-io/milvus internal/datacoord/snapshotio), encoded with fastavro.
"""
import io
import json
import os
import random
import sys
import uuid

import fastavro
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parquet_bytes, row_group_metadata  # noqa: E402
from make_collection import (  # noqa: E402
    BINARY_VECTOR, DOUBLE, INT64, ROOT_PATH, SYSTEM_FIELDS, arg_parser, open_target, snapshot_json,
    write_collection_files,
)

FORMAT_VERSION = 4
CREATE_TS = 462500000000000000
ROW_GROUP_ROWS = 400  # several row groups per file, so row_group_metadata has several entries

COLLECTION = {
    "key": "v2", "id": 4001, "name": "v2_int64", "snapshotId": 1, "schemaVersion": 2,
    "pk": {"fieldID": 100, "name": "pk", "data_type": INT64},
    "fields": [
        {"fieldID": 100, "name": "pk", "is_primary_key": True, "data_type": INT64},
        {"fieldID": 101, "name": "price", "data_type": DOUBLE, "nullable": True},
        {"fieldID": 102, "name": "vec", "data_type": BINARY_VECTOR, "type_params": [{"key": "dim", "value": "128"}]},
    ],
    "newFields": [{"fieldID": 103, "name": "score", "data_type": DOUBLE, "nullable": True}],
    "partition": 4002,
    # segment -> (log IDs of its files, rows per file); the same log IDs serve both groups' files
    # (Milvus allocates one log ID per flush and group; reusing them across groups is legal: the
    # group ID is part of the key)
    "segments": [
        (4003, [462500000000004103], [1000]),
        # ascending log ID (the row order) = 98765432109876543 first; as strings it would sort last
        (4004, [98765432109876543, 462500000000004204], [1200, 1300]),
    ],
    "groups": [(0, [0, 1, 100, 101]), (102, [102])],
}
GROUP_FIELD_ID_LIST = "0,1,100,101;102"

# ------------------------------------------------------------------ Milvus ManifestEntry, format 4
_POSITION = {"type": "record", "name": "AvroMsgPosition", "fields": [
    {"name": "channel_name", "type": "string"}, {"name": "msg_id", "type": "bytes"},
    {"name": "msg_group", "type": "string"}, {"name": "timestamp", "type": "long"}]}
_BINLOG = {"type": "record", "name": "AvroBinlog", "fields": [
    {"name": "entries_num", "type": "long"}, {"name": "timestamp_from", "type": "long"},
    {"name": "timestamp_to", "type": "long"}, {"name": "log_path", "type": "string"},
    {"name": "log_size", "type": "long"}, {"name": "log_id", "type": "long"}, {"name": "memory_size", "type": "long"}]}
_FIELD_BINLOG = {"type": "record", "name": "AvroFieldBinlog", "fields": [
    {"name": "field_id", "type": "long"},
    {"name": "child_fields", "type": {"type": "array", "items": "long"}, "default": []},
    {"name": "format", "type": "string", "default": ""},
    {"name": "binlogs", "type": {"type": "array", "items": _BINLOG}}]}
_INDEX = {"type": "record", "name": "AvroIndexFilePathInfo", "fields": [
    {"name": "segment_id", "type": "long"}, {"name": "field_id", "type": "long"},
    {"name": "index_id", "type": "long"}, {"name": "build_id", "type": "long"},
    {"name": "index_name", "type": "string"},
    {"name": "index_params", "type": {"type": "array", "items": {"type": "record", "name": "AvroKeyValuePair",
                                                                 "fields": [{"name": "key", "type": "string"},
                                                                            {"name": "value", "type": "string"}]}}},
    {"name": "index_file_paths", "type": {"type": "array", "items": "string"}},
    {"name": "serialized_size", "type": "long"}, {"name": "index_version", "type": "long"},
    {"name": "num_rows", "type": "long"}, {"name": "current_index_version", "type": "int"},
    {"name": "mem_size", "type": "long"},
    {"name": "current_scalar_index_version", "type": "int", "default": 0},
    {"name": "index_store_path_version", "type": "int", "default": 0}]}
_STATS_COMMON = [{"name": "field_id", "type": "long"}, {"name": "version", "type": "long"},
                 {"name": "files", "type": {"type": "array", "items": "string"}},
                 {"name": "log_size", "type": "long"}, {"name": "memory_size", "type": "long"},
                 {"name": "build_id", "type": "long"}]
_TEXT = {"type": "record", "name": "AvroTextIndexEntry", "fields": [
    {"name": "field_id", "type": "long"},
    {"name": "stats", "type": {"type": "record", "name": "AvroTextIndexStats", "fields": _STATS_COMMON}}]}
_JSON_KEY = {"type": "record", "name": "AvroJSONKeyIndexEntry", "fields": [
    {"name": "field_id", "type": "long"},
    {"name": "stats", "type": {"type": "record", "name": "AvroJSONKeyStats",
                               "fields": _STATS_COMMON + [{"name": "json_key_stats_data_format", "type": "long"}]}}]}
MANIFEST_ENTRY_V4 = {"type": "record", "name": "ManifestEntry", "fields": [
    {"name": "segment_id", "type": "long"},
    {"name": "partition_id", "type": "long"},
    {"name": "segment_level", "type": "long"},
    {"name": "channel_name", "type": "string"},
    {"name": "num_of_rows", "type": "long"},
    {"name": "start_position", "type": _POSITION},
    {"name": "dml_position", "type": "AvroMsgPosition"},
    {"name": "storage_version", "type": "long"},
    {"name": "is_sorted", "type": "boolean"},
    {"name": "commit_timestamp", "type": "long", "default": 0},
    {"name": "binlog_files", "type": {"type": "array", "items": _FIELD_BINLOG}},
    {"name": "deltalog_files", "type": {"type": "array", "items": "AvroFieldBinlog"}},
    {"name": "statslog_files", "type": {"type": "array", "items": "AvroFieldBinlog"}},
    {"name": "bm25_statslog_files", "type": {"type": "array", "items": "AvroFieldBinlog"}},
    {"name": "index_files", "type": {"type": "array", "items": _INDEX}},
    {"name": "text_index_files", "type": {"type": "array", "items": _TEXT}},
    {"name": "json_key_index_files", "type": {"type": "array", "items": _JSON_KEY}},
]}
PARSED_SCHEMA = fastavro.parse_schema(MANIFEST_ENTRY_V4)


def encode_manifest_entry(record):
    """One raw Avro binary record (fastavro.schemaless_writer: no container header, no schema)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED_SCHEMA, record)
    data = buf.getvalue()
    back_buf = io.BytesIO(data)
    back = fastavro.schemaless_reader(back_buf, PARSED_SCHEMA, None)
    assert back_buf.tell() == len(data) and back == record, "fastavro round trip"
    return data


# ------------------------------------------------------------------ packed Parquet
def field_arrow(f):
    """(name, arrow type, nullable) of a Milvus field as StorageV2 stores it."""
    dt = f["data_type"]
    if dt == INT64:
        t = pa.int64()
    elif dt == DOUBLE:
        t = pa.float64()
    elif dt == BINARY_VECTOR:
        dim = int({p["key"]: p["value"] for p in f["type_params"]}["dim"])
        t = pa.binary(dim // 8)
    else:
        raise ValueError(f)
    return pa.field(f["name"], t, nullable=bool(f.get("nullable")),
                    metadata={b"PARQUET:field_id": str(f.get("fieldID", 0)).encode()})


def packed_parquet(table):
    """Parquet bytes as milvus-storage's packed writer writes them: no ARROW:schema, ZSTD, dictionary,
    footer key-values group_field_id_list, row_group_metadata, storage_version."""
    rg = ROW_GROUP_ROWS if table.num_rows <= 10 * ROW_GROUP_ROWS else 64 * 1024
    return parquet_bytes(table, rg, "zstd", {"group_field_id_list": GROUP_FIELD_ID_LIST,
                                             "row_group_metadata": row_group_metadata(table, rg),
                                             "storage_version": "1.0.0"})


def segment_columns(rng, seg, pks):
    rows = len(pks)
    return {
        0: pa.array(range(seg * 10**6, seg * 10**6 + rows), pa.int64()),
        1: pa.array([CREATE_TS - 10**9 + i for i in range(rows)], pa.int64()),
        100: pa.array(pks, pa.int64()),
        101: pa.array([None if rng.random() < 0.1 else rng.uniform(-1e6, 1e6) for _ in range(rows)], pa.float64()),
        102: pa.array([rng.randbytes(16) for _ in range(rows)], pa.binary(16)),
    }


def make_pks(rng, total):
    pks = rng.sample(range(-10**12, 10**12), total - 20) + rng.sample(range(2**60, 2**62), 20)
    rng.shuffle(pks)
    return pks


def position(channel, ts):
    return {"channel_name": channel, "msg_id": ts.to_bytes(8, "little"), "msg_group": "", "timestamp": ts}


def build(target, work, rng, extra_rows=0):
    coll = dict(COLLECTION)
    if extra_rows:  # a segment above the Rust side's 2^20-row file cap (several files per new field)
        coll["segments"] = coll["segments"] + [(4005, [462500000000004305], [extra_rows])]
    fields_by_id = {0: {"fieldID": 0, **SYSTEM_FIELDS[0]}, 1: SYSTEM_FIELDS[1]}
    fields_by_id.update({f["fieldID"]: f for f in coll["fields"]})
    total = sum(sum(rows) for _s, _l, rows in coll["segments"])
    pks_all = make_pks(rng, total)
    part, at = coll["partition"], 0
    manifest_paths, expected_segments = [], []
    channel = f"by-dev-rootcoord-dml_0_{coll['id']}v0"
    for seg, log_ids, file_rows in coll["segments"]:
        rows = sum(file_rows)
        pks = pks_all[at:at + rows]
        at += rows
        cols = segment_columns(rng, seg, pks)
        prefix = f"{ROOT_PATH}/insert_log/{coll['id']}/{part}/{seg}"
        binlog_files, files_written = [], {}
        for group_id, fids in coll["groups"]:
            schema = pa.schema([field_arrow(fields_by_id[f]) for f in fids])
            binlogs, off = [], 0
            for log_id, n in zip(log_ids, file_rows):
                t = pa.table([cols[f].slice(off, n) for f in fids], schema=schema)
                data = packed_parquet(t)
                key = f"{prefix}/{group_id}/{log_id}"
                target.put(key, data)
                files_written[key] = len(data)
                binlogs.append({"entries_num": n, "timestamp_from": CREATE_TS - 10**9 + off,
                                "timestamp_to": CREATE_TS - 10**9 + off + n - 1, "log_path": "",
                                "log_size": len(data), "log_id": log_id, "memory_size": t.nbytes})
                off += n
            # Milvus lists binlogs in flush order; ours are given in DESCENDING log ID for segment 4004,
            # so that a reader must sort them (numerically) itself
            binlogs.sort(key=lambda b: b["log_id"], reverse=True)
            binlog_files.append({"field_id": group_id, "child_fields": fids, "format": "", "binlogs": binlogs})
        record = {
            "segment_id": seg, "partition_id": part, "segment_level": 2,  # L1
            "channel_name": channel, "num_of_rows": rows,
            "start_position": position(channel, CREATE_TS - 10**9), "dml_position": position(channel, CREATE_TS - 1),
            "storage_version": 2, "is_sorted": False, "commit_timestamp": 0,
            "binlog_files": binlog_files,
            "deltalog_files": [],
            "statslog_files": [{"field_id": 100, "child_fields": [100], "format": "",
                                "binlogs": [{"entries_num": rows, "timestamp_from": 0, "timestamp_to": 0,
                                             "log_path": "", "log_size": 2048, "log_id": log_ids[0] + 7,
                                             "memory_size": 2048}]}],
            "bm25_statslog_files": [],
            # a vector index on the second segment (as a snapshot of an indexed collection has), and a
            # text / JSON-key index entry there too: not realistic for these field types, present so that
            # every record type of the layout is encoded at least once
            "index_files": [] if seg != 4004 else [{
                "segment_id": seg, "field_id": 102, "index_id": 4101, "build_id": 4102, "index_name": "vec_idx",
                "index_params": [{"key": "index_type", "value": "BIN_FLAT"}, {"key": "metric_type", "value": "HAMMING"}],
                "index_file_paths": [f"{ROOT_PATH}/index_files/4102/1/{coll['id']}/{seg}/BIN_FLAT"],
                "serialized_size": 40000, "index_version": 1, "num_rows": rows, "current_index_version": 6,
                "mem_size": 40000, "current_scalar_index_version": 2, "index_store_path_version": 1}],
            "text_index_files": [] if seg != 4004 else [{"field_id": 101, "stats": {
                "field_id": 101, "version": 1, "files": ["text/a", "text/b"], "log_size": 10, "memory_size": 20,
                "build_id": 4103}}],
            "json_key_index_files": [] if seg != 4004 else [{"field_id": 101, "stats": {
                "field_id": 101, "version": 1, "files": ["json/a"], "log_size": 10, "memory_size": 20,
                "build_id": 4104, "json_key_stats_data_format": 2}}],
        }
        rel = f"snapshots/{coll['id']}/manifests/data-file-manifest-{uuid.UUID(int=rng.getrandbits(128), version=4)}.avro"
        target.put(f"{ROOT_PATH}/{rel}", encode_manifest_entry(record))
        manifest_paths.append(rel)
        expected_segments.append({
            "segmentId": seg, "partitionId": part, "rows": rows, "prefix": prefix,
            "group0Files": [[f"{prefix}/0/{lid}", lid, n] for lid, n in sorted(zip(log_ids, file_rows))],
            "existingFiles": files_written, "pks": pks,
        })
        print(f"  segment {seg}: partition {part}, {rows} rows in {len(log_ids)} file(s) per group", file=sys.stderr)

    snap = {"format-version": FORMAT_VERSION, **snapshot_json(coll, [part], manifest_paths, [], CREATE_TS)}
    return write_collection_files(coll, target, work, rng, snap, pks_all, [part], {"manifestList": manifest_paths},
                                  expected_segments)


def main():
    ap = arg_parser(__doc__, 20261201)
    ap.add_argument("--extra-segment-rows", type=int, default=0,
                    help="add segment 4005 with this many rows (one file per group); e.g. 1100000 to get a "
                         "new column of more than 2^20 rows, which milvus-backfill writes as several files")
    args = ap.parse_args()
    target = open_target(args)
    rng = random.Random(args.seed)
    out = build(target, args.work, rng, args.extra_segment_rows)
    with open(os.path.join(args.work, "storage-v2.json"), "w") as fh:
        json.dump(target.storage, fh)
    print(json.dumps({"storage": target.storage, "expected": [out]}))


if __name__ == "__main__":
    main()
