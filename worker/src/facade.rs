//! The engine as the operator uses it: plan a spec, open a run's bucket, commit a stored
//! result into Milvus and run the steps after the commit (Jobs run tasks through the `segment` command, never in the operator). The operator reaches the worker
//! crate only through this module (and `logging`); everything else it exchanges with the
//! engine is a contract type of `milvus_backfill_api`.

use milvus_backfill_api::error::Result;
use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::BackfillResult;
use milvus_backfill_api::plan::Plan;
use milvus_backfill_api::precheck::PrecheckReport;
use milvus_backfill_api::spec::EngineSpec;

use crate::config::BackfillDoc;
use crate::stores::RunLocations;

pub use crate::commit::{commit_url, Committed};
pub use crate::config::{MilvusToken, S3Credentials};
pub use crate::store::{Store, StoreError};
pub use crate::stores::StoreCredentials;

/// The credentials a planner needs, read by the caller (the operator: from Secrets).
#[derive(Clone, Debug, Default)]
pub struct PlanSecrets {
    pub milvus_token: MilvusToken,
    pub stores: StoreCredentials,
}

/// Prechecks and plans `spec` (named `name` in messages): asks Milvus, lists binlogs, checks
/// the source, reads a sample. The plan is `Err` whenever the report did not pass. Writes
/// nothing.
pub async fn precheck(name: &str, spec: &EngineSpec, secrets: PlanSecrets) -> (PrecheckReport, Result<Plan>) {
    let doc = BackfillDoc {
        name: name.to_owned(),
        spec: spec.clone(),
    };
    let (report, planned) = crate::planner::precheck(&doc, &secrets.milvus_token, &secrets.stores).await;
    (report, planned.map(|p| p.plan))
}

/// The lifecycle's steps after the commit that `spec` declares (`createIndex`, `verify`),
/// against the committed run `plan`, with the Backfill's credentials: one record per step.
/// Nothing when none is declared.
pub async fn finish(
    spec: &EngineSpec,
    plan: &Plan,
    secrets: &PlanSecrets,
) -> Vec<milvus_backfill_api::lifecycle::StepRecord> {
    crate::finish_job::run_steps(spec, plan, &secrets.milvus_token, &secrets.stores).await
}

/// The Milvus storage bucket of `spec`, where the run layout lives.
pub async fn open_storage(spec: &EngineSpec, creds: Option<&S3Credentials>) -> Store {
    let at = RunLocations::of_spec(spec);
    Store::open_bucket(&at.storage, &at.storage_bucket, creds).await
}

/// Commits `result`, stored at `result_key` in `storage` (the Milvus bucket), through the
/// Proxy's management port `endpoint` (`spec.commit.endpoint`): one call for the whole result,
/// then up to `retries` calls for the segments still uncommitted, each from a
/// `result-retry-N.json` beside the result. A segment's commit (a `replace` op) is idempotent
/// on the Milvus side, so committing the same result again is safe.
///
/// `Ok` whenever Milvus answered (`success` says whether every segment is committed); `Err`
/// when it did not: `ConnectionError` (unreachable, no answer), `ConfigError` (not a URL, or
/// HTTP 404: this Milvus has no backfill commit), `SegmentProcessingError` (the result was
/// refused as a whole), `WriteError` (a retry object could not be stored).
pub async fn commit(
    storage: &Store,
    endpoint: &str,
    result: &BackfillResult,
    layout: &RunLayout,
    retries: u32,
) -> Result<Committed> {
    crate::commit::commit_result(storage, endpoint, result, layout, retries).await
}

/// Stores the result as Milvus reads it: one object, or parts below its 64 MiB limit.
pub async fn store_result(storage: &Store, layout: &RunLayout, result: &BackfillResult) -> Result<Vec<String>> {
    crate::commit::store_parts(storage, layout, result).await
}
