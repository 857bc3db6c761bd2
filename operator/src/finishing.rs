//! The lifecycle's steps after the commit in a cluster (pure): once Milvus has committed a run,
//! `createIndex` and `verify` (`spec.lifecycle`) run before the Backfill is Succeeded.
//!
//! ```text
//! Committing ─► Committed ─► Finishing (Running, Progressing=Finishing) ◄──► Suspended
//!                               ├──► Succeeded (every step done or already done; final)
//!                               └──► Failed (StepFailed; a spec change runs the steps again)
//! ```
//!
//! The decider emits [`Action::Finish`]; the executor runs the steps as planning runs (a
//! finishing Job with the Backfill's Secrets through `secretKeyRef`, or in-process) and records
//! what they did with [`status_after_finish`]. The commit stands whatever the steps do: it is
//! never made twice.

use k8s_openapi::jiff::Timestamp;
use milvus_backfill_api::lifecycle::{Step, StepRecord, StepState};

use crate::conditions::{self, get_condition, Situation};
use crate::crd::{condition, truncate, BackfillStatus, CommitState, CommitStatus, Phase};
use crate::state::{event, event_spec, finish, finished_summary, reason, time, Action, Decision, EventSpec, Observed};

/// The most step records `status.lifecycle` keeps (every step of the lifecycle fits).
const MAX_RECORDS: usize = 8;

/// The Progressing message while the steps after the commit run.
fn finishing_message(summary: &str, committed: u64, steps: &[Step], suspended: bool) -> String {
    let names: Vec<String> = steps.iter().map(ToString::to_string).collect();
    let then = if suspended {
        "they wait: spec.suspend is true"
    } else {
        "running them"
    };
    format!(
        "{summary}; Milvus committed {committed} segment(s); steps after the commit: {}; {then}",
        names.join(", ")
    )
}

/// The status right after Milvus committed a run whose spec declares steps after the commit:
/// still Running (Progressing=Finishing), not final; one `Committed` Event.
pub(crate) fn committed_then_finishing(
    mut st: BackfillStatus,
    mut c: CommitStatus,
    summary: &str,
    steps: &[Step],
    (generation, now): (i64, Timestamp),
) -> (BackfillStatus, Vec<EventSpec>) {
    c.state = CommitState::Committed;
    let n = c.committed_segments;
    let from = c.result_paths.join(", ");
    let run_id = st.run_id.clone().unwrap_or_default();
    st.commit = Some(c);
    st.phase = Some(Phase::Running);
    let message = finishing_message(summary, n, steps, false);
    let situation = Situation::Finishing {
        run_id: &run_id,
        message: &message,
        suspended: false,
    };
    conditions::apply(&mut st, situation, now, generation);
    let ev = event_spec(
        false,
        reason::COMMITTED,
        format!("Milvus committed {n} segment(s) from {from}; running the steps after the commit"),
    );
    (st, vec![ev])
}

/// A step after the commit failed at `generation`: nothing runs until the spec changes.
pub(crate) fn step_failed_at(st: &BackfillStatus, generation: i64) -> bool {
    get_condition(&st.conditions, condition::FAILED).is_some_and(|c| {
        c.status == "True" && c.reason == reason::STEP_FAILED && c.observed_generation == Some(generation)
    })
}

/// Milvus committed the run (`st.commit` is `Committed`) and it is not final: run the steps
/// after the commit, or wait for the end of a suspend, or (a step failed at this generation)
/// for a spec change.
pub(crate) fn decide(
    o: &Observed<'_>,
    mut st: BackfillStatus,
    run_id: &str,
    summary: &str,
    suspended: bool,
    mut actions: Vec<Action>,
) -> Decision {
    let (now, generation) = (o.now, o.generation);
    if step_failed_at(o.status, generation) {
        st.phase = Some(Phase::Failed);
        return finish(st, o.status, Phase::Failed, actions);
    }
    let steps = o
        .spec
        .ok()
        .map(|v| milvus_backfill_api::lifecycle::steps_after_commit(&v.spec.engine))
        .unwrap_or_default();
    let committed = st.commit.as_ref().map_or(0, |c| c.committed_segments);
    let message = finishing_message(summary, committed, &steps, suspended);
    let phase = if suspended { Phase::Suspended } else { Phase::Running };
    let was = o.status.phase;
    st.phase = Some(phase);
    let situation = Situation::Finishing {
        run_id,
        message: &message,
        suspended,
    };
    conditions::apply(&mut st, situation, now, generation);
    if st != *o.status {
        actions.push(Action::UpdateStatus(Box::new(st)));
    }
    match (suspended, was) {
        (true, Some(p)) if p != Phase::Suspended => actions.push(event(
            false,
            reason::SUSPENDED,
            "suspended: the steps after the commit wait",
        )),
        (false, Some(Phase::Suspended)) => actions.push(event(
            false,
            reason::RESUMED,
            "resumed: running the steps after the commit",
        )),
        _ => {}
    }
    if !suspended {
        actions.push(Action::Finish);
    }
    Decision {
        phase,
        actions,
        requeue_after: None,
    }
}

/// The status once the steps after the commit ran (`steps`, one record per declared step):
/// Succeeded (final) when none failed, else Failed (`StepFailed`, not final: a spec change
/// runs them again). Their records join `status.lifecycle`, replacing those of an earlier try.
pub fn status_after_finish(
    old: &BackfillStatus,
    steps: &[StepRecord],
    generation: i64,
    now: Timestamp,
) -> (BackfillStatus, Vec<EventSpec>) {
    let mut st = old.clone();
    st.observed_generation = Some(generation);
    st.lifecycle.retain(|r| r.step <= Step::Commit);
    let room = MAX_RECORDS.saturating_sub(st.lifecycle.len());
    st.lifecycle.extend(steps.iter().take(room).map(|r| StepRecord {
        message: truncate(&r.message, 512),
        ..r.clone()
    }));
    let counts = finished_summary(
        &st.segments.clone().unwrap_or_default(),
        &st.rows.clone().unwrap_or_default(),
    );
    let committed = st.commit.as_ref().map_or(0, |c| c.committed_segments);
    let said: Vec<String> = steps
        .iter()
        .map(|r| format!("{} {:?}: {}", r.step, r.state, truncate(&r.message, 300)))
        .collect();
    let summary = match said.is_empty() {
        true => format!("{counts}; Milvus committed {committed} segment(s)"),
        false => format!("{counts}; Milvus committed {committed} segment(s); {}", said.join("; ")),
    };
    let run_id = st.run_id.clone().unwrap_or_default();
    let failed: Vec<&StepRecord> = steps.iter().filter(|r| r.state == StepState::Failed).collect();
    if failed.is_empty() {
        st.phase = Some(Phase::Succeeded);
        st.completion_time = Some(time(now));
        let situation = Situation::Finished {
            run_id: &run_id,
            summary: &summary,
            success: true,
        };
        conditions::apply(&mut st, situation, now, generation);
        return (st, vec![event_spec(false, reason::SUCCEEDED, summary)]);
    }
    let what: Vec<String> = failed
        .iter()
        .map(|r| format!("{} failed: {}", r.step, truncate(&r.message, 400)))
        .collect();
    let message = format!(
        "{}; Milvus committed {committed} segment(s), which stay committed; fix the cause, then change the spec to run the steps after the commit again",
        what.join("; ")
    );
    st.phase = Some(Phase::Failed);
    let situation = Situation::StepFailed {
        run_id: &run_id,
        message: &message,
    };
    conditions::apply(&mut st, situation, now, generation);
    (st, vec![event_spec(true, reason::STEP_FAILED, message)])
}

#[cfg(test)]
#[path = "finishing_tests.rs"]
mod tests;
