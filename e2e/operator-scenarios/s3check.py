"""Helpers of e2e/operator-scenarios.sh: S3 checks and binlog tampering on the dataset's ground truth.

  s3check.py pick EXPECTED COLL                      -> prints one segment id (the smallest)
  s3check.py stash EXPECTED COLL SEG DIR             -> copies the segment's PK binlogs to DIR, deletes them
  s3check.py restore EXPECTED COLL SEG DIR           -> puts them back from DIR
  s3check.py outcomes BF_JSON                        -> the run's task outcome objects, one "task-attempt" per line
  s3check.py staged BF_JSON                          -> a staged run: partitions in status, the source read
      once (sourcePasses 1 in the stored result, exchange bytes written), the exchange deleted
  s3check.py precheck URI passed|CHECK             -> the stored precheck report passed, or failed at CHECK alone
  s3check.py check BF_JSON EXPECTED COLL RUN [--failed SEG --attempts N]
      status totals; per succeeded segment a manifest whose Parquet parts hold, row by row in
      the segment's storage order, the source's values of that row's key (nulls where the source
      has no row); no manifest for the failed segment
"""
import io, json, os, sys
import boto3
import pyarrow.parquet as pq

s3 = boto3.client("s3", endpoint_url="http://" + os.environ["S3_ENDPOINT"])
BUCKET = os.environ["S3_BUCKET"]
ROOT = os.environ.get("MILVUS_ROOT_PATH", "files")


def exp_of(path, coll):
    return json.load(open(path))[coll]


def pk_keys(exp, sid):
    s = exp["segments"][str(sid)]
    return [f"{ROOT}/insert_log/{exp['collectionId']}/{s['partitionId']}/{sid}/100/{lid}" for lid in s["pkBinlogLogIds"]]


def exists(key):
    try:
        s3.head_object(Bucket=BUCKET, Key=key)
        return True
    except s3.exceptions.ClientError:
        return False


def source_values(exp):
    """pk (as str) -> (score, label), from the local copy of the source Parquet file."""
    t = pq.read_table(exp["newField"]["local"], columns=["pk", "score", "label"], use_threads=False).to_pydict()
    return {str(k): (s, l) for k, s, l in zip(t["pk"], t["score"], t["label"])}


def check_rows(manifest, truth, values, where):
    """Checks every output row of one segment; returns how many matched a source row."""
    rows = {"score": [], "label": []}
    for f in manifest["files"]:
        t = pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=f["path"])["Body"].read()), use_threads=False)
        assert t.num_rows == f["rowCount"], (f["path"], t.num_rows, f["rowCount"])
        for c in rows:
            rows[c] += t.column(c).to_pylist()
    assert len(rows["score"]) == len(truth), (where, len(rows["score"]), len(truth))
    matched = 0
    for i, (key, got) in enumerate(zip(truth, zip(rows["score"], rows["label"]))):
        want = values.get(str(key))
        matched += want is not None
        assert got == (want or (None, None)), f"{where}: offset {i} key {key}: got {got}, want {want}"
    return matched


def main():

    cmd = sys.argv[1]
    if cmd == "pick":
        exp = exp_of(sys.argv[2], sys.argv[3])
        print(min(exp["segments"], key=int))
    elif cmd in ("stash", "restore"):
        exp, sid, d = exp_of(sys.argv[2], sys.argv[3]), sys.argv[4], sys.argv[5]
        os.makedirs(d, exist_ok=True)
        for key in pk_keys(exp, sid):
            f = os.path.join(d, key.replace("/", "_"))
            if cmd == "stash":
                open(f, "wb").write(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
                s3.delete_object(Bucket=BUCKET, Key=key)
                assert not exists(key), key
            else:
                s3.put_object(Bucket=BUCKET, Key=key, Body=open(f, "rb").read())
                assert exists(key), key
            print(f"{cmd}: {key}")
    elif cmd == "precheck":
        bucket, key = sys.argv[2].removeprefix("s3://").split("/", 1)
        r = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        failed = [c["check"] for c in r["checks"] if c["state"] == "failed"]
        want = sys.argv[3]
        if want == "passed":
            assert r["passed"] is True and not failed, r
            assert all(c["state"] != "notRun" for c in r["checks"] if c["check"] in ("collection", "source", "keys")), r
        else:
            assert r["passed"] is False and failed == [want], r
        print(f"precheck report {sys.argv[2]}: {'passed' if not failed else 'failed at ' + failed[0]}")
    elif cmd == "outcomes":
        st = json.load(open(sys.argv[2]))["status"]
        prefix = f"{ROOT}/backfill/{st['collectionId']}/{st['runId']}/outcomes/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for o in page.get("Contents", []):
                # {runId}-{task}-{attempt}.json
                name = o["Key"][len(prefix):].removesuffix(".json")
                task, attempt = name[len(st["runId"]) + 1:].split("-")
                print(f"{task}-{attempt}")
    elif cmd == "staged":
        st = json.load(open(sys.argv[2]))["status"]
        assert st.get("exchangePartitions", 0) >= 1, st
        assert "stage" not in st, f"a finished run has no stage: {st.get('stage')}"
        key = st["resultPath"].split("/", 3)[3]
        r = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert r["sourcePasses"] == 1, {k: r.get(k) for k in ("sourcePasses", "sourceBytesRead")}
        assert r["sourceBytesRead"] > 0 and r["exchangeBytesWritten"] > 0, r
        prefix = f"{ROOT}/backfill/{st['collectionId']}/{st['runId']}/exchange/"
        left = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount", 0)
        assert left == 0, f"{left} exchange object(s) left under {prefix}"
        print(f"staged ok: {st['exchangePartitions']} partition(s), source read once "
              f"({r['sourceBytesRead']} bytes), {r['exchangeBytesWritten']} exchange bytes, deleted")
    elif cmd == "check":
        bf, exp, run = json.load(open(sys.argv[2])), exp_of(sys.argv[3], sys.argv[4]), sys.argv[5]
        failed = sys.argv[sys.argv.index("--failed") + 1] if "--failed" in sys.argv else None
        attempts = int(sys.argv[sys.argv.index("--attempts") + 1]) if "--attempts" in sys.argv else None
        st = bf["status"]
        segs = exp["segments"]
        n = len(segs)
        nfail = 1 if failed else 0
        assert st["segments"]["total"] == n, st["segments"]
        assert st["segments"]["succeeded"] == n - nfail, st["segments"]
        assert st["segments"]["failed"] == nfail, st["segments"]
        fs = st.get("failedSegments") or []
        if failed:
            assert len(fs) == 1 and str(fs[0]["segmentId"]) == failed, fs
            assert fs[0]["attempts"] == attempts, fs
        else:
            assert not fs, fs
            total = sum(s["numRows"] for s in segs.values())
            assert st["rows"]["written"] == total, (st["rows"], total)
            assert st["rows"]["matched"] == exp["newField"]["matchedKeys"], st["rows"]
        coll = exp["collectionId"]
        values = source_values(exp)
        rows = matched = 0
        for sid, s in segs.items():
            key = f"backfill-out/{run}/{coll}/{s['partitionId']}/{sid}/new_field/manifest.json"
            if sid == failed:
                assert not exists(key), f"manifest of the failed segment exists: {key}"
                continue
            m = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            assert m["rowCount"] == s["numRows"], (key, m["rowCount"], s["numRows"])
            assert m["runId"] == st["runId"], (key, m["runId"], st["runId"])
            matched += check_rows(m, s["pks"], values, f"segment {sid}")
            rows += len(s["pks"])
        if not failed:
            assert matched == st["rows"]["matched"], (matched, st["rows"])
        print(f"status ok; {n - nfail} manifests and {rows} rows ({matched} matched) ok"
              + (f"; segment {failed} failed after {attempts} attempts" if failed else ""))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
    # pyarrow's C++ pools can abort the interpreter's teardown ("terminate called without an
    # active exception") after all checks passed; leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
