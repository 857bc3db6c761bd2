//! Execute (IO): carries out the actions [`crate::state::decide`] returned, in order, and
//! nothing else. It stops at the first that fails; the next pass decides again. Order
//! matters and is the decider's: the status goes before new Jobs, the result before the
//! final status and before the commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::ResourceExt;
use milvus_backfill::facade::{self, Store, StoreError};
use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::{BackfillResult, TaskOutcome};
use milvus_backfill_api::plan::Plan;
use milvus_backfill_api::planning::PlanningLayout;

use crate::controller::{now, Context, Error, RunCache};
use crate::crd::{Backfill, BackfillStatus};
use crate::jobs::{self, JobInput, MANAGER};
use crate::planning::PlanningMode;
use crate::state::{self, Action, CommitAnswer, CommitAttempt, Decision, JobRequest};
use crate::status::CommitVerdict;
use crate::status::Outcomes;

/// Runs `decision`'s actions; returns when to look again.
pub async fn execute(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    decision: Decision,
) -> Result<Requeue, Error> {
    let mut requeue = match decision.requeue_after {
        Some(d) => Requeue::requeue(d),
        None => Requeue::await_change(),
    };
    // The status as stored so far in this pass.
    let mut current = status.clone();
    for action in decision.actions {
        match action {
            Action::UpdateStatus(st) => {
                ctx.patch_status(bf, &st).await?;
                current = *st;
            }
            Action::Event(e) => ctx.publish(bf, &e, "Reconcile").await,
            Action::Plan => return plan(bf, ctx, &current).await,
            Action::RecordOutcome { task, attempt, outcome } => {
                record_outcome(bf, ctx, task, attempt, *outcome).await?
            }
            Action::CreateJobs(reqs) => {
                if create_jobs(bf, ctx, status, reqs).await? {
                    // An attempt turned out done already: decide again with its outcome.
                    requeue = Requeue::requeue(Duration::from_millis(100));
                }
            }
            Action::WriteResult(result) => write_result(bf, ctx, &result).await?,
            Action::Commit { endpoint, result } => return commit(bf, ctx, &current, &endpoint, &result).await,
            Action::Finish => return crate::finish_jobs::finish(bf, ctx, &current).await,
        }
    }
    Ok(requeue)
}

/// Plans as the operator is configured to: in-process, or by a planning Job.
async fn plan(bf: &Backfill, ctx: &Context, status: &BackfillStatus) -> Result<Requeue, Error> {
    match ctx.config.planning {
        PlanningMode::InProcess => plan_in_process(bf, ctx, status).await,
        PlanningMode::Job => crate::plan_jobs::plan_by_job(bf, ctx, status).await,
    }
}

/// Plans in-process with the engine's planner, stores the plan, records it in status.
async fn plan_in_process(bf: &Backfill, ctx: &Context, status: &BackfillStatus) -> Result<Requeue, Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    // Planning reads Milvus, storage and the source with the Backfill's own Secrets.
    let secrets = ctx.plan_secrets(bf).await?;
    // The run layout lives in the storage bucket, opened with the keys just read.
    let storage_creds = secrets.stores.storage.clone();
    let started = Instant::now();
    let (report, planned) = facade::precheck(&bf.name_any(), &bf.spec.engine, secrets).await;
    ctx.metrics.planning_seconds.observe(started.elapsed().as_secs_f64());
    let storage = facade::open_storage(&bf.spec.engine, storage_creds.as_ref()).await;
    let uid = bf.uid().unwrap_or_default();
    let report_key = PlanningLayout::new(bf.spec.engine.storage.root_path(), &uid, gen, 0).precheck_key();
    // Best effort: a report that cannot be stored must not hide the planning outcome.
    let stored = match storage.put_json(&report_key, &report).await {
        Ok(()) => Some(storage.display(&report_key)),
        Err(e) => {
            tracing::warn!(backfill = %bf.name_any(), "cannot store the precheck report: {e}");
            None
        }
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            let permanent = e.kind.is_permanent();
            let message = state::with_report(&e.message, stored.as_deref());
            let (st, ev) = state::status_after_plan_error(status, e.kind.as_str(), &message, permanent, gen, now());
            ctx.patch_status(bf, &st).await?;
            if !permanent {
                // Published by the reconcile wrapper, with the backoff.
                return Err(Error::Planning(e.to_string()));
            }
            ctx.publish(bf, &ev, "Plan").await;
            return Ok(Requeue::await_change());
        }
    };
    let layout = RunLayout::of_plan(&plan);
    storage.put_json(&layout.plan_key(), &plan).await?;
    adopt_plan(bf, ctx, status, plan, storage).await
}

/// Records a stored plan in status and caches the run; the next pass creates its Jobs.
pub(crate) async fn adopt_plan(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    plan: Plan,
    storage: Store,
) -> Result<Requeue, Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    let layout = RunLayout::of_plan(&plan);
    let plan_uri = storage.display(&layout.plan_key());
    let (st, ev) = state::status_after_plan(status, &plan, &plan_uri, &bf.spec, gen, now());
    ctx.patch_status(bf, &st).await?;
    ctx.publish(bf, &ev, "Plan").await;
    for w in &plan.warnings {
        tracing::warn!(backfill = %bf.name_any(), "{w}");
    }
    let run = RunCache {
        layout,
        plan: Arc::new(plan),
        storage,
        outcomes: Outcomes::new(),
    };
    ctx.runs.lock().await.insert(bf.uid().unwrap_or_default(), run);
    Ok(Requeue::requeue(Duration::from_millis(100)))
}

/// Stores the outcome of an attempt whose Job finished without one.
async fn record_outcome(
    bf: &Backfill,
    ctx: &Context,
    task: u32,
    attempt: u32,
    outcome: TaskOutcome,
) -> Result<(), Error> {
    let mut runs = ctx.runs.lock().await;
    if let Some(run) = runs.get_mut(&bf.uid().unwrap_or_default()) {
        let key = run.layout.outcome_key(&outcome.task_id, attempt);
        run.storage.put_json(&key, &outcome).await?;
        run.outcomes.insert((task, attempt), outcome);
    }
    Ok(())
}

/// Stores each task object, then applies its Job. True when an attempt was found done.
async fn create_jobs(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    reqs: Vec<JobRequest>,
) -> Result<bool, Error> {
    let uid = bf.uid().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &bf.namespace().unwrap_or_default());
    let mut found_done = false;
    for r in reqs {
        if ctx.already_done(&uid, r.task, r.attempt).await? {
            found_done = true;
            continue;
        }
        let (task, storage, layout) = {
            let runs = ctx.runs.lock().await;
            let Some(run) = runs.get(&uid) else { break };
            let layout = state::layout_of(&bf.spec, status, &run.plan);
            if layout.partitions.is_some() && r.stage.is_none() {
                tracing::error!(task = r.task, "a task of a staged run without its work; not created");
                continue;
            }
            let task = layout.task_with(&run.plan, r.task, r.attempt, r.stage.clone());
            (task, run.storage.clone(), run.layout.clone())
        };
        let key = layout.task_key(&task.task_id, r.attempt);
        storage.put_json(&key, &task).await?;
        let input = JobInput {
            run_id: &task.plan.run_id,
            task_index: r.task,
            attempt: r.attempt,
            task_key: &key,
            task_id: &task.task_id,
        };
        let job = jobs::build_job(bf, &input, &ctx.config.worker)?;
        let name = apply_job(&api, &job).await?;
        ctx.metrics.jobs_created.inc();
        let mut expected = ctx.expected.lock().await;
        expected
            .entry(uid.clone())
            .or_default()
            .insert(name, (r.task, r.attempt, Instant::now()));
    }
    Ok(found_done)
}

/// Server-side apply of a Job; returns its name.
pub(crate) async fn apply_job(api: &Api<Job>, job: &Job) -> Result<String, Error> {
    let name = job.name_any();
    match api
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(job))
        .await
    {
        Ok(_) => Ok(name),
        // It exists with an older template (the spec changed since; a Job's template is
        // immutable): leave it, it runs the same task.
        Err(kube::Error::Api(s)) if s.code == 422 && api.get_opt(&name).await?.is_some() => {
            tracing::info!(job = %name, "Job exists with another template; kept");
            Ok(name)
        }
        Err(e) => Err(e.into()),
    }
}

async fn write_result(bf: &Backfill, ctx: &Context, result: &BackfillResult) -> Result<(), Error> {
    let runs = ctx.runs.lock().await;
    if let Some(run) = runs.get(&bf.uid().unwrap_or_default()) {
        facade::store_result(&run.storage, &run.layout, result)
            .await
            .map_err(|e| Error::Storage(StoreError::Other(e.message)))?;
        delete_exchange(&run.storage, &run.layout).await;
    }
    Ok(())
}

/// Deletes what a staged run's route and join tasks left in the bucket, once the result is
/// stored (a later pass never needs it again). A failure is a warning: the objects are
/// garbage, not state.
async fn delete_exchange(storage: &Store, layout: &RunLayout) {
    let root = layout.exchange_root();
    let keys = match storage.list_keys(&root).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(prefix = %root, error = %e, "exchange not listed; left in the bucket");
            return;
        }
    };
    for k in &keys {
        if let Err(e) = storage.delete(k).await {
            tracing::warn!(key = %k, error = %e, "exchange object not deleted");
        }
    }
    if !keys.is_empty() {
        tracing::info!(objects = keys.len(), prefix = %root, "exchange deleted");
    }
}

/// Commits the stored result through the facade and records the answer in status
/// ([`state::status_after_commit`]). Skipped when the stored status already records an
/// attempt this pass did not see (the watch cache lags behind a write of an earlier pass):
/// the commit is idempotent on the Milvus side, but a successful one is never repeated.
async fn commit(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    endpoint: &str,
    result: &BackfillResult,
) -> Result<Requeue, Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    let run = {
        let runs = ctx.runs.lock().await;
        runs.get(&bf.uid().unwrap_or_default())
            .map(|r| (r.storage.clone(), r.layout.clone()))
    };
    let Some((storage, layout)) = run else {
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    };
    if !commit_still_due(bf, ctx, status).await? {
        tracing::info!(backfill = %bf.name_any(), "the stored status records a later commit attempt; deciding again");
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let retries = ctx
        .config
        .commit_segment_retries
        .unwrap_or(state::COMMIT_SEGMENT_RETRIES);
    let key = layout.result_key();
    let answer = match facade::commit(&storage, endpoint, result, &layout, retries).await {
        Ok(done) => CommitAnswer::Answered {
            result_paths: done.result_paths.iter().map(|k| storage.display(k)).collect(),
            segments: done.segments,
            success: done.success,
        },
        Err(e) => CommitAnswer::Error {
            kind: e.kind,
            message: e.message,
        },
    };
    let url = facade::commit_url(endpoint, &key);
    let steps_after = milvus_backfill_api::lifecycle::steps_after_commit(&bf.spec.engine);
    let attempt = CommitAttempt {
        endpoint,
        url: &url,
        segments: result.segments.len(),
        answer: &answer,
        steps_after: &steps_after,
    };
    let after = state::status_after_commit(status, &attempt, gen, now());
    ctx.metrics.commits.inc(match after.verdict {
        CommitVerdict::Committed => "committed",
        CommitVerdict::Rejected => "rejected",
        CommitVerdict::Unreachable => "unreachable",
        CommitVerdict::Refused => "refused",
    });
    ctx.patch_status(bf, &after.status).await?;
    for e in &after.events {
        ctx.publish(bf, e, "Commit").await;
    }
    Ok(after.retry_in.map_or_else(Requeue::await_change, Requeue::requeue))
}

/// Whether the Backfill's status, read from the API server, shows the commit as `status`
/// does: not final, and no attempt since.
async fn commit_still_due(bf: &Backfill, ctx: &Context, status: &BackfillStatus) -> Result<bool, Error> {
    let api: Api<Backfill> = Api::namespaced(ctx.client.clone(), &bf.namespace().unwrap_or_default());
    let stored = api.get_status(&bf.name_any()).await?.status.unwrap_or_default();
    let attempt = |s: &BackfillStatus| {
        s.commit
            .as_ref()
            .map(|c| (c.state, c.attempts, c.last_attempt_time.clone()))
    };
    Ok(stored.completion_time.is_none() && attempt(&stored) == attempt(status))
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
