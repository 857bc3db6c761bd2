//! The steps after the commit as the executor runs them by a finishing Job (`--planning
//! job`), against the mock API server: the request is stored before the Job, the Job gets the
//! Milvus token through `secretKeyRef` (the operator reads no Secret), and the stored answer
//! finishes the run.

use milvus_backfill_api::lifecycle::{LifecycleSpec, Step, StepRecord, StepState};
use milvus_backfill_api::planning::{FinishAnswer, FinishRequest, PlanningLayout};

use super::*;
use crate::crd::{CommitState, CommitStatus};

fn finishing_layout(attempt: u32) -> PlanningLayout {
    PlanningLayout::finishing("files", "uid-1", 1, attempt)
}

/// A Backfill whose run Milvus committed, with createIndex and verify declared.
async fn finishing_harness() -> Harness {
    let mut h = Harness::with_config(planning_jobs()).await;
    h.bf.spec.engine.milvus.token_secret_ref = Some(SecretKeySelector {
        name: "milvus-auth".into(),
        key: "token".into(),
    });
    h.bf.spec.engine.commit = Some(milvus_backfill_api::spec::CommitSpec {
        endpoint: "http://proxy:9091".into(),
    });
    h.bf.spec.engine.lifecycle = Some(LifecycleSpec {
        create_index: Some(vec![serde_json::from_str(r#"{"field": "score"}"#).unwrap()]),
        verify: Some(Default::default()),
        ..Default::default()
    });
    h
}

fn committed(h: &Harness) -> BackfillStatus {
    BackfillStatus {
        commit: Some(CommitStatus {
            state: CommitState::Committed,
            committed_segments: 3,
            ..Default::default()
        }),
        ..h.status()
    }
}

async fn finish_pass(h: &Harness) -> Result<Requeue, Error> {
    let decision = Decision {
        phase: Phase::Running,
        actions: vec![Action::Finish],
        requeue_after: None,
    };
    tokio::time::timeout(WAIT, execute(&h.bf, &h.ctx, &committed(h), decision))
        .await
        .expect("the executor finished in time")
}

#[tokio::test]
async fn a_finishing_job_gets_its_request_first_and_the_token_from_its_secret() {
    let mut h = finishing_harness().await;
    let key = finishing_layout(0).request_key();
    let v = h.serve(vec![
        Call::GetStatus { status: None },
        Call::ApplyJob {
            name: "b-finish-1-0".into(),
            task_file: h.root.join(&key),
            answer: 200,
        },
    ]);
    let r = finish_pass(&h).await;
    let seen = fixtures::verified(v).await;
    r.expect("the finishing Job applied");
    let request: FinishRequest = h.read_json(&key);
    assert_eq!((request.generation, request.attempt), (1, 0));
    assert_eq!(request.plan_key, h.layout.plan_key());
    assert_eq!(request.spec, h.bf.spec.engine);
    let container = &seen[1].body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "finish-job");
    let token = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MILVUS_TOKEN")
        .expect("the Milvus token");
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "milvus-auth");
    assert!(token.get("value").is_none(), "{token}");
}

fn store_answer(h: &Harness, steps: Vec<StepRecord>) {
    let file = h.root.join(finishing_layout(0).answer_key());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, serde_json::to_vec(&FinishAnswer { steps }).unwrap()).unwrap();
}

#[tokio::test]
async fn the_stored_answer_finishes_the_run_with_its_records() {
    let mut h = finishing_harness().await;
    store_answer(
        &h,
        vec![
            StepRecord::new(Step::CreateIndex, StepState::Done, "field score: AUTOINDEX index built"),
            StepRecord::new(Step::Verify, StepState::Done, "100 of 100 keys match"),
        ],
    );
    let v = h.serve(vec![
        Call::GetStatus { status: None },
        Call::ApplyStatus {
            phase: Phase::Succeeded,
        },
        Call::CreateEvent {
            reason: "Succeeded".into(),
            warning: false,
            mentions: vec![
                "Milvus committed 3 segment(s)".into(),
                "verify Done: 100 of 100 keys match".into(),
            ],
            hides: vec![],
        },
    ]);
    let r = finish_pass(&h).await;
    let seen = fixtures::verified(v).await;
    r.expect("recorded");
    let lifecycle = &seen[1].body["status"]["lifecycle"];
    assert_eq!(lifecycle[0]["step"], "createIndex", "{lifecycle}");
    assert_eq!(lifecycle[1]["state"], "Done", "{lifecycle}");
    assert!(seen[1].body["status"]["completionTime"].is_string());
}

#[tokio::test]
async fn a_failed_step_fails_the_backfill_and_a_final_stored_status_runs_nothing() {
    let mut h = finishing_harness().await;
    store_answer(
        &h,
        vec![
            StepRecord::new(Step::CreateIndex, StepState::AlreadyDone, "kept"),
            StepRecord::new(Step::Verify, StepState::Failed, "3 of 100 keys differ: pk 7 score"),
        ],
    );
    let v = h.serve(vec![
        Call::GetStatus { status: None },
        Call::ApplyStatus { phase: Phase::Failed },
        Call::CreateEvent {
            reason: "StepFailed".into(),
            warning: true,
            mentions: vec!["verify failed: 3 of 100 keys differ".into()],
            hides: vec![],
        },
    ]);
    let r = finish_pass(&h).await;
    fixtures::verified(v).await;
    r.expect("recorded");

    // The API server already holds the final status (the cache lags): nothing runs again.
    let mut h = finishing_harness().await;
    let done = BackfillStatus {
        phase: Some(Phase::Succeeded),
        completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now())),
        ..committed(&h)
    };
    let v = h.serve(vec![Call::GetStatus {
        status: Some(Box::new(done)),
    }]);
    let r = finish_pass(&h).await;
    fixtures::verified(v).await;
    r.expect("nothing to do");
    assert!(!h.root.join(finishing_layout(0).request_key()).exists());
}

#[tokio::test]
async fn in_process_the_operator_runs_the_steps_and_an_unreachable_milvus_fails_the_first() {
    let mut h = Harness::new().await;
    h.bf.spec.engine.milvus.uri = "http://127.0.0.1:1".into();
    h.bf.spec.engine.commit = Some(milvus_backfill_api::spec::CommitSpec {
        endpoint: "http://proxy:9091".into(),
    });
    h.bf.spec.engine.lifecycle = Some(LifecycleSpec {
        create_index: Some(vec![serde_json::from_str(r#"{"field": "score"}"#).unwrap()]),
        verify: Some(Default::default()),
        ..Default::default()
    });
    let v = h.serve(vec![
        Call::GetStatus { status: None },
        Call::ApplyStatus { phase: Phase::Failed },
        Call::CreateEvent {
            reason: "StepFailed".into(),
            warning: true,
            mentions: vec!["createIndex failed".into(), "127.0.0.1:1".into()],
            hides: vec![],
        },
    ]);
    let r = finish_pass(&h).await;
    let seen = fixtures::verified(v).await;
    r.expect("recorded");
    let lifecycle = &seen[1].body["status"]["lifecycle"];
    assert_eq!(
        (lifecycle[0]["state"].as_str(), lifecycle[1]["state"].as_str()),
        (Some("Failed"), Some("NotRun")),
        "{lifecycle}"
    );
    assert!(!h.root.join("files/backfill/finishing").exists(), "no Job, no request");
}
