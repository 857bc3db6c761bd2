//! The commit step of the decider, pure: when a finished run is committed, what the status,
//! the conditions and the Events say before and after each kind of answer, and that nothing
//! is committed twice, while suspended, before its backoff or without a stored result.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::spec::CommitSpec;

use super::*;
use crate::crd::CommitFailure;
use crate::testutil::{failed_outcome, ok_outcome, plan_with, spec, v3};
use crate::validate::ValidSpec;

const ENDPOINT: &str = "http://milvus-proxy:9091";
const URL: &str = "http://milvus-proxy:9091/management/datacoord/backfill/commit?result_path=k/result.json";

fn t0() -> Timestamp {
    "2026-11-27T03:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

/// A spec committing at [`ENDPOINT`].
fn committing_spec() -> BackfillSpec {
    let mut s = spec();
    s.engine.commit = Some(CommitSpec {
        endpoint: ENDPOINT.into(),
    });
    s
}

/// A finished two-segment run: its plan, outcomes (V3 when `v3_outputs`) and planned status.
struct Run {
    plan: Plan,
    outcomes: Outcomes,
}

impl Run {
    fn new(v3_outputs: bool) -> Self {
        let plan = plan_with(2, 0);
        let mut outcomes = Outcomes::new();
        for t in 0..2 {
            let o = ok_outcome(&plan, 1, t, 0, 7);
            outcomes.insert((t, 0), if v3_outputs { v3(o) } else { o });
        }
        Self { plan, outcomes }
    }

    fn planned(&self, s: &BackfillSpec) -> BackfillStatus {
        let first = decide(&self.observe(s, &BackfillStatus::default(), 1, t0(), false));
        status_after_plan(first.new_status().unwrap(), &self.plan, "s3://b/plan.json", s, 1, t0()).0
    }

    fn observe<'a>(
        &'a self,
        spec: &'a BackfillSpec,
        status: &'a BackfillStatus,
        generation: i64,
        now: Timestamp,
        with_run: bool,
    ) -> Observed<'a> {
        Observed {
            generation,
            spec: Ok(ValidSpec { spec, image: "img" }),
            status,
            run: with_run.then_some(RunInput {
                plan: &self.plan,
                outcomes: &self.outcomes,
                jobs: &[],
            }),
            now,
        }
    }

    fn decide(&self, spec: &BackfillSpec, status: &BackfillStatus, generation: i64, now: Timestamp) -> Decision {
        decide(&self.observe(spec, status, generation, now, true))
    }
}

fn events(d: &Decision) -> Vec<&'static str> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.reason),
            _ => None,
        })
        .collect()
}

fn commit_of(d: &Decision) -> Option<&BackfillResult> {
    d.actions.iter().find_map(|a| match a {
        Action::Commit { result, endpoint } => {
            assert_eq!(endpoint, ENDPOINT);
            Some(result.as_ref())
        }
        _ => None,
    })
}

fn written(d: &Decision) -> Option<&BackfillResult> {
    d.actions.iter().find_map(|a| match a {
        Action::WriteResult(r) => Some(r.as_ref()),
        _ => None,
    })
}

fn cond(st: &BackfillStatus, t: &str) -> (String, String) {
    let c = get_condition(&st.conditions, t).unwrap_or_else(|| panic!("no {t}"));
    (c.status.clone(), c.reason.clone())
}

fn pair(s: &str, r: &str) -> (String, String) {
    (s.to_owned(), r.to_owned())
}

fn answered(failed: &[&str], paths: usize) -> CommitAnswer {
    let segments: BTreeMap<String, String> = ["1000", "1001"]
        .iter()
        .map(|id| {
            let v = if failed.contains(id) {
                "v3: segment is not Flushed".to_owned()
            } else {
                "committed".to_owned()
            };
            (id.to_string(), v)
        })
        .collect();
    CommitAnswer::Answered {
        result_paths: (0..paths)
            .map(|i| format!("s3://milvus-bucket/k/result-{i}.json"))
            .collect(),
        success: failed.is_empty(),
        segments,
    }
}

fn error(kind: ErrorKind, message: &str) -> CommitAnswer {
    CommitAnswer::Error {
        kind,
        message: message.into(),
    }
}

fn after(st: &BackfillStatus, answer: &CommitAnswer, now: Timestamp) -> AfterCommit {
    let attempt = CommitAttempt {
        endpoint: ENDPOINT,
        url: URL,
        segments: 2,
        answer,
        steps_after: &[],
    };
    status_after_commit(st, &attempt, 1, now)
}

/// The status the first finishing pass writes (the commit started) and that pass.
fn started(run: &Run, s: &BackfillSpec) -> (BackfillStatus, Decision) {
    let d = run.decide(s, &run.planned(s), 1, at(60));
    (d.new_status().expect("the commit is recorded").clone(), d)
}

#[test]
fn a_v3_result_is_stored_then_the_commit_starts_and_the_run_is_not_finished() {
    let run = Run::new(true);
    let s = committing_spec();
    let (st, d) = started(&run, &s);
    assert_eq!(d.phase, Phase::Running);
    let pos = |f: &dyn Fn(&Action) -> bool| d.actions.iter().position(f).unwrap();
    let write = pos(&|a| matches!(a, Action::WriteResult(_)));
    let status = pos(&|a| matches!(a, Action::UpdateStatus(_)));
    let commit = pos(&|a| matches!(a, Action::Commit { .. }));
    assert!(
        write < status && status < commit,
        "result, then the status, then the commit: {:?}",
        d.actions
    );
    assert_eq!(commit, d.actions.len() - 1, "the commit is the last action");
    assert_eq!(written(&d), commit_of(&d), "the commit hands over the stored result");
    assert_eq!(events(&d), vec![reason::COMMITTING]);
    let c = st.commit.as_ref().unwrap();
    assert_eq!(
        (c.state, c.attempts, c.observed_generation),
        (CommitState::Pending, 0, Some(1))
    );
    assert!(st.completion_time.is_none(), "not final before Milvus has the result");
    assert_eq!(st.phase, Some(Phase::Running));
    assert_eq!(cond(&st, condition::PROGRESSING), pair("True", reason::COMMITTING));
    assert_eq!(cond(&st, condition::COMPLETE), pair("False", reason::NOT_FINISHED));
    assert_eq!(cond(&st, condition::READY), pair("False", reason::COMMITTING));
    assert_eq!(cond(&st, condition::RECONCILING), pair("True", reason::COMMITTING));
    assert_eq!(cond(&st, condition::STALLED).0, "False");
    let ready = get_condition(&st.conditions, condition::READY).unwrap();
    assert!(ready
        .message
        .contains("committing the result to Milvus at http://milvus-proxy:9091"));
}

#[test]
fn a_committed_result_finishes_the_run_and_is_never_committed_again() {
    let run = Run::new(true);
    let s = committing_spec();
    let (st, _) = started(&run, &s);
    let a = after(&st, &answered(&[], 1), at(70));
    assert_eq!(a.verdict, CommitVerdict::Committed);
    assert_eq!(a.retry_in, None);
    let fin = a.status;
    let c = fin.commit.as_ref().unwrap();
    assert_eq!(
        (c.state, c.attempts, c.committed_segments),
        (CommitState::Committed, 1, 2)
    );
    assert!(c.failed_segments.is_empty() && c.message.is_empty());
    assert_eq!(c.result_paths, vec!["s3://milvus-bucket/k/result-0.json"]);
    assert_eq!(c.last_attempt_time.as_ref().map(|t| t.0), Some(at(70)));
    assert_eq!(fin.phase, Some(Phase::Succeeded));
    assert_eq!(fin.completion_time.as_ref().map(|t| t.0), Some(at(70)));
    assert_eq!(cond(&fin, condition::READY), pair("True", reason::SUCCEEDED));
    assert_eq!(cond(&fin, condition::COMPLETE), pair("True", reason::SUCCEEDED));
    let complete = get_condition(&fin.conditions, condition::COMPLETE).unwrap();
    assert!(
        complete.message.ends_with("Milvus committed 2 segment(s)"),
        "{}",
        complete.message
    );
    let reasons: Vec<&str> = a.events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, vec![reason::COMMITTED, reason::SUCCEEDED]);
    // Every later pass, whatever it sees, leaves it alone.
    for (generation, secs) in [(1, 80), (2, 9999)] {
        let d = run.decide(&s, &fin, generation, at(secs));
        assert!(commit_of(&d).is_none() && written(&d).is_none(), "{:?}", d.actions);
        assert!(d.actions.iter().all(|a| matches!(a, Action::UpdateStatus(_))));
    }
}

#[test]
fn connection_errors_are_retried_with_a_capped_backoff_until_milvus_answers() {
    let run = Run::new(true);
    let s = committing_spec();
    let (mut st, _) = started(&run, &s);
    let mut now = at(60);
    let mut delays = vec![];
    for _ in 0..8 {
        let a = after(
            &st,
            &error(ErrorKind::ConnectionError, "commit endpoint: connection refused"),
            now,
        );
        assert_eq!(a.verdict, CommitVerdict::Unreachable);
        assert_eq!(a.events[0].reason, reason::COMMIT_ERROR);
        assert!(a.events[0].warning && a.events[0].message.contains("connection refused"));
        let delay = a.retry_in.expect("retried");
        delays.push(delay.as_secs());
        st = a.status;
        let c = st.commit.as_ref().unwrap();
        assert_eq!((c.state, c.rejections), (CommitState::Pending, 0));
        assert_eq!(st.phase, Some(Phase::Running));
        assert!(st.completion_time.is_none());
        assert_eq!(cond(&st, condition::READY), pair("False", reason::COMMITTING));
        // Before it is due: no commit, no status change (no watch event), a requeue until then.
        let early = run.decide(&s, &st, 1, now + SignedDuration::from_secs(1));
        assert!(early.actions.is_empty(), "{:?}", early.actions);
        assert_eq!(early.requeue_after, Some(delay - Duration::from_secs(1)));
        now += SignedDuration::from_secs(delay.as_secs() as i64);
        let due = run.decide(&s, &st, 1, now);
        assert!(commit_of(&due).is_some(), "due: committed again");
        assert_eq!(due.new_status(), None, "a retry changes nothing before its answer");
        assert!(written(&due).is_none(), "the stored result is not written again");
    }
    assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300, 300]);
}

#[test]
fn segments_left_uncommitted_are_retried_a_bounded_number_of_times_then_stall() {
    let run = Run::new(true);
    let s = committing_spec();
    let (mut st, _) = started(&run, &s);
    let mut now = at(60);
    for n in 1..MAX_COMMIT_REJECTIONS {
        let a = after(&st, &answered(&["1001"], 3), now);
        assert_eq!(
            (a.verdict, a.events[0].reason),
            (CommitVerdict::Rejected, reason::COMMIT_REJECTED)
        );
        assert!(a.events[0].message.contains(&format!("attempt {} of 3", n + 1)));
        st = a.status;
        let c = st.commit.as_ref().unwrap();
        assert_eq!(
            (c.state, c.rejections, c.committed_segments),
            (CommitState::Pending, n, 1)
        );
        assert_eq!(
            c.failed_segments,
            vec![CommitFailure {
                segment_id: 1001,
                reason: "v3: segment is not Flushed".into()
            }]
        );
        assert_eq!(c.result_paths.len(), 3, "the result, then the retry objects");
        now += SignedDuration::from_secs(a.retry_in.unwrap().as_secs() as i64);
    }
    let a = after(&st, &answered(&["1001"], 3), now);
    assert_eq!((a.verdict, a.retry_in), (CommitVerdict::Rejected, None));
    let failed = a.status;
    let c = failed.commit.as_ref().unwrap();
    assert_eq!(c.state, CommitState::Failed);
    assert!(
        c.message.contains("segment 1001: v3: segment is not Flushed"),
        "{}",
        c.message
    );
    assert!(c.message.contains("after 3 attempt(s)"), "{}", c.message);
    assert!(c.message.contains(&format!("curl -fsS '{URL}'")), "{}", c.message);
    assert_eq!(a.events[0].reason, reason::COMMIT_FAILED);
    assert!(a.events[0].warning && a.events[0].message.contains("curl -fsS"));
    assert_eq!(failed.phase, Some(Phase::Failed));
    assert!(failed.completion_time.is_none(), "a spec change may still commit it");
    assert_eq!(cond(&failed, condition::STALLED), pair("True", reason::COMMIT_FAILED));
    assert_eq!(cond(&failed, condition::READY), pair("False", reason::COMMIT_FAILED));
    assert_eq!(cond(&failed, condition::FAILED), pair("True", reason::COMMIT_FAILED));
    assert_eq!(
        cond(&failed, condition::PROGRESSING),
        pair("False", reason::COMMIT_FAILED)
    );
    // Waits at this generation, however long.
    let d = run.decide(&s, &failed, 1, now + SignedDuration::from_secs(86_400));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!((d.phase, d.requeue_after), (Phase::Failed, None));
    // A spec change commits again, from scratch.
    let d = run.decide(&s, &failed, 2, now + SignedDuration::from_secs(90));
    assert!(commit_of(&d).is_some());
    assert_eq!(written(&d), commit_of(&d), "the same result, stored again first");
    let again = d.new_status().unwrap();
    let c = again.commit.as_ref().unwrap();
    assert_eq!((c.state, c.attempts, c.rejections), (CommitState::Pending, 0, 0));
    assert_eq!(c.observed_generation, Some(2));
    assert_eq!(cond(again, condition::FAILED).0, "False");
    assert_eq!(cond(again, condition::STALLED).0, "False");
    assert_eq!(events(&d), vec![reason::COMMITTING]);
}

#[test]
fn an_endpoint_that_cannot_commit_fails_at_once() {
    let run = Run::new(true);
    let s = committing_spec();
    let (st, _) = started(&run, &s);
    let e = error(
        ErrorKind::ConfigError,
        "commit endpoint http://milvus-proxy:9091 answered 404: this Milvus has no backfill commit (it needs Milvus 3.0 or later)",
    );
    let a = after(&st, &e, at(61));
    assert_eq!((a.verdict, a.retry_in), (CommitVerdict::Refused, None));
    let c = a.status.commit.as_ref().unwrap();
    assert_eq!((c.state, c.attempts, c.rejections), (CommitState::Failed, 1, 0));
    assert!(c.message.starts_with("ConfigError: commit endpoint"), "{}", c.message);
    assert!(c.message.contains("Milvus 3.0"), "{}", c.message);
    assert_eq!(cond(&a.status, condition::STALLED), pair("True", reason::COMMIT_FAILED));
    // A whole-result refusal (HTTP 500) counts as a rejection: retried.
    let a = after(
        &st,
        &error(ErrorKind::SegmentProcessingError, "answered HTTP 500"),
        at(61),
    );
    assert_eq!(a.verdict, CommitVerdict::Rejected);
    assert_eq!(a.status.commit.as_ref().unwrap().state, CommitState::Pending);
}

#[test]
fn v1_outputs_and_failed_runs_are_not_committable_and_finish_at_once() {
    let s = committing_spec();
    let run = Run::new(false);
    let d = run.decide(&s, &run.planned(&s), 1, at(60));
    assert_eq!(d.phase, Phase::Succeeded);
    assert!(commit_of(&d).is_none());
    let st = d.new_status().unwrap();
    assert!(st.completion_time.is_some());
    let c = st.commit.as_ref().unwrap();
    assert_eq!(c.state, CommitState::NotCommittable);
    assert!(c.message.contains("StorageV1"), "{}", c.message);
    assert_eq!(events(&d), vec![reason::SUCCEEDED, reason::NOT_COMMITTABLE]);
    assert_eq!(
        cond(st, condition::READY).0,
        "True",
        "the export is what such a run can do"
    );
    // A failed run: Milvus refuses success=false.
    let mut run = Run::new(true);
    run.outcomes.insert(
        (1, 0),
        failed_outcome(&run.plan, 1, 1, 0, ErrorKind::SchemaValidationError),
    );
    let d = run.decide(&s, &run.planned(&s), 1, at(60));
    assert_eq!(d.phase, Phase::Failed);
    assert!(commit_of(&d).is_none());
    let c = d.new_status().unwrap().commit.clone().unwrap();
    assert_eq!(c.state, CommitState::NotCommittable);
    assert!(c.message.contains("1 segment(s) failed"), "{}", c.message);
}

#[test]
fn without_an_endpoint_nothing_is_committed() {
    let s = spec();
    let run = Run::new(true);
    let d = run.decide(&s, &run.planned(&s), 1, at(60));
    assert_eq!(d.phase, Phase::Succeeded);
    assert!(commit_of(&d).is_none());
    assert_eq!(d.new_status().unwrap().commit, None);
    assert_eq!(events(&d), vec![reason::SUCCEEDED]);
}

#[test]
fn a_suspended_backfill_holds_its_commit() {
    let run = Run::new(true);
    let mut s = committing_spec();
    s.suspend = Some(true);
    let planned = run.planned(&committing_spec());
    let d = run.decide(&s, &planned, 2, at(60));
    assert_eq!((d.phase, d.requeue_after), (Phase::Suspended, None));
    assert!(commit_of(&d).is_none());
    assert!(written(&d).is_some(), "the result is stored all the same");
    let st = d.new_status().unwrap().clone();
    assert_eq!(st.commit.as_ref().unwrap().state, CommitState::Pending);
    assert_eq!(cond(&st, condition::SUSPENDED), pair("True", reason::SUSPENDED));
    assert_eq!(cond(&st, condition::READY), pair("False", reason::SUSPENDED));
    let progressing = get_condition(&st.conditions, condition::PROGRESSING).unwrap();
    assert!(progressing.message.contains("waits: spec.suspend is true"));
    // Resumed: committed, and said so.
    s.suspend = Some(false);
    let d = run.decide(&s, &st, 3, at(70));
    assert_eq!(d.phase, Phase::Running);
    assert!(commit_of(&d).is_some());
    assert!(written(&d).is_none());
    assert_eq!(events(&d), vec![reason::RESUMED]);
}

#[test]
fn a_restart_mid_commit_commits_the_same_result_again() {
    let run = Run::new(true);
    let s = committing_spec();
    let (st, first) = started(&run, &s);
    // The operator died during the call: the status still says Pending, no attempt recorded.
    let d = run.decide(&s, &st, 1, at(3600));
    assert_eq!(d.new_status(), None, "nothing to record before the answer");
    assert_eq!(
        commit_of(&d),
        written(&first),
        "the same result as stored (its executionTimeMs is kept)"
    );
    assert_eq!(st.execution_time_ms, Some(60_000));
}

#[test]
fn an_edited_status_without_counters_still_gets_a_sane_commit_record() {
    // status_after_commit on a status that lost its commit record (edited by hand).
    let run = Run::new(true);
    let s = committing_spec();
    let (mut st, _) = started(&run, &s);
    st.commit = None;
    let a = after(&st, &answered(&[], 1), at(61));
    let c = a.status.commit.unwrap();
    assert_eq!(
        (c.state, c.attempts, c.observed_generation),
        (CommitState::Committed, 1, Some(1))
    );
}

#[test]
fn a_retry_status_read_back_from_the_api_server_changes_nothing_until_due() {
    let run = Run::new(true);
    let s = committing_spec();
    let (st, _) = started(&run, &s);
    // An attempt at a fraction of a second; the API server keeps whole seconds.
    let now = at(60) + SignedDuration::from_millis(700);
    let a = after(&st, &error(ErrorKind::ConnectionError, "refused"), now);
    let stored: BackfillStatus = serde_json::from_value(serde_json::to_value(&a.status).unwrap()).unwrap();
    let d = run.decide(&s, &stored, 1, now + SignedDuration::from_secs(2));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(8)));
}
