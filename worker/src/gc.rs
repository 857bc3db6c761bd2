//! What Milvus' garbage collector does to files we write beside its binlogs.
//! Measured on a real Milvus 2.3.5 by `e2e/gc-probe.sh`; see e2e/GC-FINDINGS.md.

/// Printed by `plan` and `run` when outputs go to the default place under `insert_log/`.
pub const DEFAULT_OUTPUT_WARNING: &str =
    "outputs go under Milvus' insert_log/ prefix: Milvus' garbage collector keeps them \
while their segment exists, but once a compaction or a drop removes the segment it deletes new_field/manifest.json \
(after dataCoord.gc.missingTolerance, 1 h by default) and leaves the part files behind; set spec.output.path outside \
Milvus' prefixes (e.g. s3://<bucket>/backfill-out) to make outputs independent of segment lifetimes";
