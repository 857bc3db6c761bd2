//! What Milvus' garbage collector does to files we write beside its binlogs.
//! See README "Milvus garbage collection and your outputs" for the measurement.

/// Printed by `plan` and `run` when outputs go to the default place under `insert_log/`.
pub const DEFAULT_OUTPUT_WARNING: &str =
    "outputs go under Milvus' insert_log/ prefix, which Milvus' garbage collector scans; \
see README (garbage collection) and set spec.output.path outside Milvus' prefixes to keep them safe";
