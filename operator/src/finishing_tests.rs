//! The steps after the commit, decided: a committed run with `createIndex`/`verify` declared
//! is Finishing until the records come back, then Succeeded (or Failed, StepFailed, until the
//! spec changes); the commit is never made again.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use milvus_backfill_api::layout::TaskSplit;
use milvus_backfill_api::lifecycle::{LifecycleSpec, Step, StepRecord, StepState};
use milvus_backfill_api::plan::Plan;
use milvus_backfill_api::spec::CommitSpec;

use super::*;
use crate::conditions::is_true;
use crate::crd::BackfillSpec;
use crate::state::{decide, status_after_commit, status_after_plan, CommitAnswer, CommitAttempt, RunInput};
use crate::status::Outcomes;
use crate::testutil::{ok_outcome, plan_with, spec, v3};
use crate::validate::ValidSpec;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn finishing_spec() -> BackfillSpec {
    let mut s = spec();
    s.engine.commit = Some(CommitSpec {
        endpoint: "http://proxy:9091".into(),
    });
    s.engine.lifecycle = Some(LifecycleSpec {
        create_index: Some(vec![serde_json::from_str(r#"{"field": "title"}"#).unwrap()]),
        verify: Some(Default::default()),
        ..Default::default()
    });
    s
}

struct Run {
    spec: BackfillSpec,
    plan: Plan,
    outcomes: Outcomes,
}

impl Run {
    fn new() -> Self {
        let spec = finishing_spec();
        let plan = plan_with(2, 0);
        let spj = spec.segments_per_job(plan.segments.len());
        let outcomes = (0..TaskSplit::new(spj).count(&plan))
            .map(|task| ((task, 0), v3(ok_outcome(&plan, spj, task, 0, 100))))
            .collect();
        Self { spec, plan, outcomes }
    }

    fn decide(&self, status: &BackfillStatus, generation: i64, now: Timestamp) -> Decision {
        let run = status.run_id.as_ref().map(|_| RunInput {
            plan: &self.plan,
            outcomes: &self.outcomes,
            jobs: &[],
        });
        decide(&Observed {
            generation,
            spec: Ok(ValidSpec {
                spec: &self.spec,
                image: "img",
            }),
            status,
            run,
            now,
        })
    }

    /// The status once Milvus committed every segment.
    fn committed(&self) -> BackfillStatus {
        let planned = status_after_plan(&BackfillStatus::default(), &self.plan, "s3://b/p", &self.spec, 1, t(0)).0;
        let d = self.decide(&planned, 1, t(1));
        let committing = d.new_status().expect("the commit starts").clone();
        assert!(
            matches!(d.actions.last(), Some(Action::Commit { .. })),
            "{:?}",
            d.actions
        );
        let segments: BTreeMap<String, String> = self
            .plan
            .segments
            .iter()
            .map(|s| (s.segment_id.to_string(), "committed".to_owned()))
            .collect();
        let answer = CommitAnswer::Answered {
            result_paths: vec!["s3://b/result.json".into()],
            success: true,
            segments,
        };
        let steps = milvus_backfill_api::lifecycle::steps_after_commit(&self.spec.engine);
        let attempt = CommitAttempt {
            endpoint: "http://proxy:9091",
            url: "http://proxy:9091/x",
            segments: 2,
            answer: &answer,
            steps_after: &steps,
        };
        let after = status_after_commit(&committing, &attempt, 1, t(2));
        assert!(after.retry_in.is_some(), "the steps start on the next pass");
        after.status
    }
}

fn records(verify: StepState) -> Vec<StepRecord> {
    vec![
        StepRecord::new(
            Step::CreateIndex,
            StepState::Done,
            "field title: AUTOINDEX index built (200 rows)",
        ),
        StepRecord::new(Step::Verify, verify, "3 of 100 keys differ: pk 7 title"),
    ]
}

#[test]
fn a_committed_run_with_steps_after_the_commit_is_finishing_not_final() {
    let run = Run::new();
    let st = run.committed();
    assert_eq!(st.phase, Some(Phase::Running));
    assert!(st.completion_time.is_none());
    assert_eq!(st.commit.as_ref().map(|c| c.state), Some(CommitState::Committed));
    assert!(is_true(&st.conditions, condition::PROGRESSING, reason::FINISHING));
    assert!(is_true(&st.conditions, condition::RECONCILING, reason::FINISHING));
    let progressing = get_condition(&st.conditions, condition::PROGRESSING).unwrap();
    assert!(
        progressing
            .message
            .contains("Milvus committed 2 segment(s); steps after the commit: createIndex, verify; running them"),
        "{}",
        progressing.message
    );
    // The next pass runs the steps and nothing else: no commit again, no result written again.
    let d = run.decide(&st, 1, t(3));
    assert_eq!(d.actions, vec![Action::Finish], "the status is already right");
    assert_eq!(d.phase, Phase::Running);
}

#[test]
fn the_steps_recorded_finish_the_run_and_it_never_changes_again() {
    let run = Run::new();
    let (st, events) = status_after_finish(&run.committed(), &records(StepState::Done), 1, t(4));
    assert_eq!(st.phase, Some(Phase::Succeeded));
    assert!(st.completion_time.is_some());
    assert!(is_true(&st.conditions, condition::READY, reason::SUCCEEDED));
    let steps: Vec<Step> = st.lifecycle.iter().map(|r| r.step).collect();
    assert_eq!(steps, [Step::CreateIndex, Step::Verify]);
    assert_eq!(events.len(), 1);
    assert!(!events[0].warning && events[0].reason == reason::SUCCEEDED);
    assert!(
        events[0].message.contains("verify Done: 3 of 100"),
        "{}",
        events[0].message
    );
    let d = run.decide(&st, 2, t(5));
    assert!(
        d.actions.iter().all(|a| matches!(a, Action::UpdateStatus(_))),
        "{:?}",
        d.actions
    );
}

#[test]
fn a_failed_step_waits_for_a_spec_change_then_the_steps_run_again() {
    let run = Run::new();
    let (failed, events) = status_after_finish(&run.committed(), &records(StepState::Failed), 1, t(4));
    assert_eq!(failed.phase, Some(Phase::Failed));
    assert!(
        failed.completion_time.is_none(),
        "not final: a spec change runs the steps again"
    );
    assert!(is_true(&failed.conditions, condition::FAILED, reason::STEP_FAILED));
    assert!(is_true(&failed.conditions, condition::STALLED, reason::STEP_FAILED));
    assert_eq!(failed.commit.as_ref().map(|c| c.state), Some(CommitState::Committed));
    assert!(events[0].warning && events[0].reason == reason::STEP_FAILED);
    assert!(
        events[0].message.starts_with("verify failed: 3 of 100 keys differ")
            && events[0].message.contains("which stay committed"),
        "{}",
        events[0].message
    );
    assert!(
        run.decide(&failed, 1, t(5)).actions.is_empty(),
        "same generation: nothing"
    );
    let again = run.decide(&failed, 2, t(6));
    assert_eq!(again.phase, Phase::Running);
    assert_eq!(again.actions.last(), Some(&Action::Finish));
    let st = again.new_status().unwrap();
    assert!(is_true(&st.conditions, condition::PROGRESSING, reason::FINISHING));
    assert!(!is_true(&st.conditions, condition::FAILED, reason::STEP_FAILED));
    // The second try's records replace the first's.
    let (done, _) = status_after_finish(st, &records(StepState::AlreadyDone), 2, t(7));
    assert_eq!(done.phase, Some(Phase::Succeeded));
    assert_eq!(done.lifecycle.len(), 2, "{:?}", done.lifecycle);
    assert!(done.lifecycle.iter().all(|r| r.state != StepState::Failed));
}

#[test]
fn suspended_the_steps_wait_and_resume_with_an_event_each() {
    let mut run = Run::new();
    let st = run.committed();
    run.spec.suspend = Some(true);
    let d = run.decide(&st, 2, t(3));
    assert_eq!(d.phase, Phase::Suspended);
    assert!(!d.actions.contains(&Action::Finish));
    let suspended = d.new_status().unwrap().clone();
    assert!(d
        .actions
        .iter()
        .any(|a| matches!(a, Action::Event(e) if e.reason == reason::SUSPENDED)));
    run.spec.suspend = Some(false);
    let d = run.decide(&suspended, 3, t(4));
    assert_eq!(d.actions.last(), Some(&Action::Finish));
    assert!(d
        .actions
        .iter()
        .any(|a| matches!(a, Action::Event(e) if e.reason == reason::RESUMED)));
}

#[test]
fn steps_no_longer_declared_end_the_run_with_the_commit() {
    let run = Run::new();
    let (st, _) = status_after_finish(&run.committed(), &[], 2, t(4));
    assert_eq!(st.phase, Some(Phase::Succeeded));
    let complete = get_condition(&st.conditions, condition::COMPLETE).unwrap();
    assert!(
        complete.message.ends_with("Milvus committed 2 segment(s)"),
        "{}",
        complete.message
    );
    assert!(st.lifecycle.iter().all(|r| r.step <= Step::Commit));
}
