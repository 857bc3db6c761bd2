#!/usr/bin/env python3
"""dataset.py - build the end-to-end dataset of milvus-backfill in a running Milvus 2.3.5.

Usage (with the venv python, after `source $MB_STATE/env`):
    $MB_PY e2e/dataset.py --out DIR [--name demo] [--rows 6000] [--seed 20240611]

Env: MILVUS_URI, S3_ENDPOINT (host:port, no scheme), S3_BUCKET (Milvus' bucket), DATA_BUCKET,
MILVUS_ROOT_PATH, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (as written by env-up.sh).

It (re)creates two collections (dropping them first) and records the ground truth:
  <name>_int64   id Int64 PK (not auto_id), vec FloatVector(8), title VarChar(64);
                 partitions _default (two insert+flush rounds -> two segments) and p1 (one round);
                 then a few deletes in each partition and a final flush.
  <name>_varchar pk VarChar(32) PK, vec FloatVector(4); one partition, one round, a few deletes.
  <name>_many    id Int64 PK, vec FloatVector(4); --many-segments insert+flush rounds of 100 rows
                 (one segment each), no deletes: the source is read once for all of them.
  <name>_growing id Int64 PK, vec FloatVector(4); 50 rows inserted and never flushed (DIR/growing.json).
Rows are inserted in shuffled PK order (fixed seed). After each flush the new segment IDs come
from GetPersistentSegmentInfo; a segment's row order is the insertion order (Milvus 2.3.5), and this
is cross-checked by decoding the PK binlogs from S3 (concatenated in numeric log-ID order).

Outputs: DIR/expected.json, DIR/<collection>.parquet (new fields pk/score/label), the same data in
s3://$DATA_BUCKET/<collection>/single.parquet and split into
s3://$DATA_BUCKET/<collection>/multi/part-0000{0,1,2}.parquet (row groups of 500), and bad inputs
DIR/bad_{dup,null,type,clash}_<collection>.parquet, DIR/bad_nopk.parquet (mirrored to
s3://$DATA_BUCKET/bad/). Re-runnable: everything is recreated.
"""
import argparse
import io
import json
import os
import random
import struct
import sys
import time
import zlib

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility
from pymilvus.grpc_gen import common_pb2, milvus_pb2

ALIAS = "default"
ROW_GROUP = 500


def log(msg):
    print(f"[dataset {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env(name, default=None):
    v = os.environ.get(name, default)
    if v is None:
        sys.exit(f"dataset.py: ${name} is not set (source $MB_STATE/env first)")
    return v


# --------------------------------------------------------------------------- new-field values
def score_of(key):
    """Deterministic score of a key: crc32(str(key)) % 100000 / 100; None when crc32 % 50 == 0."""
    h = zlib.crc32(str(key).encode())
    return None if h % 50 == 0 else (h % 100000) / 100.0


def label_of(key):
    return f"label-{key}"


SCORE_RULE = "crc32(utf8(str(key))) % 100000 / 100.0, null when crc32 % 50 == 0; label = 'label-' + str(key)"


# --------------------------------------------------------------------------- binlog decoding
def binlog_values(buf):
    """Decode a Milvus 2.3 V1 binlog: returns the concatenated column-0 values of its events."""
    magic, = struct.unpack_from("<i", buf, 0)
    if magic != 0xFFFABC:
        raise ValueError(f"bad binlog magic {magic:#x}")
    pos = 4
    _ts, typ, _elen, nxt = struct.unpack_from("<QbiI", buf, pos)   # descriptor event header
    if typ != 0:
        raise ValueError("first event is not a descriptor")
    pos = nxt
    out = []
    while pos < len(buf):
        _ts, typ, elen, nxt = struct.unpack_from("<QbiI", buf, pos)
        payload = bytes(buf[pos + 17 + 16: pos + elen])               # header 17 + start/end ts 16
        out.extend(pq.read_table(io.BytesIO(payload)).column(0).to_pylist())
        pos = nxt
    return out


class Store:
    def __init__(self):
        self.bucket = env("S3_BUCKET")
        self.data_bucket = env("DATA_BUCKET")
        self.root = env("MILVUS_ROOT_PATH", "files")
        self.s3 = boto3.client(
            "s3", endpoint_url="http://" + env("S3_ENDPOINT"),
            aws_access_key_id=env("AWS_ACCESS_KEY_ID"), aws_secret_access_key=env("AWS_SECRET_ACCESS_KEY"),
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            config=Config(s3={"addressing_style": "path"}))

    def list(self, bucket, prefix):
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def get(self, bucket, key):
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def put_table(self, key, table, row_group_size=None):
        b = io.BytesIO()
        pq.write_table(table, b, row_group_size=row_group_size)
        self.s3.put_object(Bucket=self.data_bucket, Key=key, Body=b.getvalue())

    def delete_prefix(self, bucket, prefix):
        keys = self.list(bucket, prefix)
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        return len(keys)

    def segment_binlogs(self, c, p, s):
        """{fieldID: [logID,...] sorted numerically} under insert_log/c/p/s/."""
        prefix = f"{self.root}/insert_log/{c}/{p}/{s}/"
        out = {}
        for k in self.list(self.bucket, prefix):
            rest = k[len(prefix):].split("/")
            if len(rest) == 2 and rest[0].isdigit() and rest[1].isdigit():
                out.setdefault(int(rest[0]), []).append(int(rest[1]))
        return {f: sorted(v) for f, v in out.items()}

    def read_binlog(self, c, p, s, f, log_id):
        return binlog_values(self.get(self.bucket, f"{self.root}/insert_log/{c}/{p}/{s}/{f}/{log_id}"))

    def segment_deleted(self, c, p, s):
        pks = []
        for k in sorted(self.list(self.bucket, f"{self.root}/delta_log/{c}/{p}/{s}/"),
                        key=lambda k: int(k.rsplit("/", 1)[1])):
            for v in binlog_values(self.get(self.bucket, k)):
                pks.append(json.loads(v)["pk"] if v.startswith("{") else int(v.split(",")[0]))
        return pks


# --------------------------------------------------------------------------- Milvus helpers
def handler():
    return connections._fetch_handler(ALIAS)


def segment_infos(name):
    return {i.segmentID: i for i in handler().get_persistent_segment_infos(name)}


def partition_ids(name):
    r = handler()._stub.ShowPartitions(milvus_pb2.ShowPartitionsRequest(collection_name=name))
    if r.status.error_code != 0:
        raise RuntimeError(f"ShowPartitions({name}): {r.status.reason}")
    return dict(zip(r.partition_names, r.partitionIDs))


def describe(name):
    r = handler()._stub.DescribeCollection(milvus_pb2.DescribeCollectionRequest(collection_name=name))
    if r.status.error_code != 0:
        raise RuntimeError(f"DescribeCollection({name}): {r.status.reason}")
    return r.collectionID, {f.name: f.fieldID for f in r.schema.fields}


def state_name(s):
    return common_pb2.SegmentState.Name(s)


class Builder:
    """Inserts rounds into one collection and records segments with their PK order."""

    def __init__(self, store, name, schema, pk_field, row_fn, rng):
        self.store, self.name, self.pk_field, self.row_fn, self.rng = store, name, pk_field, row_fn, rng
        if utility.has_collection(name):
            log(f"dropping existing collection {name}")
            utility.drop_collection(name)
        self.coll = Collection(name, schema, shards_num=1)
        self.coll_id, self.fields = describe(name)
        self.segments = {}      # segID -> record
        self.inserted = []      # all keys

    def round(self, keys, partition="_default", batch=500, pause=0.4):
        # Batches a little apart: the DataNode checks its insert buffer once per time tick
        # (~200 ms), so spaced batches let a small dataNode.segment.insertBufSize cut the
        # segment into several binlogs per field.
        known = set(segment_infos(self.name))
        for i in range(0, len(keys), batch):
            if i:
                time.sleep(pause)
            chunk = keys[i:i + batch]
            self.coll.insert(self.row_fn(chunk), partition_name=partition)
        t0 = time.time()
        self.coll.flush()
        infos = segment_infos(self.name)
        new = {sid: info for sid, info in infos.items() if sid not in known}
        if len(new) != 1:
            raise RuntimeError(f"{self.name}: round of {len(keys)} rows in {partition} produced segments "
                               f"{[(s, i.num_rows, state_name(i.state)) for s, i in new.items()]}, expected one")
        (sid, info), = new.items()
        pid = partition_ids(self.name)[partition]
        if state_name(info.state) != "Flushed" or info.num_rows != len(keys) or info.partitionID != pid:
            raise RuntimeError(f"{self.name}: segment {sid}: state {state_name(info.state)} rows {info.num_rows} "
                               f"partition {info.partitionID}; expected Flushed/{len(keys)}/{pid}")
        self.segments[sid] = {"partitionId": pid, "numRows": info.num_rows, "pks": list(keys)}
        self.inserted += keys
        log(f"{self.name}: {len(keys)} rows -> {partition} segment {sid} (flush {time.time() - t0:.1f}s)")
        return sid

    def delete(self, keys):
        if isinstance(keys[0], str):
            expr = f"{self.pk_field} in [{', '.join(json.dumps(k) for k in keys)}]"
        else:
            expr = f"{self.pk_field} in [{', '.join(str(k) for k in keys)}]"
        self.coll.delete(expr)
        self.coll.flush()
        log(f"{self.name}: deleted {len(keys)} keys and flushed")

    def verify_and_record(self, deleted):
        """Checks segments still match, decodes PK binlogs and delta logs, returns the expected entry."""
        infos = segment_infos(self.name)
        pk_fid = self.fields[self.pk_field]
        multi = 0
        for sid, seg in self.segments.items():
            info = infos.get(sid)
            if info is None or state_name(info.state) != "Flushed" or info.num_rows != seg["numRows"]:
                raise RuntimeError(f"{self.name}: segment {sid} changed after the deletes (compaction?): {info}")
            binlogs = self.store.segment_binlogs(self.coll_id, seg["partitionId"], sid)
            counts = {f: len(v) for f, v in binlogs.items()}
            if len(set(counts.values())) != 1 or pk_fid not in binlogs:
                raise RuntimeError(f"{self.name}: segment {sid}: uneven binlogs per field {counts}")
            rows, order = [], []
            for log_id in binlogs[pk_fid]:
                vals = self.store.read_binlog(self.coll_id, seg["partitionId"], sid, pk_fid, log_id)
                rows.append(len(vals))
                order += vals
            if order != seg["pks"]:
                raise RuntimeError(f"{self.name}: segment {sid}: PK binlog order differs from insertion order")
            seg["pkBinlogLogIds"] = binlogs[pk_fid]
            seg["binlogRows"] = rows
            seg["fieldBinlogCounts"] = {str(f): n for f, n in sorted(counts.items())}
            seg["deletedPks"] = self.store.segment_deleted(self.coll_id, seg["partitionId"], sid)
            multi += len(rows) > 1
            in_seg = set(seg["pks"])
            expect = sorted(k for k in deleted if k in in_seg)
            if sorted(k for k in seg["deletedPks"] if k in in_seg) != expect:
                log(f"WARNING {self.name}: segment {sid}: delta logs hold {seg['deletedPks']}, expected {expect}")
        extra = sorted(set(infos) - set(self.segments))
        if extra:
            raise RuntimeError(f"{self.name}: unexpected segments {extra}")
        return {
            "collectionId": self.coll_id,
            "pkField": self.pk_field,
            "pkType": "Int64" if isinstance(self.inserted[0], int) else "VarChar",
            "fields": self.fields,
            "partitions": partition_ids(self.name),
            "segments": {str(sid): seg for sid, seg in sorted(self.segments.items())},
            "deleted": list(deleted),
            "segmentsWithSeveralBinlogs": multi,
        }


# --------------------------------------------------------------------------- Parquet
def new_field_table(keys, pk_type):
    return pa.table({
        "pk": pa.array(keys, type=pk_type),
        "score": pa.array([score_of(k) for k in keys], type=pa.float64()),
        "label": pa.array([label_of(k) for k in keys], type=pa.string()),
    })


def write_new_fields(store, out, name, inserted, absent, pk_type, rng, extra_col):
    existing = rng.sample(inserted, round(len(inserted) * 0.7))
    keys = existing + absent
    rng.shuffle(keys)
    table = new_field_table(keys, pk_type)
    pq.write_table(table, os.path.join(out, f"{name}.parquet"))
    removed = store.delete_prefix(store.data_bucket, f"{name}/")
    if removed:
        log(f"removed {removed} old objects under s3://{store.data_bucket}/{name}/")
    store.put_table(f"{name}/single.parquet", table)
    n = table.num_rows
    cuts = [0, n // 3, 2 * n // 3, n]
    rg = max(1, min(ROW_GROUP, (n // 3) // 3))   # at least ~3 row groups per part file
    for i in range(3):
        store.put_table(f"{name}/multi/part-{i:05d}.parquet", table.slice(cuts[i], cuts[i + 1] - cuts[i]),
                        row_group_size=rg)

    # Bad inputs for error tests.
    head = keys[:50]
    bad = {}

    def put_bad(fname, t, why):
        pq.write_table(t, os.path.join(out, fname))
        store.put_table(f"bad/{fname}", t)
        bad[fname] = why

    put_bad(f"bad_dup_{name}.parquet", new_field_table(head + [head[3]], pk_type),
            f"key {head[3]!r} appears twice")
    t = new_field_table(head, pk_type)
    t = t.set_column(0, "pk", pa.array(head[:10] + [None] + head[11:], type=pk_type))
    put_bad(f"bad_null_{name}.parquet", t, "row 10 has a null pk")
    wrong = pa.string() if pk_type == pa.int64() else pa.int64()
    wrong_keys = [str(k) for k in head] if wrong == pa.string() else list(range(len(head)))
    t = new_field_table(head, pk_type).set_column(0, "pk", pa.array(wrong_keys, type=wrong))
    put_bad(f"bad_type_{name}.parquet", t, f"pk is {wrong}, the collection's pk is {pk_type}")
    t = new_field_table(head, pk_type).append_column(extra_col, pa.array([f"x{i}" for i in range(len(head))]))
    put_bad(f"bad_clash_{name}.parquet", t, f"new field {extra_col!r} already exists in the collection")

    return {
        "local": os.path.abspath(os.path.join(out, f"{name}.parquet")),
        "single": f"s3://{store.data_bucket}/{name}/single.parquet",
        "multi": f"s3://{store.data_bucket}/{name}/multi/",
        "multiFiles": [f"s3://{store.data_bucket}/{name}/multi/part-{i:05d}.parquet" for i in range(3)],
        "multiRowGroupSize": rg,
        "columns": {"pk": str(pk_type), "score": "double", "label": "string"},
        "rows": n,
        "matchedKeys": len(existing),
        "unmatchedKeys": len(absent),
        "nullScores": sum(score_of(k) is None for k in keys),
        "scoreRule": SCORE_RULE,
    }, bad


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="demo")
    ap.add_argument("--rows", type=int, default=6000, help="rows of <name>_int64 (varchar gets rows/4)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--many-segments", type=int, default=42, help="segments of <name>_many")
    a = ap.parse_args()
    if a.rows < 12:
        sys.exit("--rows must be >= 12")
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    rng = random.Random(a.seed)
    connections.connect(ALIAS, uri=env("MILVUS_URI"))
    store = Store()
    expected = {}

    # ---- <name>_int64
    name = f"{a.name}_int64"
    schema = CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=8),
        FieldSchema("title", DataType.VARCHAR, max_length=64),
    ], description="milvus-backfill e2e, int64 pk")

    def int_rows(keys):
        return [keys, [[rng.uniform(-1, 1) for _ in range(8)] for _ in keys],
                [f"title-{k}-" + "x" * (k % 23) for k in keys]]

    b = Builder(store, name, schema, "id", int_rows, rng)
    b.coll.create_partition("p1")
    keys = [3 * i + 1 for i in range(a.rows)]          # non-contiguous ids; 3*i and 3*i+2 never exist
    rng.shuffle(keys)
    n1, n2 = a.rows * 5 // 12, a.rows * 4 // 12
    rounds = [(keys[:n1], "_default"), (keys[n1:n1 + n2], "_default"), (keys[n1 + n2:], "p1")]
    segs = [b.round(k, p) for k, p in rounds]
    deleted = []
    for sid, n in zip(segs, (3, 2, 2)):
        deleted += rng.sample(b.segments[sid]["pks"], n)
    b.delete(deleted)
    expected[name] = b.verify_and_record(deleted)
    absent = [3 * rng.randrange(a.rows) for _ in range(a.rows // 20)] + \
             [10 ** 12 + i for i in range(a.rows // 20)]
    absent = sorted(set(absent))
    nf, bad = write_new_fields(store, a.out, name, b.inserted, absent, pa.int64(), rng, "title")
    expected[name]["newField"], expected[name]["badInputs"] = nf, bad

    # ---- <name>_varchar
    vname = f"{a.name}_varchar"
    vschema = CollectionSchema([
        FieldSchema("pk", DataType.VARCHAR, is_primary=True, auto_id=False, max_length=32),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4),
    ], description="milvus-backfill e2e, varchar pk")

    def vec4_rows(keys):
        return [keys, [[rng.uniform(-1, 1) for _ in range(4)] for _ in keys]]

    vb = Builder(store, vname, vschema, "pk", vec4_rows, rng)
    vrows = max(a.rows // 4, 12)
    vkeys = [f"key-{i:05d}" for i in range(vrows)]
    rng.shuffle(vkeys)
    vsid = vb.round(vkeys, batch=200)
    vdeleted = rng.sample(vb.segments[vsid]["pks"], 3)
    vb.delete(vdeleted)
    expected[vname] = vb.verify_and_record(vdeleted)
    vabsent = [f"absent-{i:05d}" for i in range(vrows // 10)]
    nf, bad = write_new_fields(store, a.out, vname, vb.inserted, vabsent, pa.string(), rng, "vec")
    expected[vname]["newField"], expected[vname]["badInputs"] = nf, bad

    # ---- <name>_many: many small segments
    mname = f"{a.name}_many"
    mschema = CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4),
    ], description="milvus-backfill e2e, many segments")
    mb = Builder(store, mname, mschema, "id", vec4_rows, rng)
    mkeys = [7 * i + 2 for i in range(a.many_segments * 100)]
    rng.shuffle(mkeys)
    for s in range(a.many_segments):
        mb.round(mkeys[s * 100:(s + 1) * 100], pause=0)
    expected[mname] = mb.verify_and_record([])
    nf, bad = write_new_fields(store, a.out, mname, mb.inserted, [7 * i + 5 for i in range(300)],
                               pa.int64(), rng, "vec")
    expected[mname]["newField"], expected[mname]["badInputs"] = nf, bad

    # ---- <name>_growing: rows inserted but never flushed (a Growing segment)
    gname = f"{a.name}_growing"
    if utility.has_collection(gname):
        utility.drop_collection(gname)
    gcoll = Collection(gname, CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4),
    ], description="milvus-backfill e2e, never flushed"))
    gkeys = list(range(1, 51))
    gcoll.insert([gkeys, [[rng.uniform(-1, 1) for _ in range(4)] for _ in gkeys]])
    with open(os.path.join(a.out, "growing.json"), "w") as f:
        json.dump({"collection": gname, "rows": len(gkeys)}, f)

    # ---- shared bad input: no pk column
    t = pa.table({"score": pa.array([1.0, 2.0]), "label": pa.array(["a", "b"])})
    pq.write_table(t, os.path.join(a.out, "bad_nopk.parquet"))
    store.put_table("bad/bad_nopk.parquet", t)

    if not any(e["segmentsWithSeveralBinlogs"] for e in expected.values()):
        log("WARNING: no segment has several binlogs per field (is dataNode.segment.insertBufSize small?)")
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)

    # ---- summary
    print(f"dataset written to {os.path.abspath(a.out)} in {time.time() - t_start:.1f}s")
    for cname, e in expected.items():
        print(f"  {cname}: collection {e['collectionId']}, partitions {e['partitions']}, "
              f"{len(e['deleted'])} deleted")
        for sid, s in e["segments"].items():
            print(f"    segment {sid}: partition {s['partitionId']}, {s['numRows']} rows, "
                  f"binlogs/field {len(s['binlogRows'])} {s['binlogRows']}, deletes {len(s['deletedPks'])}")
        nf = e["newField"]
        print(f"    new fields: {nf['rows']} rows ({nf['matchedKeys']} matched, {nf['unmatchedKeys']} absent, "
              f"{nf['nullScores']} null scores) -> {nf['local']}, {nf['single']}, {nf['multi']}")


if __name__ == "__main__":
    main()
