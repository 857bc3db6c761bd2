#!/usr/bin/env python3
"""Builds two Milvus StorageV3 collections with the OFFICIAL milvus-storage writer, plus everything a
`milvus-backfill run` needs to backfill them from a snapshot: snapshot metadata JSON, source Parquet,
Backfill spec YAML, and the expected segment contents for `commit_and_verify.py`.

    make_collection.py TARGET WORK [--bucket B] [--region R] [--seed N] [--v3-commit ops|manifest]

TARGET: a local directory (or file:///DIR) that CONTAINS the bucket directory, or s3://HOST:PORT for an
S3 endpoint (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; the bucket is created if
missing). WORK: a local directory for the sources, specs and expectations.

Collections (layout as Milvus writes it: base path files/insert_log/{coll}/{part}/{seg}, columns named
by field ID with PARQUET:field_id metadata, group 0 = system fields + PK + scalars, vector alone):
  A  2001 v3_int64    Int64 PK 100 `pk`, 101 `price` Double nullable, 102 `vec` BinaryVector dim 128;
                      partitions 2002 and 2005, 4 segments; new fields 103 `score` Double, 104 `label` VarChar(64)
  B  3001 v3_varchar  VarChar PK 100 `doc`, 101 `emb` FloatVector dim 4; partition 3002, 2 segments;
                      new field 103 `score` Double
  D  5001 v3_vectors  Int64 PK 100 `pk`, 101 `emb` FloatVector dim 4; partition 5002, 2 segments; new
                      fields 102-107, one of each vector type, each from another source form
"""
import argparse
import json
import math
import os
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loon  # noqa: E402
import common  # noqa: E402

ROOT_PATH = "files"  # Milvus minio.rootPath
CREATE_TS = 462324677975474190

# data_type numbers (schemapb.DataType)
INT64, DOUBLE, VARCHAR, BINARY_VECTOR, FLOAT_VECTOR = 5, 11, 21, 100, 101
FLOAT16_VECTOR, BFLOAT16_VECTOR, SPARSE_VECTOR, INT8_VECTOR = 102, 103, 104, 105
INT32 = 4

COLLECTIONS = [
    {
        "key": "a", "id": 2001, "name": "v3_int64", "snapshotId": 462324574599774209, "schemaVersion": 3,
        "pk": {"fieldID": 100, "name": "pk", "data_type": INT64},
        "fields": [
            {"fieldID": 100, "name": "pk", "is_primary_key": True, "data_type": INT64},
            {"fieldID": 101, "name": "price", "data_type": DOUBLE, "nullable": True},
            {"fieldID": 102, "name": "vec", "data_type": BINARY_VECTOR,
             "type_params": [{"key": "dim", "value": "128"}]},
        ],
        "newFields": [
            {"fieldID": 103, "name": "score", "data_type": DOUBLE, "nullable": True},
            {"fieldID": 104, "name": "label", "data_type": VARCHAR, "nullable": True,
             "type_params": [{"key": "max_length", "value": "64"}]},
        ],
        # (partition, segment, commits of group 0 (rows per commit), bucket prefix in the snapshot base_path)
        "segments": [
            (2002, 2003, [1024, 1500, 476], True),
            (2002, 462416429317820786, [600, 600], False),
            (2005, 2006, [800], False),
            (2005, 2007, [1000, 1000, 500], True),
        ],
        # this segment gets one more manifest version after the snapshot recorded its `ver`
        "laterVersionSegment": 2007,
        "vectorGroup": "102",
    },
    {
        "key": "b", "id": 3001, "name": "v3_varchar", "snapshotId": 462324574599774301, "schemaVersion": 2,
        # The source names its columns otherwise, with one column not mapped: spec.columnMapping.
        "columnMapping": {"doc_id": "doc", "score_src": "score"},
        "pk": {"fieldID": 100, "name": "doc", "data_type": VARCHAR},
        "fields": [
            {"fieldID": 100, "name": "doc", "is_primary_key": True, "data_type": VARCHAR,
             "type_params": [{"key": "max_length", "value": "128"}]},
            {"fieldID": 101, "name": "emb", "data_type": FLOAT_VECTOR,
             "type_params": [{"key": "dim", "value": "4"}]},
        ],
        "newFields": [
            {"fieldID": 103, "name": "score", "data_type": DOUBLE, "nullable": True},
        ],
        "segments": [
            (3002, 3003, [700], False),
            (3002, 3004, [500, 1000], True),
        ],
        "laterVersionSegment": None,
        "vectorGroup": "101",
    },
]

def dim(n):
    return [{"key": "dim", "value": str(n)}]


# Every vector type as a new field, each from another of the source forms the reference accepts
# ("form"), normalized by milvus-backfill to Milvus' per-row bytes; the oracle normalizes on its own
# (common.vector_bytes) and compares byte for byte.
VECTORS = {
    "key": "d", "id": 5001, "name": "v3_vectors", "snapshotId": 462324574599774501, "schemaVersion": 7,
    "pk": {"fieldID": 100, "name": "pk", "data_type": INT64},
    "fields": [
        {"fieldID": 100, "name": "pk", "is_primary_key": True, "data_type": INT64},
        {"fieldID": 101, "name": "emb", "data_type": FLOAT_VECTOR, "type_params": dim(4)},
    ],
    "newFields": [
        {"fieldID": 102, "name": "fvec", "data_type": FLOAT_VECTOR, "nullable": True, "type_params": dim(8),
         "form": "list<float32>"},
        {"fieldID": 103, "name": "bvec", "data_type": BINARY_VECTOR, "nullable": True, "type_params": dim(16),
         "form": "list<int16>"},
        {"fieldID": 104, "name": "f16", "data_type": FLOAT16_VECTOR, "nullable": True, "type_params": dim(4),
         "form": "fixed_size_list<float64>"},
        {"fieldID": 105, "name": "bf16", "data_type": BFLOAT16_VECTOR, "nullable": True, "type_params": dim(4),
         "form": "binary"},
        {"fieldID": 106, "name": "i8", "data_type": INT8_VECTOR, "nullable": True, "type_params": dim(6),
         "form": "json"},
        {"fieldID": 107, "name": "sparse", "data_type": SPARSE_VECTOR, "nullable": True, "form": "map<int32,float32>"},
    ],
    "segments": [
        (5002, 5003, [400, 300], False),
        (5002, 5004, [500], True),
    ],
    "laterVersionSegment": None,
    "vectorGroup": "101",
}

# spec.joinKey: a physical Int32 field `tag` whose values repeat within and across segments; the source
# is keyed by `tag` (a column named like the field) and every row holding a tag gets its values.
JOINKEY = {
    "key": "e", "id": 6001, "name": "v3_joinkey", "snapshotId": 462324574599774601, "schemaVersion": 4,
    "joinKey": "tag",
    "pk": {"fieldID": 100, "name": "pk", "data_type": INT64},
    "fields": [
        {"fieldID": 100, "name": "pk", "is_primary_key": True, "data_type": INT64},
        {"fieldID": 101, "name": "tag", "data_type": INT32},
        {"fieldID": 102, "name": "emb", "data_type": FLOAT_VECTOR, "type_params": dim(4)},
    ],
    "newFields": [
        {"fieldID": 103, "name": "score", "data_type": DOUBLE, "nullable": True},
    ],
    "segments": [
        (6002, 6003, [500, 300], False),
        (6002, 6004, [600], True),
    ],
    "laterVersionSegment": None,
    "vectorGroup": "102",
}

# A re-backfill: `score` (103) was backfilled before into some segments (its own column group, as a
# committed backfill leaves it, values with nulls); this run's spec.mode is coalesce, so existing
# non-null values win and nulls are filled from the source. Committed with v3Commit: manifest only
# (the PyPI wheel's transaction has no drop-column, which an ops `replace` of an existing column needs).
REBACKFILL = {
    "key": "c", "id": 4001, "name": "v3_rebackfill", "snapshotId": 462324574599774401, "schemaVersion": 5,
    "mode": "coalesce",
    "pk": {"fieldID": 100, "name": "pk", "data_type": INT64},
    "fields": [
        {"fieldID": 100, "name": "pk", "is_primary_key": True, "data_type": INT64},
        {"fieldID": 101, "name": "price", "data_type": DOUBLE, "nullable": True},
        {"fieldID": 102, "name": "vec", "data_type": BINARY_VECTOR,
         "type_params": [{"key": "dim", "value": "128"}]},
    ],
    "newFields": [
        {"fieldID": 103, "name": "score", "data_type": DOUBLE, "nullable": True},
    ],
    "segments": [
        (4002, 4003, [900, 600], False),
        (4002, 4004, [700], True),
        (4002, 4005, [400, 400], False),
    ],
    # segment -> fraction of null values in its earlier backfill of `score`
    "priorBackfill": {4003: 0.4, 4005: 0.0},
    "laterVersionSegment": None,
    "vectorGroup": "102",
}

SYSTEM_FIELDS = [
    {"name": "RowID", "description": "row id", "data_type": INT64},
    {"fieldID": 1, "name": "Timestamp", "description": "timestamp", "data_type": INT64},
]


def arrow_type(field):
    """The Arrow type Milvus' V3 storage uses for a field."""
    dt = field["data_type"]
    params = {p["key"]: p["value"] for p in field.get("type_params", [])}
    if dt == INT64:
        return pa.int64()
    if dt == INT32:
        return pa.int32()
    if dt == DOUBLE:
        return pa.float64()
    if dt == VARCHAR:
        return pa.string()
    if dt == BINARY_VECTOR:
        return pa.binary(int(params["dim"]) // 8)
    if dt == FLOAT_VECTOR:
        return pa.binary(int(params["dim"]) * 4)
    raise ValueError(f"unsupported data_type {dt}")


def written_arrow_type(field):
    """The Arrow type of a backfilled column: nullable vectors are Binary (the reference's writer types),
    every other field as arrow_type."""
    if field["data_type"] in common.VECTOR_TYPES and field.get("nullable"):
        return pa.binary()
    return arrow_type(field)


def arrow_field(fid, typ, nullable):
    return pa.field(str(fid), typ, nullable=nullable, metadata={b"PARQUET:field_id": str(fid).encode()})


# ------------------------------------------------------------------ storage targets
class Target:
    def __init__(self, spec, bucket, region):
        self.bucket, self.region = bucket, region
        if spec.startswith("s3://"):
            self.kind = "s3"
            self.endpoint = spec[len("s3://"):].rstrip("/")
            self.storage = {"kind": "s3", "endpoint": self.endpoint, "bucket": bucket, "region": region}
        else:
            self.kind = "local"
            self.parent = os.path.abspath(spec[len("file://"):] if spec.startswith("file://") else spec)
            self.root = os.path.join(self.parent, bucket)
            self.storage = {"kind": "local", "root": self.root, "parent": self.parent, "bucket": bucket}
        self.fs_props = loon.storage_fs(self.storage)

    def pyarrow_fs(self):
        return pyarrow_fs(self.storage)

    def put(self, key, data):
        """Writes bytes at a bucket-relative key."""
        if self.kind == "local":
            path = os.path.join(self.root, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
            return path
        fs = self.pyarrow_fs()
        with fs.open_output_stream(f"{self.bucket}/{key}") as out:
            out.write(data)
        return f"s3://{self.bucket}/{key}"

    def ensure_bucket(self):
        if self.kind == "local":
            os.makedirs(self.root, exist_ok=True)
            return
        from pyarrow import fs as pafs
        s3 = self.pyarrow_fs()
        if s3.get_file_info(self.bucket).type == pafs.FileType.NotFound:
            s3.create_dir(self.bucket)


def pyarrow_fs(storage):
    """A pyarrow filesystem on which bucket-relative keys are `{prefix}{key}` (see `key_prefix`)."""
    from pyarrow import fs as pafs
    if storage["kind"] == "local":
        return pafs.LocalFileSystem()
    return pafs.S3FileSystem(
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        region=storage.get("region", "us-east-1"), scheme="http", endpoint_override=storage["endpoint"],
        allow_bucket_creation=True, check_directory_existence_before_creation=False)


def key_prefix(storage):
    return storage["root"] + "/" if storage["kind"] == "local" else storage["bucket"] + "/"


# ------------------------------------------------------------------ data
def make_pks(rng, coll, total):
    if coll["pk"]["data_type"] == INT64:
        # unique, both signs, some beyond 2^53 (exactness through JSON and float-free paths)
        pks = rng.sample(range(-10**12, 10**12), total - 20) + rng.sample(range(2**60, 2**62), 20)
        rng.shuffle(pks)
        return pks
    out, seen = [], set()
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_"
    while len(out) < total:
        kind = rng.random()
        if kind < 0.1:
            s = "文档-" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        elif kind < 0.15:
            s = "doc with spaces " + str(rng.randrange(10**9))
        else:
            s = "doc-" + "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 60)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def segment_table(rng, coll, seg_id, pks):
    rows = len(pks)
    cols, fields = [], []
    fields.append(arrow_field(0, pa.int64(), False))
    cols.append(pa.array(range(seg_id % 10**9 * 10**6, seg_id % 10**9 * 10**6 + rows), pa.int64()))
    fields.append(arrow_field(1, pa.int64(), False))
    cols.append(pa.array([CREATE_TS - 10**9 + i for i in range(rows)], pa.int64()))
    for f in coll["fields"]:
        t = arrow_type(f)
        fid = f["fieldID"]
        if f.get("is_primary_key"):
            arr = pa.array(pks, t)
        elif f["data_type"] == DOUBLE:
            arr = pa.array([None if rng.random() < 0.1 else rng.uniform(-1e6, 1e6) for _ in range(rows)], t)
        elif f["data_type"] == INT32:  # a join key with repeats: 400 values over every segment's rows
            arr = pa.array([rng.randrange(-200, 200) for _ in range(rows)], t)
        elif t.id == pa.binary(1).id:
            arr = pa.array([rng.randbytes(t.byte_width) for _ in range(rows)], t)
        else:
            raise ValueError(f)
        fields.append(arrow_field(fid, t, bool(f.get("nullable"))))
        cols.append(arr)
    return pa.table(cols, schema=pa.schema(fields))


def source_table(rng, coll, all_pks):
    """~70% of the segment keys with values (some null), plus 500 keys in no segment; shuffled."""
    chosen = rng.sample(all_pks, int(len(all_pks) * 0.7))
    extra, have = [], set(all_pks)
    pk_int = coll["pk"]["data_type"] == INT64
    while len(extra) < 500:
        k = rng.randrange(10**12, 2**60) if pk_int else f"absent-{rng.randrange(10**12)}"
        if k not in have:
            have.add(k)
            extra.append(k)
    if coll.get("joinKey"):
        # Keyed by the join field's values (unique), about 70% of them, plus values in no segment.
        chosen = rng.sample(sorted(set(all_pks)), int(len(set(all_pks)) * 0.7))
        extra = [v for v in range(1000, 1050)]
    keys = chosen + extra
    rng.shuffle(keys)
    # milvus-backfill joins on the source column `pk`, whatever the primary key field is named.
    key_field = next((f for f in coll["fields"] if f["name"] == coll.get("joinKey")), coll["pk"])
    data = {coll.get("joinKey") or "pk": pa.array(keys, arrow_type(key_field))}
    for f in coll["newFields"]:
        if f["data_type"] == DOUBLE:
            specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-308, 1.7976931348623157e308]
            vals = []
            for i in range(len(keys)):
                r = rng.random()
                vals.append(None if r < 0.12 else specials[i % len(specials)] if r < 0.14 else rng.uniform(-1e9, 1e9))
            data[f["name"]] = pa.array(vals, pa.float64())
        elif f["data_type"] == VARCHAR:
            vals = []
            for i in range(len(keys)):
                r = rng.random()
                if r < 0.15:
                    vals.append(None)
                elif r < 0.18:
                    vals.append("")
                elif r < 0.25:
                    vals.append("ラベル-" + str(rng.randrange(10**6)))
                else:
                    vals.append("".join(rng.choice("abcdefghijklmnop ,;|\"'") for _ in range(rng.randint(1, 64))))
            data[f["name"]] = pa.array(vals, pa.string())
        elif f["data_type"] in common.VECTOR_TYPES:
            data[f["name"]] = vector_column(rng, f, len(keys))
    mapping = coll.get("columnMapping")
    if not mapping:
        return pa.table(data)
    # Renamed as the mapping reads them, the key last, and a column the run must not read.
    renamed = {src: data["pk" if to == coll["pk"]["name"] else to] for src, to in mapping.items()}
    unmapped = {"not_mapped": pa.array([f"x{i}" for i in range(len(keys))], pa.string())}
    return pa.table({**unmapped, **dict(reversed(list(renamed.items())))})


def vector_column(rng, f, n):
    """n source values of vector field f in its `form`, about 10% of them null."""
    d = int(dict((p["key"], p["value"]) for p in f.get("type_params", [])).get("dim", 0))
    form = f["form"]

    def one():
        if form == "list<float32>":
            return [rng.uniform(-10, 10) for _ in range(d)]
        if form == "list<int16>":
            return [rng.randint(-128, 255) for _ in range(d // 8)]
        if form == "fixed_size_list<float64>":
            return [round(rng.uniform(-100, 100), 3) for _ in range(d)]
        if form == "binary":  # bfloat16 bits of finite values, as the user's ETL would pack them
            import struct
            return b"".join(struct.pack("<H", struct.unpack("<I", struct.pack("<f", rng.uniform(-5, 5)))[0] >> 16)
                            for _ in range(d))
        if form == "json":
            return json.dumps([rng.randint(-128, 127) for _ in range(d)])
        if form == "map<int32,float32>":
            idx = rng.sample(range(0, 100000), rng.randint(0, 6))  # unsorted; an empty row too
            return [(i, rng.uniform(0, 3)) for i in idx]
        raise ValueError(form)

    vals = [None if rng.random() < 0.1 else one() for _ in range(n)]
    types = {"list<float32>": pa.list_(pa.float32()), "list<int16>": pa.list_(pa.int16()),
             "fixed_size_list<float64>": pa.list_(pa.float64(), d), "binary": pa.binary(), "json": pa.string(),
             "map<int32,float32>": pa.map_(pa.int32(), pa.float32())}
    return pa.array(vals, types[form])


def snapshot_json(coll, parts, manifest_list, storagev2_manifest_list, create_ts=CREATE_TS):
    """Snapshot metadata (protobuf-JSON) of `coll` over the partitions `parts`, listing its segments in
    `manifest-list` (V2: snapshot manifest paths) or `storagev2-manifest-list` (V3: {segmentID, manifest})."""
    fields = [dict(f) for f in coll["fields"]] + [dict(f) for f in SYSTEM_FIELDS] + [
        {k: v for k, v in f.items() if k != "form"} for f in coll["newFields"]]
    return {
        "snapshot-info": {"name": f"{coll['name']}_backfill", "id": coll["snapshotId"], "collection_id": coll["id"],
                          "partition_ids": parts, "create_ts": create_ts},
        "collection": {
            "schema": {"name": coll["name"], "fields": fields, "properties": [{"key": "timezone", "value": "UTC"}],
                       "version": coll["schemaVersion"]},
            "num_partitions": len(parts), "num_shards": 1,
        },
        "indexes": [],
        "manifest-list": manifest_list,
        "storagev2-manifest-list": storagev2_manifest_list,
    }


def spec_yaml(coll, target, snapshot_path, source_path, v3_commit=None):
    if target.kind == "local":
        storage = f"    endpoint: file://{target.parent}\n    bucket: {target.bucket}\n    rootPath: {ROOT_PATH}\n"
    else:
        storage = (f"    endpoint: {target.endpoint}\n    bucket: {target.bucket}\n    rootPath: {ROOT_PATH}\n"
                   f"    region: {target.region}\n    useSSL: false\n")
    return (
        "apiVersion: milvusbackfill.io/v1alpha1\n"
        "kind: Backfill\n"
        f"metadata: {{name: {coll['name'].replace('_', '-')}}}\n"
        "spec:\n"
        "  milvus:\n"
        f"    collection: {coll['name']}\n"
        "    snapshot:\n"
        f"      path: {snapshot_path}\n"
        "  storage:\n"
        f"{storage}"
        "  source:\n"
        f"    path: {source_path}\n"
        + (f"  output: {{v3Commit: {v3_commit}}}\n" if v3_commit else "")
        + (f"  mode: {coll['mode']}\n" if coll.get("mode") else "")
        + (f"  joinKey: {coll['joinKey']}\n" if coll.get("joinKey") else "")
        + ("  columnMapping:\n" + "".join(f"    {s}: {t}\n" for s, t in coll["columnMapping"].items())
           if coll.get("columnMapping") else "")
    )


def build(coll, target, work, rng, lib, v3_commit=None):
    props = lib.properties(target.fs_props)
    total = sum(sum(c) for _p, _s, c, _b in coll["segments"])
    pks_all = make_pks(rng, coll, total)
    pk_schema = pa.schema([arrow_field(coll["pk"]["fieldID"], arrow_type(coll["pk"]), False)])
    at = 0
    entries, expected_segments = [], []
    for part, seg, commits, bucket_prefix in coll["segments"]:
        rows = sum(commits)
        pks = pks_all[at:at + rows]
        at += rows
        base = f"{ROOT_PATH}/insert_log/{coll['id']}/{part}/{seg}"
        if loon.manifest_at(lib, props, base)[0] != 0:
            raise SystemExit(f"{base} already has manifests: use an empty bucket (or another --bucket)")
        table = segment_table(rng, coll, seg, pks)
        off = 0
        group0 = "^(" + "|".join(n for n in table.schema.names if n != coll["vectorGroup"]) + ")$"
        for n in commits:  # one official writer + commit per flush: each file has its own range
            ver = loon.write_table(lib, target.fs_props, base, table.slice(off, n), groups=[group0])
            off += n
        snap_ver, manifest = loon.manifest_at(lib, props, base)
        assert snap_ver == ver == len(commits), (snap_ver, ver)
        g0 = manifest["column_groups"][0]
        assert g0["columns"][:2] == ["0", "1"] and loon.group_rows(g0) == rows, g0
        _v, back = loon.read_table(lib, props, base, pk_schema, version=snap_ver)
        back_pks = back.column(0).to_pylist()
        if back_pks != pks:
            raise SystemExit(f"segment {seg}: the official reader returned other PKs than written")
        existing = prior_backfill(lib, target, coll, seg, base, rows, rng)
        if existing is not None:
            snap_ver, manifest = loon.manifest_at(lib, props, base)
        latest = snap_ver
        if seg == coll["laterVersionSegment"]:
            # a later manifest version (as an index/stats publication would make) that the snapshot
            # does not reference: column "999", not in the schema
            extra = pa.table([pa.array(range(rows), pa.int64())], schema=pa.schema([arrow_field(999, pa.int64(), False)]))
            latest = loon.write_table(lib, target.fs_props, base, extra, new_groups=True)
            assert latest == snap_ver + 1
        path_in_snapshot = f"{target.bucket}/{base}" if bucket_prefix else base
        entries.append({"segmentID": seg,
                        "manifest": json.dumps({"ver": snap_ver, "base_path": path_in_snapshot}, separators=(",", ":"))})
        expected_segments.append({
            "segmentId": seg, "partitionId": part, "basePath": base, "snapshotBasePath": path_in_snapshot,
            "snapshotVersion": snap_ver, "latestVersionAtSetup": latest, "rows": rows,
            "group0Files": [[os.path.basename(f["path"]), f["start_index"], f["end_index"]] for f in g0["files"]],
            "pks": back_pks,
            **({"joinKeys": table.column(str(next(f["fieldID"] for f in coll["fields"] if f["name"] == coll["joinKey"])))
                .to_pylist()} if coll.get("joinKey") else {}),
            **({"existing": existing} if existing is not None else {}),
        })
        print(f"  segment {seg}: partition {part}, {rows} rows in {len(commits)} file(s), snapshot ver {snap_ver}"
              + (f", latest {latest}" if latest != snap_ver else ""), file=sys.stderr)

    parts = sorted({p for p, _s, _c, _b in coll["segments"]})
    # The source is keyed by the join field's values: the PKs, or spec.joinKey's field.
    keys_all = [k for s in expected_segments for k in s["joinKeys"]] if coll.get("joinKey") else pks_all
    return write_collection_files(coll, target, work, rng, snapshot_json(coll, parts, [], entries), keys_all, parts,
                                  {"v3Commit": v3_commit or "ops"}, expected_segments, v3_commit)


def prior_backfill(lib, target, coll, seg, base, rows, rng):
    """An earlier backfill of the new fields into `seg` (if the collection says so): one new column group
    per field, written and committed by the official writer. Returns {field name: values in row order}."""
    nulls = coll.get("priorBackfill", {}).get(seg)
    if nulls is None:
        return None
    out = {}
    for f in coll["newFields"]:
        vals = [None if rng.random() < nulls else rng.uniform(-10.0, 10.0) for _ in range(rows)]
        t = pa.table([pa.array(vals, pa.float64())], schema=pa.schema([arrow_field(f["fieldID"], pa.float64(), True)]))
        loon.write_table(lib, target.fs_props, base, t, new_groups=True)
        out[f["name"]] = vals
    return out


def write_collection_files(coll, target, work, rng, snap, pks_all, parts, extra, expected_segments, v3_commit=None):
    """Puts the snapshot metadata `snap` into the bucket, writes the source and the spec into WORK, and
    expected-<coll>.json (the collection's facts, then `extra`, then the segments). Returns its path."""
    snap_key = f"{ROOT_PATH}/snapshots/{coll['id']}/metadata/{coll['snapshotId']}.json"
    snap_loc = target.put(snap_key, json.dumps(snap, indent=1).encode())

    src = source_table(rng, coll, pks_all)
    src_path = os.path.join(work, f"source-{coll['key']}.parquet")
    pq.write_table(src, src_path, compression="zstd")

    spec_path = os.path.join(work, f"spec-{coll['name']}.yaml")
    with open(spec_path, "w") as fh:
        fh.write(spec_yaml(coll, target, snap_loc, src_path, v3_commit))

    expected = {
        "collectionId": coll["id"], "collectionName": coll["name"], "schemaVersion": coll["schemaVersion"],
        "partitionIds": parts, "bucket": target.bucket, "rootPath": ROOT_PATH,
        "pk": {"fieldId": coll["pk"]["fieldID"], "name": coll["pk"]["name"], "dataType": coll["pk"]["data_type"]},
        "newFields": [{"fieldId": f["fieldID"], "name": f["name"], "dataType": f["data_type"],
                       "nullable": bool(f.get("nullable")), "typeParams": f.get("type_params", [])}
                      for f in coll["newFields"]],
        "snapshot": snap_loc, "source": src_path, "spec": spec_path, "storage": target.storage,
        "columnMapping": coll.get("columnMapping"), "mode": coll.get("mode", "coalesce"),
        "joinKey": coll.get("joinKey"),
        **extra, "segments": expected_segments,
    }
    exp_path = os.path.join(work, f"expected-{coll['name']}.json")
    with open(exp_path, "w") as fh:
        json.dump(expected, fh)
    key_col = coll.get("joinKey") or "pk"
    matched = len(set(common.as_mapped(src, expected).column(key_col).to_pylist()) & set(pks_all))
    print(f"{coll['name']}: {len(expected_segments)} segments, {len(pks_all)} rows; source {src.num_rows} rows "
          f"({matched} in segments); snapshot {snap_loc}; spec {spec_path}", file=sys.stderr)
    return exp_path


def arg_parser(doc, seed):
    """The arguments of the make scripts: TARGET WORK [--bucket B] [--region R] [--seed N]."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="local parent dir of the bucket (or file:///DIR), or s3://HOST:PORT")
    ap.add_argument("work", help="local directory for sources, specs, expectations")
    ap.add_argument("--bucket", default="a-bucket")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--seed", type=int, default=seed)
    return ap


def open_target(args):
    """Creates WORK, and the bucket if missing; returns the Target."""
    os.makedirs(args.work, exist_ok=True)
    target = Target(args.target, args.bucket, args.region)
    target.ensure_bucket()
    return target


def main():
    ap = arg_parser(__doc__, 20261215)
    ap.add_argument("--v3-commit", choices=["ops", "manifest"],
                    help="write `spec.output.v3Commit: MODE` into the specs (default: no output section = ops)")
    args = ap.parse_args()
    target = open_target(args)
    lib = loon.Library.get()
    rng = random.Random(args.seed)
    with open(os.path.join(args.work, "storage.json"), "w") as fh:
        json.dump(target.storage, fh)
    # The re-backfill needs a replace of an existing column: only the manifest commit can apply it here.
    colls = COLLECTIONS + [VECTORS, JOINKEY] + ([REBACKFILL] if args.v3_commit == "manifest" else [])
    out = [build(c, target, args.work, rng, lib, args.v3_commit) for c in colls]
    print(json.dumps({"storage": target.storage, "expected": out}))


if __name__ == "__main__":
    main()
