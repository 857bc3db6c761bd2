//! `finish-job`: what a finishing Job runs once Milvus has committed a run. It reads the
//! operator's [`FinishRequest`] and the run's plan from the bucket, runs the lifecycle's steps
//! after the commit (`createIndex`, `verify`: [`crate::after_commit`]) with the credentials of
//! its environment (the Job's `secretKeyRef`s), and stores the [`FinishAnswer`] beside the
//! request. The steps are idempotent, so a Job that runs again repeats nothing harmful.

use milvus_backfill_api::planning::{FinishAnswer, FinishRequest, PlanningLayout};

use crate::config::MilvusToken;
use crate::error::{BackfillError, Result};
use crate::plan::Plan;
use crate::plan_job::read_request;
use crate::store::{Store, StoreError};
use crate::stores::{RunLocations, RunStores, StoreCredentials};

/// Runs the steps of the request at `request_key` in `bucket` and stores the answer. `Err`
/// when there is no request or plan to run them for, or the answer cannot be stored (the Job
/// then fails, and the operator starts another attempt); a step that fails is in the answer.
pub async fn answer(
    bucket: &Store,
    request_key: &str,
    token: &MilvusToken,
    creds: &StoreCredentials,
) -> Result<FinishAnswer> {
    let request: FinishRequest = read_request(bucket, request_key, "finishing").await?;
    let plan = read_plan(bucket, &request.plan_key).await?;
    let answer = FinishAnswer {
        steps: run_steps(&request.spec, &plan, token, creds).await,
    };
    for s in &answer.steps {
        tracing::info!(step = %s.step, state = ?s.state, "{}", s.message);
    }
    let key = PlanningLayout::answer_key_of(request_key);
    bucket
        .put_json(&key, &answer)
        .await
        .map_err(|e| BackfillError::write(None, bucket.display(&key), e))?;
    tracing::info!(answer = %bucket.display(&key), "finishing answered");
    Ok(answer)
}

/// The steps after the commit that `spec` declares, against the run `plan`: the source store
/// (which `verify` samples) is opened with `creds`.
pub async fn run_steps(
    spec: &milvus_backfill_api::spec::EngineSpec,
    plan: &Plan,
    token: &MilvusToken,
    creds: &StoreCredentials,
) -> Vec<milvus_backfill_api::lifecycle::StepRecord> {
    let stores = RunStores::open(&RunLocations::of_spec(spec), creds).await;
    crate::after_commit::run_declared(spec, plan, &stores.source, token).await
}

async fn read_plan(bucket: &Store, key: &str) -> Result<Plan> {
    match bucket.get_json::<Plan>(key).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) | Err(StoreError::NotFound(_)) => Err(BackfillError::config(format!(
            "the run's plan {} does not exist (deleted from the bucket?)",
            bucket.display(key)
        ))),
        Err(e) => Err(BackfillError::connection(format!(
            "reading the run's plan {}: {e}",
            bucket.display(key)
        ))),
    }
}
