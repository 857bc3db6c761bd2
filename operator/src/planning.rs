//! Planning as a Job (pure): from what the operator sees of one generation's planning
//! attempts (their Jobs, the answer of the latest), what to do next. The executor carries it
//! out. Retries are the operator's, one Job per attempt, as for task Jobs: a transient failure
//! (an answer that says so, or a Job that ended without one) starts the next attempt after a
//! capped exponential backoff; a permanent one stops planning until the spec changes.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::invocation::RequestJob;
use milvus_backfill_api::planning::PlanAnswer;

use crate::status::JobState;

/// How the operator plans a Backfill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanningMode {
    /// In the operator's process, with the Backfill's Secrets (the operator reads them).
    #[default]
    InProcess,
    /// In a Job that gets the Secrets through `secretKeyRef`; the operator reads none.
    Job,
}

/// The latest planning attempt of a generation: its number, and its Job as the cache shows it
/// (`None`: not seen, either not created yet, not in the cache yet, or gone after its TTL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    pub job_name: String,
    pub job: Option<JobState>,
}

/// A planning failure as status and Events show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanningFailure {
    pub kind: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Store the request of `attempt` and apply its Job (idempotent: the same name and the
    /// same request). `after` is the failure of the attempt before, to report first.
    Start {
        attempt: u32,
        after: Option<PlanningFailure>,
    },
    /// The attempt's Job runs (its watch event wakes the controller), or the next attempt is
    /// due at `retry_at`; `failure` is the last one, to keep on display.
    Wait {
        retry_at: Option<Timestamp>,
        failure: Option<PlanningFailure>,
    },
    /// The plan is stored at `plan_key`.
    Planned { plan_key: String },
    /// Planning cannot succeed with this spec.
    Failed(PlanningFailure),
}

/// Seconds before attempt `next` (from 1): 5, 10, 20, ... capped at 5 minutes.
pub fn retry_delay(next: u32) -> Duration {
    crate::controller::backoff(next)
}

/// What a request Job's stored answer says, as far as its attempts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered<'a> {
    /// The request is answered for good (a plan, or the finishing steps' records).
    Done,
    Failed {
        kind: ErrorKind,
        message: &'a str,
    },
}

/// What to do, given the latest planning attempt (`None`: no attempt yet) and its answer.
pub fn next_step(latest: Option<&Attempt>, answer: Option<&PlanAnswer>, now: Timestamp) -> Step {
    let answered = answer.map(|a| match a {
        PlanAnswer::Planned { .. } => Answered::Done,
        PlanAnswer::Failed { kind, message } => Answered::Failed { kind: *kind, message },
    });
    match next_request_step(RequestJob::Plan, latest, answered, now) {
        Step::Planned { .. } => match answer {
            Some(PlanAnswer::Planned { plan_key, .. }) => Step::Planned {
                plan_key: plan_key.clone(),
            },
            // `Done` comes from a `Planned` answer only.
            _ => Step::Wait {
                retry_at: None,
                failure: None,
            },
        },
        other => other,
    }
}

/// What to do about a request Job (`job`), given its latest attempt and what its answer says.
/// An answer that is [`Answered::Done`] is [`Step::Planned`] with an empty key (the caller
/// reads its answer).
pub fn next_request_step(
    job: RequestJob,
    latest: Option<&Attempt>,
    answer: Option<Answered<'_>>,
    now: Timestamp,
) -> Step {
    let Some(a) = latest else {
        return Step::Start {
            attempt: 0,
            after: None,
        };
    };
    let failure = match (answer, &a.job) {
        (Some(Answered::Done), _) => {
            return Step::Planned {
                plan_key: String::new(),
            }
        }
        (Some(Answered::Failed { kind, message }), _) => {
            let f = PlanningFailure {
                kind: kind.as_str().to_owned(),
                message: message.to_owned(),
            };
            if kind.is_permanent() {
                return Step::Failed(f);
            }
            f
        }
        (None, None) => {
            return Step::Start {
                attempt: a.attempt,
                after: None,
            }
        }
        (None, Some(JobState::Active)) => {
            return Step::Wait {
                retry_at: None,
                failure: None,
            }
        }
        (None, Some(JobState::Succeeded { .. })) => lost(job, a, "ended"),
        (None, Some(JobState::Failed { reason, message, .. })) => lost(
            job,
            a,
            &format!(
                "failed ({})",
                [reason.as_str(), message.as_str()].join(": ").trim_matches([':', ' '])
            ),
        ),
    };
    let next = a.attempt + 1;
    let finished = match &a.job {
        Some(JobState::Succeeded { finished }) | Some(JobState::Failed { finished, .. }) => *finished,
        _ => None,
    };
    let due = finished.map(|t| t + retry_delay(next));
    match due {
        Some(at) if at > now => Step::Wait {
            retry_at: Some(at),
            failure: Some(failure),
        },
        _ => Step::Start {
            attempt: next,
            after: Some(failure),
        },
    }
}

/// A Job that ended without storing an answer: killed, out of memory, no image, no bucket.
fn lost(job: RequestJob, a: &Attempt, how: &str) -> PlanningFailure {
    let (kind, noun) = match job {
        RequestJob::Plan => ("PlanningJobFailed", "planning"),
        RequestJob::Finish => ("FinishingJobFailed", "finishing"),
    };
    PlanningFailure {
        kind: kind.to_owned(),
        message: format!(
            "{noun} Job {} {how} without an answer; see its Pod's log (`kubectl logs job/{}`)",
            a.job_name, a.job_name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn attempt(n: u32, job: Option<JobState>) -> Attempt {
        Attempt {
            attempt: n,
            job_name: format!("bf-plan-1-{n}"),
            job,
        }
    }

    fn failed(kind: ErrorKind) -> PlanAnswer {
        PlanAnswer::Failed {
            kind,
            message: "why".into(),
        }
    }

    #[test]
    fn the_first_attempt_starts_and_a_running_job_is_waited_for() {
        assert_eq!(
            next_step(None, None, t(0)),
            Step::Start {
                attempt: 0,
                after: None
            }
        );
        let running = attempt(0, Some(JobState::Active));
        assert_eq!(
            next_step(Some(&running), None, t(0)),
            Step::Wait {
                retry_at: None,
                failure: None
            }
        );
        // Created but not in the cache yet: applied again (same name, a no-op).
        let unseen = attempt(2, None);
        assert_eq!(
            next_step(Some(&unseen), None, t(0)),
            Step::Start {
                attempt: 2,
                after: None
            }
        );
    }

    #[test]
    fn an_answer_decides_whatever_the_job_shows() {
        let planned = PlanAnswer::Planned {
            plan_key: "files/backfill/1/r/plan.json".into(),
            run_id: "r".into(),
        };
        for job in [
            None,
            Some(JobState::Active),
            Some(JobState::Succeeded { finished: None }),
        ] {
            assert_eq!(
                next_step(Some(&attempt(0, job)), Some(&planned), t(0)),
                Step::Planned {
                    plan_key: "files/backfill/1/r/plan.json".into()
                }
            );
        }
        let permanent = failed(ErrorKind::SchemaValidationError);
        let step = next_step(Some(&attempt(3, None)), Some(&permanent), t(0));
        assert!(matches!(step, Step::Failed(f) if f.kind == "SchemaValidationError" && f.message == "why"));
    }

    #[test]
    fn a_transient_failure_retries_after_a_growing_delay() {
        let done = |at: i64| Some(JobState::Succeeded { finished: Some(t(at)) });
        let answer = failed(ErrorKind::ConnectionError);
        // Attempt 0 ended at 0: attempt 1 is due 5 s later.
        let step = next_step(Some(&attempt(0, done(0))), Some(&answer), t(2));
        assert!(
            matches!(&step, Step::Wait { retry_at: Some(at), failure: Some(f) } if *at == t(5) && f.kind == "ConnectionError")
        );
        let step = next_step(Some(&attempt(0, done(0))), Some(&answer), t(5));
        assert!(matches!(&step, Step::Start { attempt: 1, after: Some(f) } if f.kind == "ConnectionError"));
        // Attempt 2 waits 20 s.
        let step = next_step(Some(&attempt(2, done(0))), Some(&answer), t(19));
        assert!(matches!(step, Step::Wait { retry_at: Some(at), .. } if at == t(20)));
        // The Job is gone (TTL) and its end unknown: the next attempt starts at once.
        let step = next_step(Some(&attempt(2, None)), Some(&answer), t(0));
        assert!(matches!(step, Step::Start { attempt: 3, .. }));
    }

    #[test]
    fn a_job_that_ended_without_an_answer_is_a_transient_failure_naming_the_job() {
        let oom = JobState::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "Job has reached the specified backoff limit".into(),
            finished: Some(t(0)),
        };
        let step = next_step(Some(&attempt(0, Some(oom))), None, t(60));
        let Step::Start {
            attempt: 1,
            after: Some(f),
        } = step
        else {
            panic!("expected the next attempt, got {step:?}")
        };
        assert_eq!(f.kind, "PlanningJobFailed");
        assert!(
            f.message
                .contains("bf-plan-1-0 failed (BackoffLimitExceeded: Job has reached"),
            "{}",
            f.message
        );
        let step = next_step(
            Some(&attempt(1, Some(JobState::Succeeded { finished: None }))),
            None,
            t(0),
        );
        assert!(
            matches!(step, Step::Start { attempt: 2, after: Some(f) } if f.message.contains("ended without an answer"))
        );
    }

    #[test]
    fn a_finishing_job_is_retried_by_the_same_rules_and_named_as_one() {
        let gone = JobState::Failed {
            reason: "DeadlineExceeded".into(),
            message: String::new(),
            finished: Some(t(0)),
        };
        let a = Attempt {
            attempt: 0,
            job_name: "bf-finish-1-0".into(),
            job: Some(gone),
        };
        let step = next_request_step(RequestJob::Finish, Some(&a), None, t(1));
        let Step::Wait {
            retry_at: Some(at),
            failure: Some(f),
        } = step
        else {
            panic!("expected a wait, got {step:?}")
        };
        assert_eq!((at, f.kind.as_str()), (t(5), "FinishingJobFailed"));
        assert!(
            f.message
                .starts_with("finishing Job bf-finish-1-0 failed (DeadlineExceeded)"),
            "{}",
            f.message
        );
        assert!(matches!(
            next_request_step(RequestJob::Finish, Some(&a), Some(Answered::Done), t(1)),
            Step::Planned { .. }
        ));
    }
}
