//! The reconcile state machine, as a pure function: what was observed (spec, status, stored
//! plan, outcomes, live Jobs, the time) in; the next phase and a list of actions out. The
//! controller only gathers the inputs and carries out the actions, in order, stopping at the
//! first that fails (the next pass computes them again).
//!
//! ```text
//!            spec invalid ─────────────► Failed (InvalidSpec; waits for a spec change)
//! Pending ─► Planning ─► Running ◄──────► Suspended
//!               │           │
//!               │           └──► Succeeded | Failed (completionTime set: final)
//!               └──► Failed (PlanFailed: config/schema error; waits for a spec change)
//! ```
//!
//! Invariants the tests check: no Job before the plan is recorded in status; never more than
//! `parallelism` Jobs running; no new Job while suspended; no retry past `maxAttempts`; a final
//! status never changes; the result is written before the status says Complete.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use milvus_backfill_api::outcome::{BackfillResult, TaskOutcome};
use milvus_backfill_api::plan::Plan;

use milvus_backfill_api::layout::{RunLayout, TaskSplit};

use crate::conditions::{self, Situation};
pub use crate::conditions::{get_condition, is_true};
use crate::crd::{condition, truncate, BackfillSpec, BackfillStatus, Phase, RetryPolicy, MAX_MESSAGE_BYTES};
use crate::status::{self, Aggregate, JobView, OutcomeView, Outcomes, TaskState};
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
    pub const PLAN_FAILED: &str = "PlanFailed";
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
}

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRequest {
    pub task: u32,
    pub attempt: u32,
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

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn is_final(s: &BackfillStatus) -> bool {
    s.completion_time.is_some() && matches!(s.phase, Some(Phase::Succeeded | Phase::Failed))
}

fn finish(st: BackfillStatus, old: &BackfillStatus, phase: Phase, mut actions: Vec<Action>) -> Decision {
    if st != *old {
        actions.insert(0, Action::UpdateStatus(Box::new(st)));
    }
    Decision {
        phase,
        actions,
        requeue_after: None,
    }
}

fn event(warning: bool, reason: &'static str, message: impl Into<String>) -> Action {
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
        c.status == "True" && c.reason == reason::PLAN_FAILED && c.observed_generation == Some(generation)
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
    let split = TaskSplit::new(o.status.segments_per_job.unwrap_or_else(|| spec.segments_per_job()));
    let policy = spec.retry_policy();
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    let mut actions = vec![];

    // 1. Finished Jobs without an outcome: record one, so their Jobs may go.
    let recorded = status::missing_outcomes(plan, split, run.outcomes, run.jobs);
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
    let mut states = status::task_states(plan, split, view, run.jobs, policy);

    // 2. New Jobs.
    let (create, wake) = schedule(spec, &mut states, now);
    actions.extend(retry_event(&create, policy));
    let more_to_create = !create.is_empty();
    if more_to_create {
        actions.push(Action::CreateJobs(create));
    }

    // 3. Status from outcomes and Jobs.
    let agg = status::aggregate(plan, split, &states, view);
    actions.extend(failures_event(o.status, &agg));
    st.progress = Some(status::progress(&agg.segments));
    st.segments = Some(agg.segments.clone());
    st.rows = Some(agg.rows.clone());
    st.failed_segments = agg.failed_segments.clone();
    st.segments_per_job = Some(split.segments_per_task());
    st.tasks = Some(split.count(plan));

    // 4. All tasks final: the result, then the final status.
    if agg.done {
        return finish_run(o, st, plan, &states, view, &agg, actions);
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

/// Every task is final: store the result, then the final status and its Event.
fn finish_run(
    o: &Observed<'_>,
    mut st: BackfillStatus,
    plan: &Plan,
    states: &[TaskState],
    view: OutcomeView<'_>,
    agg: &Aggregate,
    mut actions: Vec<Action>,
) -> Decision {
    let now = o.now;
    let start = st.start_time.as_ref().map_or(now, |t| t.0);
    let ms = now.duration_since(start).as_millis().max(0) as u64;
    let result = status::build_result(plan, states, view, ms);
    let phase = if result.success {
        Phase::Succeeded
    } else {
        Phase::Failed
    };
    let c = &agg.segments;
    let summary = format!(
        "{} of {} segments succeeded, {} failed; {} rows written, {} matched",
        c.succeeded, c.total, c.failed, agg.rows.written, agg.rows.matched
    );
    st.phase = Some(phase);
    st.completion_time = Some(time(now));
    st.execution_time_ms = Some(ms);
    st.result_path = Some(format!(
        "s3://{}/{}",
        plan.storage_bucket,
        RunLayout::of_plan(plan).result_key()
    ));
    let success = result.success;
    conditions::apply(
        &mut st,
        Situation::Finished {
            run_id: &plan.run_id,
            summary: &summary,
            success,
        },
        now,
        o.generation,
    );
    actions.push(Action::WriteResult(Box::new(result)));
    actions.push(Action::UpdateStatus(Box::new(st)));
    let why = if success { reason::SUCCEEDED } else { reason::FAILED };
    actions.push(event(!success, why, summary));
    Decision {
        phase,
        actions,
        requeue_after: None,
    }
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
    let split = TaskSplit::new(spec.segments_per_job());
    st.observed_generation = Some(generation);
    st.run_id = Some(plan.run_id.clone());
    st.collection_id = Some(plan.collection_id);
    st.new_field_names = plan
        .new_fields
        .iter()
        .take(64)
        .map(|f| truncate(&f.name, 256))
        .collect();
    st.segments_per_job = Some(split.segments_per_task());
    st.tasks = Some(split.count(plan));
    st.plan_path = Some(plan_path.to_owned());
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    let states: Vec<TaskState> = (0..split.count(plan))
        .map(|_| TaskState::Pending {
            attempt: 0,
            not_before: None,
        })
        .collect();
    let empty = Outcomes::new();
    let view = OutcomeView {
        stored: &empty,
        recorded: &empty,
    };
    let agg = status::aggregate(plan, split, &states, view);
    st.progress = Some(status::progress(&agg.segments));
    st.segments = Some(agg.segments);
    st.rows = Some(agg.rows);
    st.failed_segments = agg.failed_segments;
    let mut msg = format!(
        "run {}: {} segment(s) in {} task(s), {} skipped, {} failed planning",
        plan.run_id,
        plan.segments.len(),
        split.count(plan),
        plan.skipped.len(),
        plan.failed.len()
    );
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
            Situation::PlanFailed { message: &msg },
            reason::PLAN_FAILED,
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
