//! The executor (and the reconcile wrapper's error Events) against a mock API server
//! ([`crate::fixtures`]) and a local-directory bucket: the order of the requests, what is in
//! the bucket when each is made, and what the context keeps afterwards.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use milvus_backfill::facade::Store;
use milvus_backfill_api::outcome::{BackfillResult, TaskOutcome};
use milvus_backfill_api::plan::{Plan, Task};
use milvus_backfill_api::spec::SecretKeySelector;
use tokio::task::JoinHandle;

use super::*;
use crate::controller::{reconcile, Config};
use crate::crd::Phase;
use crate::fixtures::{self, Call, Seen, WAIT};
use crate::testutil;

/// One segment per Job: task `i` is segment `i` of the plan.
const SPJ: u32 = 1;

/// A Backfill whose bucket is a fresh local directory, its run (a three-segment plan) cached
/// in the context, and the mock API server's verifier, not yet started.
struct Harness {
    ctx: Arc<Context>,
    bf: Backfill,
    plan: Plan,
    layout: RunLayout,
    /// The bucket: `{tempdir}/{spec.storage.bucket}`.
    root: PathBuf,
    verifier: Option<fixtures::ApiServerVerifier>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Self {
        Self::with_config(Config::default()).await
    }

    async fn with_config(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut bf = testutil::backfill("b");
        bf.spec.engine.storage.endpoint = format!("file://{}", dir.path().display());
        let (client, verifier) = fixtures::mock_client(&bf);
        let ctx = Arc::new(Context::for_tests(client, config));
        let plan = testutil::plan_with(3, 0);
        let layout = RunLayout::of_plan(&plan);
        // The bucket as the controller opens it: `file://` gives a local directory.
        let storage = ctx.storage(&bf).await.expect("no Secret to read");
        let root = match &storage {
            Store::Local { root } => root.clone(),
            Store::S3 { .. } => panic!("a file:// endpoint opens a local directory"),
        };
        assert_eq!(root, dir.path().join("milvus-bucket"));
        let run = RunCache {
            layout: layout.clone(),
            plan: Arc::new(plan.clone()),
            storage,
            outcomes: Default::default(),
        };
        ctx.runs.lock().await.insert("uid-1".into(), run);
        Self {
            ctx,
            bf,
            plan,
            layout,
            root,
            verifier: Some(verifier),
            _dir: dir,
        }
    }

    /// Starts the verifier on `calls` (once).
    fn serve(&mut self, calls: Vec<Call>) -> JoinHandle<Vec<Seen>> {
        self.verifier.take().expect("one verifier per test").run(calls)
    }

    fn status(&self) -> BackfillStatus {
        BackfillStatus {
            phase: Some(Phase::Running),
            run_id: Some(self.plan.run_id.clone()),
            collection_id: Some(self.plan.collection_id),
            segments_per_job: Some(SPJ),
            ..Default::default()
        }
    }

    fn job_name(&self, task: u32, attempt: u32) -> String {
        jobs::job_name("b", &self.plan.run_id, task, attempt)
    }

    fn task_file(&self, task: u32, attempt: u32) -> PathBuf {
        self.root
            .join(self.layout.task_key(&self.layout.task_id(task), attempt))
    }

    fn apply_job(&self, task: u32, attempt: u32, answer: u16) -> Call {
        Call::ApplyJob {
            name: self.job_name(task, attempt),
            task_file: self.task_file(task, attempt),
            answer,
        }
    }

    /// Executes `actions` as one decision, within [`WAIT`].
    async fn execute(&self, actions: Vec<Action>) -> Result<Requeue, Error> {
        let decision = Decision {
            phase: Phase::Running,
            actions,
            requeue_after: None,
        };
        let status = self.status();
        let run = execute(&self.bf, &self.ctx, &status, decision);
        tokio::time::timeout(WAIT, run)
            .await
            .expect("the executor finished in time")
    }

    /// The Jobs the context expects to appear: name to (task, attempt).
    async fn expected(&self) -> Vec<(String, (u32, u32))> {
        let expected = self.ctx.expected.lock().await;
        let Some(exp) = expected.get("uid-1") else {
            return vec![];
        };
        exp.iter().map(|(n, (t, a, _))| (n.clone(), (*t, *a))).collect()
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> T {
        let bytes = std::fs::read(self.root.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        serde_json::from_slice(&bytes).expect("JSON")
    }
}

fn create_jobs_action(reqs: &[(u32, u32)]) -> Action {
    Action::CreateJobs(
        reqs.iter()
            .map(|&(task, attempt)| JobRequest {
                task,
                attempt,
                stage: None,
            })
            .collect(),
    )
}

#[tokio::test]
async fn status_goes_before_jobs_and_each_task_object_before_its_job() {
    let mut h = Harness::new().await;
    let mut st = h.status();
    st.tasks = Some(3);
    // The verifier takes the requests in this order only, and checks the task file on disk
    // when the Job's request arrives.
    let v = h.serve(vec![
        Call::ApplyStatus { phase: Phase::Running },
        h.apply_job(0, 0, 200),
        h.apply_job(1, 0, 200),
    ]);
    let r = h
        .execute(vec![
            Action::UpdateStatus(Box::new(st)),
            create_jobs_action(&[(0, 0), (1, 0)]),
        ])
        .await;
    let seen = fixtures::verified(v).await;
    assert_eq!(r.expect("executed"), Requeue::await_change());
    assert_eq!(seen[0].body["status"]["tasks"], 3);
    // The stored task is the plan's task 0, and the Job points at it.
    let key = h.layout.task_key(&h.layout.task_id(0), 0);
    let task: Task = h.read_json(&key);
    assert_eq!(
        task,
        milvus_backfill_api::layout::TaskSplit::new(SPJ).task(&h.plan, 0, 0)
    );
    assert!(seen[1].text.contains(&key), "the Job's arguments name the task key");
    assert_eq!(seen[1].body["metadata"]["name"], h.job_name(0, 0).as_str());
    assert_eq!(
        h.expected().await,
        vec![(h.job_name(0, 0), (0, 0)), (h.job_name(1, 0), (1, 0))]
    );
    assert_eq!(h.ctx.metrics.jobs_created.get(), 2);
}

#[tokio::test]
async fn a_job_that_exists_with_another_template_is_kept() {
    let mut h = Harness::new().await;
    let v = h.serve(vec![
        h.apply_job(2, 1, 422),
        Call::GetJob {
            name: h.job_name(2, 1),
            answer: 200,
        },
    ]);
    let r = h.execute(vec![create_jobs_action(&[(2, 1)])]).await;
    fixtures::verified(v).await;
    r.expect("a 422 on an existing Job is not an error");
    assert_eq!(h.expected().await, vec![(h.job_name(2, 1), (2, 1))]);
    assert_eq!(h.ctx.metrics.jobs_created.get(), 1);
    assert!(h.task_file(2, 1).is_file());
}

#[tokio::test]
async fn a_422_for_a_job_that_does_not_exist_is_an_error() {
    let mut h = Harness::new().await;
    let v = h.serve(vec![
        h.apply_job(0, 0, 422),
        Call::GetJob {
            name: h.job_name(0, 0),
            answer: 404,
        },
    ]);
    let r = h.execute(vec![create_jobs_action(&[(0, 0), (1, 0)])]).await;
    fixtures::verified(v).await;
    match r {
        Err(Error::Kube(kube::Error::Api(s))) => assert_eq!(s.code, 422),
        other => panic!("expected the 422, got {other:?}"),
    }
    assert_eq!(h.expected().await, vec![], "nothing is expected of a Job refused");
    assert_eq!(h.ctx.metrics.jobs_created.get(), 0);
    // The executor stopped at the failure: task 1 was neither stored nor applied.
    assert!(!h.task_file(1, 0).exists());
}

#[tokio::test]
async fn an_outcome_is_recorded_in_the_bucket_and_the_cache_without_api_calls() {
    let mut h = Harness::new().await;
    // No call expected: the mock closes at once, so any request would fail the executor.
    let v = h.serve(vec![]);
    let outcome = testutil::failed_outcome(&h.plan, SPJ, 1, 2, milvus_backfill_api::error::ErrorKind::WriteError);
    let r = h
        .execute(vec![Action::RecordOutcome {
            task: 1,
            attempt: 2,
            outcome: Box::new(outcome.clone()),
        }])
        .await;
    fixtures::verified(v).await;
    r.expect("recorded");
    let stored: TaskOutcome = h.read_json(&h.layout.outcome_key(&outcome.task_id, 2));
    assert_eq!(stored, outcome);
    let runs = h.ctx.runs.lock().await;
    assert_eq!(runs["uid-1"].outcomes.get(&(1, 2)), Some(&outcome));
}

#[tokio::test]
async fn an_attempt_with_a_stored_outcome_gets_no_job() {
    let mut h = Harness::new().await;
    let outcome = testutil::ok_outcome(&h.plan, SPJ, 0, 0, 100);
    let key = h.layout.outcome_key(&outcome.task_id, 0);
    let storage = h.ctx.runs.lock().await["uid-1"].storage.clone();
    storage.put_json(&key, &outcome).await.expect("stored");
    // Task 0 finished while its Job vanished unseen: only task 1 gets a Job.
    let v = h.serve(vec![h.apply_job(1, 0, 200)]);
    let r = h.execute(vec![create_jobs_action(&[(0, 0), (1, 0)])]).await;
    fixtures::verified(v).await;
    assert_eq!(
        r.expect("executed"),
        Requeue::requeue(Duration::from_millis(100)),
        "decide again at once, with the outcome"
    );
    assert!(!h.task_file(0, 0).exists());
    assert_eq!(h.expected().await, vec![(h.job_name(1, 0), (1, 0))]);
    assert_eq!(h.ctx.runs.lock().await["uid-1"].outcomes.get(&(0, 0)), Some(&outcome));
}

#[tokio::test]
async fn the_result_is_written_at_the_result_key() {
    let mut h = Harness::new().await;
    let v = h.serve(vec![]);
    let segs = (0..3)
        .flat_map(|t| testutil::ok_outcome(&h.plan, SPJ, t, 0, 100).segments)
        .collect();
    let result = BackfillResult::build(&h.plan, segs, vec![], 300, 1234);
    let r = h.execute(vec![Action::WriteResult(Box::new(result.clone()))]).await;
    fixtures::verified(v).await;
    r.expect("written");
    let stored: BackfillResult = h.read_json(&h.layout.result_key());
    assert_eq!(stored, result);
}

#[tokio::test]
async fn an_event_action_is_published_about_the_backfill() {
    let mut h = Harness::new().await;
    let v = h.serve(vec![Call::CreateEvent {
        reason: "Retrying".into(),
        warning: true,
        mentions: vec!["task 1".into()],
        hides: vec![],
    }]);
    let ev = state::EventSpec {
        warning: true,
        reason: "Retrying",
        message: "task 1 failed; retrying".into(),
    };
    let r = h.execute(vec![Action::Event(ev)]).await;
    let seen = fixtures::verified(v).await;
    r.expect("published");
    assert_eq!(seen[0].body["action"], "Reconcile");
    assert_eq!(seen[0].body["reportingController"], MANAGER);
}

/// The test Backfill (a valid spec), its Milvus token in Secret `milvus-token`, key `token`.
fn with_token_secret() -> Backfill {
    let mut bf = testutil::backfill("b");
    bf.spec.engine.milvus.token_secret_ref = Some(SecretKeySelector {
        name: "milvus-token".into(),
        key: "token".into(),
    });
    bf
}

/// One reconcile pass of a new Backfill whose token Secret is answered with `secret`:
/// the planning status and Event, the Secret's GET, then the error's Event.
async fn reconcile_with_token_secret(secret: Option<Secret>, mentions: &[&str], hides: &[String]) -> Arc<Context> {
    let bf = with_token_secret();
    let (client, verifier) = fixtures::mock_client(&bf);
    let ctx = Arc::new(Context::for_tests(client, Config::default()));
    let v = verifier.run(vec![
        Call::ApplyStatus { phase: Phase::Planning },
        Call::CreateEvent {
            reason: state::reason::PLANNING.into(),
            warning: false,
            mentions: vec![],
            hides: vec![],
        },
        Call::GetSecret {
            name: "milvus-token".into(),
            answer: secret.map(Box::new),
        },
        Call::CreateEvent {
            reason: "SecretError".into(),
            warning: true,
            mentions: mentions.iter().map(|m| m.to_string()).collect(),
            hides: hides.to_vec(),
        },
    ]);
    let r = tokio::time::timeout(WAIT, reconcile(Arc::new(bf), ctx.clone()))
        .await
        .expect("reconcile finished in time");
    fixtures::verified(v).await;
    let e = r.expect_err("no token, no planning");
    assert!(matches!(e, Error::Secret(_)), "{e:?}");
    assert_eq!(e.category(), "SecretError");
    assert!(ctx.runs.lock().await.is_empty(), "nothing planned");
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("reconcile_errors_total{category=\"SecretError\"} 1"),
        "{metrics}"
    );
    ctx
}

#[tokio::test]
async fn a_missing_secret_fails_the_pass_with_a_secret_error_event() {
    reconcile_with_token_secret(None, &["Secret ns/milvus-token does not exist"], &[]).await;
}

#[tokio::test]
async fn a_secret_without_the_key_fails_the_pass_without_leaking_its_values() {
    let value = "hunter2-not-the-token";
    let encoded = serde_json::to_value(ByteString(value.as_bytes().to_vec())).expect("JSON");
    let encoded = encoded.as_str().expect("base64 text").to_owned();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("milvus-token".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        data: Some([("password".to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    reconcile_with_token_secret(
        Some(secret),
        &["ns/milvus-token", "has no key \"token\""],
        &[value.to_owned(), encoded],
    )
    .await;
}

#[path = "executor_commit_tests.rs"]
mod commit;

// ------------------------------------------------------------------ planning by a Job

fn planning_jobs() -> Config {
    Config {
        planning: crate::planning::PlanningMode::Job,
        ..Default::default()
    }
}

fn planning_layout(attempt: u32) -> milvus_backfill_api::planning::PlanningLayout {
    milvus_backfill_api::planning::PlanningLayout::new("files", "uid-1", 1, attempt)
}

/// A Backfill naming every Secret: in-process planning would read them all.
async fn planning_harness() -> Harness {
    let mut h = Harness::with_config(planning_jobs()).await;
    h.bf.spec.engine.storage.credentials_secret_ref = Some(milvus_backfill_api::spec::SecretRef { name: "s3".into() });
    h.bf.spec.engine.milvus.token_secret_ref = Some(SecretKeySelector {
        name: "milvus-auth".into(),
        key: "token".into(),
    });
    h.ctx.runs.lock().await.clear();
    h
}

/// The answer of planning attempt `attempt`, as a planning Job stores it.
fn store_answer(h: &Harness, attempt: u32, answer: &milvus_backfill_api::planning::PlanAnswer) {
    let file = h.root.join(planning_layout(attempt).answer_key());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, serde_json::to_vec(answer).unwrap()).unwrap();
}

async fn plan_pass(h: &Harness) -> Result<Requeue, Error> {
    let decision = Decision {
        phase: Phase::Planning,
        actions: vec![Action::Plan],
        requeue_after: None,
    };
    let status = BackfillStatus {
        phase: Some(Phase::Planning),
        ..Default::default()
    };
    tokio::time::timeout(WAIT, execute(&h.bf, &h.ctx, &status, decision))
        .await
        .expect("the executor finished in time")
}

#[tokio::test]
async fn a_planning_job_gets_its_request_first_and_the_operator_reads_no_secret() {
    let mut h = planning_harness().await;
    let key = planning_layout(0).request_key();
    // The only request: the Job's apply, once its request is in the bucket (no Secret GET).
    let v = h.serve(vec![Call::ApplyJob {
        name: "b-plan-1-0".into(),
        task_file: h.root.join(&key),
        answer: 200,
    }]);
    let r = plan_pass(&h).await;
    let seen = fixtures::verified(v).await;
    r.expect("planning started");
    let request: milvus_backfill_api::planning::PlanRequest = h.read_json(&key);
    assert_eq!(
        (request.backfill.as_str(), request.generation, request.attempt),
        ("b", 1, 0)
    );
    assert_eq!(request.spec, h.bf.spec.engine);
    let args = &seen[0].body["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "plan-job");
    assert!(args[2].as_str().unwrap().ends_with(&key), "{args}");
    assert!(h.ctx.runs.lock().await.is_empty(), "no run before a plan");
}

#[tokio::test]
async fn a_planned_answer_is_adopted_as_the_run() {
    let mut h = planning_harness().await;
    let plan_key = h.layout.plan_key();
    std::fs::create_dir_all(h.root.join(&plan_key).parent().unwrap()).unwrap();
    std::fs::write(h.root.join(&plan_key), serde_json::to_vec(&h.plan).unwrap()).unwrap();
    let answer = milvus_backfill_api::planning::PlanAnswer::Planned {
        plan_key,
        run_id: h.plan.run_id.clone(),
    };
    store_answer(&h, 0, &answer);
    let v = h.serve(vec![
        Call::ApplyStatus { phase: Phase::Running },
        Call::CreateEvent {
            reason: "Planned".into(),
            warning: false,
            mentions: vec![],
            hides: vec![],
        },
    ]);
    let r = plan_pass(&h).await;
    let seen = fixtures::verified(v).await;
    r.expect("adopted");
    assert_eq!(seen[0].body["status"]["runId"], h.plan.run_id.as_str());
    let runs = h.ctx.runs.lock().await;
    assert_eq!(
        runs.get("uid-1").map(|r| r.plan.run_id.clone()),
        Some(h.plan.run_id.clone())
    );
}

#[tokio::test]
async fn a_permanent_failure_answer_fails_the_backfill_with_its_message() {
    let mut h = planning_harness().await;
    let answer = milvus_backfill_api::planning::PlanAnswer::Failed {
        kind: milvus_backfill_api::error::ErrorKind::SchemaValidationError,
        message: "the source has no column pk".into(),
    };
    store_answer(&h, 0, &answer);
    let v = h.serve(vec![
        Call::ApplyStatus { phase: Phase::Failed },
        Call::CreateEvent {
            reason: "PrecheckFailed".into(),
            warning: true,
            mentions: vec!["SchemaValidationError: the source has no column pk".into()],
            hides: vec![],
        },
    ]);
    let r = plan_pass(&h).await;
    fixtures::verified(v).await;
    r.expect("recorded");
    assert!(h.ctx.runs.lock().await.is_empty());
}

#[tokio::test]
async fn a_transient_failure_answer_starts_the_next_attempt_when_its_job_is_gone() {
    let mut h = planning_harness().await;
    let answer = milvus_backfill_api::planning::PlanAnswer::Failed {
        kind: milvus_backfill_api::error::ErrorKind::ConnectionError,
        message: "Milvus at http://milvus:19530 is unreachable".into(),
    };
    store_answer(&h, 0, &answer);
    let v = h.serve(vec![
        Call::ApplyStatus { phase: Phase::Planning },
        Call::CreateEvent {
            reason: "PlanningError".into(),
            warning: true,
            mentions: vec!["unreachable".into()],
            hides: vec![],
        },
        Call::ApplyJob {
            name: "b-plan-1-1".into(),
            task_file: h.root.join(planning_layout(1).request_key()),
            answer: 200,
        },
    ]);
    let r = plan_pass(&h).await;
    fixtures::verified(v).await;
    r.expect("retried");
}

#[path = "executor_finish_tests.rs"]
mod finish;
