//! The reconcile state machine, as a pure function: what was observed (spec, status, stored
//! plan, outcomes, live Jobs, the time) in; the next phase and a list of actions out. The
//! controller only gathers the inputs and carries out the actions, in order, stopping at the
//! first that fails (the next pass computes them again).
//!
//! ```text
//!            spec invalid ─────────────► Failed (InvalidSpec; waits for a spec change)
//! Pending ─► Planning ─► Running ◄──────► Suspended
//!               │           │
//!               │           ├──► Succeeded | Failed (completionTime set: final)
//!               │           └──► committing: Running (Progressing=Committing) ◄──► Suspended
//!               │                   ├──► Succeeded (commit Committed; final)
//!               │                   └──► Failed (CommitFailed; a spec change commits again)
//!               └──► Failed (PrecheckFailed: config/schema error; waits for a spec change)
//!
//! Planning is the precheck: a failed check with a config or schema error is `PrecheckFailed`
//! (its report stored beside the planning attempt, `precheck.json`); a transient one
//! (`PlanningError`) is retried.
//! ```
//!
//! The commit step runs only with `spec.commit.endpoint` and a successful result whose
//! segment entries Milvus can commit (StorageV3 `ops`, also StorageV2 `column_groups` or a
//! manifest `version`); any other result with an endpoint (StorageV1 exports, failed runs)
//! finishes at once with `status.commit.state: NotCommittable`.
//!
//! Invariants the tests check: no Job before the plan is recorded in status; never more than
//! `parallelism` Jobs running; no new Job while suspended; no retry past `maxAttempts`; a final
//! status never changes; the result is written before the status says Complete or that a
//! commit started; no commit while suspended, before its backoff or after it succeeded.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use milvus_backfill_api::outcome::{BackfillResult, TaskOutcome};
use milvus_backfill_api::plan::Plan;

use milvus_backfill_api::layout::{RunLayout, TaskSplit};
use milvus_backfill_api::stage::{partitions_for, Role, Stage, TaskLayout};

use crate::conditions::{self, Situation};
pub use crate::conditions::{get_condition, is_true};
use crate::crd::{
    condition, truncate, BackfillSpec, BackfillStatus, CommitState, CommitStatus, Phase, RetryPolicy, RowCounts,
    SegmentCounts, MAX_MESSAGE_BYTES,
};
pub use crate::status::CommitAnswer;
use crate::status::{self, Aggregate, CommitVerdict, Commitability, JobView, OutcomeView, Outcomes, TaskState};
use crate::validate::ValidSpec;

/// How often a running Backfill is looked at even without events.
pub const RESYNC: Duration = Duration::from_secs(300);
/// At most this many new Jobs per pass (the next pass follows at once).
pub const MAX_CREATE_PER_PASS: usize = 50;

/// Event reasons: stable, PascalCase; they are also condition reasons where they fit.
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PLANNING: &str = "Planning";
    pub const PLANNED: &str = "Planned";
    pub const PRECHECK_FAILED: &str = "PrecheckFailed";
    pub const PLANNING_ERROR: &str = "PlanningError";
    pub const RUNNING: &str = "Running";
    pub const RETRYING: &str = "Retrying";
    pub const SEGMENTS_FAILED: &str = "SegmentsFailed";
    pub const SUSPENDED: &str = "Suspended";
    pub const RESUMED: &str = "Resumed";
    pub const NOT_SUSPENDED: &str = "NotSuspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const NOT_FINISHED: &str = "NotFinished";
    pub const COMMITTING: &str = "Committing";
    pub const COMMITTED: &str = "Committed";
    /// A commit attempt got no answer (connection, storage); it is retried.
    pub const COMMIT_ERROR: &str = "CommitError";
    /// Milvus left segments uncommitted or refused the result; it is retried (a bounded number of times).
    pub const COMMIT_REJECTED: &str = "CommitRejected";
    pub const COMMIT_FAILED: &str = "CommitFailed";
    pub const NOT_COMMITTABLE: &str = "NotCommittable";
    /// Milvus committed the run; the lifecycle's steps after the commit run.
    pub const FINISHING: &str = "Finishing";
    /// A step after the commit (`createIndex`, `verify`) failed.
    pub const STEP_FAILED: &str = "StepFailed";
    /// A finishing Job ended without an answer; the next attempt follows.
    pub const FINISHING_ERROR: &str = "FinishingError";
}

/// Calls of the commit endpoint per attempt for the segments a call left uncommitted (each
/// from its own `result-retry-N.json`), as `milvus-backfill run` makes them.
pub const COMMIT_SEGMENT_RETRIES: u32 = 2;
/// Answers leaving segments uncommitted (or refusing the result) before a commit is Failed.
pub const MAX_COMMIT_REJECTIONS: u32 = 3;
const COMMIT_BACKOFF_SECONDS: u64 = 10;
const MAX_COMMIT_BACKOFF_SECONDS: u64 = 300;

/// What the controller saw.
#[derive(Clone, Copy)]
pub struct Observed<'a> {
    pub generation: i64,
    /// The spec as [`crate::validate::validate`] left it: valid, or every problem (each
    /// naming its field). Only a valid spec is planned or gets Jobs.
    pub spec: Result<ValidSpec<'a>, &'a [String]>,
    /// The current status (default when there is none).
    pub status: &'a BackfillStatus,
    /// The stored plan and what happened to it; `Some` exactly when `status.runId` is set.
    pub run: Option<RunInput<'a>>,
    pub now: Timestamp,
}

#[derive(Clone, Copy)]
pub struct RunInput<'a> {
    pub plan: &'a Plan,
    pub outcomes: &'a Outcomes,
    /// Live Jobs of this run (plus Jobs created but not yet seen in the cache, as Active).
    pub jobs: &'a [JobView],
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobRequest {
    pub task: u32,
    pub attempt: u32,
    /// The task's work in a staged run, built from the outputs of the stages before.
    pub stage: Option<Stage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Patch the status (server-side apply of the whole status).
    UpdateStatus(Box<BackfillStatus>),
    /// Run the planner, store the plan, record it in status ([`status_after_plan`]).
    Plan,
    /// Store an outcome for an attempt whose Job finished without one.
    RecordOutcome {
        task: u32,
        attempt: u32,
        outcome: Box<TaskOutcome>,
    },
    /// Store each task's JSON, then apply its Job.
    CreateJobs(Vec<JobRequest>),
    /// Store the result JSON at the plan's result key.
    WriteResult(Box<BackfillResult>),
    /// Commit the stored result into Milvus at `endpoint` (`spec.commit.endpoint`), then record
    /// the answer in status ([`status_after_commit`]). Always the last action.
    Commit {
        endpoint: String,
        result: Box<BackfillResult>,
    },
    /// Run the lifecycle's steps after the commit (`createIndex`, `verify`): by a finishing Job
    /// or in-process, as planning runs, then record them ([`crate::finishing::status_after_finish`]).
    /// Always the last action.
    Finish,
    Event(EventSpec),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub phase: Phase,
    pub actions: Vec<Action>,
    /// `None`: wait for a change (an event on the Backfill or one of its Jobs).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    pub fn jobs_to_create(&self) -> impl Iterator<Item = &JobRequest> {
        self.actions.iter().flat_map(|a| match a {
            Action::CreateJobs(j) => j.as_slice(),
            _ => &[],
        })
    }
    pub fn new_status(&self) -> Option<&BackfillStatus> {
        self.actions.iter().find_map(|a| match a {
            Action::UpdateStatus(s) => Some(s.as_ref()),
            _ => None,
        })
    }
}

pub(crate) fn time(t: Timestamp) -> Time {
    Time(t)
}

fn is_final(s: &BackfillStatus) -> bool {
    s.completion_time.is_some() && matches!(s.phase, Some(Phase::Succeeded | Phase::Failed))
}

pub(crate) fn finish(st: BackfillStatus, old: &BackfillStatus, phase: Phase, mut actions: Vec<Action>) -> Decision {
    if st != *old {
        actions.insert(0, Action::UpdateStatus(Box::new(st)));
    }
    Decision {
        phase,
        actions,
        requeue_after: None,
    }
}

pub(crate) fn event(warning: bool, reason: &'static str, message: impl Into<String>) -> Action {
    Action::Event(EventSpec {
        warning,
        reason,
        message: truncate(&message.into(), MAX_MESSAGE_BYTES),
    })
}

/// The next step.
pub fn decide(o: &Observed<'_>) -> Decision {
    let mut st = o.status.clone();
    st.observed_generation = Some(o.generation);
    // A finished run never changes again.
    if is_final(o.status) {
        let phase = st.phase.unwrap_or_default();
        return finish(st, o.status, phase, vec![]);
    }
    let spec = match o.spec {
        Ok(valid) => valid.spec,
        Err(problems) => return decide_invalid(o, st, problems),
    };
    match (&o.status.run_id, o.run) {
        (None, _) => decide_unplanned(o, spec, st),
        (Some(_), Some(run)) => decide_run(o, spec, st, run),
        // The plan is recorded but could not be loaded: the controller retries; nothing here.
        (Some(_), None) => Decision {
            phase: o.status.phase.unwrap_or_default(),
            actions: vec![],
            requeue_after: Some(Duration::from_secs(30)),
        },
    }
}

/// An invalid spec: say so, start nothing, wait for a change.
fn decide_invalid(o: &Observed<'_>, mut st: BackfillStatus, problems: &[String]) -> Decision {
    let msg = problems.join("; ");
    let was = get_condition(&o.status.conditions, condition::FAILED).is_some_and(|c| {
        c.status == "True" && c.reason == reason::INVALID_SPEC && c.message == truncate(&msg, MAX_MESSAGE_BYTES)
    });
    st.phase = Some(Phase::Failed);
    conditions::apply(&mut st, Situation::InvalidSpec { problems: &msg }, o.now, o.generation);
    let mut actions = vec![];
    if !was {
        actions.push(event(true, reason::INVALID_SPEC, msg));
    }
    finish(st, o.status, Phase::Failed, actions)
}

fn decide_unplanned(o: &Observed<'_>, spec: &BackfillSpec, mut st: BackfillStatus) -> Decision {
    let (now, generation) = (o.now, o.generation);
    let old_phase = o.status.phase;
    if spec.suspend() {
        st.phase = Some(Phase::Suspended);
        conditions::apply(&mut st, Situation::SuspendedBeforePlanning, now, generation);
        let mut actions = vec![];
        if old_phase != Some(Phase::Suspended) {
            actions.push(event(false, reason::SUSPENDED, "suspended before planning"));
        }
        return finish(st, o.status, Phase::Suspended, actions);
    }
    // Planning failed for good at this generation: wait for a spec change.
    if get_condition(&o.status.conditions, condition::FAILED).is_some_and(|c| {
        c.status == "True" && c.reason == reason::PRECHECK_FAILED && c.observed_generation == Some(generation)
    }) {
        return finish(st, o.status, Phase::Failed, vec![]);
    }
    st.phase = Some(Phase::Planning);
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    // Keep the last planning error on display while planning is retried: flipping the
    // condition on every pass would make every pass a new watch event.
    let keep_error = get_condition(&st.conditions, condition::PLANNED)
        .is_some_and(|c| c.status == "False" && c.reason == reason::PLANNING_ERROR);
    conditions::apply(&mut st, Situation::Planning { keep_error }, now, generation);
    let mut actions = vec![];
    if st != *o.status {
        actions.push(Action::UpdateStatus(Box::new(st)));
    }
    if old_phase == Some(Phase::Suspended) {
        actions.push(event(false, reason::RESUMED, "resumed before planning"));
    }
    if old_phase != Some(Phase::Planning) {
        actions.push(event(false, reason::PLANNING, "planning the run"));
    }
    actions.push(Action::Plan);
    Decision {
        phase: Phase::Planning,
        actions,
        requeue_after: None,
    }
}

/// The Jobs to create this pass: at most `parallelism` running, none while suspended, none
/// before its retry delay. Marks them Running in `states`; returns them and the earliest
/// time a delayed retry falls due.
fn schedule(spec: &BackfillSpec, states: &mut [TaskState], now: Timestamp) -> (Vec<JobRequest>, Option<Timestamp>) {
    let mut wake: Option<Timestamp> = None;
    let mut create = Vec::new();
    if spec.suspend() {
        return (create, wake);
    }
    let running = states.iter().filter(|s| matches!(s, TaskState::Running { .. })).count();
    let slots = (spec.parallelism() as usize)
        .saturating_sub(running)
        .min(MAX_CREATE_PER_PASS);
    for (t, s) in states.iter_mut().enumerate() {
        if let TaskState::Pending { attempt, not_before } = *s {
            match not_before {
                Some(at) if at > now => wake = Some(wake.map_or(at, |w| w.min(at))),
                _ if create.len() < slots => {
                    create.push(JobRequest {
                        task: t as u32,
                        attempt,
                        stage: None,
                    });
                    *s = TaskState::Running { attempt };
                }
                _ => {}
            }
        }
    }
    (create, wake)
}

/// A Retrying Event for the retries among `create`, if any.
fn retry_event(create: &[JobRequest], policy: RetryPolicy) -> Option<Action> {
    let retries: Vec<&JobRequest> = create.iter().filter(|j| j.attempt > 0).collect();
    if retries.is_empty() {
        return None;
    }
    let list: Vec<String> = retries
        .iter()
        .take(10)
        // Counted from 1, as failedSegments[].attempts; the Job label counts from 0.
        .map(|j| {
            format!(
                "task {} attempt {} of {} (Job label attempt={})",
                j.task,
                j.attempt + 1,
                policy.max_attempts,
                j.attempt
            )
        })
        .collect();
    let more = if retries.len() > 10 { ", ..." } else { "" };
    Some(event(
        true,
        reason::RETRYING,
        format!("retrying {} task(s): {}{more}", retries.len(), list.join(", ")),
    ))
}

/// A SegmentsFailed Event when more segments failed than the status said.
fn failures_event(old: &BackfillStatus, agg: &Aggregate) -> Option<Action> {
    let old_failed = old.segments.as_ref().map_or(0, |c| c.failed);
    if agg.segments.failed <= old_failed {
        return None;
    }
    let latest = agg
        .failed_segments
        .last()
        .map(|f| format!("; e.g. segment {}: {}", f.segment_id, f.reason));
    Some(event(
        true,
        reason::SEGMENTS_FAILED,
        format!(
            "{} segment(s) failed so far{}",
            agg.segments.failed,
            latest.unwrap_or_default()
        ),
    ))
}

fn decide_run(o: &Observed<'_>, spec: &BackfillSpec, mut st: BackfillStatus, run: RunInput<'_>) -> Decision {
    let (now, plan) = (o.now, run.plan);
    let layout = layout_of(spec, o.status, plan);
    let policy = spec.retry_policy();
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    let mut actions = vec![];

    // 1. Finished Jobs without an outcome, and tasks an earlier stage's failure stops: record
    //    one, so their Jobs may go.
    let mut recorded = status::missing_outcomes(plan, layout, run.outcomes, run.jobs);
    let view = OutcomeView {
        stored: run.outcomes,
        recorded: &recorded,
    };
    let states = status::task_states(plan, layout, view, run.jobs, policy);
    let blocked = status::blocked_outcomes(plan, layout, &states, view);
    recorded.extend(blocked);
    for ((task, attempt), outcome) in &recorded {
        actions.push(Action::RecordOutcome {
            task: *task,
            attempt: *attempt,
            outcome: Box::new(outcome.clone()),
        });
    }
    let view = OutcomeView {
        stored: run.outcomes,
        recorded: &recorded,
    };
    let mut states = status::task_states(plan, layout, view, run.jobs, policy);

    // 2. New Jobs (with the work the stages before handed on).
    let (mut create, wake) = schedule(spec, &mut states, now);
    for r in &mut create {
        r.stage = stage_work(plan, layout, r, view, &states);
    }
    actions.extend(retry_event(&create, policy));
    let more_to_create = !create.is_empty();
    if more_to_create {
        actions.push(Action::CreateJobs(create));
    }

    // 3. Status from outcomes and Jobs.
    let agg = status::aggregate(plan, layout, &states, view);
    actions.extend(failures_event(o.status, &agg));
    st.progress = Some(status::progress(&agg.segments));
    st.segments = Some(agg.segments.clone());
    st.rows = Some(agg.rows.clone());
    st.failed_segments = agg.failed_segments.clone();
    st.segments_per_job = Some(layout.split.segments_per_task());
    st.tasks = Some(layout.count(plan));
    st.stage = current_stage(plan, layout, &states);

    // 4. All tasks final: the result, then the final status.
    if agg.done {
        return finish_run(o, spec, st, plan, (layout, &states, view), &agg, actions);
    }
    let requeue = if more_to_create {
        // More may be due right away (capped per pass); the Job events will also wake us.
        Duration::from_secs(1)
    } else {
        let until_wake = wake.map(|w| Duration::from_secs(w.duration_since(now).as_secs().max(1) as u64));
        until_wake.map_or(RESYNC, |d| d.min(RESYNC))
    };
    running(o, spec.suspend(), st, &agg, actions, requeue)
}

/// How the plan is split into tasks, as recorded in status when it was planned.
pub fn layout_of(spec: &BackfillSpec, status: &BackfillStatus, plan: &Plan) -> TaskLayout {
    let per_job = status
        .segments_per_job
        .unwrap_or_else(|| spec.segments_per_job(plan.segments.len()));
    TaskLayout {
        split: TaskSplit::new(per_job),
        partitions: status.exchange_partitions,
    }
}

/// The work of a new Job of a staged run: built from the succeeded attempts' outputs.
fn stage_work(
    plan: &Plan,
    layout: TaskLayout,
    r: &JobRequest,
    view: OutcomeView<'_>,
    states: &[TaskState],
) -> Option<Stage> {
    layout.partitions?;
    let output = |t: u32| match states.get(t as usize) {
        Some(TaskState::Succeeded { attempt }) => view.get(t, *attempt).and_then(|o| o.stage_output.clone()),
        _ => None,
    };
    layout.task(plan, r.task, r.attempt, &output).and_then(|t| t.stage)
}

/// The stage of a staged run: that of its first task not yet final (`None` when every task
/// is, or the run is not staged).
fn current_stage(plan: &Plan, layout: TaskLayout, states: &[TaskState]) -> Option<String> {
    layout.partitions?;
    let t = states.iter().position(|s| !s.is_final())?;
    Some(
        match layout.role(plan, t as u32) {
            Role::Route(_) | Role::Segments(_) => "Route",
            Role::Join(_) => "Join",
            Role::Write(_) => "Write",
        }
        .to_owned(),
    )
}

/// The summary of a finished run, for its conditions and Events.
pub(crate) fn finished_summary(c: &SegmentCounts, rows: &RowCounts) -> String {
    format!(
        "{} of {} segments succeeded, {} failed; {} rows written, {} matched",
        c.succeeded, c.total, c.failed, rows.written, rows.matched
    )
}

/// Every task is final: store the result, then commit it (`spec.commit.endpoint`, a
/// committable result) or write the final status and its Event.
fn finish_run(
    o: &Observed<'_>,
    spec: &BackfillSpec,
    mut st: BackfillStatus,
    plan: &Plan,
    (layout, states, view): (TaskLayout, &[TaskState], OutcomeView<'_>),
    agg: &Aggregate,
    actions: Vec<Action>,
) -> Decision {
    let now = o.now;
    let start = st.start_time.as_ref().map_or(now, |t| t.0);
    let elapsed = now.duration_since(start).as_millis().max(0) as u64;
    // A commit under way (or done, the steps after it running) keeps the run's time: the
    // result is rebuilt exactly as it was stored.
    let ms = match &st.commit {
        Some(c)
            if matches!(
                c.state,
                CommitState::Pending | CommitState::Failed | CommitState::Committed
            ) =>
        {
            st.execution_time_ms.unwrap_or(elapsed)
        }
        _ => elapsed,
    };
    let result = status::build_result(plan, layout, states, view, ms);
    st.execution_time_ms = Some(ms);
    st.result_path = Some(format!(
        "s3://{}/{}",
        plan.storage_bucket,
        RunLayout::of_plan(plan).result_key()
    ));
    let summary = finished_summary(&agg.segments, &agg.rows);
    match status::commitability(spec.engine.commit_endpoint(), &result) {
        Commitability::Commit { endpoint } => {
            let run = CommitRun {
                endpoint,
                suspended: spec.suspend(),
                summary: &summary,
            };
            return decide_commit(o, st, result, &run, actions);
        }
        Commitability::NotCommittable(why) => {
            st.commit = Some(CommitStatus {
                state: CommitState::NotCommittable,
                message: why,
                observed_generation: Some(o.generation),
                ..Default::default()
            });
        }
        Commitability::NoEndpoint => st.commit = None,
    }
    finish_final(o, st, result, &summary, actions)
}

/// The result, then the final status (Succeeded or Failed, `completionTime`) and its Events.
fn finish_final(
    o: &Observed<'_>,
    mut st: BackfillStatus,
    result: BackfillResult,
    summary: &str,
    mut actions: Vec<Action>,
) -> Decision {
    let success = result.success;
    let phase = if success { Phase::Succeeded } else { Phase::Failed };
    st.phase = Some(phase);
    st.completion_time = Some(time(o.now));
    conditions::apply(
        &mut st,
        Situation::Finished {
            run_id: &result.run_id,
            summary,
            success,
        },
        o.now,
        o.generation,
    );
    let not_committable = st
        .commit
        .as_ref()
        .filter(|c| c.state == CommitState::NotCommittable)
        .map(|c| c.message.clone());
    actions.push(Action::WriteResult(Box::new(result)));
    actions.push(Action::UpdateStatus(Box::new(st)));
    let why = if success { reason::SUCCEEDED } else { reason::FAILED };
    actions.push(event(!success, why, summary));
    if let Some(m) = not_committable {
        actions.push(event(true, reason::NOT_COMMITTABLE, m));
    }
    Decision {
        phase,
        actions,
        requeue_after: None,
    }
}

/// What the commit of a finished run takes from the spec and the counters.
struct CommitRun<'a> {
    endpoint: &'a str,
    suspended: bool,
    /// [`finished_summary`] of the run.
    summary: &'a str,
}

/// Delay before the commit attempt after `attempts` attempts: 10 s, doubling, at most 5 min.
pub fn commit_backoff(attempts: u32) -> Duration {
    let secs = COMMIT_BACKOFF_SECONDS << attempts.saturating_sub(1).min(10);
    Duration::from_secs(secs.min(MAX_COMMIT_BACKOFF_SECONDS))
}

/// When the next attempt of a `Pending` commit is due (`None`: now, none was made).
fn next_commit_at(c: &CommitStatus) -> Option<Timestamp> {
    let last = c.last_attempt_time.as_ref()?.0;
    let delay = commit_backoff(c.attempts).as_secs() as i64;
    Some(last + k8s_openapi::jiff::SignedDuration::from_secs(delay))
}

/// The `Progressing` message of a commit under way: deterministic from the status, so a pass
/// that waits for the next attempt changes nothing.
fn committing_message(c: &CommitStatus, run: &CommitRun<'_>) -> String {
    let (summary, endpoint) = (run.summary, run.endpoint);
    if run.suspended {
        return format!("{summary}; the commit to Milvus at {endpoint} waits: spec.suspend is true");
    }
    let head = format!("{summary}; committing the result to Milvus at {endpoint}");
    match next_commit_at(c) {
        None => head,
        Some(at) => format!(
            "{head}; attempt {} got {}; next attempt at {at}",
            c.attempts,
            truncate(&c.message, 600)
        ),
    }
}

/// Whether the commit starts (again) in this pass: none yet, or a failed one at an older
/// generation (a spec change).
fn commit_starts(old: Option<&CommitStatus>, generation: i64) -> bool {
    old.is_none_or(|c| match c.state {
        // Committed and not final: the steps after the commit run; never committed twice.
        CommitState::Pending | CommitState::Committed => false,
        CommitState::Failed => c.observed_generation.is_none_or(|g| g < generation),
        // Final; a status that says so without being final was edited: start over.
        CommitState::NotCommittable => true,
    })
}

/// Every segment is written and Milvus can commit the result: commit it now, or wait for the
/// next attempt's due time, for a spec change (after a failed commit) or for the end of a
/// suspend. The result is stored before the status says the commit started.
fn decide_commit(
    o: &Observed<'_>,
    mut st: BackfillStatus,
    result: BackfillResult,
    run: &CommitRun<'_>,
    mut actions: Vec<Action>,
) -> Decision {
    let (now, generation) = (o.now, o.generation);
    let run_id = result.run_id.clone();
    let old = st.commit.take();
    let starts = commit_starts(old.as_ref(), generation);
    let c = match old {
        Some(c) if !starts => c,
        _ => CommitStatus {
            observed_generation: Some(generation),
            ..Default::default()
        },
    };
    if c.state == CommitState::Committed {
        st.commit = Some(c);
        return crate::finishing::decide(o, st, &run_id, run.summary, run.suspended, actions);
    }
    if c.state == CommitState::Failed {
        // Failed at this generation: wait for a spec change.
        st.phase = Some(Phase::Failed);
        let situation = Situation::CommitFailed {
            run_id: &run_id,
            message: &c.message,
        };
        conditions::apply(&mut st, situation, now, generation);
        st.commit = Some(c);
        return finish(st, o.status, Phase::Failed, actions);
    }
    let phase = if run.suspended {
        Phase::Suspended
    } else {
        Phase::Running
    };
    st.phase = Some(phase);
    let message = committing_message(&c, run);
    let situation = Situation::Committing {
        run_id: &run_id,
        message: &message,
        suspended: run.suspended,
    };
    conditions::apply(&mut st, situation, now, generation);
    let due = next_commit_at(&c);
    st.commit = Some(c);
    if starts {
        actions.push(Action::WriteResult(Box::new(result.clone())));
    }
    if st != *o.status {
        actions.push(Action::UpdateStatus(Box::new(st)));
    }
    actions.extend(commit_event(o.status.phase, starts, run));
    let requeue_after = match due {
        _ if run.suspended => None,
        Some(at) if at > now => Some(until(at, now)),
        _ => {
            actions.push(Action::Commit {
                endpoint: run.endpoint.to_owned(),
                result: Box::new(result),
            });
            None
        }
    };
    Decision {
        phase,
        actions,
        requeue_after,
    }
}

/// Whole seconds from `now` until `at` (rounded up, at least 1).
pub(crate) fn until(at: Timestamp, now: Timestamp) -> Duration {
    let d = at.duration_since(now);
    Duration::from_secs((d.as_secs() + i64::from(d.subsec_nanos() > 0)).max(1) as u64)
}

/// Committing when the commit starts; Suspended or Resumed when `spec.suspend` changes.
fn commit_event(old_phase: Option<Phase>, starts: bool, run: &CommitRun<'_>) -> Option<Action> {
    let suspended_before = old_phase == Some(Phase::Suspended);
    if starts {
        let then = if run.suspended {
            "the commit waits for spec.suspend: false"
        } else {
            "committing the result"
        };
        let message = format!("{}; {then} (Milvus at {})", run.summary, run.endpoint);
        Some(event(false, reason::COMMITTING, message))
    } else if run.suspended && !suspended_before {
        Some(event(false, reason::SUSPENDED, "suspended: the commit waits"))
    } else if !run.suspended && suspended_before {
        Some(event(false, reason::RESUMED, "resumed: committing the result"))
    } else {
        None
    }
}

/// What one commit attempt got, as the executor hands it to [`status_after_commit`].
#[derive(Clone, Copy, Debug)]
pub struct CommitAttempt<'a> {
    pub endpoint: &'a str,
    /// The URL that commits the stored result (`{endpoint}/management/...?result_path=`), for
    /// the hand command in messages.
    pub url: &'a str,
    /// Segments in the result.
    pub segments: usize,
    pub answer: &'a CommitAnswer,
    /// The steps after the commit the spec declares (`createIndex`, `verify`): a successful
    /// commit leads to them rather than to the end of the run when there are any.
    pub steps_after: &'a [milvus_backfill_api::lifecycle::Step],
}

/// What [`status_after_commit`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct AfterCommit {
    pub status: BackfillStatus,
    pub events: Vec<EventSpec>,
    /// When to look again (`None`: on a change).
    pub retry_in: Option<Duration>,
    pub verdict: CommitVerdict,
}

/// The status after a commit attempt and its Events: Committed (final, Succeeded); Pending,
/// retried after [`commit_backoff`] (no answer: until Milvus answers; segments left:
/// [`MAX_COMMIT_REJECTIONS`] answers in all); or Failed (Stalled; a spec change commits again).
pub fn status_after_commit(
    old: &BackfillStatus,
    attempt: &CommitAttempt<'_>,
    generation: i64,
    now: Timestamp,
) -> AfterCommit {
    let mut st = old.clone();
    st.observed_generation = Some(generation);
    let mut c = st.commit.take().unwrap_or_else(|| CommitStatus {
        observed_generation: Some(generation),
        ..Default::default()
    });
    c.attempts += 1;
    // Whole seconds, as the API server stores times: the next pass computes the same due time.
    c.last_attempt_time = Some(time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    let verdict = status::record_commit(&mut c, attempt.answer, attempt.segments);
    let summary = finished_summary(
        &st.segments.clone().unwrap_or_default(),
        &st.rows.clone().unwrap_or_default(),
    );
    let run_id = st.run_id.clone().unwrap_or_default();
    let retry = match verdict {
        CommitVerdict::Committed => false,
        CommitVerdict::Unreachable => true,
        CommitVerdict::Rejected => c.rejections < MAX_COMMIT_REJECTIONS,
        CommitVerdict::Refused => false,
    };
    if !retry {
        let committed_now = verdict == CommitVerdict::Committed;
        let finishes = !attempt.steps_after.is_empty();
        let (status, events) = match (committed_now, finishes) {
            (true, false) => committed(st, c, &summary, generation, now),
            (true, true) => {
                let at = (generation, now);
                crate::finishing::committed_then_finishing(st, c, &summary, attempt.steps_after, at)
            }
            (false, _) => commit_failed(st, c, attempt.url, generation, now),
        };
        return AfterCommit {
            status,
            events,
            // The steps after the commit start on the next pass.
            retry_in: (committed_now && finishes).then(|| Duration::from_secs(1)),
            verdict,
        };
    }
    let delay = commit_backoff(c.attempts);
    let (why, next) = match verdict {
        CommitVerdict::Rejected => (
            reason::COMMIT_REJECTED,
            format!("attempt {} of {MAX_COMMIT_REJECTIONS}", c.rejections + 1),
        ),
        _ => (reason::COMMIT_ERROR, format!("attempt {}", c.attempts + 1)),
    };
    let ev = event_spec(true, why, format!("{}; {next} in {} s", c.message, delay.as_secs()));
    c.state = CommitState::Pending;
    let run = CommitRun {
        endpoint: attempt.endpoint,
        suspended: false,
        summary: &summary,
    };
    let message = committing_message(&c, &run);
    st.commit = Some(c);
    st.phase = Some(Phase::Running);
    let situation = Situation::Committing {
        run_id: &run_id,
        message: &message,
        suspended: false,
    };
    conditions::apply(&mut st, situation, now, generation);
    AfterCommit {
        status: st,
        events: vec![ev],
        retry_in: Some(delay),
        verdict,
    }
}

pub(crate) fn event_spec(warning: bool, reason: &'static str, message: String) -> EventSpec {
    EventSpec {
        warning,
        reason,
        message: truncate(&message, MAX_MESSAGE_BYTES),
    }
}

/// Milvus has every segment: the run is done for good.
fn committed(
    mut st: BackfillStatus,
    mut c: CommitStatus,
    summary: &str,
    generation: i64,
    now: Timestamp,
) -> (BackfillStatus, Vec<EventSpec>) {
    c.state = CommitState::Committed;
    let n = c.committed_segments;
    let from = c.result_paths.join(", ");
    let summary = format!("{summary}; Milvus committed {n} segment(s)");
    let run_id = st.run_id.clone().unwrap_or_default();
    st.commit = Some(c);
    st.phase = Some(Phase::Succeeded);
    st.completion_time = Some(time(now));
    let situation = Situation::Finished {
        run_id: &run_id,
        summary: &summary,
        success: true,
    };
    conditions::apply(&mut st, situation, now, generation);
    let events = vec![
        event_spec(
            false,
            reason::COMMITTED,
            format!("Milvus committed {n} segment(s) from {from}"),
        ),
        event_spec(false, reason::SUCCEEDED, summary),
    ];
    (st, events)
}

/// The commit cannot succeed without a change: Failed (Stalled), with the hand command.
fn commit_failed(
    mut st: BackfillStatus,
    mut c: CommitStatus,
    url: &str,
    generation: i64,
    now: Timestamp,
) -> (BackfillStatus, Vec<EventSpec>) {
    let after = match c.rejections {
        0 => String::new(),
        n => format!(" after {n} attempt(s)"),
    };
    c.message = truncate(
        &format!(
            "{}{after}; fix the cause, then change the spec to commit again, or commit by hand: curl -fsS '{url}'",
            truncate(&c.message, 600)
        ),
        MAX_MESSAGE_BYTES,
    );
    c.state = CommitState::Failed;
    let run_id = st.run_id.clone().unwrap_or_default();
    st.phase = Some(Phase::Failed);
    let situation = Situation::CommitFailed {
        run_id: &run_id,
        message: &c.message,
    };
    conditions::apply(&mut st, situation, now, generation);
    let ev = event_spec(true, reason::COMMIT_FAILED, c.message.clone());
    st.commit = Some(c);
    (st, vec![ev])
}

/// Tasks still running or waiting: the counters, and Events for suspend and resume.
fn running(
    o: &Observed<'_>,
    suspended: bool,
    mut st: BackfillStatus,
    agg: &Aggregate,
    mut actions: Vec<Action>,
    requeue: Duration,
) -> Decision {
    let phase = if suspended { Phase::Suspended } else { Phase::Running };
    let c = &agg.segments;
    let summary = format!(
        "{}/{} segments succeeded, {} running, {} pending, {} failed",
        c.succeeded, c.total, c.running, c.pending, c.failed
    );
    st.phase = Some(phase);
    conditions::apply(
        &mut st,
        Situation::Running {
            run_id: o.status.run_id.as_deref().unwrap_or_default(),
            summary: &summary,
            suspended,
        },
        o.now,
        o.generation,
    );
    match (o.status.phase, phase) {
        (Some(Phase::Suspended), Phase::Running) => actions.push(event(false, reason::RESUMED, "resumed")),
        (Some(p), Phase::Suspended) if p != Phase::Suspended => actions.push(event(
            false,
            reason::SUSPENDED,
            format!("suspended: no new Jobs; {} running", agg.running_tasks),
        )),
        _ => {}
    }
    if st != *o.status {
        // The status goes first: counters move before new Jobs exist.
        actions.insert(0, Action::UpdateStatus(Box::new(st)));
    }
    Decision {
        phase,
        actions,
        requeue_after: Some(requeue),
    }
}

/// The status once the plan is stored: `Planned`, the run's identity and its counters.
pub fn status_after_plan(
    old: &BackfillStatus,
    plan: &Plan,
    plan_path: &str,
    spec: &BackfillSpec,
    generation: i64,
    now: Timestamp,
) -> (BackfillStatus, EventSpec) {
    let mut st = old.clone();
    let split = TaskSplit::new(spec.segments_per_job(plan.segments.len()));
    let staged = spec.staged(plan, split.count(plan));
    let layout = TaskLayout {
        split,
        partitions: staged.then(|| partitions_for(plan, spec.parallelism())),
    };
    st.observed_generation = Some(generation);
    st.run_id = Some(plan.run_id.clone());
    st.collection_id = Some(plan.collection_id);
    st.new_field_names = plan
        .new_fields
        .iter()
        .take(64)
        .map(|f| truncate(&f.name, 256))
        .collect();
    st.lifecycle = plan
        .lifecycle
        .iter()
        .take(8)
        .map(|r| milvus_backfill_api::lifecycle::StepRecord {
            message: truncate(&r.message, 512),
            ..r.clone()
        })
        .collect();
    st.segments_per_job = Some(split.segments_per_task());
    st.tasks = Some(layout.count(plan));
    st.exchange_partitions = layout.partitions;
    st.plan_path = Some(plan_path.to_owned());
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    let empty = Outcomes::new();
    let view = OutcomeView {
        stored: &empty,
        recorded: &empty,
    };
    let states = status::task_states(plan, layout, view, &[], spec.retry_policy());
    st.stage = current_stage(plan, layout, &states);
    let agg = status::aggregate(plan, layout, &states, view);
    st.progress = Some(status::progress(&agg.segments));
    st.segments = Some(agg.segments);
    st.rows = Some(agg.rows);
    st.failed_segments = agg.failed_segments;
    let mut msg = format!(
        "run {}: {} segment(s) in {} task(s), {} skipped, {} failed planning",
        plan.run_id,
        plan.segments.len(),
        layout.count(plan),
        plan.skipped.len(),
        plan.failed.len()
    );
    if let Some(p) = layout.partitions {
        msg.push_str(&format!(
            "; staged: the source is routed once into {p} partitions (route, join, write)"
        ));
    }
    if let Some(w) = plan.warnings.first() {
        msg.push_str(&format!("; warning: {w}"));
    }
    let suspended = spec.suspend();
    st.phase = Some(if suspended { Phase::Suspended } else { Phase::Running });
    conditions::apply(
        &mut st,
        Situation::Planned {
            message: &msg,
            suspended,
        },
        now,
        generation,
    );
    let ev = EventSpec {
        warning: false,
        reason: reason::PLANNED,
        message: truncate(&msg, MAX_MESSAGE_BYTES),
    };
    (st, ev)
}

/// A planning error's message with where its precheck report is stored, when it is. The
/// message is shortened first, so that the report's place survives the status' size limit.
pub fn with_report(message: &str, report: Option<&str>) -> String {
    match report {
        Some(uri) => {
            // Room for the error kind the status puts in front.
            let room = MAX_MESSAGE_BYTES.saturating_sub(uri.len() + 64);
            format!("{} (precheck report: {uri})", truncate(message, room))
        }
        None => message.to_owned(),
    }
}

/// The status after planning failed. `permanent` (a config or schema error) waits for a spec
/// change; otherwise the controller retries with backoff.
pub fn status_after_plan_error(
    old: &BackfillStatus,
    kind: &str,
    message: &str,
    permanent: bool,
    generation: i64,
    now: Timestamp,
) -> (BackfillStatus, EventSpec) {
    let mut st = old.clone();
    st.observed_generation = Some(generation);
    let msg = format!("{kind}: {message}");
    let (phase, situation, why) = if permanent {
        (
            Phase::Failed,
            Situation::PrecheckFailed { message: &msg },
            reason::PRECHECK_FAILED,
        )
    } else {
        (
            Phase::Planning,
            Situation::PlanningError { message: &msg },
            reason::PLANNING_ERROR,
        )
    };
    st.phase = Some(phase);
    conditions::apply(&mut st, situation, now, generation);
    let ev = EventSpec {
        warning: true,
        reason: why,
        message: truncate(&msg, MAX_MESSAGE_BYTES),
    };
    (st, ev)
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "commit_tests.rs"]
mod commit_tests;

#[cfg(test)]
#[path = "staged_tests.rs"]
mod staged_tests;
