//! `spec.lifecycle`: the whole add-a-field job, declared. Every step is optional and
//! idempotent, and they always run in this order:
//!
//! `flush` → `addFields` → `snapshot` → backfill → `commit` → `createIndex` → `verify`
//!
//! The first three run where planning runs (`plan`, `run`, the planning Job); the last three
//! after the result is stored. [`steps`] lists what a spec declares, which `plan` prints
//! before anything runs; [`StepRecord`] is what each step did, kept in the local summary and
//! in the resource's status.
//!
//! `spec.flush`, `spec.commit` and `spec.milvus.snapshot.create` are older spellings of
//! `lifecycle.flush`, `lifecycle.commit` and `lifecycle.snapshot`; a spec may use either
//! spelling of a step, not both.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::{CommitSpec, EngineSpec};

/// VarChar `max_length` of a field `addFields` adds, when the spec gives none.
pub const DEFAULT_VARCHAR_MAX_LENGTH: u32 = 65_535;
/// Primary keys `verify` queries, when the spec gives no number.
pub const DEFAULT_VERIFY_SAMPLE: u32 = 100;
/// The most primary keys `verify` queries (one Query call per 1,000 of them).
pub const MAX_VERIFY_SAMPLE: u32 = 10_000;
/// The index type `createIndex` asks for when the spec names none.
pub const DEFAULT_INDEX_TYPE: &str = "AUTOINDEX";

/// The lifecycle's steps, each optional (see the module docs for the order).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifecycleSpec {
    /// Flush the collection before anything else, so that recent inserts are in sealed
    /// segments (Flush, then GetFlushState until done). Same as `spec.flush`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush: Option<bool>,
    /// Add every new field that is not in the collection's schema (AddCollectionField,
    /// Milvus 2.6+): nullable, its type from the source column. Fields that exist with the
    /// same type are left alone; a server without the call stops the run before anything is
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_fields: Option<AddFieldsSpec>,
    /// Create this snapshot (after the flush and the new fields) and plan from it: Milvus
    /// protects its segments from compaction while the backfill runs. Same as
    /// `spec.milvus.snapshot` with `name` and `create: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<LifecycleSnapshot>,
    /// Hand the stored result to Milvus (Milvus 3.0+). Same as `spec.commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSpec>,
    /// Indexes to build on new fields once the commit is done (CreateIndex; a field that has an
    /// index already keeps it). Needs the commit step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_index: Option<Vec<IndexSpec>>,
    /// After the commit, query a sample of the source's primary keys through Milvus and compare
    /// the new fields with the source. Needs the commit step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// `lifecycle.addFields`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddFieldsSpec {
    /// `max_length` of the VarChar fields it adds. Default 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// Field name → Milvus type, for columns whose Milvus type the Arrow type does not tell:
    /// vectors (a list of floats may be a FloatVector, Float16Vector or BFloat16Vector) or a
    /// type other than the column's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<BTreeMap<String, FieldType>>,
}

impl AddFieldsSpec {
    pub fn max_length(&self) -> u32 {
        self.max_length.unwrap_or(DEFAULT_VARCHAR_MAX_LENGTH)
    }
}

/// A Milvus field type for `addFields.types`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldType {
    /// Milvus' name of the type: `Bool`, `Int8` … `Int64`, `Float`, `Double`, `VarChar`, `JSON`,
    /// `FloatVector`, `BinaryVector`, `Float16Vector`, `BFloat16Vector`, `Int8Vector`,
    /// `SparseFloatVector`.
    pub data_type: String,
    /// Dimension of a dense vector field (bits for a BinaryVector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<u32>,
    /// `max_length` of a VarChar field (default: `addFields.maxLength`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
}

/// `lifecycle.snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifecycleSnapshot {
    /// Name of the snapshot to create (a retry finds it and plans from it).
    pub name: String,
    /// Seconds Milvus protects the snapshot's segments from compaction; must outlast the
    /// backfill and the commit. Default 86400 (one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_protection_seconds: Option<u32>,
}

/// One index of `lifecycle.createIndex`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IndexSpec {
    /// The new field to index.
    pub field: String,
    /// Milvus' index type (`AUTOINDEX`, `INVERTED`, `STL_SORT`, `HNSW`, ...). Default AUTOINDEX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_type: Option<String>,
    /// Metric of a vector index (`L2`, `IP`, `COSINE`, `HAMMING`, ...). Vector fields need one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_type: Option<String>,
    /// Name of the index. Default: Milvus' (the field's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_name: Option<String>,
    /// The index type's own build parameters (for HNSW: `M`, `efConstruction`), as strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
}

impl IndexSpec {
    pub fn index_type(&self) -> &str {
        self.index_type.as_deref().unwrap_or(DEFAULT_INDEX_TYPE)
    }
}

/// `lifecycle.verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifySpec {
    /// Source rows whose primary keys are queried, spread evenly over the source. Default 100,
    /// at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rows: Option<u32>,
}

impl VerifySpec {
    pub fn sample_rows(&self) -> u32 {
        self.sample_rows.unwrap_or(DEFAULT_VERIFY_SAMPLE)
    }
}

/// A step of the lifecycle, in running order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    Flush,
    AddFields,
    Snapshot,
    Backfill,
    Commit,
    CreateIndex,
    Verify,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Flush,
        Step::AddFields,
        Step::Snapshot,
        Step::Backfill,
        Step::Commit,
        Step::CreateIndex,
        Step::Verify,
    ];

    /// The spec field that declares it (messages and `plan`).
    pub fn field(self) -> &'static str {
        match self {
            Step::Flush => "lifecycle.flush",
            Step::AddFields => "lifecycle.addFields",
            Step::Snapshot => "lifecycle.snapshot",
            Step::Backfill => "(the backfill)",
            Step::Commit => "lifecycle.commit",
            Step::CreateIndex => "lifecycle.createIndex",
            Step::Verify => "lifecycle.verify",
        }
    }

    /// Runs before the plan exists (where planning runs), else after the result is stored.
    pub fn before_planning(self) -> bool {
        self < Step::Backfill
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Step::Flush => "flush",
            Step::AddFields => "addFields",
            Step::Snapshot => "snapshot",
            Step::Backfill => "backfill",
            Step::Commit => "commit",
            Step::CreateIndex => "createIndex",
            Step::Verify => "verify",
        };
        f.write_str(name)
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepState {
    /// It changed something (a field added, an index built) or checked it (verify passed).
    Done,
    /// Nothing was left to do: what it makes exists already (a retry, or a re-run).
    AlreadyDone,
    /// Not run: `plan` shows it, or an earlier step failed.
    NotRun,
    Failed,
}

/// What one step did, for the summary and `status.lifecycle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub step: Step,
    pub state: StepState,
    /// What it did, or why it failed, in a sentence.
    pub message: String,
}

impl StepRecord {
    pub fn new(step: Step, state: StepState, message: impl Into<String>) -> Self {
        Self {
            step,
            state,
            message: message.into(),
        }
    }
}

/// The steps `spec` declares, in running order; the backfill is always one of them.
pub fn steps(spec: &EngineSpec) -> Vec<Step> {
    let l = spec.lifecycle.clone().unwrap_or_default();
    let declared = |s: Step| match s {
        Step::Flush => spec.flush(),
        Step::AddFields => l.add_fields.is_some(),
        Step::Snapshot => spec.snapshot().is_some_and(|s| s.create()),
        Step::Backfill => true,
        Step::Commit => spec.commit_endpoint().is_some(),
        Step::CreateIndex => l.create_index.as_ref().is_some_and(|v| !v.is_empty()),
        Step::Verify => l.verify.is_some(),
    };
    Step::ALL.into_iter().filter(|s| declared(*s)).collect()
}

/// The declared steps that run once Milvus has committed the run (`createIndex`, `verify`).
pub fn steps_after_commit(spec: &EngineSpec) -> Vec<Step> {
    steps(spec).into_iter().filter(|s| *s > Step::Commit).collect()
}

/// What `spec.lifecycle` gets wrong on its own, each problem naming its field (part of
/// [`crate::spec::validate`]).
pub fn problems(spec: &EngineSpec) -> Vec<String> {
    let Some(l) = &spec.lifecycle else {
        return Vec::new();
    };
    let mut out = Vec::new();
    fn need(out: &mut Vec<String>, ok: bool, msg: &str) {
        if !ok {
            out.push(msg.to_owned());
        }
    }
    need(
        &mut out,
        spec.flush.is_none() || l.flush.is_none(),
        "spec.flush and spec.lifecycle.flush name the same step: keep lifecycle.flush",
    );
    need(
        &mut out,
        spec.commit.is_none() || l.commit.is_none(),
        "spec.commit and spec.lifecycle.commit name the same step: keep lifecycle.commit",
    );
    need(
        &mut out,
        spec.milvus.snapshot.is_none() || l.snapshot.is_none(),
        "spec.lifecycle.snapshot creates the snapshot it plans from: remove spec.milvus.snapshot",
    );
    if let Some(s) = &l.snapshot {
        need(
            &mut out,
            !s.name.trim().is_empty(),
            "spec.lifecycle.snapshot.name is empty: name the snapshot to create",
        );
        need(
        &mut out,
            s.compaction_protection_seconds != Some(0),
            "spec.lifecycle.snapshot.compactionProtectionSeconds must be > 0: without protection compaction can rewrite the segments before the commit",
        );
    }
    let milvus_steps = [
        (l.add_fields.is_some(), "addFields"),
        (l.snapshot.is_some(), "snapshot"),
        (l.create_index.is_some(), "createIndex"),
        (l.verify.is_some(), "verify"),
    ];
    for (given, name) in milvus_steps {
        need(
            &mut out,
            !given || !spec.milvus.uri.trim().is_empty(),
            &format!("spec.lifecycle.{name} calls Milvus: set spec.milvus.uri and spec.milvus.collection"),
        );
    }
    let after_commit = l.create_index.is_some() || l.verify.is_some();
    need(
        &mut out,
        !after_commit || spec.commit_endpoint().is_some(),
        "spec.lifecycle.createIndex and verify run once Milvus has committed the backfill: add spec.lifecycle.commit",
    );
    if let Some(indexes) = &l.create_index {
        out.extend(index_problems(indexes));
    }
    if let Some(v) = &l.verify {
        need(
            &mut out,
            (1..=MAX_VERIFY_SAMPLE).contains(&v.sample_rows()),
            "spec.lifecycle.verify.sampleRows must be between 1 and 10000",
        );
    }
    if let Some(types) = l.add_fields.as_ref().and_then(|a| a.types.as_ref()) {
        for (field, t) in types {
            if t.data_type.trim().is_empty() {
                out.push(format!("spec.lifecycle.addFields.types.{field}.dataType is empty"));
            }
        }
    }
    out
}

fn index_problems(indexes: &[IndexSpec]) -> Vec<String> {
    let mut out = Vec::new();
    if indexes.is_empty() {
        out.push("spec.lifecycle.createIndex is empty: list an index, or leave it out".to_owned());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, ix) in indexes.iter().enumerate() {
        if ix.field.trim().is_empty() {
            out.push(format!(
                "spec.lifecycle.createIndex[{i}].field is empty: name the new field to index"
            ));
        } else if !seen.insert(ix.field.as_str()) {
            out.push(format!(
                "spec.lifecycle.createIndex lists field {:?} twice: one index per field",
                ix.field
            ));
        }
        if ix.index_type.as_deref().is_some_and(|t| t.trim().is_empty()) {
            out.push(format!(
                "spec.lifecycle.createIndex[{i}].indexType is empty: leave it out for AUTOINDEX"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(lifecycle: &str) -> EngineSpec {
        let mut v = serde_json::json!({
            "milvus": {"uri": "http://127.0.0.1:19530", "collection": "c"},
            "storage": {"endpoint": "127.0.0.1:9000", "bucket": "b"},
            "source": {"path": "s3://data/x.parquet"}
        });
        v["lifecycle"] = serde_json::from_str(lifecycle).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn steps_run_in_the_lifecycle_order_whatever_the_spec_order() {
        let s = spec(
            r#"{"verify": {}, "createIndex": [{"field": "score"}], "commit": {"endpoint": "http://p:9091"},
                "snapshot": {"name": "s1"}, "addFields": {}, "flush": true}"#,
        );
        assert_eq!(steps(&s), Step::ALL.to_vec());
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        assert_eq!(steps(&spec("{}")), vec![Step::Backfill]);
        let before: Vec<Step> = Step::ALL.into_iter().filter(|s| s.before_planning()).collect();
        assert_eq!(before, vec![Step::Flush, Step::AddFields, Step::Snapshot]);
    }

    #[test]
    fn the_older_spellings_declare_the_same_steps() {
        let mut s = spec("{}");
        s.flush = Some(true);
        s.commit = Some(CommitSpec {
            endpoint: "http://p:9091".into(),
        });
        s.milvus.snapshot = Some(crate::spec::SnapshotSpec {
            name: Some("s1".into()),
            create: Some(true),
            ..Default::default()
        });
        assert_eq!(
            steps(&s),
            vec![Step::Flush, Step::Snapshot, Step::Backfill, Step::Commit]
        );
        let l = spec(r#"{"flush": true, "snapshot": {"name": "s1"}, "commit": {"endpoint": "http://p:9091"}}"#);
        assert_eq!(steps(&l), steps(&s));
        assert_eq!(l.snapshot(), s.snapshot());
        assert_eq!(l.commit_endpoint(), s.commit_endpoint());
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut s = spec(
            r#"{"flush": true, "snapshot": {"name": " ", "compactionProtectionSeconds": 0},
                "createIndex": [{"field": "a"}, {"field": "a", "indexType": ""}, {"field": ""}],
                "verify": {"sampleRows": 0}, "addFields": {"types": {"v": {"dataType": ""}}}}"#,
        );
        s.flush = Some(true);
        s.milvus.snapshot = Some(crate::spec::SnapshotSpec {
            path: Some("s3://b/snap.json".into()),
            ..Default::default()
        });
        let p = problems(&s);
        for phrase in [
            "keep lifecycle.flush",
            "remove spec.milvus.snapshot",
            "snapshot.name is empty",
            "compactionProtectionSeconds must be > 0",
            "add spec.lifecycle.commit",
            "field \"a\" twice",
            "createIndex[1].indexType is empty",
            "createIndex[2].field is empty",
            "sampleRows must be between 1 and 10000",
            "addFields.types.v.dataType is empty",
        ] {
            assert!(p.iter().any(|m| m.contains(phrase)), "{phrase}: {p:?}");
        }
        s.milvus.uri.clear();
        assert!(problems(&s)
            .iter()
            .any(|m| m.contains("lifecycle.addFields calls Milvus")));
    }
}
