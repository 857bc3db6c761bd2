"""The bucket side of control-plane-check.sh: seed a plan, write worker outcomes, read objects."""
import json, os, sys, boto3
from botocore.config import Config

s3 = boto3.client("s3", endpoint_url=os.environ["MBO_S3_URL"], aws_access_key_id=os.environ["MBO_S3_AK"],
                  aws_secret_access_key=os.environ["MBO_S3_SK"], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
RUN, COLL, B = "20261127t042500-abc123", 4242, "milvus-bucket"
PREFIX = f"files/backfill/{COLL}/{RUN}"
ep = {"endpoint": os.environ["MBO_S3_URL"].split("//")[1], "region": "us-east-1", "useSSL": False}

def seg(i):
    sid = 1000 + i
    return {"segmentId": sid, "partitionId": 1, "partitionName": "_default", "numRows": 100,
            "storageVersion": 0,
            "pkBinlogs": [{"key": f"files/insert_log/{COLL}/1/{sid}/100/1", "logId": 1, "size": 10, "rows": 100}],
            "outputDir": f"files/insert_log/{COLL}/1/{sid}/new_field"}

def plan(n):
    return {"runId": RUN, "database": "default", "collectionName": "c", "collectionId": COLL,
            "partitionId": None, "schemaVersion": 0,
            "pkField": {"fieldId": 100, "name": "id", "pkType": "Int64"},
            "newFields": [{"name": "score", "type": "Float64"}],
            "storage": ep, "storageBucket": B, "rootPath": "files", "source": ep,
            "sourcePlace": {"kind": "bucket", "bucket": "data", "prefix": "new.parquet"},
            "sourceFiles": [], "sourceRows": 1000,
            "outputPlace": {"kind": "storage", "prefix": ""}, "batchSize": 1024, "parallelism": 2,
            "segments": [seg(i) for i in range(n)], "skipped": [], "failed": [], "warnings": []}

def outcome(task, attempt, ok):
    sid = 1000 + task
    o = {"taskId": f"{RUN}-{task}", "attempt": attempt, "success": ok, "segments": [],
         "failedSegments": [], "usedSourceRows": 70 if ok else 0, "executionTimeMs": 12}
    if ok:
        o["segments"] = [{"segmentId": sid, "partitionId": 1, "rowCount": 100, "matchedRowCount": 70,
                          "outputPath": f"s3://{B}/files/insert_log/{COLL}/1/{sid}/new_field",
                          "manifestPaths": [f"s3://{B}/files/insert_log/{COLL}/1/{sid}/new_field/manifest.json"],
                          "executionTimeMs": 10}]
    else:
        o["failedSegments"] = [{"segmentId": sid, "partitionId": 1, "kind": "DataReadError", "reason": "boom"}]
    return o

def put(key, obj):
    s3.put_object(Bucket=B, Key=key, Body=json.dumps(obj).encode())

def get(key):
    return json.loads(s3.get_object(Bucket=B, Key=key)["Body"].read())

cmd = sys.argv[1]
if cmd == "seed":
    put(f"{PREFIX}/plan.json", plan(int(sys.argv[2])))
elif cmd == "outcome":
    t, a, ok = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "ok"
    put(f"{PREFIX}/outcomes/{RUN}-{t}-{a}.json", outcome(t, a, ok))
elif cmd == "ls":
    for o in s3.list_objects_v2(Bucket=B, Prefix=PREFIX).get("Contents", []):
        print(o["Key"], o["Size"])
elif cmd == "exists":
    try:
        s3.head_object(Bucket=B, Key=sys.argv[2]); print("yes")
    except Exception:
        print("no")
elif cmd == "get":
    print(json.dumps(get(sys.argv[2]), indent=1))
