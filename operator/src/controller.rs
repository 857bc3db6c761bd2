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
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use milvus_backfill::facade::{self, MilvusToken, PlanSecrets, S3Credentials, Store, StoreCredentials, StoreError};
use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::TaskOutcome;
use milvus_backfill_api::plan::Plan;
use milvus_backfill_api::spec::{ACCESS_KEY_KEY, SECRET_KEY_KEY};
use milvus_backfill_api::{API_VERSION, KIND};
use tokio::sync::Mutex;

use crate::crd::{Backfill, BackfillStatus};
use crate::jobs::{self, labels, BuildError, MANAGER};
use crate::metrics::Metrics;
use crate::planning::PlanningMode;
use crate::state::{self, EventSpec, Observed, RunInput};
use crate::status::{JobState, JobView, Outcomes};
use crate::validate::{self, ValidSpec};

/// How long a created Job counts as running before the watch shows it.
const EXPECTATION_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
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
    /// Calls per commit attempt for the segments a call left uncommitted; `None`:
    /// [`state::COMMIT_SEGMENT_RETRIES`] (the tests use 0, to skip the waits in between).
    pub commit_segment_retries: Option<u32>,
    /// In-process (reads the Backfills' Secrets) or by a planning Job (reads none, and opens
    /// the buckets with the operator's own credentials).
    pub planning: PlanningMode,
}

/// What the operator keeps about a run between passes: the plan and the outcomes read so far
/// (outcome objects never change once written, so caching them is safe).
pub(crate) struct RunCache {
    pub(crate) layout: RunLayout,
    pub(crate) plan: Arc<Plan>,
    pub(crate) storage: Store,
    pub(crate) outcomes: Outcomes,
}

/// Job name to (task, attempt, created at).
pub(crate) type Expected = BTreeMap<String, (u32, u32, Instant)>;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub(crate) jobs: reflector::Store<Job>,
    pub(crate) runs: Mutex<HashMap<String, RunCache>>,
    /// Jobs created but not yet seen in the cache, per Backfill uid.
    pub(crate) expected: Mutex<HashMap<String, Expected>>,
    /// Consecutive failed passes per Backfill uid, for the backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

pub(crate) fn now() -> Timestamp {
    Timestamp::now()
}

/// One key of a Secret's data, as UTF-8; the error names the Secret and the key, never a value.
fn secret_key(data: &BTreeMap<String, ByteString>, ns: &str, name: &str, key: &str) -> Result<String, Error> {
    let v = data
        .get(key)
        .ok_or_else(|| Error::Secret(format!("{ns}/{name} has no key {key:?}")))?;
    String::from_utf8(v.0.clone()).map_err(|_| Error::Secret(format!("{ns}/{name} key {key:?} is not UTF-8")))
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
    /// A context on `client` (a mock API server in the tests): an empty Job cache, no runs.
    #[cfg(test)]
    pub(crate) fn for_tests(client: Client, config: Config) -> Self {
        let (jobs, _writer) = reflector::store::<Job>();
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: None,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics: Arc::new(Metrics::default()),
            jobs,
            runs: Mutex::new(HashMap::new()),
            expected: Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The data of Secret `ns/name`, read once however many keys are wanted from it.
    async fn secret_data(&self, ns: &str, name: &str) -> Result<BTreeMap<String, ByteString>, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let s = api
            .get_opt(name)
            .await?
            .ok_or_else(|| Error::Secret(format!("{ns}/{name} does not exist")))?;
        Ok(s.data.unwrap_or_default())
    }

    async fn secret_value(&self, ns: &str, name: &str, key: &str) -> Result<String, Error> {
        let data = self.secret_data(ns, name).await?;
        secret_key(&data, ns, name, key)
    }

    /// Access keys from a `credentialsSecretRef` Secret (`accesskey`, `secretkey`).
    async fn s3_credentials(&self, bf: &Backfill, secret: Option<&str>) -> Result<Option<S3Credentials>, Error> {
        let ns = bf.namespace().unwrap_or_default();
        let Some(name) = secret else { return Ok(None) };
        let data = self.secret_data(&ns, name).await?;
        Ok(Some(S3Credentials {
            access_key: secret_key(&data, &ns, name, ACCESS_KEY_KEY)?,
            secret_key: secret_key(&data, &ns, name, SECRET_KEY_KEY)?,
        }))
    }

    async fn storage_credentials(&self, bf: &Backfill) -> Result<Option<S3Credentials>, Error> {
        let r = bf.spec.engine.storage.credentials_secret_ref.as_ref();
        self.s3_credentials(bf, r.map(|r| r.name.as_str())).await
    }

    /// The Backfill's storage bucket. With planning Jobs the operator reads no Secret: it uses
    /// its own credentials (the default AWS chain: its environment, or a cloud identity).
    pub(crate) async fn storage(&self, bf: &Backfill) -> Result<Store, Error> {
        let creds = match self.config.planning {
            PlanningMode::InProcess => self.storage_credentials(bf).await?,
            PlanningMode::Job => None,
        };
        Ok(facade::open_storage(&bf.spec.engine, creds.as_ref()).await)
    }

    /// Every secret planning needs, from the Backfill's own Secrets.
    pub(crate) async fn plan_secrets(&self, bf: &Backfill) -> Result<PlanSecrets, Error> {
        let ns = bf.namespace().unwrap_or_default();
        let e = &bf.spec.engine;
        let milvus_token = match &e.milvus.token_secret_ref {
            Some(r) => MilvusToken(Some(self.secret_value(&ns, &r.name, &r.key).await?)),
            None => MilvusToken(None),
        };
        let source = e.source.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
        Ok(PlanSecrets {
            milvus_token,
            stores: StoreCredentials {
                storage: self.storage_credentials(bf).await?,
                source: self.s3_credentials(bf, source).await?,
            },
        })
    }

    /// The cached run, loading the plan and (once) every stored outcome.
    async fn load_run(&self, bf: &Backfill, status: &BackfillStatus, run_id: &str) -> Result<(), Error> {
        let uid = bf.uid().unwrap_or_default();
        let mut runs = self.runs.lock().await;
        let coll = status.collection_id.unwrap_or_default();
        let layout = RunLayout::new(bf.spec.engine.storage.root_path(), coll, run_id);
        if runs.get(&uid).is_some_and(|r| r.layout == layout) {
            return Ok(());
        }
        let storage = self.storage(bf).await?;
        let key = layout.plan_key();
        let plan: Plan = storage
            .get_json(&key)
            .await?
            .ok_or_else(|| Error::PlanMissing(storage.display(&key)))?;
        let keys: Vec<String> = storage
            .list_keys(&layout.outcomes_prefix())
            .await?
            .into_iter()
            .filter(|k| layout.parse_outcome_key(k).is_some())
            .collect();
        let mut outcomes = Outcomes::new();
        for (k, o) in storage.get_json_many::<TaskOutcome>(keys).await? {
            if let Some(ta) = layout.parse_outcome_key(&k) {
                outcomes.insert(ta, o);
            }
        }
        tracing::info!(backfill = %bf.name_any(), run = run_id, outcomes = outcomes.len(), "run loaded");
        let plan = Arc::new(plan);
        runs.insert(
            uid,
            RunCache {
                layout,
                plan,
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

    pub(crate) async fn publish(&self, bf: &Backfill, e: &EventSpec, action: &str) {
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

    pub(crate) async fn patch_status(&self, bf: &Backfill, st: &BackfillStatus) -> Result<(), Error> {
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

    /// Before a Job is created: its attempt may have finished while its Job vanished unseen
    /// (a TTL of 0, an operator restart). The outcome tells; then no Job is needed.
    pub(crate) async fn already_done(&self, uid: &str, task: u32, attempt: u32) -> Result<bool, Error> {
        let mut runs = self.runs.lock().await;
        let Some(run) = runs.get_mut(uid) else { return Ok(false) };
        if run.outcomes.contains_key(&(task, attempt)) {
            return Ok(true);
        }
        let key = run.layout.outcome_key(&run.layout.task_id(task), attempt);
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
        let want: Vec<String> = finished
            .keys()
            .map(|&(task, attempt)| run.layout.outcome_key(&run.layout.task_id(task), attempt))
            .collect();
        for (k, o) in run.storage.get_json_many::<TaskOutcome>(want).await? {
            if let Some(ta) = run.layout.parse_outcome_key(&k) {
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

/// observe → validate → decide → execute. Only [`state::decide`] chooses; the executor
/// carries out its actions in order.
async fn reconcile_inner(bf: &Backfill, ctx: &Context) -> Result<Requeue, Error> {
    let uid = bf.uid().unwrap_or_default();
    if bf.metadata.deletion_timestamp.is_some() {
        // Jobs go with the Backfill (ownerReferences); outputs and the run prefix stay.
        ctx.runs.lock().await.remove(&uid);
        ctx.expected.lock().await.remove(&uid);
        return Ok(Requeue::await_change());
    }
    let status = bf.status.clone().unwrap_or_default();
    let validated = validate::validate(&bf.spec, ctx.config.worker.image.as_deref());
    let final_status = status.completion_time.is_some();
    let views = observe_run(bf, ctx, &status, validated.is_ok() && !final_status).await?;
    let spec = validated.as_ref().map_err(Vec::as_slice).copied();
    let decision = decide(bf, ctx, &status, spec, views.as_deref()).await;
    let requeue = crate::executor::execute(bf, ctx, &status, decision).await?;
    if final_status {
        ctx.runs.lock().await.remove(&uid);
    }
    Ok(requeue)
}

/// Observe: the run's plan, outcomes and live Jobs (when there is a run worth looking at).
async fn observe_run(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    active: bool,
) -> Result<Option<Vec<JobView>>, Error> {
    let (Some(run_id), true) = (&status.run_id, active) else {
        return Ok(None);
    };
    let uid = bf.uid().unwrap_or_default();
    ctx.load_run(bf, status, run_id).await?;
    let views = ctx.job_views(&uid, run_id).await;
    ctx.refresh_outcomes(&bf.namespace().unwrap_or_default(), &uid, &views)
        .await?;
    Ok(Some(views))
}

/// Decide, holding the cached run (plan and outcomes) for the pure function.
async fn decide(
    bf: &Backfill,
    ctx: &Context,
    status: &BackfillStatus,
    spec: Result<ValidSpec<'_>, &[String]>,
    views: Option<&[JobView]>,
) -> state::Decision {
    let uid = bf.uid().unwrap_or_default();
    let runs = ctx.runs.lock().await;
    let run = match (views, runs.get(&uid)) {
        (Some(v), Some(r)) => Some(RunInput {
            plan: &r.plan,
            outcomes: &r.outcomes,
            jobs: v,
        }),
        _ => None,
    };
    state::decide(&Observed {
        generation: bf.metadata.generation.unwrap_or_default(),
        spec,
        status,
        run,
        now: now(),
    })
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
    use crate::jobs::JobInput;
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
