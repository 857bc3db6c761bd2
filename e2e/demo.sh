#!/usr/bin/env bash
# The demo: a real Milvus 2.3.5 on a loopback S3 server (started by `make env-up`),
# a demo collection with several partitions, segments and deletes, a new-field
# Parquet covering part of its keys, then `milvus-backfill plan` and `run`.
# The environment stays up afterwards: `make env-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
MB_HOME=${MB_HOME:-$HOME/.cache/milvus-backfill}
# shellcheck disable=SC1091
source "$MB_HOME/e2e/env"
OUT=$PWD/target/demo
mkdir -p "$OUT"
echo "== creating the demo collections (demo_int64, demo_varchar)"
"$MB_PY" e2e/dataset.py --out "$OUT" --name demo >"$OUT/dataset.log" 2>&1 || { cat "$OUT/dataset.log"; exit 1; }
cat >"$OUT/backfill.yaml" <<YAML
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata:
  name: demo-add-score-label
  namespace: default
spec:
  milvus:
    uri: $MILVUS_URI
    collection: demo_int64
  storage:
    endpoint: $S3_ENDPOINT
    bucket: $S3_BUCKET
    rootPath: $MILVUS_ROOT_PATH
  source:
    path: s3://$DATA_BUCKET/demo_int64/multi/
  output:
    path: s3://$S3_BUCKET/backfill-out/demo
  batchSize: 1024
  parallelism: 2
YAML
echo "== $OUT/backfill.yaml"
cat "$OUT/backfill.yaml"
echo "== milvus-backfill plan"
target/release/milvus-backfill plan -f "$OUT/backfill.yaml"
echo "== milvus-backfill run"
target/release/milvus-backfill run -v -f "$OUT/backfill.yaml" --result "$OUT/result.json"
echo "== result JSON: $OUT/result.json; stop the environment with: make env-down"
