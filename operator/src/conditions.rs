//! Conditions, computed in one place from what the run is doing (pure).
//!
//! Two families, side by side:
//! - Job-like: `Planned`, `Progressing`, `Suspended`, `Complete`, `Failed` (as `kubectl get
//!   job` users read them, and the Argo CD health check);
//! - kstatus: `Ready`, `Reconciling`, `Stalled` (Flux `wait`/`dependsOn`, kpt,
//!   `kubectl wait --for=condition=Ready`), derived from the phase and the other conditions
//!   by [`kstatus`], after every change, so they can never disagree.
//!
//! The decider names a [`Situation`]; [`apply`] sets the phase-specific conditions it
//! determines (others keep their last value, which is what they still mean), then the
//! kstatus ones. `lastTransitionTime` moves only when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{condition, truncate, BackfillStatus, Condition, Phase, MAX_MESSAGE_BYTES};
use crate::state::reason;

/// What the run is doing, as far as conditions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Situation<'a> {
    /// The spec does not validate; `problems` names every field.
    InvalidSpec { problems: &'a str },
    /// Not planned, and `spec.suspend` is true.
    SuspendedBeforePlanning,
    /// Planning (again). `keep_error`: the last planning error stays on display.
    Planning { keep_error: bool },
    /// Planning failed and will be retried.
    PlanningError { message: &'a str },
    /// Planning failed for good (config or schema): waits for a spec change.
    PrecheckFailed { message: &'a str },
    /// The plan is stored (`message` says what is in it).
    Planned { message: &'a str, suspended: bool },
    /// Tasks of run `run_id` are running or waiting; `summary` gives the counts.
    Running {
        run_id: &'a str,
        summary: &'a str,
        suspended: bool,
    },
    /// Every task of run `run_id` is final and its result is being committed into Milvus
    /// (`message` says how far); `suspended`: the commit waits for `spec.suspend: false`.
    Committing {
        run_id: &'a str,
        message: &'a str,
        suspended: bool,
    },
    /// The commit of run `run_id` failed (`message` says why and how to commit again); it
    /// waits for a spec change.
    CommitFailed { run_id: &'a str, message: &'a str },
    /// Milvus committed run `run_id`; the lifecycle's steps after the commit (`createIndex`,
    /// `verify`) run (`message` says which); `suspended`: they wait for `spec.suspend: false`.
    Finishing {
        run_id: &'a str,
        message: &'a str,
        suspended: bool,
    },
    /// A step after the commit failed (`message` says which and why); it waits for a spec
    /// change, which runs the steps again. The commit stands.
    StepFailed { run_id: &'a str, message: &'a str },
    /// Every task of run `run_id` is final (and its result committed, if it is to be).
    Finished {
        run_id: &'a str,
        summary: &'a str,
        success: bool,
    },
}

/// Sets the conditions `situation` determines, then the kstatus ones from the phase.
pub fn apply(st: &mut BackfillStatus, situation: Situation<'_>, now: Timestamp, generation: i64) {
    use condition::*;
    let was_invalid = is_true(&st.conditions, FAILED, reason::INVALID_SPEC);
    let planned = get_condition(&st.conditions, PLANNED).is_some_and(|c| c.status == "True");
    let mut set = |t: &str, status: bool, reason: &str, message: &str| {
        set_condition(&mut st.conditions, t, status, reason, message, now, generation)
    };
    // A spec that was invalid is valid now: the failure it caused is over.
    if was_invalid && !matches!(situation, Situation::InvalidSpec { .. }) {
        set(FAILED, false, reason::NOT_FINISHED, "");
    }
    match situation {
        Situation::InvalidSpec { problems } => {
            set(FAILED, true, reason::INVALID_SPEC, problems);
            set(
                PROGRESSING,
                false,
                reason::INVALID_SPEC,
                "fix the spec; nothing new starts until then",
            );
        }
        Situation::SuspendedBeforePlanning => {
            set(SUSPENDED, true, reason::SUSPENDED, SUSPENDED_MESSAGE);
            set(
                PLANNED,
                false,
                reason::SUSPENDED,
                "planning starts when spec.suspend is false",
            );
            set(PROGRESSING, false, reason::SUSPENDED, "");
        }
        Situation::Planning { keep_error } => {
            set(SUSPENDED, false, reason::NOT_SUSPENDED, "");
            if !keep_error {
                set(
                    PLANNED,
                    false,
                    reason::PLANNING,
                    "listing segments and binlogs, checking the source",
                );
            }
            set(PROGRESSING, true, reason::PLANNING, "");
            set(COMPLETE, false, reason::NOT_FINISHED, "");
            set(FAILED, false, reason::NOT_FINISHED, "");
        }
        Situation::PlanningError { message } => set(PLANNED, false, reason::PLANNING_ERROR, message),
        Situation::PrecheckFailed { message } => {
            set(PLANNED, false, reason::PRECHECK_FAILED, message);
            set(FAILED, true, reason::PRECHECK_FAILED, message);
            set(
                PROGRESSING,
                false,
                reason::PRECHECK_FAILED,
                "fix the cause, then change the spec (e.g. toggle suspend) to plan again",
            );
        }
        Situation::Planned { message, suspended } => {
            set(PLANNED, true, reason::PLANNED, message);
            suspension(&mut set, suspended, "");
        }
        run => planned_run(&mut set, planned, run),
    }
    kstatus(st, now, generation);
}

/// The situations of a planned run (`Running`, `Committing`, `CommitFailed`, `Finishing`,
/// `StepFailed`, `Finished`). A
/// status with a run but without Planned=True (edited, or from an older operator) gets it.
fn planned_run(set: &mut impl FnMut(&str, bool, &str, &str), planned: bool, situation: Situation<'_>) {
    use condition::*;
    let run_id = match situation {
        Situation::Running { run_id, .. }
        | Situation::Committing { run_id, .. }
        | Situation::CommitFailed { run_id, .. }
        | Situation::Finishing { run_id, .. }
        | Situation::StepFailed { run_id, .. }
        | Situation::Finished { run_id, .. } => run_id,
        _ => return,
    };
    if !planned {
        set(PLANNED, true, reason::PLANNED, &format!("run {run_id}"));
    }
    match situation {
        Situation::Running { summary, suspended, .. } => suspension(set, suspended, summary),
        Situation::Committing { message, suspended, .. } => {
            // Not finished until Milvus has the result (a failed commit may be retried).
            after_the_run(set, reason::COMMITTING, message, suspended)
        }
        Situation::Finishing { message, suspended, .. } => after_the_run(set, reason::FINISHING, message, suspended),
        Situation::StepFailed { message, .. } => {
            set(PROGRESSING, false, reason::STEP_FAILED, STEPS_AGAIN);
            set(COMPLETE, false, reason::STEP_FAILED, message);
            set(FAILED, true, reason::STEP_FAILED, message);
            set(SUSPENDED, false, reason::NOT_SUSPENDED, "");
        }
        Situation::CommitFailed { message, .. } => {
            set(PROGRESSING, false, reason::COMMIT_FAILED, COMMIT_AGAIN);
            set(COMPLETE, false, reason::COMMIT_FAILED, message);
            set(FAILED, true, reason::COMMIT_FAILED, message);
            set(SUSPENDED, false, reason::NOT_SUSPENDED, "");
        }
        Situation::Finished { summary, success, .. } => {
            let (phase, why) = if success {
                (Phase::Succeeded, reason::SUCCEEDED)
            } else {
                (Phase::Failed, reason::SEGMENTS_FAILED)
            };
            set(PROGRESSING, false, phase.as_str(), summary);
            set(COMPLETE, success, why, summary);
            set(FAILED, !success, why, summary);
            set(SUSPENDED, false, reason::NOT_SUSPENDED, "");
        }
        _ => {}
    }
}

/// Every task is final and something still runs after them (`why`: the commit, or the steps
/// after it): Progressing, or Suspended; neither Complete nor Failed yet.
fn after_the_run(set: &mut impl FnMut(&str, bool, &str, &str), why: &str, message: &str, suspended: bool) {
    use condition::*;
    if suspended {
        set(SUSPENDED, true, reason::SUSPENDED, SUSPENDED_MESSAGE);
        set(PROGRESSING, false, reason::SUSPENDED, message);
    } else {
        set(SUSPENDED, false, reason::NOT_SUSPENDED, "");
        set(PROGRESSING, true, why, message);
    }
    set(COMPLETE, false, reason::NOT_FINISHED, "");
    set(FAILED, false, reason::NOT_FINISHED, "");
}

const STEPS_AGAIN: &str =
    "fix the cause, then change the spec (e.g. spec.lifecycle, or toggle spec.suspend) to run the steps after the commit again";
const SUSPENDED_MESSAGE: &str = "spec.suspend is true: no new Jobs; running Jobs finish";
const COMMIT_AGAIN: &str =
    "fix the cause, then change the spec (e.g. spec.commit.endpoint, or toggle spec.suspend) to commit again";

fn suspension(set: &mut impl FnMut(&str, bool, &str, &str), suspended: bool, progress: &str) {
    if suspended {
        set(condition::SUSPENDED, true, reason::SUSPENDED, SUSPENDED_MESSAGE);
        set(condition::PROGRESSING, false, reason::SUSPENDED, progress);
    } else {
        set(condition::SUSPENDED, false, reason::NOT_SUSPENDED, "");
        set(condition::PROGRESSING, true, reason::RUNNING, progress);
    }
}

/// `Ready`, `Reconciling` and `Stalled` from the phase and the Job-like conditions:
///
/// | phase | Ready | Reconciling | Stalled |
/// |---|---|---|---|
/// | Pending, Planning, Running | False | True (Running, Committing or Finishing) | False |
/// | Suspended | False (Suspended) | False | False |
/// | Succeeded | True | False | False |
/// | Failed | False | False | True (InvalidSpec, PrecheckFailed, SegmentsFailed, CommitFailed or StepFailed) |
pub fn kstatus(st: &mut BackfillStatus, now: Timestamp, generation: i64) {
    let phase = st.phase.unwrap_or_default();
    let message_of = |t: &str| {
        get_condition(&st.conditions, t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let (ready, reconciling, stalled, why, message) = match phase {
        Phase::Pending | Phase::Planning => (false, true, false, phase.as_str(), message_of(condition::PLANNED)),
        Phase::Running => {
            let why = [reason::COMMITTING, reason::FINISHING]
                .into_iter()
                .find(|r| is_true(&st.conditions, condition::PROGRESSING, r))
                .unwrap_or(phase.as_str());
            (false, true, false, why, message_of(condition::PROGRESSING))
        }
        Phase::Suspended => (false, false, false, reason::SUSPENDED, message_of(condition::SUSPENDED)),
        Phase::Succeeded => (true, false, false, reason::SUCCEEDED, message_of(condition::COMPLETE)),
        Phase::Failed => {
            let failed = get_condition(&st.conditions, condition::FAILED);
            let why = match failed.map(|c| c.reason.as_str()) {
                Some(reason::INVALID_SPEC) => reason::INVALID_SPEC,
                Some(reason::PRECHECK_FAILED) => reason::PRECHECK_FAILED,
                Some(reason::COMMIT_FAILED) => reason::COMMIT_FAILED,
                Some(reason::STEP_FAILED) => reason::STEP_FAILED,
                _ => reason::SEGMENTS_FAILED,
            };
            (false, false, true, why, message_of(condition::FAILED))
        }
    };
    let c = &mut st.conditions;
    set_condition(c, condition::READY, ready, why, &message, now, generation);
    let reconciling_message = if reconciling { message.as_str() } else { "" };
    set_condition(
        c,
        condition::RECONCILING,
        reconciling,
        why,
        reconciling_message,
        now,
        generation,
    );
    set_condition(
        c,
        condition::STALLED,
        stalled,
        why,
        if stalled { &message } else { "" },
        now,
        generation,
    );
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
                c.last_transition_time = Time(now);
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
            last_transition_time: Time(now),
            observed_generation: Some(generation),
        }),
    }
    conds.sort_by_key(|c| ORDER.iter().position(|x| *x == c.type_).unwrap_or(usize::MAX));
}

const ORDER: [&str; 8] = [
    condition::READY,
    condition::RECONCILING,
    condition::STALLED,
    condition::PLANNED,
    condition::PROGRESSING,
    condition::SUSPENDED,
    condition::COMPLETE,
    condition::FAILED,
];

pub fn get_condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Whether `type_` is True with `reason`.
pub fn is_true(conds: &[Condition], type_: &str, reason: &str) -> bool {
    get_condition(conds, type_).is_some_and(|c| c.status == "True" && c.reason == reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(phase: Phase, situation: Situation<'_>) -> BackfillStatus {
        let mut st = BackfillStatus {
            phase: Some(phase),
            ..Default::default()
        };
        apply(&mut st, situation, Timestamp::UNIX_EPOCH, 3);
        st
    }

    fn status_of(st: &BackfillStatus, t: &str) -> (String, String) {
        let c = get_condition(&st.conditions, t).unwrap_or_else(|| panic!("no {t} in {:?}", st.conditions));
        (c.status.clone(), c.reason.clone())
    }

    fn kstatus_of(st: &BackfillStatus) -> [(String, String); 3] {
        [condition::READY, condition::RECONCILING, condition::STALLED].map(|t| status_of(st, t))
    }

    fn pair(s: &str, r: &str) -> (String, String) {
        (s.to_owned(), r.to_owned())
    }

    #[test]
    fn kstatus_follows_the_phase() {
        let running = at(
            Phase::Running,
            Situation::Running {
                run_id: "r",
                summary: "1/2",
                suspended: false,
            },
        );
        assert_eq!(
            kstatus_of(&running),
            [
                pair("False", "Running"),
                pair("True", "Running"),
                pair("False", "Running")
            ]
        );
        assert_eq!(
            get_condition(&running.conditions, condition::READY).unwrap().message,
            "1/2"
        );
        let planning = at(Phase::Planning, Situation::Planning { keep_error: false });
        assert_eq!(status_of(&planning, condition::RECONCILING), pair("True", "Planning"));
        let suspended = at(Phase::Suspended, Situation::SuspendedBeforePlanning);
        assert_eq!(
            kstatus_of(&suspended),
            [
                pair("False", "Suspended"),
                pair("False", "Suspended"),
                pair("False", "Suspended")
            ]
        );
        let done = at(
            Phase::Succeeded,
            Situation::Finished {
                run_id: "r",
                summary: "all",
                success: true,
            },
        );
        assert_eq!(kstatus_of(&done)[0], pair("True", "Succeeded"));
        assert_eq!(kstatus_of(&done)[2].0, "False");
    }

    #[test]
    fn a_failure_stalls_with_its_reason() {
        let cases = [
            (Situation::InvalidSpec { problems: "spec.x" }, "InvalidSpec"),
            (Situation::PrecheckFailed { message: "m" }, "PrecheckFailed"),
            (
                Situation::Finished {
                    run_id: "r",
                    summary: "s",
                    success: false,
                },
                "SegmentsFailed",
            ),
        ];
        for (situation, why) in cases {
            let st = at(Phase::Failed, situation);
            assert_eq!(
                kstatus_of(&st),
                [pair("False", why), pair("False", why), pair("True", why)],
                "{situation:?}"
            );
            assert_eq!(status_of(&st, condition::FAILED), pair("True", why));
        }
    }

    #[test]
    fn a_commit_under_way_reconciles_and_a_failed_one_stalls() {
        let committing = at(
            Phase::Running,
            Situation::Committing {
                run_id: "r",
                message: "10 of 10 ...; committing",
                suspended: false,
            },
        );
        assert_eq!(
            kstatus_of(&committing),
            [
                pair("False", "Committing"),
                pair("True", "Committing"),
                pair("False", "Committing")
            ]
        );
        assert_eq!(
            status_of(&committing, condition::COMPLETE),
            pair("False", "NotFinished")
        );
        assert_eq!(status_of(&committing, condition::PLANNED), pair("True", "Planned"));
        let held = at(
            Phase::Suspended,
            Situation::Committing {
                run_id: "r",
                message: "waits",
                suspended: true,
            },
        );
        assert_eq!(status_of(&held, condition::PROGRESSING), pair("False", "Suspended"));
        assert_eq!(kstatus_of(&held)[0], pair("False", "Suspended"));
        let mut failed = committing.clone();
        failed.phase = Some(Phase::Failed);
        apply(
            &mut failed,
            Situation::CommitFailed {
                run_id: "r",
                message: "Milvus left 1 of 10 ...; curl",
            },
            Timestamp::UNIX_EPOCH,
            3,
        );
        assert_eq!(
            kstatus_of(&failed),
            [
                pair("False", "CommitFailed"),
                pair("False", "CommitFailed"),
                pair("True", "CommitFailed")
            ]
        );
        assert_eq!(status_of(&failed, condition::FAILED), pair("True", "CommitFailed"));
        // Committing again (a spec change) clears the failure.
        failed.phase = Some(Phase::Running);
        apply(
            &mut failed,
            Situation::Committing {
                run_id: "r",
                message: "again",
                suspended: false,
            },
            Timestamp::UNIX_EPOCH,
            4,
        );
        assert_eq!(status_of(&failed, condition::FAILED), pair("False", "NotFinished"));
        assert_eq!(kstatus_of(&failed)[2].0, "False");
    }

    #[test]
    fn transitions_move_only_on_a_status_change() {
        let mut st = at(
            Phase::Running,
            Situation::Running {
                run_id: "r",
                summary: "a",
                suspended: false,
            },
        );
        let later = Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(60);
        apply(
            &mut st,
            Situation::Running {
                run_id: "r",
                summary: "b",
                suspended: false,
            },
            later,
            4,
        );
        let ready = get_condition(&st.conditions, condition::READY).unwrap();
        assert_eq!(ready.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        assert_eq!((ready.message.as_str(), ready.observed_generation), ("b", Some(4)));
        st.phase = Some(Phase::Succeeded);
        apply(
            &mut st,
            Situation::Finished {
                run_id: "r",
                summary: "c",
                success: true,
            },
            later,
            4,
        );
        let ready = get_condition(&st.conditions, condition::READY).unwrap();
        assert_eq!(ready.last_transition_time, Time(later));
        let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types[..3], ["Ready", "Reconciling", "Stalled"]);
    }
}
