//! The `Backfill` custom resource, `milvusbackfill.io/v1alpha1`: the engine's spec
//! (flattened, same field names as `milvus-backfill run -f`) plus the fields only a cluster
//! needs, and a bounded status. Types only (kube-core's derive, no client).
//!
//! No schema defaults: every default lives in code (`Option<T>` plus an accessor), so a GitOps
//! tool never sees a field the user did not write. Plan-defining fields are immutable through
//! CEL rules; operational knobs (suspend, parallelism, worker resources, retry) stay mutable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::spec::EngineSpec;

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_BACKOFF_SECONDS: u32 = 10;
/// Upper bound of the exponential retry delay.
pub const MAX_BACKOFF_SECONDS: u64 = 3600;
/// At most this many failed segments are listed in `status.failedSegments`; the result JSON
/// in the bucket has all of them.
pub const MAX_FAILED_SEGMENTS_IN_STATUS: usize = 50;
/// `status.failedSegments[].reason` and condition messages are cut to these many bytes.
pub const MAX_REASON_BYTES: usize = 512;
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A `Backfill`: adds the columns of a Parquet file as new fields to the sealed segments of a
/// Milvus collection. The operator plans once, runs segments as Jobs and writes the result JSON
/// beside the outputs.
// Several printer columns share a `type_`, which clippy takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "milvusbackfill.io",
    version = "v1alpha1",
    kind = "Backfill",
    plural = "backfills",
    namespaced,
    shortname = "bf",
    status = "BackfillStatus",
    derive = "PartialEq",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    ),
    doc = "Adds new fields to the sealed segments of a Milvus collection, segment by segment, as Kubernetes Jobs.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Segments",
        type_ = "string",
        json_path = ".status.progress",
        description = "segments done/total"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.segments.failed"),
    printcolumn(name = "Rows", type_ = "integer", json_path = ".status.rows.written"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".status.stage",
        description = "Route, Join or Write (a staged run, spec.routing)",
        priority = 1
    ),
    printcolumn(
        name = "Commit",
        type_ = "string",
        json_path = ".status.commit.state",
        description = "the commit into Milvus (spec.commit.endpoint)",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    crates(kube_core = "::kube_core", schemars = "::schemars", serde = "::serde", serde_json = "::serde_json"),
    validation = Rule::new("self.milvus == oldSelf.milvus").message("spec.milvus is immutable: create a new Backfill").reason(Reason::FieldValueForbidden),
    validation = Rule::new("self.storage == oldSelf.storage").message("spec.storage is immutable: create a new Backfill").reason(Reason::FieldValueForbidden),
    validation = Rule::new("self.source == oldSelf.source").message("spec.source is immutable: create a new Backfill").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.output) == has(oldSelf.output) && (!has(self.output) || self.output == oldSelf.output)").message("spec.output is immutable: create a new Backfill").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.primaryKeyFieldId) == has(oldSelf.primaryKeyFieldId) && (!has(self.primaryKeyFieldId) || self.primaryKeyFieldId == oldSelf.primaryKeyFieldId)").message("spec.primaryKeyFieldId is immutable: create a new Backfill").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.joinKey) == has(oldSelf.joinKey) && (!has(self.joinKey) || self.joinKey == oldSelf.joinKey)").message("spec.joinKey is immutable: create a new Backfill").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.segmentsPerJob) == has(oldSelf.segmentsPerJob) && (!has(self.segmentsPerJob) || self.segmentsPerJob == oldSelf.segmentsPerJob)").message("spec.segmentsPerJob is immutable: it defines the tasks of the plan").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.batchSize) == has(oldSelf.batchSize) && (!has(self.batchSize) || self.batchSize == oldSelf.batchSize)").message("spec.batchSize is immutable: it is frozen into the plan").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.columnMapping) == has(oldSelf.columnMapping) && (!has(self.columnMapping) || self.columnMapping == oldSelf.columnMapping)").message("spec.columnMapping is immutable: it is frozen into the plan").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.runId) == has(oldSelf.runId) && (!has(self.runId) || self.runId == oldSelf.runId)").message("spec.runId is immutable: it names the planned run").reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.mode) == has(oldSelf.mode) && (!has(self.mode) || self.mode == oldSelf.mode)").message("spec.mode is immutable: it is frozen into the plan").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.parallelism) || self.parallelism >= 1").message("spec.parallelism must be >= 1").field_path(".parallelism"),
    validation = Rule::new("!has(self.batchSize) || self.batchSize >= 1").message("spec.batchSize must be >= 1").field_path(".batchSize"),
)]
pub struct BackfillSpec {
    /// The engine's spec: `milvus`, `primaryKeyFieldId`, `storage`, `source`, `output`,
    /// `batchSize`, `parallelism` (here: Jobs in flight), `flush`.
    #[serde(flatten)]
    pub engine: EngineSpec,
    /// The worker Jobs' pod: image, placement, resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerSpec>,
    /// Segments per Job (task). Each Job reads the source once for all of its segments, so
    /// fewer, larger tasks read it less often. Default: the planned segments split evenly over
    /// `parallelism` Jobs. Immutable: it splits the plan into tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub segments_per_job: Option<u32>,
    /// How the Jobs meet the source. `PerJob`: each Job reads it for its segments. `Staged`:
    /// it is read once for the whole run, by route Jobs that split it (and the segments' keys)
    /// by key hash into partitions in the bucket, then join Jobs (one per partition), then
    /// write Jobs. Default `Auto`: `Staged` when more than two Jobs would each read a source
    /// larger than `memoryMiB`. Immutable once planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// Retries of a failed task (a new Job per attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// `activeDeadlineSeconds` of every Job: a task running (or Pending) longer fails its attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// No new Jobs while true (running ones finish). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// `ttlSecondsAfterFinished` of every Job. Outcomes are kept in the bucket, so finished
    /// Jobs may go at any time. Default: Jobs stay until the Backfill is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

impl BackfillSpec {
    /// The spec fields only the operator reads (`worker`, `retry`, ...), as camelCase names:
    /// the cluster spec's properties that the engine's spec lacks.
    pub fn operator_only_fields() -> Vec<String> {
        let props = |s: schemars::Schema| -> Vec<String> {
            s.get("properties")
                .and_then(|p| p.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let engine = props(schemars::schema_for!(crate::spec::EngineSpec));
        props(schemars::schema_for!(BackfillSpec))
            .into_iter()
            .filter(|k| !engine.contains(k))
            .collect()
    }

    /// `segmentsPerJob`, or `planned` segments split evenly over `parallelism` Jobs.
    pub fn segments_per_job(&self, planned: usize) -> u32 {
        match self.segments_per_job {
            Some(n) => n.max(1),
            None => {
                let per = planned.div_ceil(self.parallelism().max(1) as usize);
                u32::try_from(per).unwrap_or(u32::MAX).max(1)
            }
        }
    }
    pub fn suspend(&self) -> bool {
        self.suspend.unwrap_or(false)
    }
    /// Whether `plan` runs in stages ([`Routing`]) when split into `jobs` Jobs.
    pub fn staged(&self, plan: &crate::plan::Plan, jobs: u32) -> bool {
        match self.routing.unwrap_or_default() {
            Routing::PerJob => false,
            Routing::Staged => !plan.segments.is_empty() && !plan.source_files.is_empty(),
            Routing::Auto => {
                let source: u64 = plan.source_files.iter().map(|f| f.size).sum();
                jobs > 2 && source > u64::from(plan.memory_mib) << 20
            }
        }
    }
    /// The retry settings, read from the (mutable) spec on every pass.
    pub fn retry_policy(&self) -> RetryPolicy {
        let r = self.retry.as_ref();
        RetryPolicy {
            max_attempts: r.and_then(|r| r.max_attempts).unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1),
            backoff_seconds: r.and_then(|r| r.backoff_seconds).unwrap_or(DEFAULT_BACKOFF_SECONDS),
        }
    }
    /// Jobs in flight.
    pub fn parallelism(&self) -> u32 {
        self.engine.parallelism().max(1)
    }
}

/// The worker pod of every Job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Image holding the `milvus-backfill` binary. Default: the operator's `--worker-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When the kubelet pulls the worker image: `Always`, `IfNotPresent` or `Never`. Default:
    /// Kubernetes' (`Always` for a `:latest` or untagged image, else `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets, in the Backfill's namespace, for pulling the worker image from a private
    /// registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// CPU and memory requests and limits of the worker container. Give it about twice
    /// `memoryMiB` of memory (decoding and encoding buffers come on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the worker Pods' nodes must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the worker Pods, to run them on tainted nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and Pod affinity of the worker Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// ServiceAccount of the worker Pods. Default: the operator's `--worker-service-account`,
    /// else the namespace's `default`. Only needed for cloud identities (IRSA, workload
    /// identity); workers never call the Kubernetes API, so no token is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Security context of the worker Pods. Default: `runAsNonRoot: true` and the
    /// `RuntimeDefault` seccomp profile (the `restricted` Pod Security Standard); a value
    /// given here replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
    /// Extra environment variables. Credentials go through the Secret references of
    /// `milvus`, `storage` and `source`; their variable names are reserved here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// `spec.worker.imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// `spec.retry`: how often a failed task is tried.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts per task, the first included. Default 3. A task whose segments all failed with
    /// a schema or config error is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry; doubles with every further attempt (at most 1 h). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_seconds: Option<u32>,
}

/// How often a task is tried and how long to wait in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per task, the first included (at least 1).
    pub max_attempts: u32,
    pub backoff_seconds: u32,
}

impl RetryPolicy {
    /// Delay before `attempt` (1 = the first retry): `backoffSeconds * 2^(attempt-1)`, at most
    /// [`MAX_BACKOFF_SECONDS`].
    pub fn delay_seconds(self, attempt: u32) -> u64 {
        if attempt == 0 {
            return 0;
        }
        u64::from(self.backoff_seconds)
            .saturating_mul(1u64 << (attempt - 1).min(20))
            .min(MAX_BACKOFF_SECONDS)
    }
    /// Whether `attempt` (counted from 0) may still run.
    pub fn allows(self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

/// How the Jobs of a run meet the source (`spec.routing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Routing {
    #[default]
    Auto,
    PerJob,
    Staged,
}

/// Where a run is. `Succeeded` and `Failed` with a `completionTime` are final.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Planning,
    Running,
    Suspended,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Planning => "Planning",
            Self::Running => "Running",
            Self::Suspended => "Suspended",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// The run as the operator sees it. Bounded: counters, at most 50 failed segments
/// ([`MAX_FAILED_SEGMENTS_IN_STATUS`]), and references to the plan and the result in the
/// storage bucket. Per-segment detail lives in the bucket under the run prefix
/// `{rootPath}/backfill/{collectionId}/{runId}/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
// The schema's text, without the rustdoc link above (`kubectl explain` shows it as is).
#[schemars(
    description = "The run as the operator sees it. Bounded: counters, at most 50 failed segments, and references to the plan and the result in the storage bucket. Per-segment detail lives in the bucket under the run prefix `{rootPath}/backfill/{collectionId}/{runId}/`."
)]
pub struct BackfillStatus {
    /// Where the run is: `Pending`, `Planning`, `Running`, `Suspended`, `Succeeded` or
    /// `Failed`. `Succeeded` and `Failed` are final once `completionTime` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Planned`, `Progressing`, `Suspended`, `Complete` and `Failed` (as on a Job), and the
    /// kstatus conditions `Ready`, `Reconciling` and `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The run: set once, when the plan is stored; no Job exists before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Milvus ID of the collection, set when the plan is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_id: Option<i64>,
    /// Names of the fields the run writes (at most 64 listed), set when the plan is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_field_names: Vec<String>,
    /// `segmentsPerJob` the plan was split with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_per_job: Option<u32>,
    /// Tasks (Jobs, retries not counted) of the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
    /// Partitions of a staged run (`spec.routing`): the source is routed once, then joined per
    /// partition; absent when each Job reads the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_partitions: Option<u32>,
    /// The stage a staged run is in: `Route`, `Join`, `Write` (then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `done/total` segments, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The run's segments by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<SegmentCounts>,
    /// The run's rows: planned, written and matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowCounts>,
    /// When the operator first started planning the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished for good (phase `Succeeded` or `Failed`): every task is final
    /// and, with `spec.commit.endpoint`, the result is committed or cannot be. Nothing is
    /// planned, run or committed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Milliseconds from `startTime` until every task was final (a commit not included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time_ms: Option<u64>,
    /// `s3://bucket/key` of the stored plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_path: Option<String>,
    /// `s3://bucket/key` of the result JSON (the engine's contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<String>,
    /// The first failed segments (at most 50); the result JSON lists all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub failed_segments: Vec<FailedSegmentStatus>,
    /// Handing the result to Milvus (`spec.commit.endpoint`); absent without an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitStatus>,
    /// What the lifecycle's steps did (`spec.lifecycle`): flush, addFields and snapshot from
    /// the plan, then createIndex and verify once they ran after the commit (the commit itself
    /// is in `commit`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub lifecycle: Vec<crate::lifecycle::StepRecord>,
}

/// Where the commit of a run's result into Milvus is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CommitState {
    /// Every segment is written; the commit is under way or waits for its next attempt.
    #[default]
    Pending,
    /// Milvus committed every segment of the result. Final.
    Committed,
    /// Milvus refused the result or left segments uncommitted after the retries, or the
    /// endpoint cannot commit (HTTP 404: no backfill commit before Milvus 3.0). A change of the
    /// spec commits again.
    Failed,
    /// No Milvus can commit this result: it failed, has no segments, or holds StorageV1 export
    /// outputs (no `ops`). Final.
    NotCommittable,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Committed => "Committed",
            Self::Failed => "Failed",
            Self::NotCommittable => "NotCommittable",
        }
    }
}

/// `status.commit`: bounded (at most 50 failed segments, the result objects of one attempt).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitStatus {
    /// `Pending` (under way), `Committed`, `Failed` (a change of the spec commits again) or
    /// `NotCommittable` (no Milvus can commit this result).
    pub state: CommitState,
    /// Calls of the commit endpoint since the commit (re)started.
    pub attempts: u32,
    /// Of those, the answers that left segments uncommitted or refused the result; at 3 the
    /// commit is `Failed`. Connection errors do not count: they are retried until Milvus answers.
    pub rejections: u32,
    /// Segments Milvus reported committed.
    pub committed_segments: u64,
    /// Segments the last answer left uncommitted (at most 50), with Milvus' reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub failed_segments: Vec<CommitFailure>,
    /// `s3://bucket/key` of the result objects the last attempt handed to Milvus: `result.json`,
    /// then `result-retry-N.json` with only the segments that failed before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub result_paths: Vec<String>,
    /// When the commit endpoint was last called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// What the last attempt got, or why there is none; empty once committed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The Backfill generation the commit (re)started at: a `Failed` commit starts again at a
    /// newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A segment Milvus did not commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitFailure {
    /// Milvus ID of the segment.
    pub segment_id: i64,
    /// `kind: reason` as Milvus reports it, cut to 512 bytes.
    pub reason: String,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling`, `Stalled`, `Planned`, `Progressing`, `Suspended`, `Complete`
    /// or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why the condition has its status, one CamelCase word (`Running`, `PrecheckFailed`, ...;
    /// docs/troubleshooting.md lists them all).
    pub reason: String,
    /// What happened, for people (at most 1024 bytes).
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// The `metadata.generation` the condition was last set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `status.segments`: the run's segments by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentCounts {
    /// Segments of the plan, those that failed planning included.
    pub total: u64,
    /// Segments whose task waits: not started yet, waiting for an earlier stage or for its
    /// retry delay.
    pub pending: u64,
    /// Segments whose task has a Job in flight.
    pub running: u64,
    /// Segments written.
    pub succeeded: u64,
    /// Segments that failed planning or their task's final attempt.
    pub failed: u64,
}

/// `status.rows`: the run's rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowCounts {
    /// Rows of the planned segments.
    pub total: u64,
    /// Rows written by succeeded segments.
    pub written: u64,
    /// Of those, rows whose key was in the source.
    pub matched: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedSegmentStatus {
    /// Milvus ID of the segment.
    pub segment_id: i64,
    /// Attempts made (0: failed planning).
    pub attempts: u32,
    /// `Kind: message`, cut to 512 bytes.
    pub reason: String,
}

/// Condition types.
pub mod condition {
    pub const PLANNED: &str = "Planned";
    pub const PROGRESSING: &str = "Progressing";
    pub const COMPLETE: &str = "Complete";
    pub const FAILED: &str = "Failed";
    pub const SUSPENDED: &str = "Suspended";
    /// kstatus (Flux, kpt, `kubectl wait --for=condition=Ready`): True only once succeeded.
    pub const READY: &str = "Ready";
    /// kstatus: True while the operator is still working towards the spec.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: True when it cannot get there without a change (a failed run).
    pub const STALLED: &str = "Stalled";
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {name: add-title, namespace: default}
spec:
  milvus:
    uri: http://milvus:19530
    collection: my_collection
    tokenSecretRef: {name: milvus-auth, key: token}
  storage:
    endpoint: minio:9000
    bucket: milvus-bucket
    credentialsSecretRef: {name: minio-creds}
  source: {path: "s3://data-bucket/new_fields/"}
  batchSize: 1024
  parallelism: 8
  worker:
    image: reg/milvus-backfill:0.1.0
    resources: {requests: {cpu: "2", memory: 4Gi}}
    nodeSelector: {pool: batch}
    tolerations: [{key: dedicated, operator: Equal, value: backfill, effect: NoSchedule}]
  segmentsPerJob: 2
  retry: {maxAttempts: 5, backoffSeconds: 30}
  activeDeadlineSeconds: 3600
  suspend: false
  ttlSecondsAfterFinished: 86400
"#;

    #[test]
    fn the_resource_reads_and_writes_back_unchanged() {
        let bf: Backfill = serde_yaml::from_str(DOC).unwrap();
        let s = &bf.spec;
        assert_eq!(s.engine.milvus.collection, "my_collection");
        assert_eq!(s.engine.parallelism(), 8);
        assert_eq!(s.parallelism(), 8);
        assert_eq!(s.segments_per_job(100), 2);
        assert_eq!(
            s.retry_policy(),
            RetryPolicy {
                max_attempts: 5,
                backoff_seconds: 30
            }
        );
        assert_eq!(s.active_deadline_seconds, Some(3600));
        assert!(!s.suspend());
        let w = s.worker.as_ref().unwrap();
        assert_eq!(w.node_selector["pool"], "batch");
        assert_eq!(w.tolerations[0].key.as_deref(), Some("dedicated"));
        // No defaults appear on the way back (GitOps sees what it wrote).
        let orig: serde_json::Value = serde_yaml::from_str(DOC).unwrap();
        let back = serde_json::to_value(&bf).unwrap();
        assert_eq!(back["spec"], orig["spec"]);
    }

    #[test]
    fn defaults_live_in_code() {
        let bf: Backfill = serde_yaml::from_str(
            "apiVersion: milvusbackfill.io/v1alpha1\nkind: Backfill\nmetadata: {name: x}\nspec:\n  \
             milvus: {uri: 'http://m:1', collection: c}\n  storage: {endpoint: 'e:1', bucket: b}\n  \
             source: {path: 's3://d/x'}\n",
        )
        .unwrap();
        let s = &bf.spec;
        // Split evenly over `parallelism` (4) Jobs.
        assert_eq!(s.segments_per_job(10), 3);
        assert_eq!(s.segments_per_job(1000), 250);
        assert_eq!(s.segments_per_job(0), 1);
        assert_eq!(s.retry_policy().max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(s.retry_policy().backoff_seconds, DEFAULT_BACKOFF_SECONDS);
        assert_eq!(s.parallelism(), crate::spec::DEFAULT_PARALLELISM);
        assert!(!s.suspend());
        assert_eq!(serde_json::to_value(s).unwrap().as_object().unwrap().len(), 3);
    }

    #[test]
    fn retry_delays() {
        let s = BackfillSpec {
            retry: Some(RetrySpec {
                max_attempts: None,
                backoff_seconds: Some(7),
            }),
            ..Default::default()
        };
        let p = s.retry_policy();
        let d: Vec<u64> = (0..5).map(|a| p.delay_seconds(a)).collect();
        assert_eq!(d, vec![0, 7, 14, 28, 56]);
        assert_eq!(p.delay_seconds(40), MAX_BACKOFF_SECONDS);
        assert!(p.allows(2) && !p.allows(3));
    }
}
