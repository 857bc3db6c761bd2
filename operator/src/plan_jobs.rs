//! Planning by a Job (IO): the executor's side of [`crate::planning`]. Looks at the latest
//! attempt of the Backfill's generation (its Job in the cache, its objects in the bucket),
//! asks [`planning::next_step`], and carries the step out: store a request and apply its Job,
//! wait, adopt the stored plan, or record the failure.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::ResourceExt;
use milvus_backfill::facade::{Store, StoreError};
use milvus_backfill_api::invocation::RequestJob;
use milvus_backfill_api::plan::Plan;
use milvus_backfill_api::planning::{PlanAnswer, PlanRequest, PlanningLayout};

use crate::controller::{job_state, now, Context, Error};
use crate::crd::{Backfill, BackfillStatus};
use crate::executor::{adopt_plan, apply_job};
use crate::jobs::{self, labels};
use crate::planning::{self, Attempt, PlanningFailure, Step};
use crate::state;

/// How often a running planning Job is looked at when no watch event comes.
const RECHECK: Duration = Duration::from_secs(30);

pub(crate) async fn plan_by_job(bf: &Backfill, ctx: &Context, status: &BackfillStatus) -> Result<Requeue, Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    let uid = bf.uid().unwrap_or_default();
    let root = bf.spec.engine.storage.root_path();
    let storage = ctx.storage(bf).await?;
    let latest = latest_attempt(RequestJob::Plan, bf, ctx, &storage, gen).await?;
    let answer = match &latest {
        Some(a) => {
            let key = PlanningLayout::new(root, &uid, gen, a.attempt).answer_key();
            storage.get_json::<PlanAnswer>(&key).await?
        }
        None => None,
    };
    let at = now();
    match planning::next_step(latest.as_ref(), answer.as_ref(), at) {
        Step::Start { attempt, after } => {
            if let Some(f) = after {
                report(bf, ctx, status, &f, false, true).await?;
            }
            start(bf, ctx, &storage, gen, attempt).await?;
            Ok(Requeue::requeue(Duration::from_secs(5)))
        }
        Step::Wait { retry_at, failure } => {
            if let Some(f) = failure {
                report(bf, ctx, status, &f, false, false).await?;
            }
            let wait = retry_at.map_or(RECHECK, |t| state::until(t, at).max(Duration::from_millis(100)));
            Ok(Requeue::requeue(wait))
        }
        Step::Planned { plan_key } => {
            let plan: Plan = storage
                .get_json(&plan_key)
                .await?
                .ok_or_else(|| Error::PlanMissing(storage.display(&plan_key)))?;
            adopt_plan(bf, ctx, status, plan, storage).await
        }
        Step::Failed(mut f) => {
            if let Some(a) = &latest {
                let key = PlanningLayout::new(root, &uid, gen, a.attempt).precheck_key();
                // A Job of an older worker stores no report: name it only when it is there.
                match storage.head(&key).await {
                    Ok(_) => f.message = state::with_report(&f.message, Some(&storage.display(&key))),
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            report(bf, ctx, status, &f, true, true).await?;
            Ok(Requeue::await_change())
        }
    }
}

/// The highest attempt of a planning or finishing Job (`job`) of generation `gen` that has a
/// Job in the cache or an object in the bucket (a Job deleted after its TTL leaves its request
/// and answer behind).
pub(crate) async fn latest_attempt(
    job: RequestJob,
    bf: &Backfill,
    ctx: &Context,
    storage: &Store,
    gen: i64,
) -> Result<Option<Attempt>, Error> {
    let uid = bf.uid().unwrap_or_default();
    let want = gen.to_string();
    let label = jobs::generation_label(job);
    let mut latest: Option<Attempt> = ctx
        .jobs
        .state()
        .iter()
        .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
        .filter(|j| j.labels().get(label) == Some(&want))
        .filter_map(|j| {
            Some(Attempt {
                attempt: j.labels().get(labels::ATTEMPT)?.parse().ok()?,
                job_name: j.name_any(),
                job: Some(job_state(j)),
            })
        })
        .max_by_key(|a| a.attempt);
    let root = bf.spec.engine.storage.root_path();
    let prefix = match job {
        RequestJob::Plan => PlanningLayout::backfill_prefix(root, &uid),
        RequestJob::Finish => PlanningLayout::finishing_prefix(root, &uid),
    };
    let stored = storage
        .list_keys(&prefix)
        .await?
        .iter()
        .filter_map(|k| PlanningLayout::parse_key(&prefix, k))
        .filter(|(g, _)| *g == gen)
        .map(|(_, a)| a)
        .max();
    if let Some(a) = stored.filter(|a| latest.as_ref().is_none_or(|l| l.attempt < *a)) {
        latest = Some(Attempt {
            attempt: a,
            job_name: jobs::request_job_name(job, &bf.name_any(), gen, a),
            job: None,
        });
    }
    Ok(latest)
}

/// Stores the request of `attempt`, then applies its Job.
async fn start(bf: &Backfill, ctx: &Context, storage: &Store, gen: i64, attempt: u32) -> Result<(), Error> {
    let uid = bf.uid().unwrap_or_default();
    let layout = PlanningLayout::new(bf.spec.engine.storage.root_path(), &uid, gen, attempt);
    let request = PlanRequest {
        backfill: bf.name_any(),
        namespace: bf.namespace().unwrap_or_default(),
        generation: gen,
        attempt,
        spec: bf.spec.engine.clone(),
    };
    storage.put_json(&layout.request_key(), &request).await?;
    let job = jobs::build_planning_job(bf, gen, attempt, &layout.request_key(), &ctx.config.worker)?;
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &bf.namespace().unwrap_or_default());
    let name = apply_job(&api, &job).await?;
    ctx.metrics.jobs_created.inc();
    tracing::info!(backfill = %bf.name_any(), job = %name, attempt, "planning Job applied");
    Ok(())
}

/// Records a planning failure in status; with `publish`, as an Event too.
async fn report(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    f: &PlanningFailure,
    permanent: bool,
    publish: bool,
) -> Result<(), Error> {
    let gen = bf.metadata.generation.unwrap_or_default();
    let (st, ev) = state::status_after_plan_error(status, &f.kind, &f.message, permanent, gen, now());
    if st != *status {
        ctx.patch_status(bf, &st).await?;
    }
    if publish {
        ctx.publish(bf, &ev, "Plan").await;
    }
    Ok(())
}
