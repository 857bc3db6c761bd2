#!/usr/bin/env python3
"""gc_probe.py - does Milvus 2.3.5's garbage collector delete foreign files that milvus-backfill
puts under a segment's insert_log prefix? Run by gc-probe.sh against a Milvus started with a short
dataCoord.gc.interval / missingTolerance / dropTolerance (env as written by env-up.sh).

It creates two small flushed collections, puts test objects under their segments (and controls
that the GC must remove), drops the second collection, then polls the bucket and the Milvus log
for several GC rounds and reports which objects survived.
"""
import argparse
import calendar
import io
import json
import os
import re
import sys
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility
from pymilvus.grpc_gen import milvus_pb2

T0 = time.time()


def log(msg):
    print(f"[gc-probe +{time.time() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def make_collection(name, n):
    if utility.has_collection(name):
        utility.drop_collection(name)
    c = Collection(name, CollectionSchema([
        FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
        FieldSchema("vec", DataType.FLOAT_VECTOR, dim=4)]), shards_num=1)
    c.insert([list(range(n)), [[float(i), 0.0, 1.0, 2.0] for i in range(n)]])
    c.flush()
    h = connections._fetch_handler("default")
    segs = [i for i in h.get_persistent_segment_infos(name)]
    assert len(segs) == 1, segs
    r = h._stub.DescribeCollection(milvus_pb2.DescribeCollectionRequest(collection_name=name))
    pk_fid = [f.fieldID for f in r.schema.fields if f.is_primary_key][0]
    return c, segs[0], pk_fid


def parquet_bytes():
    b = io.BytesIO()
    pq.write_table(pa.table({"score": pa.array([1.5, 2.5, None])}), b)
    return b.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=int, required=True)
    ap.add_argument("--missing", type=int, required=True)
    ap.add_argument("--drop", type=int, required=True)
    ap.add_argument("--milvus-log", required=True, help="Milvus stdout log (its main log)")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--max-wait", type=int, default=0, help="seconds; default derived from the GC settings")
    ap.add_argument("--scans", type=int, default=3, help="GC scans to see after the objects passed missingTolerance")
    a = ap.parse_args()

    bucket, root = os.environ["S3_BUCKET"], os.environ["MILVUS_ROOT_PATH"]
    s3 = boto3.client("s3", endpoint_url="http://" + os.environ["S3_ENDPOINT"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))

    def keys(prefix=root + "/"):
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["LastModified"] for o in page.get("Contents", [])})
        return out

    connections.connect("default", uri=os.environ["MILVUS_URI"])
    log_start = os.path.getsize(a.milvus_log)

    live, seg, pk = make_collection("gcprobe_live", 300)
    dropped, dseg, dpk = make_collection("gcprobe_dropped", 300)
    c, p, s = seg.collectionID, seg.partitionID, seg.segmentID
    dc, dp, ds = dseg.collectionID, dseg.partitionID, dseg.segmentID
    log(f"live segment {c}/{p}/{s}, segment to be dropped {dc}/{dp}/{ds}")
    milvus_keys = keys()
    real_live = sorted(k for k in milvus_keys if f"/{c}/{p}/{s}/" in k)
    real_dropped = sorted(k for k in milvus_keys if f"/{dc}/{dp}/{ds}/" in k)
    pk_binlog = sorted(k for k in real_live if k.startswith(f"{root}/insert_log/{c}/{p}/{s}/{pk}/"))[0]
    binlog_bytes = s3.get_object(Bucket=bucket, Key=pk_binlog)["Body"].read()

    ins, par = f"{root}/insert_log/{c}/{p}/{s}", f"{root}/insert_log/{c}/{p}"
    dins = f"{root}/insert_log/{dc}/{dp}/{ds}"
    manifest = json.dumps({"probe": True, "segment": s}).encode()
    # label -> (key, body, what a "foreign files are safe" design needs)
    tests = {
        "live/new_field/part": (f"{ins}/new_field/binlog_0/task_x_0/part-00000.parquet", parquet_bytes(),
                                "foreign Parquet under a live segment (the project's layout)"),
        "live/new_field/manifest": (f"{ins}/new_field/manifest.json", manifest,
                                    "foreign manifest under a live segment (the project's layout)"),
        "live/new_field/numeric": (f"{ins}/{pk}99/999999", binlog_bytes,
                                   "fake binlog of an unknown field ID under a live segment"),
        "control/live/fake_binlog": (f"{ins}/{pk}/999999", binlog_bytes,
                                     "fake binlog in a real field dir of a live segment (not in meta)"),
        "control/unknown_segment": (f"{par}/999999999/{pk}/999999", binlog_bytes,
                                    "fake binlog under a segment ID that does not exist"),
        "control/live/fake_stats": (f"{root}/stats_log/{c}/{p}/{s}/{pk}/999999", b'{"fieldID":100}',
                                    "fake stats log of a live segment"),
        "control/live/fake_delta": (f"{root}/delta_log/{c}/{p}/{s}/999999", binlog_bytes,
                                    "fake delta log of a live segment"),
        "outside/backfill_prefix": (f"{root}/backfill/{c}/{p}/{s}/new_field/manifest.json", manifest,
                                    "foreign file outside insert_log/stats_log/delta_log"),
        "dropped/new_field/part": (f"{dins}/new_field/binlog_0/task_x_0/part-00000.parquet", parquet_bytes(),
                                   "foreign Parquet under a segment of a dropped collection"),
        "dropped/new_field/manifest": (f"{dins}/new_field/manifest.json", manifest,
                                       "foreign manifest under a segment of a dropped collection"),
    }
    for label, (key, body, _) in tests.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    t_put = time.time()
    log(f"put {len(tests)} test objects; dropping collection gcprobe_dropped")
    utility.drop_collection("gcprobe_dropped")
    t_drop = time.time()

    max_wait = a.max_wait or (a.missing + a.drop + 8 * a.interval + 30)
    removed_at = {}
    gone_real = {}
    scan_re = re.compile(r"scan file to do garbage collection")
    while True:
        time.sleep(min(5, a.interval))
        now = keys()
        el = time.time() - t_put
        for label, (key, _, _) in tests.items():
            if key not in now and label not in removed_at:
                removed_at[label] = round(el, 1)
                log(f"removed: {label} ({key})")
        for k in real_live + real_dropped:
            if k not in now and k not in gone_real:
                gone_real[k] = round(el, 1)
        with open(a.milvus_log, errors="replace") as f:
            f.seek(log_start)
            text = f.read()
        scans = [l for l in text.splitlines() if scan_re.search(l)]
        # Scans that started after every test object was older than missingTolerance.
        late_scans = 0
        for l in scans:
            m = re.match(r"\[(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)", l)
            if m:
                ts = calendar.timegm(time.strptime(" ".join(m.groups()[:6]), "%Y %m %d %H %M %S"))  # UTC
                if ts > t_put + a.missing:
                    late_scans += 1
        dropped_done = all(k in gone_real for k in real_dropped)
        if late_scans >= a.scans and dropped_done:
            log(f"done: {late_scans} GC scans after the tolerance; the dropped segment's binlogs are gone")
            break
        if el > max_wait:
            log(f"max wait {max_wait}s reached ({late_scans} GC scans after the tolerance)")
            break

    final = keys()
    result = {
        "config": {"dataCoord.gc.interval": a.interval, "dataCoord.gc.missingTolerance": a.missing,
                   "dataCoord.gc.dropTolerance": a.drop},
        "liveSegment": {"collection": c, "partition": p, "segment": s, "pkField": pk},
        "droppedSegment": {"collection": dc, "partition": dp, "segment": ds},
        "droppedAfterPutSeconds": round(t_drop - t_put, 1),
        "waitedSeconds": round(time.time() - t_put, 1),
        "gcScansSeen": len(scans),
        "gcScansAfterTolerance": late_scans,
        "objects": {label: {"key": key, "what": what, "survived": key in final,
                            "removedAfterSeconds": removed_at.get(label)}
                    for label, (key, _, what) in tests.items()},
        "milvusOwnFiles": {
            "liveSegment": {"count": len(real_live), "survived": sum(k in final for k in real_live)},
            "droppedSegment": {"count": len(real_dropped), "survived": sum(k in final for k in real_dropped),
                               "removedAfterSeconds": sorted(set(gone_real[k] for k in real_dropped
                                                                 if k in gone_real))},
        },
        "logLines": [l[:2000] for l in text.splitlines()
                     if re.search(r"GC segment|scan file to do garbage|parse segment id error|failed to remove", l)][:40],
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)

    print("\nGC probe verdict (Milvus 2.3.5, gc.interval=%ds missingTolerance=%ds dropTolerance=%ds, "
          "waited %ds, %d GC scans, %d after the tolerance):" % (
              a.interval, a.missing, a.drop, result["waitedSeconds"], len(scans), late_scans))
    for label, o in result["objects"].items():
        state = "SURVIVED" if o["survived"] else f"REMOVED after {o['removedAfterSeconds']}s"
        print(f"  {state:22} {label:28} {o['key']}")
    mf = result["milvusOwnFiles"]
    print(f"  Milvus' own files: live segment {mf['liveSegment']['survived']}/{mf['liveSegment']['count']} "
          f"survived; dropped segment {mf['droppedSegment']['survived']}/{mf['droppedSegment']['count']} "
          f"survived")
    obj = result["objects"]
    controls_ok = all(not o["survived"] for l, o in obj.items() if l.startswith("control/") and l != "control/live/fake_binlog")
    live_ok = all(o["survived"] for l, o in obj.items() if l.startswith("live/"))
    if not controls_ok:
        verdict = "INCONCLUSIVE: the GC did not remove the controls (did it run?)"
    elif live_ok:
        verdict = ("foreign files under a LIVE segment's insert_log prefix SURVIVED %d GC scans past missingTolerance "
                   "(controls under stats_log/delta_log/unknown segment were removed, so the GC did run)" % late_scans)
    else:
        verdict = "some foreign files under a LIVE segment were REMOVED by the GC"
    result["verdict"] = verdict
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"  VERDICT: {verdict}")
    print(f"  details: {a.out}")


if __name__ == "__main__":
    main()
