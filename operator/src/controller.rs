//! The controller (IO): watches Backfills and their Jobs, gathers what [`state::decide`] needs,
//! and carries out its actions: planning, the bucket, Jobs (server-side apply), status
//! (server-side apply), Events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use milvus_backfill::config::{BackfillDoc, MilvusToken, S3Credentials, Stores};
use milvus_backfill::error::ErrorKind;
use milvus_backfill::plan::Plan;
use milvus_backfill::runner::TaskOutcome;
use milvus_backfill_api::{ACCESS_KEY_KEY, API_VERSION, KIND, SECRET_KEY_KEY};
use tokio::sync::Mutex;

use crate::crd::{Backfill, BackfillStatus};
use crate::jobs::{self, labels, BuildError, JobInput, MANAGER};
use crate::metrics::Metrics;
use crate::state::{self, Action, EventSpec, Observed, RunInput};
use crate::status::{JobState, JobView, Outcomes};
use crate::storage::{RunStorage, StorageError};
use crate::{runs, validate};

/// How long a created Job counts as running before the watch shows it.
const EXPECTATION_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("Secret {0}")]
    Secret(String),
    #[error("planning: {0}")]
    Planning(String),
    #[error("building a Job: {0}")]
    Build(#[from] BuildError),
    #[error("the stored plan {0} is missing")]
    PlanMissing(String),
}

impl Error {
    /// Stable, PascalCase: the Event reason and the metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubeApiError",
            Self::Storage(_) => "StorageError",
            Self::Secret(_) => "SecretError",
            Self::Planning(_) => "PlanningError",
            Self::Build(_) => "JobBuildError",
            Self::PlanMissing(_) => "PlanMissing",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Worker image and ServiceAccount when `spec.worker` does not set them.
    pub worker: jobs::WorkerDefaults,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Backfills reconciled at once.
    pub concurrency: u16,
}

/// What the operator keeps about a run between passes: the plan and the outcomes read so far
/// (outcome objects never change once written, so caching them is safe).
struct RunCache {
    run_id: String,
    plan: Arc<Plan>,
    storage: RunStorage,
    outcomes: Outcomes,
}

/// Job name to (task, attempt, created at).
type Expected = BTreeMap<String, (u32, u32, Instant)>;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    jobs: Store<Job>,
    runs: Mutex<HashMap<String, RunCache>>,
    /// Jobs created but not yet seen in the cache, per Backfill uid.
    expected: Mutex<HashMap<String, Expected>>,
    /// Consecutive failed passes per Backfill uid, for the backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Job status to [`JobState`].
pub fn job_state(job: &Job) -> JobState {
    let conds = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let finished = || {
        job.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0)
    };
    for c in conds.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => {
                return JobState::Succeeded {
                    finished: finished().or(c.last_transition_time.as_ref().map(|t| t.0)),
                }
            }
            "Failed" => {
                return JobState::Failed {
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                    finished: c.last_transition_time.as_ref().map(|t| t.0),
                }
            }
            _ => {}
        }
    }
    JobState::Active
}

/// Seconds from a finished Job's start to its end.
pub fn job_seconds(job: &Job) -> Option<f64> {
    let start = job.status.as_ref()?.start_time.as_ref()?.0;
    let end = match job_state(job) {
        JobState::Succeeded { finished } | JobState::Failed { finished, .. } => finished?,
        JobState::Active => return None,
    };
    Some(end.duration_since(start).as_secs_f64().max(0.0))
}

/// A Job of this Backfill's run, as a [`JobView`] (`None` for anything else).
pub fn job_view(job: &Job, owner_uid: &str, run_label: &str) -> Option<JobView> {
    if !job.owner_references().iter().any(|o| o.uid == owner_uid) {
        return None;
    }
    let l = job.labels();
    if l.get(labels::RUN).map(String::as_str) != Some(run_label) {
        return None;
    }
    Some(JobView {
        name: job.name_any(),
        task: l.get(labels::TASK)?.parse().ok()?,
        attempt: l.get(labels::ATTEMPT)?.parse().ok()?,
        state: job_state(job),
    })
}

/// Drops what the controller never reads, to keep the Job cache small at 100,000 Jobs.
fn slim(job: &mut Job) {
    job.metadata.managed_fields = None;
    job.metadata.annotations = None;
    job.spec = None;
}

impl Context {
    async fn secret_value(&self, ns: &str, name: &str, key: &str) -> Result<String, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = api
            .get_opt(name)
            .await?
            .ok_or_else(|| Error::Secret(format!("{ns}/{name} does not exist")))?;
        let v = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| Error::Secret(format!("{ns}/{name} has no key {key:?}")))?;
        String::from_utf8(v.0.clone()).map_err(|_| Error::Secret(format!("{ns}/{name} key {key:?} is not UTF-8")))
    }

    async fn storage_credentials(&self, bf: &Backfill) -> Result<Option<S3Credentials>, Error> {
        let ns = bf.namespace().unwrap_or_default();
        match &bf.spec.engine.storage.credentials_secret_ref {
            Some(r) => Ok(Some(S3Credentials {
                access_key: self.secret_value(&ns, &r.name, ACCESS_KEY_KEY).await?,
                secret_key: self.secret_value(&ns, &r.name, SECRET_KEY_KEY).await?,
            })),
            None => Ok(None),
        }
    }

    async fn storage(&self, bf: &Backfill) -> Result<RunStorage, Error> {
        let creds = self.storage_credentials(bf).await?;
        Ok(RunStorage::connect(&bf.spec.engine, creds.as_ref()).await)
    }

    /// The cached run, loading the plan and (once) every stored outcome.
    async fn load_run(&self, bf: &Backfill, status: &BackfillStatus, run_id: &str) -> Result<(), Error> {
        let uid = bf.uid().unwrap_or_default();
        let mut runs = self.runs.lock().await;
        if runs.get(&uid).is_some_and(|r| r.run_id == run_id) {
            return Ok(());
        }
        let storage = self.storage(bf).await?;
        let coll = status.collection_id.unwrap_or_default();
        let key = runs::plan_key(bf.spec.engine.storage.root_path(), coll, run_id);
        let plan: Plan = storage
            .get_json(&key)
            .await?
            .ok_or_else(|| Error::PlanMissing(storage.uri(&key)))?;
        let prefix = runs::run_prefix(&plan);
        let keys: Vec<String> = storage
            .list(&runs::outcomes_prefix(&prefix))
            .await?
            .into_iter()
            .filter(|k| runs::parse_outcome_key(k, run_id).is_some())
            .collect();
        let mut outcomes = Outcomes::new();
        for (k, o) in storage.get_many::<TaskOutcome>(keys).await? {
            if let Some(ta) = runs::parse_outcome_key(&k, run_id) {
                outcomes.insert(ta, o);
            }
        }
        tracing::info!(backfill = %bf.name_any(), run = run_id, outcomes = outcomes.len(), "run loaded");
        runs.insert(
            uid,
            RunCache {
                run_id: run_id.to_owned(),
                plan: Arc::new(plan),
                storage,
                outcomes,
            },
        );
        Ok(())
    }

    /// Live Jobs of the run, plus the ones created but not yet in the cache.
    async fn job_views(&self, uid: &str, run_id: &str) -> Vec<JobView> {
        let run_label = jobs::label_value(run_id);
        let mut views: Vec<JobView> = self
            .jobs
            .state()
            .iter()
            .filter_map(|j| job_view(j, uid, &run_label))
            .collect();
        let mut expected = self.expected.lock().await;
        if let Some(exp) = expected.get_mut(uid) {
            exp.retain(|name, (_, _, at)| !views.iter().any(|v| &v.name == name) && at.elapsed() < EXPECTATION_TTL);
            for (name, (task, attempt, _)) in exp.iter() {
                views.push(JobView {
                    name: name.clone(),
                    task: *task,
                    attempt: *attempt,
                    state: JobState::Active,
                });
            }
        }
        views
    }

    async fn publish(&self, bf: &Backfill, e: &EventSpec, action: &str) {
        let ev = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.to_owned(),
            note: Some(e.message.clone()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&ev, &bf.object_ref(&())).await {
            tracing::warn!(backfill = %bf.name_any(), error = %err, "cannot publish event");
        }
    }

    async fn patch_status(&self, bf: &Backfill, st: &BackfillStatus) -> Result<(), Error> {
        let api: Api<Backfill> = Api::namespaced(self.client.clone(), &bf.namespace().unwrap_or_default());
        let patch = serde_json::json!({"apiVersion": API_VERSION, "kind": KIND, "status": st});
        api.patch_status(
            &bf.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    /// Plans in-process with the engine's planner, stores the plan, records it in status.
    async fn plan(&self, bf: &Backfill, status: &BackfillStatus) -> Result<Requeue, Error> {
        let gen = bf.metadata.generation.unwrap_or_default();
        let ns = bf.namespace().unwrap_or_default();
        let token = match &bf.spec.engine.milvus.token_secret_ref {
            Some(r) => MilvusToken(Some(self.secret_value(&ns, &r.name, &r.key).await?)),
            None => MilvusToken(None),
        };
        let doc = BackfillDoc {
            name: bf.name_any(),
            spec: bf.spec.engine.clone(),
        };
        // Planning reads storage and the source with the Backfill's own Secrets.
        let storage_creds = self.storage_credentials(bf).await?;
        let source_creds = match &bf.spec.engine.source.credentials_secret_ref {
            Some(r) => Some(S3Credentials {
                access_key: self.secret_value(&ns, &r.name, ACCESS_KEY_KEY).await?,
                secret_key: self.secret_value(&ns, &r.name, SECRET_KEY_KEY).await?,
            }),
            None => None,
        };
        let spec = &bf.spec.engine;
        let stores = Stores::new(
            &Stores::storage_endpoint(spec),
            &spec.storage.bucket,
            &Stores::source_endpoint(spec),
            storage_creds,
            source_creds,
        )
        .await;
        let started = Instant::now();
        let planned = milvus_backfill::planner::plan_with(&doc, &token, stores).await;
        self.metrics.planning_seconds.observe(started.elapsed().as_secs_f64());
        match planned {
            Ok(p) => {
                let plan = p.plan;
                let storage = self.storage(bf).await?;
                let key = runs::plan_key(&plan.root_path, plan.collection_id, &plan.run_id);
                storage.put_json(&key, &plan).await?;
                let (st, ev) = state::status_after_plan(status, &plan, &storage.uri(&key), &bf.spec, gen, now());
                self.patch_status(bf, &st).await?;
                self.publish(bf, &ev, "Plan").await;
                for w in &plan.warnings {
                    tracing::warn!(backfill = %bf.name_any(), "{w}");
                }
                self.runs.lock().await.insert(
                    bf.uid().unwrap_or_default(),
                    RunCache {
                        run_id: plan.run_id.clone(),
                        plan: Arc::new(plan),
                        storage,
                        outcomes: Outcomes::new(),
                    },
                );
                Ok(Requeue::requeue(Duration::from_millis(100)))
            }
            Err(e) => {
                let permanent = matches!(e.kind, ErrorKind::ConfigError | ErrorKind::SchemaValidationError);
                let (st, ev) =
                    state::status_after_plan_error(status, e.kind.as_str(), &e.message, permanent, gen, now());
                self.patch_status(bf, &st).await?;
                if permanent {
                    self.publish(bf, &ev, "Plan").await;
                    Ok(Requeue::await_change())
                } else {
                    // Published by the reconcile wrapper, with the backoff.
                    Err(Error::Planning(e.to_string()))
                }
            }
        }
    }

    /// Before a Job is created: its attempt may have finished while its Job vanished unseen
    /// (a TTL of 0, an operator restart). The outcome tells; then no Job is needed.
    async fn already_done(&self, uid: &str, task: u32, attempt: u32) -> Result<bool, Error> {
        let mut runs = self.runs.lock().await;
        let Some(run) = runs.get_mut(uid) else { return Ok(false) };
        if run.outcomes.contains_key(&(task, attempt)) {
            return Ok(true);
        }
        let key = runs::outcome_key(&runs::run_prefix(&run.plan), &runs::task_id(&run.run_id, task), attempt);
        match run.storage.get_json::<TaskOutcome>(&key).await? {
            Some(o) => {
                run.outcomes.insert((task, attempt), o);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Reads the outcomes of finished Jobs not yet in the cache. Each Job is timed once, when
    /// this operator first sees its outcome (a restarted operator loads old ones untimed).
    async fn refresh_outcomes(&self, ns: &str, uid: &str, views: &[JobView]) -> Result<(), Error> {
        let mut runs = self.runs.lock().await;
        let Some(run) = runs.get_mut(uid) else { return Ok(()) };
        // Finished Jobs without a cached outcome, by (task, attempt).
        let finished: HashMap<(u32, u32), &str> = views
            .iter()
            .filter(|v| v.state != JobState::Active && !run.outcomes.contains_key(&(v.task, v.attempt)))
            .map(|v| ((v.task, v.attempt), v.name.as_str()))
            .collect();
        if finished.is_empty() {
            return Ok(());
        }
        let prefix = runs::run_prefix(&run.plan);
        let want: Vec<String> = finished
            .keys()
            .map(|&(task, attempt)| runs::outcome_key(&prefix, &runs::task_id(&run.run_id, task), attempt))
            .collect();
        for (k, o) in run.storage.get_many::<TaskOutcome>(want).await? {
            if let Some(ta) = runs::parse_outcome_key(&k, &run.run_id) {
                let job = finished
                    .get(&ta)
                    .and_then(|name| self.jobs.get(&ObjectRef::new(name).within(ns)));
                if let Some(secs) = job.as_deref().and_then(job_seconds) {
                    self.metrics.observe_job(o.success, secs);
                }
                run.outcomes.insert(ta, o);
            }
        }
        Ok(())
    }
}

/// One pass over one Backfill.
pub async fn reconcile(bf: Arc<Backfill>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let r = reconcile_inner(&bf, &ctx).await;
    ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    let uid = bf.uid().unwrap_or_default();
    match &r {
        Ok(_) => {
            ctx.failures.lock().expect("not poisoned").remove(&uid);
        }
        Err(e) => {
            ctx.metrics.failures.inc(e.category());
            tracing::warn!(backfill = %bf.name_any(), namespace = bf.namespace().unwrap_or_default(), error = %e, "reconcile failed");
            let ev = EventSpec {
                warning: true,
                reason: e.category(),
                message: crate::crd::truncate(&e.to_string(), crate::crd::MAX_MESSAGE_BYTES),
            };
            ctx.publish(&bf, &ev, "Reconcile").await;
        }
    }
    r
}

async fn reconcile_inner(bf: &Backfill, ctx: &Context) -> Result<Requeue, Error> {
    let uid = bf.uid().unwrap_or_default();
    if bf.metadata.deletion_timestamp.is_some() {
        // Jobs go with the Backfill (ownerReferences); outputs and the run prefix stay.
        ctx.runs.lock().await.remove(&uid);
        ctx.expected.lock().await.remove(&uid);
        return Ok(Requeue::await_change());
    }
    let status = bf.status.clone().unwrap_or_default();
    let problems = validate::validate(&bf.spec, ctx.config.worker.image.as_deref())
        .err()
        .unwrap_or_default();
    let final_status = status.completion_time.is_some();
    let views = match (&status.run_id, problems.is_empty() && !final_status) {
        (Some(run_id), true) => {
            ctx.load_run(bf, &status, run_id).await?;
            let views = ctx.job_views(&uid, run_id).await;
            ctx.refresh_outcomes(&bf.namespace().unwrap_or_default(), &uid, &views)
                .await?;
            Some(views)
        }
        _ => None,
    };
    // Decide, holding the cached run (plan and outcomes) for the pure function.
    let decision = {
        let runs = ctx.runs.lock().await;
        let run = match (&views, runs.get(&uid)) {
            (Some(v), Some(r)) => Some(RunInput {
                plan: &r.plan,
                outcomes: &r.outcomes,
                jobs: v.as_slice(),
            }),
            _ => None,
        };
        state::decide(&Observed {
            generation: bf.metadata.generation.unwrap_or_default(),
            spec: &bf.spec,
            status: &status,
            problems: &problems,
            run,
            now: now(),
        })
    };
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
            Action::Plan => return ctx.plan(bf, &current).await,
            Action::RecordOutcome { task, attempt, outcome } => {
                let mut runs = ctx.runs.lock().await;
                if let Some(run) = runs.get_mut(&uid) {
                    let key = runs::outcome_key(&runs::run_prefix(&run.plan), &outcome.task_id, attempt);
                    run.storage.put_json(&key, &outcome).await?;
                    run.outcomes.insert((task, attempt), *outcome);
                }
            }
            Action::CreateJobs(reqs) => {
                let ns = bf.namespace().unwrap_or_default();
                let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
                for r in reqs {
                    if ctx.already_done(&uid, r.task, r.attempt).await? {
                        // Decide again with the outcome found.
                        requeue = Requeue::requeue(Duration::from_millis(100));
                        continue;
                    }
                    let (task, storage) = {
                        let runs = ctx.runs.lock().await;
                        let Some(run) = runs.get(&uid) else { break };
                        let spj = status.segments_per_job.unwrap_or_else(|| bf.spec.segments_per_job());
                        (runs::make_task(&run.plan, spj, r.task, r.attempt), run.storage.clone())
                    };
                    let key = runs::task_object_key(&task.run_prefix(), &task.task_id, r.attempt);
                    storage.put_json(&key, &task).await?;
                    let job = jobs::build_job(
                        bf,
                        &JobInput {
                            run_id: &task.plan.run_id,
                            task_index: r.task,
                            attempt: r.attempt,
                            task_key: &key,
                            task_id: &task.task_id,
                        },
                        &ctx.config.worker,
                    )?;
                    let name = job.name_any();
                    match api
                        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&job))
                        .await
                    {
                        Ok(_) => {}
                        // It exists with an older template (the spec changed since): leave it.
                        Err(kube::Error::Api(s)) if s.code == 422 && api.get_opt(&name).await?.is_some() => {
                            tracing::info!(job = %name, "Job exists with another template; kept");
                        }
                        Err(e) => return Err(e.into()),
                    }
                    ctx.metrics.jobs_created.inc();
                    ctx.expected
                        .lock()
                        .await
                        .entry(uid.clone())
                        .or_default()
                        .insert(name, (r.task, r.attempt, Instant::now()));
                }
            }
            Action::WriteResult(result) => {
                let runs = ctx.runs.lock().await;
                if let Some(run) = runs.get(&uid) {
                    run.storage.put_json(&run.plan.result_key(), &result).await?;
                }
            }
        }
    }
    if final_status {
        ctx.runs.lock().await.remove(&uid);
    }
    Ok(requeue)
}

/// Capped exponential backoff per Backfill: 5 s, 10 s, ... 5 min.
pub fn error_policy(bf: Arc<Backfill>, _e: &Error, ctx: Arc<Context>) -> Requeue {
    let uid = bf.uid().unwrap_or_default();
    let mut f = ctx.failures.lock().expect("not poisoned");
    let n = f.entry(uid).or_default();
    *n = n.saturating_add(1);
    Requeue::requeue(backoff(*n))
}

pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// Runs the controllers (one per watched namespace, or one for all) until a signal.
pub async fn run(client: Client, config: Config, metrics: Arc<Metrics>) {
    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut controllers = Vec::new();
    for ns in scopes {
        let (bf_api, job_api): (Api<Backfill>, Api<Job>) = match &ns {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let (reader, writer) = reflector::store();
        let job_stream = watcher(job_api, watcher::Config::default().labels(labels::SELECTOR))
            .default_backoff()
            .modify(slim)
            .reflect(writer)
            .touched_objects();
        let ctx = Arc::new(Context {
            client: client.clone(),
            recorder: Recorder::new(client.clone(), reporter.clone()),
            config: config.clone(),
            metrics: metrics.clone(),
            jobs: reader.clone(),
            runs: Mutex::new(HashMap::new()),
            expected: Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
        });
        let metrics = metrics.clone();
        let scope = ns.clone().unwrap_or_else(|| "all namespaces".into());
        controllers.push(async move {
            let c = Controller::new(bf_api, watcher::Config::default())
                .owns_stream(job_stream)
                .with_config(ControllerConfig::default().concurrency(config.concurrency.max(1)))
                .shutdown_on_signal();
            metrics.watch(c.store());
            // Apart from the controller: a shutdown before the cache fills must not wait for it.
            let ready = tokio::spawn({
                let metrics = metrics.clone();
                async move {
                    let _ = reader.wait_until_ready().await;
                    metrics.ready_scopes.inc();
                    tracing::info!(scope = %scope, "Job cache ready");
                }
            });
            let run = c.run(reconcile, error_policy, ctx).for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "controller event");
                }
            });
            run.await;
            ready.abort();
        });
    }
    futures_util::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn job(conds: Vec<(&str, &str)>) -> Job {
        let bf = crate::testutil::backfill("b");
        let mut j = jobs::build_job(
            &bf,
            &JobInput {
                run_id: "r",
                task_index: 3,
                attempt: 1,
                task_key: "k",
                task_id: "r-3",
            },
            &jobs::WorkerDefaults::default(),
        )
        .unwrap();
        j.status = Some(JobStatus {
            conditions: Some(
                conds
                    .into_iter()
                    .map(|(t, r)| JobCondition {
                        type_: t.into(),
                        status: "True".into(),
                        reason: Some(r.into()),
                        message: Some("m".into()),
                        last_transition_time: Some(Time("2026-11-27T03:00:00Z".parse().unwrap())),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        j
    }

    #[test]
    fn job_states_come_from_final_conditions() {
        assert_eq!(job_state(&job(vec![])), JobState::Active);
        assert_eq!(job_state(&job(vec![("SuccessCriteriaMet", "x")])), JobState::Active);
        assert!(matches!(
            job_state(&job(vec![("Complete", "x")])),
            JobState::Succeeded { finished: Some(_) }
        ));
        assert!(matches!(
            job_state(&job(vec![("FailureTarget", "x"), ("Failed", "DeadlineExceeded")])),
            JobState::Failed { ref reason, .. } if reason == "DeadlineExceeded"
        ));
    }

    #[test]
    fn finished_jobs_are_timed_from_start_to_end() {
        let mut j = job(vec![("Complete", "x")]);
        assert_eq!(job_seconds(&j), None, "no startTime");
        let st = j.status.as_mut().unwrap();
        st.start_time = Some(Time("2026-11-27T02:59:30Z".parse().unwrap()));
        st.completion_time = Some(Time("2026-11-27T03:00:00Z".parse().unwrap()));
        assert_eq!(job_seconds(&j), Some(30.0));
        // A failed Job ends at its Failed condition.
        let mut f = job(vec![("Failed", "DeadlineExceeded")]);
        f.status.as_mut().unwrap().start_time = Some(Time("2026-11-27T02:58:00Z".parse().unwrap()));
        assert_eq!(job_seconds(&f), Some(120.0));
        let mut a = job(vec![]);
        a.status.as_mut().unwrap().start_time = Some(Time("2026-11-27T02:58:00Z".parse().unwrap()));
        assert_eq!(job_seconds(&a), None, "still running");
    }

    #[test]
    fn only_jobs_of_this_run_are_seen() {
        let mut j = job(vec![]);
        let v = job_view(&j, "uid-1", "r").unwrap();
        assert_eq!((v.task, v.attempt), (3, 1));
        assert!(job_view(&j, "other", "r").is_none());
        assert!(job_view(&j, "uid-1", "other-run").is_none());
        slim(&mut j);
        assert!(j.spec.is_none());
        assert!(
            job_view(&j, "uid-1", "r").is_some(),
            "the slim copy keeps what is needed"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(&b[..4], &[5, 10, 20, 40]);
        assert_eq!(b[9], 300);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}
