//! The plan: what a run reads and writes, computed once by the planner and handed to workers
//! as tasks. Data only; the bucket keys of all of it are in [`crate::layout`].

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::place::{Place, S3Endpoint};

/// The two primary key types Milvus supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PkType {
    Int64,
    VarChar,
}

impl PkType {
    /// From `schemapb.DataType`.
    pub fn from_milvus(data_type: i32) -> Option<Self> {
        match data_type {
            5 => Some(Self::Int64),
            21 => Some(Self::VarChar),
            _ => None,
        }
    }

    /// The source `pk` column types that join with this key type, for error messages.
    pub fn expected_arrow(self) -> &'static str {
        match self {
            Self::Int64 => "Int64 (parquet INT64)",
            Self::VarChar => "Utf8 or LargeUtf8 (parquet BYTE_ARRAY/UTF8)",
        }
    }
}

/// How StorageV3 outputs reach Milvus (`spec.output.v3Commit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
// No schema description: kube's OptionalEnum transform would put it over the field's doc
// comment in the CRD (`kubectl explain`), which says more.
#[schemars(description = "")]
pub enum V3CommitMode {
    /// The result carries `ops`; DataCoord applies them onto the current manifest.
    #[default]
    Ops,
    /// The run publishes `manifest-{N+1}.avro` itself; the result carries `version`/`sourceVersion`.
    Manifest,
}

impl V3CommitMode {
    pub fn is_ops(&self) -> bool {
        *self == Self::Ops
    }
}

/// How a matched or unmatched row's new value is chosen (`spec.mode`), with the reference's
/// semantics. Every mode is the segment LEFT JOIN the source on the key; "existing" is the
/// value the segment already holds for the field (null when the field has no data yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
// No schema description: kube's OptionalEnum transform would put it over the field's doc
// comment in the CRD (`kubectl explain`), which says more.
#[schemars(description = "")]
pub enum Mode {
    /// Matched rows take the source's value (null included); unmatched rows become null.
    Replace,
    /// An existing non-null value wins; otherwise the source's value (null when unmatched).
    #[default]
    Coalesce,
    /// Matched rows take the source's value (null included); unmatched rows keep theirs.
    Overwrite,
}

impl Mode {
    /// Plans written before modes existed joined as `replace`.
    pub fn of_older_plans() -> Self {
        Self::Replace
    }
    /// Whether the run reads the fields' existing values from the segments.
    pub fn reads_existing(self) -> bool {
        self != Self::Replace
    }
    /// The field IDs whose existing values a segment's plan lists: none in `replace`.
    pub fn fields_to_read(self, fields: &[NewField]) -> Vec<i64> {
        if !self.reads_existing() {
            return Vec::new();
        }
        fields.iter().filter_map(|f| f.field_id).collect()
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Replace => "replace",
            Self::Coalesce => "coalesce",
            Self::Overwrite => "overwrite",
        }
    }
}

/// Rows per write batch, never zero (Parquet row groups are multiples of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchSize(NonZeroU32);

impl BatchSize {
    pub const DEFAULT: Self = Self(NonZeroU32::new(crate::spec::DEFAULT_BATCH_SIZE).unwrap());

    pub fn new(rows: u32) -> Option<Self> {
        NonZeroU32::new(rows).map(Self)
    }
    pub fn rows(self) -> usize {
        self.0.get() as usize
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PkField {
    pub field_id: i64,
    pub name: String,
    pub pk_type: PkType,
    /// 8, 16 or 32 when the join key is a physical Int8/Int16/Int32 field (`spec.joinKey`): the
    /// source's key column has that width, and the keys of both sides are widened to Int64 as
    /// they are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int_width: Option<u8>,
    /// The join key is a field other than the primary key (`spec.joinKey`): without
    /// `columnMapping`, the source's key column is named like the field, not `pk`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub physical: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewField {
    pub name: String,
    /// Arrow type of the source column, as Arrow prints it (e.g. `Float64`, `Utf8`).
    #[serde(rename = "type")]
    pub arrow_type: String,
    /// The field's ID in the collection schema (StorageV2/V3 outputs name or tag columns by
    /// it); `None` in the export layout, whose fields are not in the schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_id: Option<i64>,
    /// The source column, when `spec.columnMapping` renames it to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_column: Option<String>,
    /// The vector field this column fills, when it fills one: its values are normalized to
    /// Milvus' per-row bytes as they are read (`type` stays the source column's type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<VectorTarget>,
}

/// A vector field of the collection schema, as a new field fills it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VectorTarget {
    pub kind: VectorKind,
    /// The schema's `dim` (0 for sparse vectors, which have none).
    #[serde(default)]
    pub dim: u32,
}

/// The vector types of `schemapb.DataType`, by their protobuf names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VectorKind {
    BinaryVector,
    FloatVector,
    Float16Vector,
    BFloat16Vector,
    SparseFloatVector,
    Int8Vector,
}

impl VectorTarget {
    /// The bytes of one row of a dense vector; `None` for sparse vectors, whose rows vary.
    pub fn row_bytes(&self) -> Option<usize> {
        let dim = self.dim as usize;
        Some(match self.kind {
            VectorKind::FloatVector => dim * 4,
            VectorKind::BinaryVector => dim / 8,
            VectorKind::Float16Vector | VectorKind::BFloat16Vector => dim * 2,
            VectorKind::Int8Vector => dim,
            VectorKind::SparseFloatVector => return None,
        })
    }
}

impl NewField {
    /// The source column that holds this field's values: `spec.columnMapping` may name a
    /// column other than the field.
    pub fn column(&self) -> &str {
        self.source_column.as_deref().unwrap_or(&self.name)
    }
}

/// The join key's source column when `spec.columnMapping` does not name one.
pub const DEFAULT_KEY_COLUMN: &str = "pk";

/// The join key's source column, given the plan's optional `sourceKeyColumn`.
pub fn key_column_of(c: &Option<String>) -> &str {
    c.as_deref().unwrap_or(DEFAULT_KEY_COLUMN)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceFile {
    pub key: String,
    pub size: u64,
    pub rows: u64,
    /// Index of this file's first row among all source rows (files in plan order).
    pub first_row: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binlog {
    pub key: String,
    pub log_id: i64,
    pub size: u64,
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentPlan {
    pub segment_id: i64,
    pub partition_id: i64,
    pub partition_name: String,
    pub num_rows: u64,
    /// 0 = V1 (also when Milvus does not report it), 2 = V2, 3 = V3.
    pub storage_version: i64,
    /// The primary key binlogs in row order (numeric log ID).
    pub pk_binlogs: Vec<Binlog>,
    /// Directory (key prefix) of this segment's outputs ([`crate::layout::segment_output_dir`]).
    pub output_dir: String,
    /// Set for a StorageV3 segment: its rows are read from these files, not from `pk_binlogs`,
    /// and its outputs are loon column files under the base path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v3: Option<V3Segment>,
    /// The new fields this segment already holds data for, and where (planned only when the
    /// mode reads existing values); a field not listed reads as all null.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub existing: Vec<ExistingColumn>,
}

/// A new field's existing values in a segment: the files of the column group holding it, in
/// row order, each a row range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExistingColumn {
    pub field_id: i64,
    pub files: Vec<V3File>,
}

/// A StorageV3 segment as of one manifest version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V3Segment {
    /// Bucket-relative `{root}/insert_log/{coll}/{part}/{seg}`.
    pub base_path: String,
    /// The manifest version the rows were read at (the snapshot's `ver`).
    pub manifest_version: i64,
    /// The primary key's column group: its files in manifest order, each a row range.
    pub pk_files: Vec<V3File>,
}

/// One data file of a column group and the rows `[start_index, end_index)` it contributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V3File {
    /// Bucket key.
    pub key: String,
    pub start_index: u64,
    pub end_index: u64,
}

impl V3Segment {
    pub fn rows(&self) -> u64 {
        self.pk_files
            .iter()
            .map(|f| f.end_index.saturating_sub(f.start_index))
            .sum()
    }
    /// `{base}/_data/`: where a segment's loon data files are.
    pub fn data_dir(&self) -> String {
        format!("{}/_data/", self.base_path)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedSegment {
    pub segment_id: i64,
    pub partition_id: i64,
    pub num_rows: i64,
    pub reason: String,
}

/// Everything a worker needs to process segments without asking Milvus.
/// It holds no secrets: those come from the worker's environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub run_id: String,
    pub database: String,
    pub collection_name: String,
    pub collection_id: i64,
    /// Set when `spec.milvus.partition` names one partition.
    pub partition_id: Option<i64>,
    /// `CollectionSchema.version` (0 before Milvus 2.6.8).
    pub schema_version: i32,
    pub pk_field: PkField,
    /// The source column of the join key, when `spec.columnMapping` names one (else `pk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key_column: Option<String>,
    pub new_fields: Vec<NewField>,
    /// `spec.mode`, frozen at planning.
    #[serde(default = "Mode::of_older_plans")]
    pub mode: Mode,
    pub storage: S3Endpoint,
    pub storage_bucket: String,
    pub root_path: String,
    pub source: S3Endpoint,
    pub source_place: Place,
    pub source_files: Vec<SourceFile>,
    pub source_rows: u64,
    pub output_place: Place,
    /// Frozen at planning (`spec.batchSize` is immutable for that reason).
    pub batch_size: BatchSize,
    pub parallelism: u32,
    /// `spec.memoryMiB`: what one pass over the source may hold.
    #[serde(default = "default_memory_mib", rename = "memoryMiB")]
    pub memory_mib: u32,
    #[serde(default, skip_serializing_if = "V3CommitMode::is_ops")]
    pub v3_commit: V3CommitMode,
    pub segments: Vec<SegmentPlan>,
    pub skipped: Vec<SkippedSegment>,
    /// Segments that failed planning (unsupported format, binlogs not matching
    /// `num_rows`); the run reports them as failed.
    pub failed: Vec<SkippedSegment>,
    pub warnings: Vec<String>,
    /// What the lifecycle's steps before planning did (flush, addFields, snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifecycle: Vec<crate::lifecycle::StepRecord>,
}

/// The plan fields every task carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPlan {
    pub run_id: String,
    pub collection_id: i64,
    pub pk_field: PkField,
    /// The source column of the join key, when `spec.columnMapping` names one (else `pk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key_column: Option<String>,
    pub new_fields: Vec<NewField>,
    /// `spec.mode`, frozen at planning.
    #[serde(default = "Mode::of_older_plans")]
    pub mode: Mode,
    pub storage: S3Endpoint,
    pub storage_bucket: String,
    pub source: S3Endpoint,
    pub source_place: Place,
    pub source_files: Vec<SourceFile>,
    pub output_place: Place,
    pub batch_size: BatchSize,
    pub root_path: String,
    #[serde(default = "default_memory_mib", rename = "memoryMiB")]
    pub memory_mib: u32,
    #[serde(default, skip_serializing_if = "V3CommitMode::is_ops")]
    pub v3_commit: V3CommitMode,
}

impl Plan {
    /// The source column of the join key.
    pub fn key_column(&self) -> &str {
        key_column_of(&self.source_key_column)
    }
}

/// The memory one pass over the source may hold when the spec does not say (`spec.memoryMiB`).
pub const DEFAULT_MEMORY_MIB: u32 = 384;

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

impl TaskPlan {
    pub fn from_plan(p: &Plan) -> Self {
        Self {
            run_id: p.run_id.clone(),
            collection_id: p.collection_id,
            pk_field: p.pk_field.clone(),
            source_key_column: p.source_key_column.clone(),
            new_fields: p.new_fields.clone(),
            mode: p.mode,
            storage: p.storage.clone(),
            storage_bucket: p.storage_bucket.clone(),
            source: p.source.clone(),
            source_place: p.source_place.clone(),
            source_files: p.source_files.clone(),
            output_place: p.output_place.clone(),
            batch_size: p.batch_size,
            root_path: p.root_path.clone(),
            memory_mib: p.memory_mib,
            v3_commit: p.v3_commit,
        }
    }

    pub fn source_rows(&self) -> u64 {
        self.source_files.iter().map(|f| f.rows).sum()
    }
    /// The source column of the join key.
    pub fn key_column(&self) -> &str {
        key_column_of(&self.source_key_column)
    }
}

/// One unit of work: what `milvus-backfill segment --task` executes. A controller stores one
/// object per attempt ([`crate::layout::RunLayout::task_key`]), since the attempt names the
/// part files and the outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: String,
    /// Retry attempt; part files of different attempts never overwrite each other.
    pub attempt: u32,
    #[serde(flatten)]
    pub plan: TaskPlan,
    pub segments: Vec<SegmentPlan>,
    /// The task's stage in a routed run ([`crate::stage`]); `None`: its segments read the
    /// source themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<crate::stage::Stage>,
}

/// The partition ID the result JSON reports: the one all segments share, else 0
/// (never -1, which Milvus' commit rejects for multi-partition results).
pub fn shared_partition(segments: impl IntoIterator<Item = i64>) -> i64 {
    let mut it = segments.into_iter();
    match it.next() {
        Some(first) if it.all(|p| p == first) => first,
        _ => 0,
    }
}

/// A small plan for unit tests of both binaries (not part of the contract).
#[doc(hidden)]
pub fn sample_plan() -> Plan {
    let ep = S3Endpoint {
        endpoint: "e".into(),
        region: "r".into(),
        use_ssl: false,
    };
    Plan {
        run_id: "r1".into(),
        database: "default".into(),
        collection_name: "c".into(),
        collection_id: 10,
        partition_id: None,
        schema_version: 0,
        pk_field: PkField {
            int_width: None,
            physical: false,
            field_id: 100,
            name: "id".into(),
            pk_type: PkType::Int64,
        },
        source_key_column: None,
        mode: Mode::Replace,
        new_fields: vec![NewField {
            vector: None,
            name: "score".into(),
            arrow_type: "Float64".into(),
            field_id: None,
            source_column: None,
        }],
        storage: ep.clone(),
        storage_bucket: "b".into(),
        root_path: "files".into(),
        source: ep,
        source_place: Place::Local { path: "/x".into() },
        source_files: vec![],
        source_rows: 0,
        output_place: Place::Storage { prefix: String::new() },
        batch_size: BatchSize::new(10).unwrap(),
        parallelism: 1,
        memory_mib: DEFAULT_MEMORY_MIB,
        v3_commit: V3CommitMode::Ops,
        segments: vec![],
        skipped: vec![],
        failed: vec![],
        warnings: vec![],
        lifecycle: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_partition_is_never_negative() {
        assert_eq!(shared_partition([5, 5]), 5);
        assert_eq!(shared_partition([5, 6]), 0);
        assert_eq!(shared_partition([]), 0);
    }

    #[test]
    fn a_zero_batch_size_does_not_parse() {
        assert!(serde_json::from_str::<BatchSize>("0").is_err());
        assert_eq!(serde_json::from_str::<BatchSize>("64").unwrap().rows(), 64);
        assert_eq!(BatchSize::DEFAULT.rows(), 1024);
        assert_eq!(BatchSize::new(0), None);
    }

    #[test]
    fn pk_types_from_milvus() {
        assert_eq!(PkType::from_milvus(5), Some(PkType::Int64));
        assert_eq!(PkType::from_milvus(21), Some(PkType::VarChar));
        assert_eq!(PkType::from_milvus(10), None);
    }
}
