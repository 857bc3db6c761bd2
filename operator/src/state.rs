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
use milvus_backfill::plan::Plan;
use milvus_backfill::result::BackfillResult;
use milvus_backfill::runner::TaskOutcome;

use crate::crd::{condition, truncate, BackfillSpec, BackfillStatus, Condition, Phase, MAX_MESSAGE_BYTES};
use crate::runs;
use crate::status::{self, JobView, OutcomeView, Outcomes, RetryPolicy, TaskState};

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
    pub spec: &'a BackfillSpec,
    /// The current status (default when there is none).
    pub status: &'a BackfillStatus,
    /// From [`crate::validate::validate`].
    pub problems: &'a [String],
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

/// Sets a condition; its `lastTransitionTime` moves only when its status changes.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: i64,
) {
    let status = if status { "True" } else { "False" };
    let message = truncate(message, MAX_MESSAGE_BYTES);
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = time(now);
            }
            c.status = status.to_owned();
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = Some(generation);
        }
        None => conds.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: time(now),
            observed_generation: Some(generation),
        }),
    }
    let order = |t: &str| {
        [
            condition::PLANNED,
            condition::PROGRESSING,
            condition::SUSPENDED,
            condition::COMPLETE,
            condition::FAILED,
        ]
        .iter()
        .position(|x| *x == t)
        .unwrap_or(usize::MAX)
    };
    conds.sort_by_key(|c| order(&c.type_));
}

pub fn get_condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn is_true(conds: &[Condition], type_: &str, reason: &str) -> bool {
    get_condition(conds, type_).is_some_and(|c| c.status == "True" && c.reason == reason)
}

fn is_final(s: &BackfillStatus) -> bool {
    s.completion_time.is_some() && matches!(s.phase, Some(Phase::Succeeded | Phase::Failed))
}

fn policy(spec: &BackfillSpec) -> RetryPolicy {
    RetryPolicy {
        max_attempts: spec.max_attempts(),
        backoff_seconds: spec.backoff_seconds(),
    }
}

/// Suspended plus the conditions that say so.
fn suspend_conditions(st: &mut BackfillStatus, suspended: bool, now: Timestamp, generation: i64) {
    if suspended {
        set_condition(
            &mut st.conditions,
            condition::SUSPENDED,
            true,
            reason::SUSPENDED,
            "spec.suspend is true: no new Jobs; running Jobs finish",
            now,
            generation,
        );
    } else {
        set_condition(
            &mut st.conditions,
            condition::SUSPENDED,
            false,
            reason::NOT_SUSPENDED,
            "",
            now,
            generation,
        );
    }
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

/// The next step.
pub fn decide(o: &Observed<'_>) -> Decision {
    let (now, generation) = (o.now, o.generation);
    let mut st = o.status.clone();

    // A finished run never changes again.
    if is_final(o.status) {
        st.observed_generation = Some(generation);
        let phase = st.phase.unwrap_or_default();
        return finish(st, o.status, phase, vec![]);
    }

    // An invalid spec: say so, start nothing, wait for a change.
    if !o.problems.is_empty() {
        let msg = o.problems.join("; ");
        let was = get_condition(&o.status.conditions, condition::FAILED).is_some_and(|c| {
            c.status == "True" && c.reason == reason::INVALID_SPEC && c.message == truncate(&msg, MAX_MESSAGE_BYTES)
        });
        st.observed_generation = Some(generation);
        st.phase = Some(Phase::Failed);
        set_condition(
            &mut st.conditions,
            condition::FAILED,
            true,
            reason::INVALID_SPEC,
            &msg,
            now,
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::PROGRESSING,
            false,
            reason::INVALID_SPEC,
            "fix the spec; nothing new starts until then",
            now,
            generation,
        );
        let mut actions = vec![];
        if !was {
            actions.push(Action::Event(EventSpec {
                warning: true,
                reason: reason::INVALID_SPEC,
                message: truncate(&msg, MAX_MESSAGE_BYTES),
            }));
        }
        return finish(st, o.status, Phase::Failed, actions);
    }

    match (&o.status.run_id, o.run) {
        (None, _) => decide_unplanned(o, st),
        (Some(_), Some(run)) => decide_run(o, st, run),
        // The plan is recorded but could not be loaded: the controller retries; nothing here.
        (Some(_), None) => Decision {
            phase: o.status.phase.unwrap_or_default(),
            actions: vec![],
            requeue_after: Some(Duration::from_secs(30)),
        },
    }
}

fn decide_unplanned(o: &Observed<'_>, mut st: BackfillStatus) -> Decision {
    let (now, generation) = (o.now, o.generation);
    st.observed_generation = Some(generation);
    let old_phase = o.status.phase;
    // A spec that was invalid is valid now.
    if is_true(&st.conditions, condition::FAILED, reason::INVALID_SPEC) {
        set_condition(
            &mut st.conditions,
            condition::FAILED,
            false,
            reason::NOT_FINISHED,
            "",
            now,
            generation,
        );
    }
    if o.spec.suspend() {
        st.phase = Some(Phase::Suspended);
        suspend_conditions(&mut st, true, now, generation);
        set_condition(
            &mut st.conditions,
            condition::PLANNED,
            false,
            reason::SUSPENDED,
            "planning starts when spec.suspend is false",
            now,
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::PROGRESSING,
            false,
            reason::SUSPENDED,
            "",
            now,
            generation,
        );
        let mut actions = vec![];
        if old_phase != Some(Phase::Suspended) {
            actions.push(event(false, reason::SUSPENDED, "suspended before planning"));
        }
        return finish(st, o.status, Phase::Suspended, actions);
    }
    // Planning failed for good at this generation: wait for a spec change.
    if let Some(c) = get_condition(&o.status.conditions, condition::FAILED) {
        if c.status == "True" && c.reason == reason::PLAN_FAILED && c.observed_generation == Some(generation) {
            return finish(st, o.status, Phase::Failed, vec![]);
        }
    }
    st.phase = Some(Phase::Planning);
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    suspend_conditions(&mut st, false, now, generation);
    // Keep the last planning error on display while planning is retried: flipping the
    // condition on every pass would make every pass a new watch event.
    if !get_condition(&st.conditions, condition::PLANNED)
        .is_some_and(|c| c.status == "False" && c.reason == reason::PLANNING_ERROR)
    {
        set_condition(
            &mut st.conditions,
            condition::PLANNED,
            false,
            reason::PLANNING,
            "listing segments and binlogs, checking the source",
            now,
            generation,
        );
    }
    set_condition(
        &mut st.conditions,
        condition::PROGRESSING,
        true,
        reason::PLANNING,
        "",
        now,
        generation,
    );
    set_condition(
        &mut st.conditions,
        condition::COMPLETE,
        false,
        reason::NOT_FINISHED,
        "",
        now,
        generation,
    );
    set_condition(
        &mut st.conditions,
        condition::FAILED,
        false,
        reason::NOT_FINISHED,
        "",
        now,
        generation,
    );
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

fn event(warning: bool, reason: &'static str, message: impl Into<String>) -> Action {
    Action::Event(EventSpec {
        warning,
        reason,
        message: truncate(&message.into(), MAX_MESSAGE_BYTES),
    })
}

fn decide_run(o: &Observed<'_>, mut st: BackfillStatus, run: RunInput<'_>) -> Decision {
    let (now, generation, spec) = (o.now, o.generation, o.spec);
    let plan = run.plan;
    let spj = o.status.segments_per_job.unwrap_or_else(|| spec.segments_per_job());
    let policy = policy(spec);
    st.observed_generation = Some(generation);
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    if get_condition(&st.conditions, condition::PLANNED).is_none_or(|c| c.status != "True") {
        let msg = format!("run {}", plan.run_id);
        set_condition(
            &mut st.conditions,
            condition::PLANNED,
            true,
            reason::PLANNED,
            &msg,
            now,
            generation,
        );
    }
    if is_true(&st.conditions, condition::FAILED, reason::INVALID_SPEC) {
        set_condition(
            &mut st.conditions,
            condition::FAILED,
            false,
            reason::NOT_FINISHED,
            "",
            now,
            generation,
        );
    }
    let mut actions = vec![];

    // 1. Finished Jobs without an outcome: record one, so their Jobs may go.
    let recorded = status::missing_outcomes(plan, spj, run.outcomes, run.jobs);
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
    let mut states = status::task_states(plan, spj, view, run.jobs, policy);

    // 2. New Jobs: at most `parallelism` running, none while suspended.
    let suspended = spec.suspend();
    let running = states.iter().filter(|s| matches!(s, TaskState::Running { .. })).count();
    let mut wake: Option<Timestamp> = None;
    let mut create = Vec::new();
    if !suspended {
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
    }
    let retries: Vec<&JobRequest> = create.iter().filter(|j| j.attempt > 0).collect();
    if !retries.is_empty() {
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
        actions.push(event(
            true,
            reason::RETRYING,
            format!(
                "retrying {} task(s): {}{}",
                retries.len(),
                list.join(", "),
                if retries.len() > 10 { ", ..." } else { "" }
            ),
        ));
    }
    let more_to_create = !create.is_empty();
    if more_to_create {
        actions.push(Action::CreateJobs(create));
    }

    // 3. Status from outcomes and Jobs.
    let agg = status::aggregate(plan, spj, &states, view);
    let old_failed = o.status.segments.as_ref().map_or(0, |c| c.failed);
    if agg.segments.failed > old_failed {
        let latest = agg
            .failed_segments
            .last()
            .map(|f| format!("; e.g. segment {}: {}", f.segment_id, f.reason));
        actions.push(event(
            true,
            reason::SEGMENTS_FAILED,
            format!(
                "{} segment(s) failed so far{}",
                agg.segments.failed,
                latest.unwrap_or_default()
            ),
        ));
    }
    st.progress = Some(status::progress(&agg.segments));
    st.segments = Some(agg.segments.clone());
    st.rows = Some(agg.rows.clone());
    st.failed_segments = agg.failed_segments.clone();
    st.segments_per_job = Some(spj);
    st.tasks = Some(runs::task_count(plan, spj));

    // 4. All tasks final: the result, then the final status.
    if agg.done {
        let start = st.start_time.as_ref().map_or(now, |t| t.0);
        let ms = now.duration_since(start).as_millis().max(0) as u64;
        let result = status::build_result(plan, &states, view, ms);
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
        st.result_path = Some(format!("s3://{}/{}", plan.storage_bucket, plan.result_key()));
        set_condition(
            &mut st.conditions,
            condition::PROGRESSING,
            false,
            phase.as_str(),
            &summary,
            now,
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::COMPLETE,
            result.success,
            if result.success {
                reason::SUCCEEDED
            } else {
                reason::SEGMENTS_FAILED
            },
            &summary,
            now,
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::FAILED,
            !result.success,
            if result.success {
                reason::SUCCEEDED
            } else {
                reason::SEGMENTS_FAILED
            },
            &summary,
            now,
            generation,
        );
        suspend_conditions(&mut st, false, now, generation);
        actions.push(Action::WriteResult(Box::new(result)));
        actions.push(Action::UpdateStatus(Box::new(st)));
        actions.push(event(
            phase == Phase::Failed,
            if phase == Phase::Failed {
                reason::FAILED
            } else {
                reason::SUCCEEDED
            },
            summary,
        ));
        return Decision {
            phase,
            actions,
            requeue_after: None,
        };
    }

    let phase = if suspended { Phase::Suspended } else { Phase::Running };
    let c = &agg.segments;
    let summary = format!(
        "{}/{} segments succeeded, {} running, {} pending, {} failed",
        c.succeeded, c.total, c.running, c.pending, c.failed
    );
    st.phase = Some(phase);
    suspend_conditions(&mut st, suspended, now, generation);
    set_condition(
        &mut st.conditions,
        condition::PROGRESSING,
        !suspended,
        if suspended { reason::SUSPENDED } else { reason::RUNNING },
        &summary,
        now,
        generation,
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
    let requeue = if more_to_create {
        // More may be due right away (capped per pass); the Job events will also wake us.
        Duration::from_secs(1)
    } else {
        let until_wake = wake.map(|w| {
            let secs = w.duration_since(now).as_secs().max(1) as u64;
            Duration::from_secs(secs)
        });
        until_wake.map_or(RESYNC, |d| d.min(RESYNC))
    };
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
    let spj = spec.segments_per_job();
    st.observed_generation = Some(generation);
    st.run_id = Some(plan.run_id.clone());
    st.collection_id = Some(plan.collection_id);
    st.new_field_names = plan
        .new_fields
        .iter()
        .take(64)
        .map(|f| truncate(&f.name, 256))
        .collect();
    st.segments_per_job = Some(spj);
    st.tasks = Some(runs::task_count(plan, spj));
    st.plan_path = Some(plan_path.to_owned());
    st.start_time = st.start_time.or_else(|| Some(time(now)));
    let states: Vec<TaskState> = (0..runs::task_count(plan, spj))
        .map(|_| TaskState::Pending {
            attempt: 0,
            not_before: None,
        })
        .collect();
    let empty = Outcomes::new();
    let agg = status::aggregate(
        plan,
        spj,
        &states,
        OutcomeView {
            stored: &empty,
            recorded: &empty,
        },
    );
    st.progress = Some(status::progress(&agg.segments));
    st.segments = Some(agg.segments);
    st.rows = Some(agg.rows);
    st.failed_segments = agg.failed_segments;
    let mut msg = format!(
        "run {}: {} segment(s) in {} task(s), {} skipped, {} failed planning",
        plan.run_id,
        plan.segments.len(),
        runs::task_count(plan, spj),
        plan.skipped.len(),
        plan.failed.len()
    );
    if let Some(w) = plan.warnings.first() {
        msg.push_str(&format!("; warning: {w}"));
    }
    set_condition(
        &mut st.conditions,
        condition::PLANNED,
        true,
        reason::PLANNED,
        &msg,
        now,
        generation,
    );
    let suspended = spec.suspend();
    st.phase = Some(if suspended { Phase::Suspended } else { Phase::Running });
    suspend_conditions(&mut st, suspended, now, generation);
    set_condition(
        &mut st.conditions,
        condition::PROGRESSING,
        !suspended,
        if suspended { reason::SUSPENDED } else { reason::RUNNING },
        "",
        now,
        generation,
    );
    (
        st,
        EventSpec {
            warning: false,
            reason: reason::PLANNED,
            message: truncate(&msg, MAX_MESSAGE_BYTES),
        },
    )
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
    if permanent {
        st.phase = Some(Phase::Failed);
        set_condition(
            &mut st.conditions,
            condition::PLANNED,
            false,
            reason::PLAN_FAILED,
            &msg,
            now,
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::FAILED,
            true,
            reason::PLAN_FAILED,
            &msg,
            now,
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::PROGRESSING,
            false,
            reason::PLAN_FAILED,
            "fix the cause, then change the spec (e.g. toggle suspend) to plan again",
            now,
            generation,
        );
    } else {
        st.phase = Some(Phase::Planning);
        set_condition(
            &mut st.conditions,
            condition::PLANNED,
            false,
            reason::PLANNING_ERROR,
            &msg,
            now,
            generation,
        );
    }
    (
        st,
        EventSpec {
            warning: true,
            reason: if permanent {
                reason::PLAN_FAILED
            } else {
                reason::PLANNING_ERROR
            },
            message: truncate(&msg, MAX_MESSAGE_BYTES),
        },
    )
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
