"""Helpers of e2e/operator-scenarios.sh: S3 checks and binlog tampering on the dataset's ground truth.

  s3check.py pick EXPECTED COLL                      -> prints one segment id (the smallest)
  s3check.py stash EXPECTED COLL SEG DIR             -> copies the segment's PK binlogs to DIR, deletes them
  s3check.py restore EXPECTED COLL SEG DIR           -> puts them back from DIR
  s3check.py check BF_JSON EXPECTED COLL RUN [--failed SEG --attempts N]
      status totals + a manifest per succeeded segment (and none for the failed one)
"""
import json, os, sys
import boto3

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
        for sid, s in segs.items():
            key = f"backfill-out/{run}/{coll}/{s['partitionId']}/{sid}/new_field/manifest.json"
            if sid == failed:
                assert not exists(key), f"manifest of the failed segment exists: {key}"
                continue
            m = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            assert m["rowCount"] == s["numRows"], (key, m["rowCount"], s["numRows"])
        print(f"status ok; {n - nfail} manifests ok" + (f"; segment {failed} failed after {attempts} attempts" if failed else ""))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
