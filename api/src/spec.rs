//! The engine's spec: the fields of a `Backfill` that local runs and the cluster share
//! (`milvus-backfill run -f` reads exactly these; the resource adds the cluster's fields in
//! [`crate::cluster`]). Defaults live in code, not in the schema, so that GitOps tools never
//! see a field the user did not write.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::place::S3Uri;
use crate::plan::BatchSize;

pub const DEFAULT_DATABASE: &str = "default";
pub const DEFAULT_ROOT_PATH: &str = "files";
pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_BATCH_SIZE: u32 = 1024;
/// Names the reference reserves for its own columns; no join key may take them.
pub const RESERVED_JOIN_NAMES: [&str; 4] = ["segment_id", "row_offset", "$segment_id", "$row_offset"];
pub const DEFAULT_PARALLELISM: u32 = 4;
/// Keys read from `credentialsSecretRef` Secrets.
pub const ACCESS_KEY_KEY: &str = "accesskey";
pub const SECRET_KEY_KEY: &str = "secretkey";

/// What the engine needs: the fields shared by local and cluster mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineSpec {
    /// The Milvus collection to backfill and how to reach it.
    pub milvus: MilvusSpec,
    /// Field ID of the join key (the seed's `pkFieldToRead`). Defaults to the schema's primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key_field_id: Option<i64>,
    /// The join key by field name (the reference's `joinKey`): the primary key (the default), or a
    /// physical, non-nullable Int8, Int16, Int32, Int64 or VarChar field. The source's key column
    /// has the field's type; source keys are unique, and every segment row whose field holds a
    /// key gets that source row's values. The join field itself is never written. Not with
    /// `primaryKeyFieldId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_key: Option<String>,
    /// The bucket where Milvus keeps its binlogs. The run reads the segments from it and
    /// writes its plan, its result and (unless `output.path` says otherwise) its outputs there.
    pub storage: StorageSpec,
    /// The Parquet data to backfill: the join key and a column per new field.
    pub source: SourceSpec,
    /// Where the outputs go and how StorageV3 outputs reach Milvus. Default: beside the
    /// segments' binlogs, StorageV3 outputs handed over as `ops`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
    /// Source column -> Milvus field name, a complete projection as in the reference's
    /// `columnMapping`: only the listed columns are read, and one of them must map to the primary
    /// key's name (the join key). Without it the source has a `pk` column and every other column
    /// is a new field of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_mapping: Option<std::collections::BTreeMap<String, String>>,
    /// How new values meet the values a segment already holds for the field, as the reference's
    /// `mode`: `replace` (matched rows take the source's value, unmatched rows become null),
    /// `coalesce` (an existing non-null value wins; the default) or `overwrite` (matched rows
    /// take the source's value, unmatched rows keep theirs). On a field with no data yet all
    /// three write the same rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::plan::Mode>,
    /// The run's ID, as the reference's `jobId` (default: a fresh one per run). Its files live under
    /// `{rootPath}/backfill/{collectionId}/{runId}/`; an ID whose run left files there is refused
    /// before anything is written, so one ID never names two runs. Lowercase letters, digits and
    /// `-`, at most 40 characters, starting and ending with a letter or digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Rows per write batch (Parquet row groups are multiples of it). Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Maximum segments in flight (local threads, or Jobs in a cluster). Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Memory, in MiB, one pass over the source may hold for the primary keys and matched values
    /// of the segments it serves. Beyond it the segments' keys and the source go through the
    /// exchange, partitioned by key hash; the source is read once either way. Default 384. Give
    /// worker Pods about twice this (decoding and encoding buffers come on top).
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Flush the collection before planning, so that recent inserts are in sealed segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush: Option<bool>,
    /// Hands the result to Milvus after writing (Milvus 3.0+). Same as `lifecycle.commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSpec>,
    /// The whole job, declared: flush → addFields → snapshot → backfill → commit →
    /// createIndex → verify, each step optional and idempotent, always in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<crate::lifecycle::LifecycleSpec>,
}

impl EngineSpec {
    /// `spec.batchSize`, or the default; `None` when it is 0 ([`validate`] reports that).
    pub fn batch_size(&self) -> Option<BatchSize> {
        self.batch_size.map_or(Some(BatchSize::DEFAULT), BatchSize::new)
    }
    pub fn parallelism(&self) -> u32 {
        self.parallelism.unwrap_or(DEFAULT_PARALLELISM)
    }
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib.unwrap_or(crate::plan::DEFAULT_MEMORY_MIB)
    }
    pub fn mode(&self) -> crate::plan::Mode {
        self.mode.unwrap_or_default()
    }
    /// `spec.flush` or `spec.lifecycle.flush`.
    pub fn flush(&self) -> bool {
        self.flush
            .or(self.lifecycle.as_ref().and_then(|l| l.flush))
            .unwrap_or(false)
    }
    /// The snapshot to plan from: `spec.milvus.snapshot`, or the one `spec.lifecycle.snapshot`
    /// creates (as `name` with `create: true`).
    pub fn snapshot(&self) -> Option<SnapshotSpec> {
        if let Some(s) = &self.milvus.snapshot {
            return Some(s.clone());
        }
        let l = self.lifecycle.as_ref()?.snapshot.as_ref()?;
        Some(SnapshotSpec {
            path: None,
            name: Some(l.name.clone()),
            create: Some(true),
            compaction_protection_seconds: l.compaction_protection_seconds,
        })
    }
    /// `spec.lifecycle.addFields`.
    pub fn add_fields(&self) -> Option<&crate::lifecycle::AddFieldsSpec> {
        self.lifecycle.as_ref()?.add_fields.as_ref()
    }
    pub fn v3_commit(&self) -> crate::plan::V3CommitMode {
        self.output.as_ref().and_then(|o| o.v3_commit).unwrap_or_default()
    }
    pub fn output_path(&self) -> Option<&str> {
        self.output.as_ref().and_then(|o| o.path.as_deref())
    }
    /// `spec.milvus.snapshot.path`: plan from this snapshot file, without Milvus.
    pub fn snapshot_path(&self) -> Option<&str> {
        self.milvus.snapshot.as_ref().and_then(|s| s.path.as_deref())
    }
    /// `spec.commit.endpoint` or `spec.lifecycle.commit.endpoint`.
    pub fn commit_endpoint(&self) -> Option<&str> {
        self.commit
            .as_ref()
            .or(self.lifecycle.as_ref().and_then(|l| l.commit.as_ref()))
            .map(|c| c.endpoint.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MilvusSpec {
    /// gRPC endpoint, `http://host:19530` or `https://...`. Optional with `snapshot.path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Database of the collection. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Name of the collection to backfill. Optional with `snapshot.path` (the snapshot names
    /// its collection; if given, they must agree).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub collection: String,
    /// Only this partition's segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Secret key holding `user:password` or an API token. Locally: `MILVUS_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeySelector>,
    /// A Milvus 3.0 snapshot of the collection to plan from (the consistent choice: its
    /// segments are protected from compaction while the backfill runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSpec>,
}

/// Which snapshot to plan from: `path` (a file, no Milvus connection) or `name` (asked of
/// Milvus 3.0+), exactly one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotSpec {
    /// The snapshot metadata JSON (`DescribeSnapshot.s3_location`): `s3://<bucket>/<key>`, read
    /// with `spec.storage`'s endpoint and credentials, or a local file. Schema, field IDs, the
    /// schema version, the primary key and the segments all come from it: no Milvus connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An existing snapshot of `spec.milvus.collection`: DescribeSnapshot gives its metadata
    /// JSON (`s3_location`), which is then read as with `path`. Needs `spec.milvus.uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Create the snapshot `name` first (CreateSnapshot, after `spec.flush` if set), with
    /// compaction protection longer than the job. Add the new fields before. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
    /// With `create`: seconds Milvus protects the snapshot's segments from compaction, which
    /// must outlast planning, writing and the commit. Default 86400 (one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_protection_seconds: Option<u32>,
}

pub const DEFAULT_COMPACTION_PROTECTION_SECONDS: u32 = 86_400;

impl SnapshotSpec {
    pub fn create(&self) -> bool {
        self.create.unwrap_or(false)
    }
    pub fn compaction_protection_seconds(&self) -> u32 {
        self.compaction_protection_seconds
            .unwrap_or(DEFAULT_COMPACTION_PROTECTION_SECONDS)
    }

    /// The problems of `spec.milvus.snapshot`, each naming its field (part of [`validate`]).
    fn problems(&self) -> Vec<String> {
        let given = |v: &Option<String>| v.as_deref().is_some_and(|p| !p.trim().is_empty());
        let mut out = Vec::new();
        match (given(&self.path), given(&self.name)) {
            (true, true) => out.push(
                "spec.milvus.snapshot: give either path (a snapshot metadata file, no Milvus connection) or name (asked of Milvus), not both"
                    .to_owned(),
            ),
            (false, false) => out.push(
                "spec.milvus.snapshot needs path (the snapshot metadata JSON: s3://bucket/key or a local file) or name (a snapshot in Milvus 3.0+)"
                    .to_owned(),
            ),
            _ => {}
        }
        if self.create() && !given(&self.name) {
            out.push(
                "spec.milvus.snapshot.create needs spec.milvus.snapshot.name: the name of the snapshot to create"
                    .to_owned(),
            );
        }
        if self.compaction_protection_seconds.is_some() && !self.create() {
            out.push(
                "spec.milvus.snapshot.compactionProtectionSeconds applies only with create: true (an existing snapshot keeps its own)"
                    .to_owned(),
            );
        }
        if self.compaction_protection_seconds == Some(0) {
            out.push(
                "spec.milvus.snapshot.compactionProtectionSeconds must be > 0: without protection compaction can rewrite the segments before the commit"
                    .to_owned(),
            );
        }
        // `name` without `spec.milvus.uri` is the uri check's problem (only `path` may go without).
        out
    }
}

/// Where Milvus commits the result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitSpec {
    /// The Proxy's management HTTP address, `http://<proxy>:9091`. After writing, the run
    /// calls `/management/datacoord/backfill/commit?result_path=...` there.
    pub endpoint: String,
}

impl MilvusSpec {
    pub fn database(&self) -> &str {
        self.database.as_deref().unwrap_or(DEFAULT_DATABASE)
    }
}

/// The object storage where Milvus keeps its binlogs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// `host:port` of the S3 API (Milvus `minio.address:port`), without scheme (`useSSL`
    /// picks it). `file:///dir` reads a copy of the bucket from `/dir/<bucket>/`.
    pub endpoint: String,
    /// Bucket of the binlogs (Milvus `minio.bucketName`).
    pub bucket: String,
    /// Milvus `minio.rootPath`. Default `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_path: Option<String>,
    /// S3 region. Default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// HTTPS to `endpoint`. Default false (HTTP).
    #[serde(default, rename = "useSSL", skip_serializing_if = "Option::is_none")]
    pub use_ssl: Option<bool>,
    /// Secret with keys `accesskey` and `secretkey`. Locally: the AWS environment
    /// variables or the default AWS credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

impl StorageSpec {
    pub fn root_path(&self) -> &str {
        self.root_path
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .unwrap_or(DEFAULT_ROOT_PATH)
    }
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
    pub fn use_ssl(&self) -> bool {
        self.use_ssl.unwrap_or(false)
    }
}

/// Where the new-field Parquet data is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// `s3://bucket/key.parquet`, `s3://bucket/prefix/`, or a local file or directory.
    pub path: String,
    /// S3 endpoint of the source; defaults to `storage.endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region of the source. Defaults to `storage.region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// HTTPS to the source endpoint. Defaults to `storage.useSSL`.
    #[serde(default, rename = "useSSL", skip_serializing_if = "Option::is_none")]
    pub use_ssl: Option<bool>,
    /// Secret with keys `accesskey` and `secretkey` for the source. Defaults to
    /// `storage.credentialsSecretRef`. Locally: `SOURCE_AWS_ACCESS_KEY_ID` and
    /// `SOURCE_AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Where the outputs go (`spec.output`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// Base for outputs instead of Milvus' `insert_log` tree: `s3://bucket/prefix`,
    /// a key prefix in the storage bucket, or an absolute local directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How StorageV3 outputs reach Milvus: `ops` (default) hands DataCoord the changes to apply
    /// onto the segment's current manifest at commit; `manifest` commits the loon transaction
    /// here (a new `manifest-{N+1}.avro`, created only if absent) and hands Milvus the version,
    /// for servers without `ops` support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v3_commit: Option<crate::plan::V3CommitMode>,
}

/// One key of a Secret in the Backfill's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeySelector {
    /// Name of the Secret, in the Backfill's namespace.
    pub name: String,
    /// Key of the Secret whose value is used.
    pub key: String,
}

/// A Secret in the Backfill's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the Secret, in the Backfill's namespace.
    pub name: String,
}

/// Checks that need no network. Every problem is listed, each naming its field.
/// What `spec.columnMapping` gets wrong on its own; the columns and the key are checked
/// against the source and the collection at planning.
fn mapping_problems(m: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    if m.len() < 2 {
        problems.push(
            "spec.columnMapping must map the join key column to the primary key's name and at least one column to a new field"
                .to_owned(),
        );
    }
    for (from, to) in m {
        if from.trim().is_empty() || to.trim().is_empty() {
            problems.push(format!("spec.columnMapping: {from:?}: {to:?} has an empty name"));
        }
    }
    let mut targets: Vec<&String> = m.values().collect();
    targets.sort();
    for pair in targets.windows(2).filter(|w| w[0] == w[1]) {
        let sources: Vec<&String> = m.iter().filter(|(_, t)| *t == pair[0]).map(|(s, _)| s).collect();
        problems.push(format!(
            "spec.columnMapping maps {sources:?} to the same field {:?}; each field takes one column",
            pair[0]
        ));
    }
    problems.dedup();
    problems
}

/// A run ID users may choose: safe in bucket keys, Job names and label values.
pub fn valid_run_id(id: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=40).contains(&id.len())
        && id.chars().all(|c| ok_char(c) || c == '-')
        && id.starts_with(ok_char)
        && id.ends_with(ok_char)
}

pub fn validate(spec: &EngineSpec) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, msg: &str| {
        if !ok {
            problems.push(msg.to_owned());
        }
    };
    let uri = &spec.milvus.uri;
    need(
        !uri.trim().is_empty() || spec.snapshot_path().is_some(),
        "spec.milvus.uri is empty (e.g. http://127.0.0.1:19530); it may be left out only with spec.milvus.snapshot.path",
    );
    need(
        spec.commit_endpoint().is_none_or(|e| e.starts_with("http://") || e.starts_with("https://")),
        "spec.commit.endpoint must start with http:// or https:// (the Proxy's management port, e.g. http://milvus-proxy:9091)",
    );
    need(
        uri.starts_with("http://") || uri.starts_with("https://") || uri.is_empty(),
        "spec.milvus.uri must start with http:// or https://",
    );
    need(
        !spec.milvus.collection.trim().is_empty() || spec.snapshot_path().is_some(),
        "spec.milvus.collection is empty",
    );
    need(
        !spec.storage.endpoint.trim().is_empty(),
        "spec.storage.endpoint is empty (host:port)",
    );
    need(!spec.storage.bucket.trim().is_empty(), "spec.storage.bucket is empty");
    need(!spec.source.path.trim().is_empty(), "spec.source.path is empty");
    need(spec.batch_size().is_some(), "spec.batchSize must be > 0");
    need(spec.parallelism != Some(0), "spec.parallelism must be > 0");
    need(
        spec.run_id.as_deref().is_none_or(valid_run_id),
        "spec.runId must be 1-40 lowercase letters, digits or '-', starting and ending with a letter or digit (it names keys, Jobs and labels)",
    );
    need(spec.memory_mib != Some(0), "spec.memoryMiB must be > 0");
    need(
        spec.primary_key_field_id.is_none_or(|f| f >= 100),
        "spec.primaryKeyFieldId must be a user field ID (>= 100)",
    );
    need(
        spec.join_key.is_none() || spec.primary_key_field_id.is_none(),
        "spec.joinKey and spec.primaryKeyFieldId both name the join key: keep one",
    );
    need(
        spec.join_key.as_deref().is_none_or(|k| !k.trim().is_empty()),
        "spec.joinKey is empty: name a field, or leave it out to join on the primary key",
    );
    need(
        spec.join_key
            .as_deref()
            .is_none_or(|k| !RESERVED_JOIN_NAMES.contains(&k)),
        "spec.joinKey names a reserved column (segment_id, row_offset, $segment_id, $row_offset)",
    );
    let is_s3 = spec.source.path.starts_with("s3://") || spec.source.path.starts_with("s3a://");
    need(
        !is_s3 || S3Uri::parse(&spec.source.path).is_some_and(|u| !u.key.is_empty() || spec.source.path.ends_with('/')),
        "spec.source.path: s3:// needs a bucket and a key or prefix",
    );
    if let Some(snapshot) = &spec.milvus.snapshot {
        problems.extend(snapshot.problems());
    }
    if let Some(m) = &spec.column_mapping {
        problems.extend(mapping_problems(m));
    }
    problems.extend(crate::lifecycle::problems(spec));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "milvus": {"uri": "http://127.0.0.1:19530", "collection": "c"},
        "storage": {"endpoint": "127.0.0.1:9000", "bucket": "b"},
        "source": {"path": "s3://data/x.parquet"}
    }"#;

    #[test]
    fn run_ids_are_safe_names() {
        for ok in ["a", "nightly-42", "0", &"x".repeat(40)] {
            assert!(valid_run_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "a.b", &"x".repeat(41)] {
            assert!(!valid_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_column_mapping_is_checked_on_its_own_first() {
        let with = |mapping: &str| {
            let mut v: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
            v["columnMapping"] = serde_json::from_str(mapping).unwrap();
            validate(&serde_json::from_value(v).unwrap())
        };
        assert_eq!(with(r#"{"user": "id", "s": "score"}"#), Ok(()));
        let p = with(r#"{"user": "id"}"#).unwrap_err();
        assert!(p[0].contains("at least one column to a new field"), "{p:?}");
        let p = with(r#"{"user": "id", "a": "score", "b": "score", "": "x"}"#).unwrap_err();
        assert!(
            p.iter()
                .any(|m| m.contains(r#"maps ["a", "b"] to the same field "score""#)),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("has an empty name")), "{p:?}");
    }

    #[test]
    fn defaults_come_from_code_not_from_the_document() {
        let spec: EngineSpec = serde_json::from_str(MINIMAL).unwrap();
        assert_eq!(spec.milvus.database(), "default");
        assert_eq!(spec.storage.root_path(), "files");
        assert_eq!(spec.storage.region(), "us-east-1");
        assert!(!spec.storage.use_ssl());
        assert_eq!(spec.batch_size(), Some(BatchSize::DEFAULT));
        assert_eq!(spec.parallelism(), 4);
        // Serializing back adds nothing the user did not write (no GitOps drift).
        let back = serde_json::to_value(&spec).unwrap();
        let orig: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn every_problem_is_named() {
        let mut spec: EngineSpec = serde_json::from_str(MINIMAL).unwrap();
        assert_eq!(validate(&spec), Ok(()));
        spec.batch_size = Some(0);
        spec.parallelism = Some(0);
        spec.milvus.collection = String::new();
        spec.source.path = "s3://bucket-only".into();
        let problems = validate(&spec).unwrap_err();
        for part in [
            "spec.batchSize",
            "spec.parallelism",
            "spec.milvus.collection",
            "spec.source.path",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(part)),
                "{part} missing in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 4);
    }

    fn with_snapshot(snapshot: serde_json::Value, uri: &str) -> EngineSpec {
        let mut doc: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        doc["milvus"]["snapshot"] = snapshot;
        doc["milvus"]["uri"] = uri.into();
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn a_snapshot_is_named_or_a_path_and_create_needs_a_name() {
        let uri = "http://m:19530";
        let ok = |snap, uri| validate(&with_snapshot(snap, uri));
        assert_eq!(ok(serde_json::json!({"path": "s3://b/k.json"}), ""), Ok(()));
        assert_eq!(ok(serde_json::json!({"name": "s1"}), uri), Ok(()));
        assert_eq!(ok(serde_json::json!({"name": "s1", "create": true}), uri), Ok(()));
        let p = serde_json::json!({"name": "s1", "create": true, "compactionProtectionSeconds": 3600});
        assert_eq!(ok(p, uri), Ok(()));
        let fails = |snap, uri, part: &str| {
            let problems = validate(&with_snapshot(snap, uri)).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(part)),
                "{part} missing in {problems:?}"
            );
            problems.len()
        };
        assert_eq!(
            fails(serde_json::json!({"path": "p", "name": "s1"}), uri, "not both"),
            1
        );
        assert_eq!(fails(serde_json::json!({}), uri, "needs path"), 1);
        assert_eq!(fails(serde_json::json!({"path": " "}), "", "needs path"), 1);
        assert_eq!(
            fails(serde_json::json!({"path": "p", "create": true}), uri, "create needs"),
            1
        );
        // A name is looked up in Milvus: only `path` may go without the URI.
        assert_eq!(
            fails(serde_json::json!({"name": "s1"}), "", "spec.milvus.uri is empty"),
            1
        );
        let no_create = serde_json::json!({"name": "s1", "compactionProtectionSeconds": 60});
        assert_eq!(fails(no_create, uri, "only with create"), 1);
        let zero = serde_json::json!({"name": "s1", "create": true, "compactionProtectionSeconds": 0});
        assert_eq!(fails(zero, uri, "must be > 0"), 1);
    }

    #[test]
    fn snapshot_defaults_stay_out_of_the_document() {
        let spec = with_snapshot(serde_json::json!({"name": "s1"}), "http://m:19530");
        let snap = spec.milvus.snapshot.as_ref().unwrap();
        assert_eq!((snap.create(), snap.compaction_protection_seconds()), (false, 86_400));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["milvus"]["snapshot"], serde_json::json!({"name": "s1"}));
        let written = serde_json::json!({"name": "s1", "create": true, "compactionProtectionSeconds": 7200});
        let spec = with_snapshot(written.clone(), "http://m:19530");
        assert_eq!(
            spec.milvus.snapshot.as_ref().unwrap().compaction_protection_seconds(),
            7200
        );
        assert_eq!(serde_json::to_value(&spec).unwrap()["milvus"]["snapshot"], written);
    }

    #[test]
    fn wire_names_are_the_documented_ones() {
        let spec: EngineSpec = serde_json::from_str(
            r#"{"milvus": {"uri": "u", "collection": "c",
                 "tokenSecretRef": {"name": "milvus-auth", "key": "token"}},
                "primaryKeyFieldId": 100,
                "storage": {"endpoint": "e", "bucket": "b", "rootPath": "/r/", "useSSL": true,
                            "credentialsSecretRef": {"name": "minio"}},
                "source": {"path": "p"}, "output": {"path": "s3://o/p"},
                "batchSize": 7, "parallelism": 2, "flush": true}"#,
        )
        .unwrap();
        assert_eq!(spec.milvus.token_secret_ref.as_ref().unwrap().key, "token");
        assert_eq!(spec.primary_key_field_id, Some(100));
        assert_eq!(spec.storage.root_path(), "r");
        assert!(spec.storage.use_ssl());
        assert_eq!(spec.output_path(), Some("s3://o/p"));
        assert_eq!(
            (spec.batch_size(), spec.parallelism(), spec.flush()),
            (BatchSize::new(7), 2, true)
        );
    }
}
