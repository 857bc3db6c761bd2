//! `plan-job`: what a planning Job runs. It reads the operator's [`PlanRequest`] from the
//! bucket, prechecks and plans with the credentials of its environment (the Job's
//! `secretKeyRef`s), stores the plan at the run's `plan.json` and the precheck report beside
//! the request, then the [`PlanAnswer`]. The answer is written last, so an answer that says
//! `planned` always names a stored plan.

use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::planning::{PlanAnswer, PlanRequest, PlanningLayout};

use crate::config::{BackfillDoc, MilvusToken};
use crate::error::{BackfillError, Result};
use crate::planner;
use crate::store::{Store, StoreError};
use crate::stores::StoreCredentials;

/// Plans the request at `request_key` in `bucket` and stores the answer. `Ok` once the answer
/// is stored, whatever it says; `Err` when there is no request to answer or the answer cannot
/// be stored (the Job then fails, and the operator starts another attempt).
pub async fn answer(
    bucket: &Store,
    request_key: &str,
    token: &MilvusToken,
    creds: &StoreCredentials,
) -> Result<PlanAnswer> {
    let request: PlanRequest = read_request(bucket, request_key, "planning").await?;
    let doc = BackfillDoc {
        name: request.backfill.clone(),
        spec: request.spec.clone(),
    };
    let (report, planned) = planner::precheck(&doc, token, creds).await;
    let report_key = PlanningLayout::precheck_key_of(request_key);
    bucket
        .put_json(&report_key, &report)
        .await
        .map_err(|e| BackfillError::write(None, bucket.display(&report_key), e))?;
    tracing::info!(report = %bucket.display(&report_key), passed = report.passed, "{}", report.summary());
    let answer = match planned {
        Ok(planned) => store_plan(&planned).await?,
        Err(e) => {
            tracing::warn!(kind = %e.kind, "planning failed: {}", e.message);
            PlanAnswer::Failed {
                kind: e.kind,
                message: e.message,
            }
        }
    };
    let key = PlanningLayout::answer_key_of(request_key);
    bucket
        .put_json(&key, &answer)
        .await
        .map_err(|e| BackfillError::write(None, bucket.display(&key), e))?;
    tracing::info!(answer = %bucket.display(&key), "planning answered");
    Ok(answer)
}

/// The operator's request at `key` (`what`: planning or finishing, for messages).
pub(crate) async fn read_request<T: serde::de::DeserializeOwned>(bucket: &Store, key: &str, what: &str) -> Result<T> {
    let body = bucket.get(key).await.map_err(|e| match e {
        StoreError::NotFound(w) => BackfillError::config(format!("the {what} request {w} does not exist")),
        e => BackfillError::connection(format!("reading the {what} request: {e}")),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| BackfillError::config(format!("{} is not a {what} request: {e}", bucket.display(key))))
}

/// The plan, stored where the operator and the workers find it.
async fn store_plan(planned: &planner::Planned) -> Result<PlanAnswer> {
    let plan = &planned.plan;
    let storage = &planned.stores.storage;
    let key = RunLayout::of_plan(plan).plan_key();
    storage
        .put_json(&key, plan)
        .await
        .map_err(|e| BackfillError::write(None, storage.display(&key), e))?;
    tracing::info!(plan = %storage.display(&key), segments = plan.segments.len(), "plan stored");
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    Ok(PlanAnswer::Planned {
        plan_key: key,
        run_id: plan.run_id.clone(),
    })
}
