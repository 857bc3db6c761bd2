//! The steps after the commit (IO): the executor's side of [`crate::finishing`]. They run
//! where planning runs: in a finishing Job that gets the Backfill's Secrets through
//! `secretKeyRef` (`--planning job`), or in the operator with the Secrets it reads
//! (`--planning in-process`). Either way the records go into status with
//! [`finishing::status_after_finish`].

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::ResourceExt;
use milvus_backfill::facade::{self, Store};
use milvus_backfill_api::invocation::RequestJob;
use milvus_backfill_api::lifecycle::StepRecord;
use milvus_backfill_api::plan::Plan;
use milvus_backfill_api::planning::{FinishAnswer, FinishRequest, PlanningLayout};

use crate::controller::{now, Context, Error};
use crate::crd::{Backfill, BackfillStatus};
use crate::executor::apply_job;
use crate::finishing;
use crate::jobs;
use crate::plan_jobs::latest_attempt;
use crate::planning::{next_request_step, Answered, PlanningMode, Step};
use crate::state::{self, reason};

/// How often a running finishing Job is looked at when no watch event comes.
const RECHECK: Duration = Duration::from_secs(30);

/// Runs the declared steps after the commit, or takes the next step towards them.
pub(crate) async fn finish(bf: &Backfill, ctx: &Context, status: &BackfillStatus) -> Result<Requeue, Error> {
    if !still_finishing(bf, ctx).await? {
        tracing::info!(backfill = %bf.name_any(), "the stored status is final already; deciding again");
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let steps = milvus_backfill_api::lifecycle::steps_after_commit(&bf.spec.engine);
    if steps.is_empty() {
        // The spec no longer declares any (changed after the commit): the run is done.
        return record(bf, ctx, status, &[]).await;
    }
    let run = {
        let runs = ctx.runs.lock().await;
        runs.get(&bf.uid().unwrap_or_default())
            .map(|r| (r.plan.clone(), r.storage.clone(), r.layout.plan_key()))
    };
    let Some((plan, storage, plan_key)) = run else {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    };
    match ctx.config.planning {
        PlanningMode::InProcess => {
            let secrets = ctx.plan_secrets(bf).await?;
            let records = facade::finish(&bf.spec.engine, &plan, &secrets).await;
            record(bf, ctx, status, &records).await
        }
        PlanningMode::Job => by_job(bf, ctx, status, &storage, &plan, &plan_key).await,
    }
}

/// The finishing Job's attempts: start one, wait for it, or record its answer.
async fn by_job(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    storage: &Store,
    plan: &Plan,
    plan_key: &str,
) -> Result<Requeue, Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    let uid = bf.uid().unwrap_or_default();
    let root = bf.spec.engine.storage.root_path();
    let latest = latest_attempt(RequestJob::Finish, bf, ctx, storage, gen).await?;
    let answer = match &latest {
        Some(a) => {
            let key = PlanningLayout::finishing(root, &uid, gen, a.attempt).answer_key();
            storage.get_json::<FinishAnswer>(&key).await?
        }
        None => None,
    };
    let at = now();
    match next_request_step(
        RequestJob::Finish,
        latest.as_ref(),
        answer.as_ref().map(|_| Answered::Done),
        at,
    ) {
        Step::Start { attempt, after } => {
            if let Some(f) = after {
                let ev = state::event_spec(
                    true,
                    reason::FINISHING_ERROR,
                    format!("{}; attempt {attempt} starts", f.message),
                );
                ctx.publish(bf, &ev, "Finish").await;
            }
            start(bf, ctx, storage, (gen, attempt), (plan, plan_key)).await?;
            Ok(Requeue::requeue(Duration::from_secs(5)))
        }
        Step::Wait { retry_at, .. } => {
            let wait = retry_at.map_or(RECHECK, |t| state::until(t, at).max(Duration::from_millis(100)));
            Ok(Requeue::requeue(wait))
        }
        Step::Planned { .. } => {
            let records = answer.map(|a| a.steps).unwrap_or_default();
            record(bf, ctx, status, &records).await
        }
        // A finishing answer never fails as a whole (a failed step is a record in it).
        Step::Failed(f) => {
            tracing::error!(backfill = %bf.name_any(), "unexpected finishing failure: {}", f.message);
            Ok(Requeue::requeue(RECHECK))
        }
    }
}

/// Stores the request of `attempt`, then applies its Job.
async fn start(
    bf: &Backfill,
    ctx: &Context,
    storage: &Store,
    (gen, attempt): (i64, u32),
    (plan, plan_key): (&Plan, &str),
) -> Result<(), Error> {
    let uid = bf.uid().unwrap_or_default();
    let layout = PlanningLayout::finishing(bf.spec.engine.storage.root_path(), &uid, gen, attempt);
    let request = FinishRequest {
        backfill: bf.name_any(),
        namespace: bf.namespace().unwrap_or_default(),
        generation: gen,
        attempt,
        spec: bf.spec.engine.clone(),
        plan_key: plan_key.to_owned(),
    };
    storage.put_json(&layout.request_key(), &request).await?;
    let job = jobs::build_request_job(
        RequestJob::Finish,
        bf,
        (gen, attempt),
        &layout.request_key(),
        &ctx.config.worker,
    )?;
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &bf.namespace().unwrap_or_default());
    let name = apply_job(&api, &job).await?;
    ctx.metrics.jobs_created.inc();
    tracing::info!(backfill = %bf.name_any(), job = %name, attempt, run = %plan.run_id, "finishing Job applied");
    Ok(())
}

/// Records what the steps did: the final status (or StepFailed) and its Events.
async fn record(bf: &Backfill, ctx: &Context, status: &BackfillStatus, steps: &[StepRecord]) -> Result<Requeue, Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    let (st, events) = finishing::status_after_finish(status, steps, gen, now());
    ctx.patch_status(bf, &st).await?;
    for e in &events {
        ctx.publish(bf, e, "Finish").await;
    }
    Ok(Requeue::await_change())
}

/// Whether the status stored in the API server still waits for the steps: not final, and no
/// step failed at this generation (the watch cache lags behind a write of an earlier pass: the
/// steps are not run and recorded twice).
async fn still_finishing(bf: &Backfill, ctx: &Context) -> Result<bool, Error> {
    let api: Api<Backfill> = Api::namespaced(ctx.client.clone(), &bf.namespace().unwrap_or_default());
    let stored = api.get_status(&bf.name_any()).await?.status.unwrap_or_default();
    let gen = bf.metadata.generation.unwrap_or_default();
    Ok(stored.completion_time.is_none() && !finishing::step_failed_at(&stored, gen))
}
