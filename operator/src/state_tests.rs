use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::crd::{CommitState, RetrySpec, SegmentCounts};
use crate::status::{CommitVerdict, JobState};
use crate::testutil::{failed_outcome, ok_outcome, plan_with, spec, v3, Rng};
use crate::validate::ValidSpec;
use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::spec::CommitSpec;

fn t0() -> Timestamp {
    "2026-11-27T03:00:00Z".parse().unwrap()
}

fn observe<'a>(
    spec: &'a BackfillSpec,
    status: &'a BackfillStatus,
    problems: &'a [String],
    run: Option<RunInput<'a>>,
    now: Timestamp,
) -> Observed<'a> {
    Observed {
        generation: 1,
        spec: if problems.is_empty() {
            Ok(ValidSpec { spec, image: "img" })
        } else {
            Err(problems)
        },
        status,
        run,
        now,
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

pub(super) fn planned_for(spec: &BackfillSpec, plan: &Plan) -> BackfillStatus {
    planned(spec, plan)
}

fn planned(spec: &BackfillSpec, plan: &Plan) -> BackfillStatus {
    let d = decide(&observe(spec, &BackfillStatus::default(), &[], None, t0()));
    let planning = d.new_status().unwrap().clone();
    status_after_plan(&planning, plan, "s3://b/plan.json", spec, 1, t0()).0
}

#[test]
fn a_new_backfill_plans_first_and_creates_no_job() {
    let s = spec();
    let d = decide(&observe(&s, &BackfillStatus::default(), &[], None, t0()));
    assert_eq!(d.phase, Phase::Planning);
    assert!(
        matches!(d.actions[0], Action::UpdateStatus(_)),
        "Planning is recorded first"
    );
    assert_eq!(d.actions.last(), Some(&Action::Plan));
    assert_eq!(d.jobs_to_create().count(), 0);
    assert_eq!(events(&d), vec![reason::PLANNING]);
    let st = d.new_status().unwrap();
    assert_eq!(st.phase, Some(Phase::Planning));
    assert_eq!(st.start_time.as_ref().map(|t| t.0), Some(t0()));
    let planned = get_condition(&st.conditions, condition::PLANNED).unwrap();
    assert_eq!(
        (planned.status.as_str(), planned.reason.as_str()),
        ("False", reason::PLANNING)
    );
    // Repeating the pass (the plan failed transiently) changes nothing but plans again.
    let again = decide(&observe(&s, st, &[], None, t0() + SignedDuration::from_secs(60)));
    assert_eq!(again.actions, vec![Action::Plan]);
}

#[test]
fn an_invalid_spec_fails_once_and_waits() {
    let s = spec();
    let problems = vec!["spec.worker.image is required".to_owned()];
    let d = decide(&observe(&s, &BackfillStatus::default(), &problems, None, t0()));
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(d.requeue_after, None);
    assert_eq!(events(&d), vec![reason::INVALID_SPEC]);
    assert!(!d.actions.contains(&Action::Plan));
    let st = d.new_status().unwrap().clone();
    let f = get_condition(&st.conditions, condition::FAILED).unwrap();
    assert_eq!((f.status.as_str(), f.reason.as_str()), ("True", reason::INVALID_SPEC));
    assert!(f.message.contains("spec.worker.image"));
    assert!(st.completion_time.is_none(), "not final: a fixed spec goes on");
    // Same problem again: no new event, no status change.
    let d2 = decide(&observe(&s, &st, &problems, None, t0() + SignedDuration::from_secs(5)));
    assert!(d2.actions.is_empty(), "{:?}", d2.actions);
    // Fixed: planning starts and the Failed condition clears.
    let d3 = decide(&observe(&s, &st, &[], None, t0() + SignedDuration::from_secs(10)));
    assert_eq!(d3.phase, Phase::Planning);
    let f = get_condition(&d3.new_status().unwrap().conditions, condition::FAILED).unwrap();
    assert_eq!(f.status, "False");
}

#[test]
fn suspended_before_planning_does_not_plan() {
    let mut s = spec();
    s.suspend = Some(true);
    let d = decide(&observe(&s, &BackfillStatus::default(), &[], None, t0()));
    assert_eq!(d.phase, Phase::Suspended);
    assert!(!d.actions.contains(&Action::Plan));
    assert_eq!(events(&d), vec![reason::SUSPENDED]);
    let st = d.new_status().unwrap().clone();
    assert!(is_true(&st.conditions, condition::SUSPENDED, reason::SUSPENDED));
    // Resumed: said so, then planned.
    s.suspend = Some(false);
    let d = decide(&observe(&s, &st, &[], None, t0() + SignedDuration::from_secs(5)));
    assert_eq!(d.phase, Phase::Planning);
    assert_eq!(events(&d), vec![reason::RESUMED, reason::PLANNING]);
    assert_eq!(d.actions.last(), Some(&Action::Plan));
}

#[test]
fn a_plan_failure_for_good_waits_for_a_spec_change() {
    let s = spec();
    let (st, ev) = status_after_plan_error(
        &BackfillStatus::default(),
        "SchemaValidationError",
        "no pk column",
        true,
        1,
        t0(),
    );
    assert_eq!(ev.reason, reason::PRECHECK_FAILED);
    assert!(ev.warning);
    assert_eq!(st.phase, Some(Phase::Failed));
    let d = decide(&observe(&s, &st, &[], None, t0()));
    assert!(d.actions.is_empty());
    let mut o = observe(&s, &st, &[], None, t0());
    o.generation = 2;
    let d = decide(&o);
    assert_eq!(d.actions.last(), Some(&Action::Plan));
    // A transient error keeps Planning; the controller retries with backoff.
    let first = decide(&observe(&s, &BackfillStatus::default(), &[], None, t0()));
    let planning = first.new_status().unwrap();
    let (st, ev) = status_after_plan_error(planning, "ConnectionError", "down", false, 1, t0());
    assert_eq!(st.phase, Some(Phase::Planning));
    assert_eq!(ev.reason, reason::PLANNING_ERROR);
    // The retry changes nothing in the status (no watch event, so the backoff holds),
    // however often it runs.
    for i in 1..5 {
        let d = decide(&observe(&s, &st, &[], None, t0() + SignedDuration::from_secs(i * 30)));
        assert_eq!(d.actions, vec![Action::Plan], "pass {i}");
        let (again, _) = status_after_plan_error(&st, "ConnectionError", "down", false, 1, t0());
        assert_eq!(again, st);
    }
}

/// Whatever the observation, deciding twice on the status the first decision wrote gives no
/// further status change: a pass never triggers the next one through its own write.
#[test]
fn decisions_reach_a_fixed_point() {
    let mut rng = Rng::new(99);
    for case in 0..200 {
        let plan = plan_with(rng.below(12) as usize, rng.below(2) as usize);
        let mut s = spec();
        s.suspend = Some(rng.chance(30));
        s.engine.parallelism = Some(1 + rng.below(4) as u32);
        if rng.chance(50) {
            s.engine.commit = Some(CommitSpec {
                endpoint: "http://proxy:9091".into(),
            });
        }
        let v3_outputs = rng.chance(70);
        let problems: Vec<String> = if rng.chance(15) { vec!["bad".into()] } else { vec![] };
        let mut outcomes = Outcomes::new();
        let mut jobs = vec![];
        for t in 0..plan.segments.len() as u32 {
            match rng.below(4) {
                0 => {
                    let o = ok_outcome(&plan, 1, t, 0, 1);
                    outcomes.insert((t, 0), if v3_outputs { v3(o) } else { o });
                }
                1 => {
                    outcomes.insert((t, 0), failed_outcome(&plan, 1, t, 0, ErrorKind::SchemaValidationError));
                }
                2 => jobs.push(JobView {
                    name: format!("j{t}"),
                    task: t,
                    attempt: 0,
                    state: JobState::Active,
                }),
                _ => {}
            }
        }
        let mut st = if rng.chance(20) {
            BackfillStatus::default()
        } else {
            planned(&s, &plan)
        };
        let mut now = t0();
        for pass in 0..4 {
            let run = st.run_id.as_ref().map(|_| RunInput {
                plan: &plan,
                outcomes: &outcomes,
                jobs: &jobs,
            });
            let d = decide(&observe(&s, &st, &problems, run, now));
            // Jobs this pass creates are running in the next one.
            for r in d.jobs_to_create() {
                jobs.push(JobView {
                    name: format!("n{}-{}", r.task, r.attempt),
                    task: r.task,
                    attempt: r.attempt,
                    state: JobState::Active,
                });
            }
            let created = d.jobs_to_create().count();
            let planning = d.actions.contains(&Action::Plan);
            match d.new_status() {
                Some(n) => st = n.clone(),
                None => break,
            }
            assert!(
                pass < 3 || created > 0 || planning,
                "case {case}: status still moving at pass {pass}"
            );
            now += SignedDuration::from_secs(1);
        }
    }
}

#[test]
fn by_default_the_segments_split_evenly_over_parallelism_jobs() {
    let mut s = spec();
    s.engine.parallelism = Some(3);
    let plan = plan_with(10, 0);
    let st = planned(&s, &plan);
    // 10 segments over 3 Jobs: 4 + 4 + 2, each Job reading the source once per pass.
    assert_eq!((st.tasks, st.segments_per_job), (Some(3), Some(4)));
    s.segments_per_job = Some(1);
    assert_eq!(planned(&s, &plan).tasks, Some(10), "an explicit segmentsPerJob wins");
}

#[test]
fn the_plan_is_recorded_then_jobs_start_within_parallelism() {
    let mut s = spec();
    s.engine.parallelism = Some(3);
    s.segments_per_job = Some(1);
    let plan = plan_with(10, 1);
    let st = planned(&s, &plan);
    assert_eq!(st.run_id.as_deref(), Some(plan.run_id.as_str()));
    assert_eq!(st.tasks, Some(10));
    assert_eq!(st.phase, Some(Phase::Running));
    assert_eq!(
        st.segments,
        Some(SegmentCounts {
            total: 11,
            pending: 10,
            running: 0,
            succeeded: 0,
            failed: 1
        })
    );
    assert_eq!(st.failed_segments.len(), 1);
    assert!(is_true(&st.conditions, condition::PLANNED, reason::PLANNED));
    let outcomes = Outcomes::new();
    let run = RunInput {
        plan: &plan,
        outcomes: &outcomes,
        jobs: &[],
    };
    let d = decide(&observe(&s, &st, &[], Some(run), t0()));
    let jobs: Vec<&JobRequest> = d.jobs_to_create().collect();
    assert_eq!(
        jobs,
        vec![
            &JobRequest {
                task: 0,
                attempt: 0,
                stage: None
            },
            &JobRequest {
                task: 1,
                attempt: 0,
                stage: None
            },
            &JobRequest {
                task: 2,
                attempt: 0,
                stage: None
            }
        ]
    );
    let ns = d.new_status().unwrap();
    assert_eq!(ns.segments.as_ref().unwrap().running, 3);
    // The same observation gives the same Jobs: repeated creates are no-ops.
    assert_eq!(d, decide(&observe(&s, &st, &[], Some(run), t0())));
}

#[test]
fn a_final_status_never_changes() {
    let s = spec();
    let plan = plan_with(2, 0);
    let st = planned(&s, &plan);
    let mut outcomes = Outcomes::new();
    outcomes.insert((0, 0), ok_outcome(&plan, 1, 0, 0, 7));
    outcomes.insert((1, 0), ok_outcome(&plan, 1, 1, 0, 7));
    let run = RunInput {
        plan: &plan,
        outcomes: &outcomes,
        jobs: &[],
    };
    let later = t0() + SignedDuration::from_secs(90);
    let d = decide(&observe(&s, &st, &[], Some(run), later));
    assert_eq!(d.phase, Phase::Succeeded);
    let pos = |f: &dyn Fn(&Action) -> bool| d.actions.iter().position(f).unwrap();
    assert!(
        pos(&|a| matches!(a, Action::WriteResult(_))) < pos(&|a| matches!(a, Action::UpdateStatus(_))),
        "the result is stored before the status says Complete"
    );
    let fin = d.new_status().unwrap().clone();
    assert_eq!(fin.execution_time_ms, Some(90_000));
    assert_eq!(
        fin.result_path.as_deref(),
        Some(format!("s3://milvus-bucket/{}", RunLayout::of_plan(&plan).result_key()).as_str())
    );
    assert!(is_true(&fin.conditions, condition::COMPLETE, reason::SUCCEEDED));
    assert_eq!(fin.progress.as_deref(), Some("2/2"));
    // Anything later: Jobs gone, spec invalid, suspended: nothing but observedGeneration.
    let mut s2 = s.clone();
    s2.suspend = Some(true);
    let problems = vec!["x".to_owned()];
    let mut o = observe(&s2, &fin, &problems, Some(run), later + SignedDuration::from_secs(999));
    assert!(decide(&o).actions.is_empty());
    o.generation = 5;
    let d = decide(&o);
    assert_eq!(d.actions.len(), 1);
    let mut expect = fin.clone();
    expect.observed_generation = Some(5);
    assert_eq!(d.new_status(), Some(&expect));
}

#[test]
fn an_empty_plan_finishes_at_once() {
    let s = spec();
    let plan = plan_with(0, 0);
    let st = planned(&s, &plan);
    let outcomes = Outcomes::new();
    let run = RunInput {
        plan: &plan,
        outcomes: &outcomes,
        jobs: &[],
    };
    let d = decide(&observe(&s, &st, &[], Some(run), t0()));
    assert_eq!(d.phase, Phase::Succeeded);
    let plan = plan_with(0, 2);
    let st = planned(&s, &plan);
    let run = RunInput {
        plan: &plan,
        outcomes: &outcomes,
        jobs: &[],
    };
    let d = decide(&observe(&s, &st, &[], Some(run), t0()));
    assert_eq!(d.phase, Phase::Failed, "segments that failed planning fail the run");
}

#[test]
fn retries_wait_for_their_backoff() {
    let mut s = spec();
    s.retry = Some(RetrySpec {
        max_attempts: Some(3),
        backoff_seconds: Some(30),
    });
    let plan = plan_with(1, 0);
    let st = planned(&s, &plan);
    let mut outcomes = Outcomes::new();
    outcomes.insert((0, 0), failed_outcome(&plan, 1, 0, 0, ErrorKind::DataReadError));
    let jobs = vec![JobView {
        name: "j".into(),
        task: 0,
        attempt: 0,
        state: JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: String::new(),
            finished: Some(t0()),
        },
    }];
    let run = RunInput {
        plan: &plan,
        outcomes: &outcomes,
        jobs: &jobs,
    };
    let d = decide(&observe(&s, &st, &[], Some(run), t0() + SignedDuration::from_secs(10)));
    assert_eq!(d.jobs_to_create().count(), 0);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(20)));
    let d = decide(&observe(&s, &st, &[], Some(run), t0() + SignedDuration::from_secs(30)));
    assert_eq!(
        d.jobs_to_create().collect::<Vec<_>>(),
        vec![&JobRequest {
            task: 0,
            attempt: 1,
            stage: None
        }]
    );
    let retrying = d
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Event(e) if e.reason == reason::RETRYING => Some(e.message.clone()),
            _ => None,
        })
        .expect("a Retrying Event");
    assert_eq!(
        retrying,
        "retrying 1 task(s): task 0 attempt 2 of 3 (Job label attempt=1)"
    );
}

/// A simulated cluster and bucket, driven only through the actions `decide` returns.
struct World {
    now: Timestamp,
    /// Live Jobs by (task, attempt).
    jobs: BTreeMap<(u32, u32), JobState>,
    outcomes: Outcomes,
    /// Every Job ever created, with how often.
    created: BTreeMap<(u32, u32), u32>,
    result: Option<BackfillResult>,
    status: BackfillStatus,
    /// Commits Milvus reported successful.
    committed: u32,
    /// Times the steps after the commit ran.
    finished: u32,
}

impl World {
    fn job_views(&self) -> Vec<JobView> {
        self.jobs
            .iter()
            .map(|(&(task, attempt), state)| JobView {
                name: format!("j-{task}-{attempt}"),
                task,
                attempt,
                state: state.clone(),
            })
            .collect()
    }
}

/// One random run: its plan, spec and how each task's attempts end.
struct Case {
    id: usize,
    plan: Plan,
    spec: BackfillSpec,
    /// Per task: how each attempt ends (below 60 ok, then retryable, permanent, or the Job dies).
    fate: Vec<u64>,
    /// With `spec.commit.endpoint` and V3 outputs: how each commit attempt ends (below 50
    /// committed, then no answer, then segments left uncommitted; committed past the end).
    commit: Option<Vec<u64>>,
    /// With steps after the commit declared: whether they fail.
    steps_fail: Option<bool>,
}

impl Case {
    fn random(id: usize, rng: &mut Rng) -> Self {
        let n = rng.below(30) as usize;
        let plan = plan_with(n, if rng.chance(10) { 1 } else { 0 });
        let mut spec = spec();
        spec.segments_per_job = Some(1 + rng.below(3) as u32);
        spec.engine.parallelism = Some(1 + rng.below(5) as u32);
        spec.retry = Some(RetrySpec {
            max_attempts: Some(1 + rng.below(3) as u32),
            backoff_seconds: Some(rng.below(20) as u32),
        });
        let tasks = TaskSplit::new(spec.segments_per_job(plan.segments.len())).count(&plan);
        let commit_case = rng.chance(40);
        // Most commit cases write every segment, so that there is something to commit.
        let fate_span = if commit_case && rng.chance(70) { 60 } else { 100 };
        let fate = (0..tasks).map(|_| rng.below(fate_span)).collect();
        let commit = commit_case.then(|| {
            spec.engine.commit = Some(CommitSpec {
                endpoint: "http://proxy:9091".into(),
            });
            // Milvus commits at once, is flaky, or never commits the first segment.
            let (base, span) = [(0, 50), (0, 100), (75, 25)][rng.below(3) as usize];
            (0..8).map(|_| base + rng.below(span)).collect()
        });
        let steps_fail = (commit_case && rng.chance(70)).then(|| {
            spec.engine.lifecycle = Some(milvus_backfill_api::lifecycle::LifecycleSpec {
                verify: Some(Default::default()),
                ..Default::default()
            });
            rng.chance(50)
        });
        Self {
            id,
            plan,
            spec,
            fate,
            commit,
            steps_fail,
        }
    }

    fn spj(&self) -> u32 {
        self.spec.segments_per_job(self.plan.segments.len())
    }
}

/// No Job before the plan, none while suspended, never more than `parallelism` running.
fn check_new_jobs(case: &Case, w: &World, before: &BackfillStatus, d: &Decision) {
    let (id, s) = (case.id, &case.spec);
    let active = w.jobs.values().filter(|j| **j == JobState::Active).count();
    let new: Vec<JobRequest> = d.jobs_to_create().cloned().collect();
    if new.is_empty() {
        return;
    }
    assert!(before.run_id.is_some(), "case {id}: a Job before the plan");
    assert!(!s.suspend(), "case {id}: a Job while suspended");
    assert!(
        active + new.len() <= s.parallelism() as usize,
        "case {id}: {active} running + {} new > {}",
        new.len(),
        s.parallelism()
    );
}

/// Carries out `actions` as the controller would, up to `crash_after` (an operator restart).
fn carry_out(case: &Case, w: &mut World, actions: &[Action], crash_after: usize) {
    let id = case.id;
    for a in actions.iter().take(crash_after) {
        match a {
            Action::UpdateStatus(st) => w.status = (**st).clone(),
            Action::Plan => {
                let (st, _) = status_after_plan(&w.status, &case.plan, "s3://b/p", &case.spec, 1, w.now);
                w.status = st;
            }
            Action::RecordOutcome { task, attempt, outcome } => {
                let prev = w.outcomes.insert((*task, *attempt), (**outcome).clone());
                assert!(prev.is_none(), "case {id}: an outcome recorded twice");
            }
            Action::CreateJobs(reqs) => {
                for r in reqs {
                    assert!(
                        r.attempt < case.spec.retry_policy().max_attempts,
                        "case {id}: retry past maxAttempts"
                    );
                    assert!(
                        !w.outcomes.contains_key(&(r.task, r.attempt)),
                        "case {id}: a finished attempt started again"
                    );
                    if w.jobs.contains_key(&(r.task, r.attempt)) {
                        continue; // Same name: the apply is a no-op.
                    }
                    *w.created.entry((r.task, r.attempt)).or_default() += 1;
                    w.jobs.insert((r.task, r.attempt), JobState::Active);
                }
            }
            Action::WriteResult(r) => w.result = Some((**r).clone()),
            Action::Commit { result, .. } => commit_in(case, w, result),
            Action::Finish => finish_in(case, w),
            Action::Event(_) => {}
        }
    }
}

/// The steps after the commit, checked against the world: only once Milvus committed, never
/// while suspended, never again after they were recorded.
fn finish_in(case: &Case, w: &mut World) {
    let id = case.id;
    let fail = case
        .steps_fail
        .unwrap_or_else(|| panic!("case {id}: steps after the commit that the spec does not declare"));
    assert_eq!(w.committed, 1, "case {id}: steps after the commit before it");
    assert!(!case.spec.suspend(), "case {id}: steps while suspended");
    assert!(w.status.completion_time.is_none(), "case {id}: steps of a final run");
    assert_eq!(w.finished, 0, "case {id}: the steps ran again after they were recorded");
    w.finished += 1;
    use milvus_backfill_api::lifecycle::{Step, StepRecord, StepState};
    let state = if fail { StepState::Failed } else { StepState::Done };
    let records = [StepRecord::new(Step::Verify, state, "100 keys")];
    w.status = crate::finishing::status_after_finish(&w.status, &records, 1, w.now).0;
}

/// A commit, checked against what the world holds, answered by the case's commit fate.
fn commit_in(case: &Case, w: &mut World, result: &BackfillResult) {
    let id = case.id;
    assert_eq!(
        w.result.as_ref(),
        Some(result),
        "case {id}: a commit of another result than the stored one"
    );
    assert!(!case.spec.suspend(), "case {id}: a commit while suspended");
    assert_eq!(w.committed, 0, "case {id}: committed again after a success");
    let c = w
        .status
        .commit
        .as_ref()
        .unwrap_or_else(|| panic!("case {id}: a commit not recorded in status"));
    assert_eq!(c.state, CommitState::Pending, "case {id}");
    assert!(
        next_commit_at(c).is_none_or(|at| at <= w.now),
        "case {id}: a commit before its backoff"
    );
    let fates = case.commit.as_deref().unwrap_or_default();
    let fate = fates.get(c.attempts as usize).copied().unwrap_or(0);
    let segments: BTreeMap<String, String> = result
        .segments
        .keys()
        .enumerate()
        .map(|(i, k)| {
            let ok = fate < 75 || i > 0;
            (k.clone(), if ok { "committed" } else { "v3: not Flushed" }.to_owned())
        })
        .collect();
    let answer = if (50..75).contains(&fate) {
        CommitAnswer::Error {
            kind: ErrorKind::ConnectionError,
            message: "connection refused".into(),
        }
    } else {
        CommitAnswer::Answered {
            result_paths: vec!["k".into()],
            success: fate < 50,
            segments,
        }
    };
    let steps_after = milvus_backfill_api::lifecycle::steps_after_commit(&case.spec.engine);
    let attempt = CommitAttempt {
        endpoint: "http://proxy:9091",
        url: "http://proxy:9091/x",
        segments: result.segments.len(),
        answer: &answer,
        steps_after: &steps_after,
    };
    let after = status_after_commit(&w.status, &attempt, 1, w.now);
    if after.verdict == CommitVerdict::Committed {
        w.committed += 1;
    }
    w.status = after.status;
}

/// How attempt `a` of task `t` ends, by the task's fate.
fn ending(case: &Case, t: u32, a: u32, now: Timestamp) -> (JobState, Option<TaskOutcome>) {
    let (plan, spj, f) = (&case.plan, case.spj(), case.fate[t as usize]);
    let failed = |reason: &str| JobState::Failed {
        reason: reason.into(),
        message: String::new(),
        finished: Some(now),
    };
    if f < 60 || (f < 80 && a > 0) {
        let o = ok_outcome(plan, spj, t, a, 3);
        let o = if case.commit.is_some() { v3(o) } else { o };
        (JobState::Succeeded { finished: Some(now) }, Some(o))
    } else if f < 85 {
        let o = failed_outcome(plan, spj, t, a, ErrorKind::DataReadError);
        (failed("BackoffLimitExceeded"), Some(o))
    } else if f < 92 {
        let o = failed_outcome(plan, spj, t, a, ErrorKind::SchemaValidationError);
        (failed("BackoffLimitExceeded"), Some(o))
    } else {
        (failed("DeadlineExceeded"), None)
    }
}

/// Time passes; Jobs finish; some vanish (TTL, by hand).
fn advance(case: &Case, w: &mut World, rng: &mut Rng) {
    w.now += SignedDuration::from_secs(1 + rng.below(15) as i64);
    let keys: Vec<(u32, u32)> = w.jobs.keys().copied().collect();
    for (t, a) in keys {
        if w.jobs[&(t, a)] == JobState::Active && rng.chance(40) {
            let (state, outcome) = ending(case, t, a, w.now);
            w.jobs.insert((t, a), state);
            if let Some(o) = outcome {
                w.outcomes.insert((t, a), o);
            }
        } else if w.jobs[&(t, a)] != JobState::Active && rng.chance(20) {
            w.jobs.remove(&(t, a));
        }
    }
}

/// Runs one case to its end; the result then matches the ledger.
fn run_case(mut case: Case, rng: &mut Rng) -> World {
    let mut w = World {
        now: t0(),
        jobs: BTreeMap::new(),
        outcomes: Outcomes::new(),
        created: BTreeMap::new(),
        result: None,
        status: BackfillStatus::default(),
        committed: 0,
        finished: 0,
    };
    for steps in 1.. {
        assert!(steps < 5000, "case {}: no end", case.id);
        // The user changes mutable knobs now and then.
        if rng.chance(5) {
            case.spec.suspend = Some(!case.spec.suspend());
        }
        if rng.chance(3) {
            case.spec.engine.parallelism = Some(1 + rng.below(5) as u32);
        }
        if steps > 300 {
            case.spec.suspend = Some(false);
        }
        let views = w.job_views();
        let run = w.status.run_id.as_ref().map(|_| RunInput {
            plan: &case.plan,
            outcomes: &w.outcomes,
            jobs: &views,
        });
        let before = w.status.clone();
        let d = decide(&Observed {
            generation: 1,
            spec: Ok(ValidSpec {
                spec: &case.spec,
                image: "img",
            }),
            status: &before,
            run,
            now: w.now,
        });
        check_new_jobs(&case, &w, &before, &d);
        if is_final(&before) {
            assert!(d.actions.iter().all(|a| matches!(a, Action::UpdateStatus(_))));
            break;
        }
        // A failed commit waits for a spec change (the generation stays 1 here).
        if before.commit.as_ref().is_some_and(|c| c.state == CommitState::Failed) {
            assert!(d.actions.is_empty(), "case {}: {:?}", case.id, d.actions);
            break;
        }
        // So do failed steps after the commit.
        if crate::finishing::step_failed_at(&before, 1) {
            assert!(d.actions.is_empty(), "case {}: {:?}", case.id, d.actions);
            break;
        }
        // The operator may die after any action.
        let crash_after = if rng.chance(10) {
            rng.below(d.actions.len() as u64 + 1) as usize
        } else {
            usize::MAX
        };
        carry_out(&case, &mut w, &d.actions, crash_after);
        advance(&case, &mut w, rng);
    }
    check_end(&case, &w);
    w
}

fn check_end(case: &Case, w: &World) {
    let (st, id) = (&w.status, case.id);
    let r = w.result.as_ref().unwrap_or_else(|| panic!("case {id}: no result"));
    let c = st.segments.as_ref().unwrap();
    assert_eq!(c.succeeded + c.failed, c.total, "case {id}");
    assert_eq!(r.segments_processed as u64, c.succeeded, "case {id}");
    assert_eq!(r.success, c.failed == 0, "case {id}");
    assert!(st.failed_segments.len() <= 50);
    let commit = st.commit.as_ref().map(|c| c.state);
    let committable = case.commit.is_some() && r.success && !r.segments.is_empty();
    match commit {
        _ if !committable => {
            assert_eq!(st.phase, Some(if r.success { Phase::Succeeded } else { Phase::Failed }));
            let expected = case.commit.as_ref().map(|_| CommitState::NotCommittable);
            assert_eq!(commit, expected, "case {id}");
        }
        Some(CommitState::Committed) => {
            assert_eq!(w.committed, 1, "case {id}");
            let (phase, finished) = match case.steps_fail {
                None => (Phase::Succeeded, 0),
                Some(false) => (Phase::Succeeded, 1),
                Some(true) => (Phase::Failed, 1),
            };
            assert_eq!((st.phase, w.finished), (Some(phase), finished), "case {id}");
            assert_eq!(st.completion_time.is_some(), phase == Phase::Succeeded, "case {id}");
        }
        Some(CommitState::Failed) => {
            assert_eq!(st.phase, Some(Phase::Failed), "case {id}");
            assert!(st.completion_time.is_none() && w.committed == 0, "case {id}");
        }
        other => panic!("case {id}: the run ended with the commit {other:?}"),
    }
}

/// Property-style: random runs (segment counts, tasks per Job, failures, Jobs dying or
/// vanishing, suspends, parallelism and retry changes, operator restarts between any two
/// actions, commits answered, unanswered or leaving segments uncommitted). Every run ends
/// Succeeded or Failed, and the invariants hold at every step.
#[test]
fn random_runs_keep_the_invariants_and_finish() {
    let mut rng = Rng::new(4242);
    // Succeeded runs, failed runs, retries, outcomes recorded by the operator, commits
    // succeeded, commits failed.
    let mut stats = [0usize; 8];
    for id in 0..300 {
        let case = Case::random(id, &mut rng);
        let w = run_case(case, &mut rng);
        let success = w.result.as_ref().is_some_and(|r| r.success);
        stats[usize::from(!success)] += 1;
        stats[2] += w.created.keys().filter(|(_, a)| *a > 0).count();
        stats[3] += w.outcomes.values().filter(|o| o.execution_time_ms == 0).count();
        match w.status.commit.as_ref().map(|c| c.state) {
            Some(CommitState::Committed) => stats[4] += 1,
            Some(CommitState::Failed) => stats[5] += 1,
            _ => {}
        }
        // Steps after the commit that passed, and that failed.
        match (w.finished, w.status.phase) {
            (1, Some(Phase::Succeeded)) => stats[6] += 1,
            (1, Some(Phase::Failed)) => stats[7] += 1,
            _ => {}
        }
    }
    assert!(stats.iter().all(|n| *n > 10), "the cases cover too little: {stats:?}");
}

#[test]
fn a_failed_precheck_names_its_report_even_when_the_message_is_long() {
    let uri = "s3://milvus/files/backfill/planning/u-1/3-0/precheck.json";
    let long = "x".repeat(5_000);
    let message = crate::state::with_report(&long, Some(uri));
    let (st, ev) = status_after_plan_error(&BackfillStatus::default(), "ConfigError", &message, true, 3, t0());
    assert_eq!(ev.reason, reason::PRECHECK_FAILED);
    assert!(
        ev.message.ends_with(&format!("(precheck report: {uri})")),
        "{}",
        ev.message
    );
    let failed = get_condition(&st.conditions, condition::FAILED).expect("a Failed condition");
    assert_eq!(failed.reason, reason::PRECHECK_FAILED);
    assert!(failed.message.contains(uri), "{}", failed.message);
    assert_eq!(
        crate::state::with_report("no such collection", None),
        "no such collection"
    );
}
