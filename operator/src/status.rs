//! From stored outcomes and live Jobs to task states, status counters and the result: pure.
//!
//! The bucket is the ledger: a task attempt is finished when its outcome object exists (the
//! worker's, or one the operator records for a Job that died without writing one). Jobs are
//! only "is it running now"; a Job deleted by its TTL loses nothing.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::outcome::SegmentOutcome;
use milvus_backfill_api::outcome::TaskOutcome;
use milvus_backfill_api::outcome::{BackfillResult, FailedSegment, SourceReads};
use milvus_backfill_api::plan::Plan;

use crate::crd::{
    truncate, CommitFailure, CommitStatus, FailedSegmentStatus, RowCounts, SegmentCounts,
    MAX_FAILED_SEGMENTS_IN_STATUS, MAX_MESSAGE_BYTES, MAX_REASON_BYTES,
};
use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::stage::{Role, StageOutput, TaskLayout};

/// Outcomes by `(task index, attempt)`.
pub type Outcomes = BTreeMap<(u32, u32), TaskOutcome>;

/// Kind of the failures the operator records for Jobs that died without an outcome.
pub const JOB_FAILURE_KIND: ErrorKind = ErrorKind::UnexpectedError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Active,
    Succeeded {
        finished: Option<Timestamp>,
    },
    Failed {
        reason: String,
        message: String,
        finished: Option<Timestamp>,
    },
}

/// A live Job of this run, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub name: String,
    pub task: u32,
    pub attempt: u32,
    pub state: JobState,
}

impl JobView {
    pub fn finished_at(&self) -> Option<Timestamp> {
        match &self.state {
            JobState::Active => None,
            JobState::Succeeded { finished } | JobState::Failed { finished, .. } => *finished,
        }
    }
}

/// Stored outcomes plus the ones being recorded in this pass.
#[derive(Clone, Copy)]
pub struct OutcomeView<'a> {
    pub stored: &'a Outcomes,
    pub recorded: &'a Outcomes,
}

impl<'a> OutcomeView<'a> {
    pub fn get(&self, task: u32, attempt: u32) -> Option<&'a TaskOutcome> {
        self.recorded
            .get(&(task, attempt))
            .or_else(|| self.stored.get(&(task, attempt)))
    }
    fn latest_attempt(&self, task: u32) -> Option<u32> {
        let last = |m: &Outcomes| m.range((task, 0)..=(task, u32::MAX)).next_back().map(|((_, a), _)| *a);
        last(self.stored).max(last(self.recorded))
    }
}

/// Where a task is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Needs a Job for `attempt`, not before `not_before` (`None`: now).
    Pending {
        attempt: u32,
        not_before: Option<Timestamp>,
    },
    Running {
        attempt: u32,
    },
    /// A task of a later stage: no Job until every task of the stages before has succeeded.
    Waiting,
    /// The outcome of `attempt` succeeded.
    Succeeded {
        attempt: u32,
    },
    /// Out of attempts, or failed with errors a retry cannot fix; `attempt` was the last.
    Failed {
        attempt: u32,
    },
}

impl TaskState {
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded { .. } | Self::Failed { .. })
    }
}

pub use crate::crd::RetryPolicy;

/// The outcome the operator records for a finished Job that left none.
pub fn synthetic_outcome(plan: &Plan, layout: TaskLayout, job: &JobView) -> TaskOutcome {
    let why = match &job.state {
        JobState::Failed { reason, message, .. } => {
            if message.is_empty() {
                format!("Job {} failed ({reason})", job.name)
            } else {
                format!("Job {} failed ({reason}): {message}", job.name)
            }
        }
        _ => format!("Job {} finished without storing its outcome", job.name),
    };
    failed_outcome(plan, layout, job.task, job.attempt, JOB_FAILURE_KIND, &why)
}

/// A failed attempt of task `task`: each segment it reports fails with `why`; a route or
/// join task fails as a whole.
fn failed_outcome(plan: &Plan, layout: TaskLayout, task: u32, attempt: u32, kind: ErrorKind, why: &str) -> TaskOutcome {
    let stage_failed = match layout.role(plan, task) {
        Role::Route(_) | Role::Join(_) => Some(StageOutput::Failed {
            error: kind,
            reason: truncate(why, MAX_REASON_BYTES),
        }),
        Role::Segments(_) | Role::Write(_) => None,
    };
    TaskOutcome {
        task_id: RunLayout::of_plan(plan).task_id(task),
        attempt,
        success: false,
        segments: vec![],
        failed_segments: layout
            .result_segments(plan, task)
            .iter()
            .map(|s| FailedSegment {
                segment_id: s.segment_id,
                partition_id: s.partition_id,
                kind,
                reason: truncate(why, MAX_REASON_BYTES),
            })
            .collect(),
        used_source_rows: 0,
        execution_time_ms: 0,
        source_reads: Default::default(),
        stage_output: stage_failed,
    }
}

/// Finished Jobs of this run that have no outcome: the operator records one for each,
/// so that the Job may be deleted (TTL, by hand) without losing the attempt.
pub fn missing_outcomes(plan: &Plan, layout: TaskLayout, stored: &Outcomes, jobs: &[JobView]) -> Outcomes {
    let tasks = layout.count(plan);
    jobs.iter()
        .filter(|j| j.task < tasks && j.state != JobState::Active)
        .filter(|j| !stored.contains_key(&(j.task, j.attempt)))
        .map(|j| ((j.task, j.attempt), synthetic_outcome(plan, layout, j)))
        .collect()
}

/// The state of every task of the plan.
pub fn task_states(
    plan: &Plan,
    layout: TaskLayout,
    outcomes: OutcomeView<'_>,
    jobs: &[JobView],
    policy: RetryPolicy,
) -> Vec<TaskState> {
    let tasks = layout.count(plan);
    let mut by_task: BTreeMap<u32, Vec<&JobView>> = BTreeMap::new();
    for j in jobs.iter().filter(|j| j.task < tasks) {
        by_task.entry(j.task).or_default().push(j);
    }
    let mut states = (0..tasks)
        .map(|t| {
            let jobs = by_task.get(&t).map(Vec::as_slice).unwrap_or_default();
            let job_attempt = jobs.iter().map(|j| j.attempt).max();
            let Some(attempt) = job_attempt.max(outcomes.latest_attempt(t)) else {
                return TaskState::Pending {
                    attempt: 0,
                    not_before: None,
                };
            };
            let job = jobs.iter().find(|j| j.attempt == attempt);
            if job.is_some_and(|j| j.state == JobState::Active) {
                return TaskState::Running { attempt };
            }
            match outcomes.get(t, attempt) {
                Some(o) if o.success => TaskState::Succeeded { attempt },
                Some(o) => {
                    let next = attempt + 1;
                    if o.retryable() && policy.allows(next) {
                        TaskState::Pending {
                            attempt: next,
                            not_before: job
                                .and_then(|j| j.finished_at())
                                .map(|at| at + SignedDuration::from_secs(policy.delay_seconds(next) as i64)),
                        }
                    } else {
                        TaskState::Failed { attempt }
                    }
                }
                // No outcome and no finished Job: the Job is gone (or never got created).
                // Run the same attempt again; its name is the same, so this is safe.
                None => TaskState::Pending {
                    attempt,
                    not_before: None,
                },
            }
        })
        .collect::<Vec<_>>();
    gate_stages(plan, layout, &mut states, outcomes);
    states
}

/// A task of a staged run waits until every task of the stages before has succeeded; when one
/// of them failed for good, it fails without running ([`blocked_outcomes`] says why).
fn gate_stages(plan: &Plan, layout: TaskLayout, states: &mut [TaskState], outcomes: OutcomeView<'_>) {
    for stage in 1..=2 {
        let before = 0..layout.stage_tasks(plan, stage).start;
        let earlier = &states[before.start as usize..before.end as usize];
        if earlier.iter().all(|s| matches!(s, TaskState::Succeeded { .. })) {
            continue;
        }
        let failed = earlier.iter().any(|s| matches!(s, TaskState::Failed { .. }));
        for t in layout.stage_tasks(plan, stage) {
            let s = &mut states[t as usize];
            if matches!(s, TaskState::Running { .. } | TaskState::Succeeded { .. }) {
                continue;
            }
            *s = if failed {
                TaskState::Failed {
                    attempt: outcomes.latest_attempt(t).unwrap_or(0),
                }
            } else {
                TaskState::Waiting
            };
        }
    }
}

/// Outcomes for tasks that failed without running because a task of an earlier stage failed
/// for good: each of their segments fails, naming that task.
pub fn blocked_outcomes(plan: &Plan, layout: TaskLayout, states: &[TaskState], outcomes: OutcomeView<'_>) -> Outcomes {
    let first_failed = states
        .iter()
        .enumerate()
        .find(|(_, s)| matches!(s, TaskState::Failed { .. }))
        .map(|(t, s)| (t as u32, s.clone()));
    let Some((culprit, TaskState::Failed { attempt })) = first_failed else {
        return Outcomes::new();
    };
    let why = outcomes
        .get(culprit, attempt)
        .map(failure_reason)
        .unwrap_or_else(|| "no outcome".to_owned());
    let role = layout.role(plan, culprit);
    let why = format!("not run: {} task {culprit} failed: {why}", role.name());
    states
        .iter()
        .enumerate()
        .filter_map(|(t, s)| match s {
            TaskState::Failed { attempt } if layout.role(plan, t as u32).stage() > role.stage() => {
                let (t, a) = (t as u32, *attempt);
                (outcomes.get(t, a).is_none()).then(|| {
                    (
                        (t, a),
                        failed_outcome(plan, layout, t, a, ErrorKind::SegmentProcessingError, &why),
                    )
                })
            }
            _ => None,
        })
        .collect()
}

/// Why a failed attempt failed, in a line.
fn failure_reason(o: &TaskOutcome) -> String {
    match (&o.stage_output, o.failed_segments.first()) {
        (Some(StageOutput::Failed { error, reason }), _) => format!("{error}: {reason}"),
        (_, Some(f)) => format!("segment {}: {}: {}", f.segment_id, f.kind, f.reason),
        _ => "failed".to_owned(),
    }
}

/// Status counters and the first failed segments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub segments: SegmentCounts,
    pub rows: RowCounts,
    pub failed_segments: Vec<FailedSegmentStatus>,
    pub running_tasks: u32,
    pub done: bool,
}

pub fn aggregate(plan: &Plan, layout: TaskLayout, states: &[TaskState], outcomes: OutcomeView<'_>) -> Aggregate {
    let mut a = Aggregate {
        done: states.iter().all(TaskState::is_final),
        ..Default::default()
    };
    a.segments.total = (plan.segments.len() + plan.failed.len()) as u64;
    a.rows.total = plan.segments.iter().map(|s| s.num_rows).sum();
    let push_failed = |list: &mut Vec<FailedSegmentStatus>, segment_id, attempts, reason: String| {
        if list.len() < MAX_FAILED_SEGMENTS_IN_STATUS {
            list.push(FailedSegmentStatus {
                segment_id,
                attempts,
                reason: truncate(&reason, MAX_REASON_BYTES),
            });
        }
    };
    for f in &plan.failed {
        a.segments.failed += 1;
        push_failed(
            &mut a.failed_segments,
            f.segment_id,
            0,
            format!("SegmentProcessingError: {}", f.reason),
        );
    }
    for (t, state) in states.iter().enumerate() {
        let n = layout.result_segments(plan, t as u32).len() as u64;
        match state {
            TaskState::Pending { .. } | TaskState::Waiting => a.segments.pending += n,
            TaskState::Running { .. } => {
                a.segments.running += n;
                a.running_tasks += 1;
            }
            TaskState::Succeeded { attempt } | TaskState::Failed { attempt } => {
                let o = outcomes.get(t as u32, *attempt);
                let ok = o.map(|o| o.segments.as_slice()).unwrap_or_default();
                a.segments.succeeded += ok.len() as u64;
                a.segments.failed += n - ok.len() as u64;
                a.rows.written += ok.iter().map(|s| s.row_count).sum::<u64>();
                a.rows.matched += ok.iter().map(|s| s.matched_row_count).sum::<u64>();
                for f in o.map(|o| o.failed_segments.as_slice()).unwrap_or_default() {
                    push_failed(
                        &mut a.failed_segments,
                        f.segment_id,
                        attempt + 1,
                        format!("{}: {}", f.kind, f.reason),
                    );
                }
            }
        }
    }
    a
}

/// The result JSON of a finished run, the engine's contract. Source rows used by several
/// tasks are counted once per task (the operator never sees row indices), so
/// `unmatchedBackfillRows` is a lower bound when keys repeat across tasks.
pub fn build_result(
    plan: &Plan,
    layout: TaskLayout,
    states: &[TaskState],
    outcomes: OutcomeView<'_>,
    execution_time_ms: u64,
) -> BackfillResult {
    let mut ok: Vec<SegmentOutcome> = Vec::new();
    let mut failed: Vec<FailedSegment> = Vec::new();
    let mut used = 0u64;
    let mut reads = SourceReads::default();
    for (t, state) in states.iter().enumerate() {
        if let TaskState::Succeeded { attempt } | TaskState::Failed { attempt } = state {
            if let Some(o) = outcomes.get(t as u32, *attempt) {
                ok.extend(o.segments.iter().cloned());
                failed.extend(o.failed_segments.iter().cloned());
                used = used.saturating_add(o.used_source_rows);
                reads = reads.plus(o.source_reads);
            }
        }
    }
    // The route tasks read one slice each: together, the source once.
    let routed = layout
        .stage_tasks(plan, 0)
        .any(|t| layout.partitions.is_some() && matches!(states.get(t as usize), Some(TaskState::Succeeded { .. })));
    if routed {
        reads.source_passes = 1;
    }
    let mut result = BackfillResult::build(plan, ok, failed, used.min(plan.source_rows), execution_time_ms);
    result.source_reads = reads;
    result
}

/// `done/total` for `kubectl get`.
pub fn progress(c: &SegmentCounts) -> String {
    format!("{}/{}", c.succeeded, c.total)
}

/// Whether a finished run's result goes to Milvus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commitability<'a> {
    /// No `spec.commit.endpoint`: the result stays in the bucket (commit it by hand).
    NoEndpoint,
    /// A successful result with StorageV2/V3 segment entries: commit it at `endpoint`.
    Commit { endpoint: &'a str },
    /// An endpoint is set, but no Milvus can commit this result; the text says why.
    NotCommittable(String),
}

/// An entry Milvus' result decoder commits (as `milvus-backfill run` judges it): V3 `ops`, V2
/// `column_groups`, or a manifest `version`; StorageV1 export entries have none.
fn committable_entry(s: &SegmentOutcome) -> bool {
    !s.ops.is_empty() || !s.column_groups.is_empty() || s.version.is_some()
}

/// Whether `result` can be committed at `endpoint` (`spec.commit.endpoint`).
pub fn commitability<'a>(endpoint: Option<&'a str>, result: &BackfillResult) -> Commitability<'a> {
    let Some(endpoint) = endpoint else {
        return Commitability::NoEndpoint;
    };
    let why = if !result.success {
        format!(
            "not committed: {} segment(s) failed, and Milvus refuses a result with success=false",
            result.failed_segments.len()
        )
    } else if result.segments.is_empty() {
        "not committed: the result has no segments".to_owned()
    } else if !result.segments.values().any(committable_entry) {
        "not committed: the outputs are the export layout of StorageV1 segments, which no Milvus can \
         commit; spec.commit.endpoint only applies to StorageV2 and StorageV3 segments"
            .to_owned()
    } else {
        return Commitability::Commit { endpoint };
    };
    Commitability::NotCommittable(why)
}

/// What one commit attempt got, as the executor hands it over (the facade's answer, in the
/// operator's terms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitAnswer {
    /// Milvus answered. `segments`: segment ID to `committed` or its reason (`kind: reason`);
    /// `result_paths`: the result objects handed over; `success`: every segment committed.
    Answered {
        result_paths: Vec<String>,
        segments: BTreeMap<String, String>,
        success: bool,
    },
    /// No usable answer: unreachable, refused as a whole, or no commit at that endpoint.
    Error { kind: ErrorKind, message: String },
}

/// What a commit attempt means for the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitVerdict {
    /// Every segment is committed.
    Committed,
    /// Milvus left segments uncommitted or refused the result: retried a bounded number of times.
    Rejected,
    /// No answer (connection, storage): retried until Milvus answers.
    Unreachable,
    /// Another attempt cannot help (not a URL, no commit at that endpoint): fails now.
    Refused,
}

/// The value Milvus' per-segment status has for a committed segment.
pub const COMMITTED: &str = "committed";

/// Records `answer` in `c` (counters, the first failed segments, the result objects, the
/// message); `segments` is the number of segments in the result.
pub fn record_commit(c: &mut CommitStatus, answer: &CommitAnswer, segments: usize) -> CommitVerdict {
    let (result_paths, by_segment, success) = match answer {
        CommitAnswer::Error { kind, message } => {
            c.message = truncate(&format!("{kind}: {message}"), MAX_MESSAGE_BYTES);
            return if kind.is_permanent() {
                CommitVerdict::Refused
            } else if *kind == ErrorKind::SegmentProcessingError {
                c.rejections += 1;
                CommitVerdict::Rejected
            } else {
                CommitVerdict::Unreachable
            };
        }
        CommitAnswer::Answered {
            result_paths,
            segments,
            success,
        } => (result_paths, segments, *success),
    };
    let failed: Vec<(&String, &String)> = by_segment.iter().filter(|(_, v)| v.as_str() != COMMITTED).collect();
    let committed = by_segment.len() - failed.len();
    // An answer without per-segment statuses (an early server) that reports no failure.
    c.committed_segments = if success && by_segment.is_empty() {
        segments
    } else {
        committed
    } as u64;
    c.result_paths = result_paths.iter().take(8).cloned().collect();
    c.failed_segments = failed
        .iter()
        .take(MAX_FAILED_SEGMENTS_IN_STATUS)
        .map(|(id, why)| CommitFailure {
            segment_id: id.parse().unwrap_or_default(),
            reason: truncate(why, MAX_REASON_BYTES),
        })
        .collect();
    if success && failed.is_empty() {
        c.message.clear();
        return CommitVerdict::Committed;
    }
    c.rejections += 1;
    let message = match failed.first() {
        Some((id, why)) => format!(
            "Milvus left {} of {segments} segment(s) uncommitted (e.g. segment {id}: {why})",
            failed.len()
        ),
        None => format!(
            "Milvus reported uncommitted segments without naming them ({committed} of {segments} named committed)"
        ),
    };
    c.message = truncate(&message, MAX_MESSAGE_BYTES);
    CommitVerdict::Rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackfillStatus, Condition, Phase};
    use crate::testutil::{failed_outcome, ok_outcome, plan_with, v3, Rng};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use milvus_backfill_api::layout::TaskSplit;
    use milvus_backfill_api::stage::MAX_PARTITIONS;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff_seconds: 10,
    };
    const NONE: &Outcomes = &Outcomes::new();

    fn view(o: &Outcomes) -> OutcomeView<'_> {
        OutcomeView {
            stored: o,
            recorded: NONE,
        }
    }

    fn job(task: u32, attempt: u32, state: JobState) -> JobView {
        JobView {
            name: format!("j-{task}-{attempt}"),
            task,
            attempt,
            state,
        }
    }

    fn failed_job(task: u32, attempt: u32, at: Timestamp) -> JobView {
        job(
            task,
            attempt,
            JobState::Failed {
                reason: "DeadlineExceeded".into(),
                message: "too slow".into(),
                finished: Some(at),
            },
        )
    }

    #[test]
    fn a_fresh_plan_is_all_pending() {
        let p = plan_with(5, 0);
        let s = task_states(&p, TaskLayout::direct(TaskSplit::new(2)), view(NONE), &[], POLICY);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|t| *t
            == TaskState::Pending {
                attempt: 0,
                not_before: None
            }));
    }

    #[test]
    fn outcomes_and_jobs_decide_each_task() {
        let p = plan_with(6, 0);
        let t0: Timestamp = "2026-11-27T03:00:00Z".parse().unwrap();
        let mut o = Outcomes::new();
        o.insert((0, 0), ok_outcome(&p, 1, 0, 0, 10));
        o.insert((1, 0), failed_outcome(&p, 1, 1, 0, ErrorKind::DataReadError));
        o.insert((2, 0), failed_outcome(&p, 1, 2, 0, ErrorKind::SchemaValidationError));
        o.insert((3, 0), failed_outcome(&p, 1, 3, 0, ErrorKind::WriteError));
        o.insert((3, 1), failed_outcome(&p, 1, 3, 1, ErrorKind::WriteError));
        o.insert((3, 2), failed_outcome(&p, 1, 3, 2, ErrorKind::WriteError));
        let jobs = vec![
            failed_job(1, 0, t0),
            job(4, 0, JobState::Active),
            // Task 5: attempt 0's Job vanished with no outcome.
        ];
        let s = task_states(&p, TaskLayout::direct(TaskSplit::new(1)), view(&o), &jobs, POLICY);
        assert_eq!(s[0], TaskState::Succeeded { attempt: 0 });
        assert_eq!(
            s[1],
            TaskState::Pending {
                attempt: 1,
                not_before: Some(t0 + SignedDuration::from_secs(10))
            }
        );
        assert_eq!(s[2], TaskState::Failed { attempt: 0 }, "schema errors are not retried");
        assert_eq!(s[3], TaskState::Failed { attempt: 2 }, "out of attempts");
        assert_eq!(s[4], TaskState::Running { attempt: 0 });
        assert_eq!(
            s[5],
            TaskState::Pending {
                attempt: 0,
                not_before: None
            }
        );
        let a = aggregate(&p, TaskLayout::direct(TaskSplit::new(1)), &s, view(&o));
        assert_eq!(
            a.segments,
            SegmentCounts {
                total: 6,
                pending: 2,
                running: 1,
                succeeded: 1,
                failed: 2
            }
        );
        assert_eq!(
            a.rows,
            RowCounts {
                total: 600,
                written: 100,
                matched: 10
            }
        );
        assert_eq!(a.failed_segments.len(), 2);
        assert_eq!(a.failed_segments[0].segment_id, 1002);
        assert_eq!(a.failed_segments[0].attempts, 1);
        assert!(a.failed_segments[0].reason.starts_with("SchemaValidationError: "));
        assert_eq!(a.failed_segments[1].attempts, 3);
        assert!(!a.done);
    }

    #[test]
    fn a_dead_job_gets_a_recorded_outcome_and_a_retry() {
        let p = plan_with(3, 0);
        let t0: Timestamp = "2026-11-27T03:00:00Z".parse().unwrap();
        let jobs = vec![
            failed_job(0, 0, t0),
            job(1, 0, JobState::Succeeded { finished: Some(t0) }),
            job(2, 0, JobState::Active),
            job(99, 0, JobState::Succeeded { finished: None }), // not a task of this plan
        ];
        let mut stored = Outcomes::new();
        stored.insert((1, 0), ok_outcome(&p, 1, 1, 0, 1));
        let rec = missing_outcomes(&p, TaskLayout::direct(TaskSplit::new(1)), &stored, &jobs);
        assert_eq!(rec.keys().copied().collect::<Vec<_>>(), vec![(0, 0)]);
        let o = &rec[&(0, 0)];
        assert!(!o.success && o.retryable());
        assert_eq!(o.failed_segments[0].segment_id, 1000);
        assert!(o.failed_segments[0].reason.contains("DeadlineExceeded"));
        assert!(o.failed_segments[0].reason.contains("too slow"));
        let v = OutcomeView {
            stored: &stored,
            recorded: &rec,
        };
        let s = task_states(&p, TaskLayout::direct(TaskSplit::new(1)), v, &jobs, POLICY);
        assert!(matches!(s[0], TaskState::Pending { attempt: 1, .. }));
        assert_eq!(s[1], TaskState::Succeeded { attempt: 0 });
        // A completed Job whose outcome is missing is a failed attempt too.
        let rec = missing_outcomes(&p, TaskLayout::direct(TaskSplit::new(1)), &Outcomes::new(), &jobs[1..2]);
        assert!(rec[&(1, 0)].failed_segments[0]
            .reason
            .contains("without storing its outcome"));
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let d: Vec<i64> = (1..=12).map(|a| POLICY.delay_seconds(a) as i64).collect();
        assert_eq!(&d[..4], &[10, 20, 40, 80]);
        assert_eq!(*d.last().unwrap(), 3600);
        assert_eq!(POLICY.delay_seconds(0), 0);
        assert_eq!(
            RetryPolicy {
                max_attempts: 1,
                backoff_seconds: 0
            }
            .delay_seconds(5),
            0
        );
    }

    #[test]
    fn multi_segment_tasks_count_partial_success() {
        let p = plan_with(5, 1);
        let mut o = Outcomes::new();
        // Task 0 (segments 1000, 1001): 1000 ok, 1001 failed with a permanent error.
        let mut mixed = ok_outcome(&p, 2, 0, 0, 50);
        let bad = mixed.segments.pop().unwrap();
        mixed.success = false;
        mixed.failed_segments = vec![FailedSegment {
            segment_id: bad.segment_id,
            partition_id: bad.partition_id,
            kind: ErrorKind::SchemaValidationError,
            reason: "type".into(),
        }];
        o.insert((0, 0), mixed);
        o.insert((1, 0), ok_outcome(&p, 2, 1, 0, 100));
        o.insert((2, 0), ok_outcome(&p, 2, 2, 0, 100));
        let s = task_states(&p, TaskLayout::direct(TaskSplit::new(2)), view(&o), &[], POLICY);
        assert_eq!(s[0], TaskState::Failed { attempt: 0 });
        let a = aggregate(&p, TaskLayout::direct(TaskSplit::new(2)), &s, view(&o));
        assert!(a.done);
        assert_eq!(
            a.segments,
            SegmentCounts {
                total: 6,
                pending: 0,
                running: 0,
                succeeded: 4,
                failed: 2
            }
        );
        assert_eq!(a.failed_segments[0].segment_id, 9000, "planning failures first");
        assert_eq!(a.failed_segments[0].attempts, 0);
        let r = build_result(&p, TaskLayout::direct(TaskSplit::new(1)), &s, view(&o), 1234);
        assert!(!r.success);
        assert_eq!(r.segments_processed, 4);
        assert_eq!(r.total_rows_written, 400);
        assert_eq!(r.total_matched_rows, 350);
        assert_eq!(r.execution_time_ms, 1234);
        let failed: Vec<i64> = r.failed_segments.iter().map(|f| f.segment_id).collect();
        assert_eq!(failed, vec![1001, 9000]);
        assert_eq!(r.new_field_names, vec!["score", "label"]);
        assert_eq!(r.run_id, p.run_id);
    }

    /// Property-style: random histories of outcomes and Jobs; the counters always add up, a
    /// task is final exactly when it should be, and nothing is retried past maxAttempts.
    #[test]
    fn counters_add_up_on_random_histories() {
        let mut rng = Rng::new(2026);
        let t0: Timestamp = "2026-11-27T03:00:00Z".parse().unwrap();
        for case in 0..400 {
            let n = rng.below(40) as usize;
            let p = plan_with(n, rng.below(3) as usize);
            let spj = 1 + rng.below(4) as u32;
            let policy = RetryPolicy {
                max_attempts: 1 + rng.below(4) as u32,
                backoff_seconds: rng.below(30) as u32,
            };
            let tasks = TaskLayout::direct(TaskSplit::new(spj)).count(&p);
            let mut o = Outcomes::new();
            let mut jobs = Vec::new();
            for t in 0..tasks {
                let attempts = rng.below(u64::from(policy.max_attempts) + 1) as u32;
                for a in 0..attempts {
                    let last = a + 1 == attempts;
                    match rng.below(5) {
                        0 => {
                            o.insert((t, a), ok_outcome(&p, spj, t, a, rng.below(100)));
                        }
                        1 => {
                            o.insert((t, a), failed_outcome(&p, spj, t, a, ErrorKind::SchemaValidationError));
                        }
                        2 => {
                            o.insert((t, a), failed_outcome(&p, spj, t, a, ErrorKind::DataReadError));
                        }
                        3 if last => jobs.push(job(t, a, JobState::Active)),
                        _ => jobs.push(failed_job(t, a, t0)),
                    }
                    if rng.chance(30) && !jobs.iter().any(|j| j.task == t && j.attempt == a) {
                        jobs.push(job(t, a, JobState::Succeeded { finished: Some(t0) }));
                    }
                    if o.get(&(t, a)).is_some_and(|x| x.success) {
                        break;
                    }
                }
            }
            let rec = missing_outcomes(&p, TaskLayout::direct(TaskSplit::new(spj)), &o, &jobs);
            for k in rec.keys() {
                assert!(!o.contains_key(k));
            }
            let v = OutcomeView {
                stored: &o,
                recorded: &rec,
            };
            let s = task_states(&p, TaskLayout::direct(TaskSplit::new(spj)), v, &jobs, policy);
            assert_eq!(s.len() as u32, tasks);
            for (t, st) in s.iter().enumerate() {
                match st {
                    TaskState::Pending { attempt, .. } => assert!(*attempt < policy.max_attempts, "case {case}"),
                    TaskState::Running { attempt } => assert!(jobs
                        .iter()
                        .any(|j| j.task == t as u32 && j.attempt == *attempt && j.state == JobState::Active)),
                    TaskState::Succeeded { attempt } => assert!(v.get(t as u32, *attempt).unwrap().success),
                    TaskState::Failed { attempt } => {
                        let last = v.get(t as u32, *attempt).unwrap();
                        assert!(!last.success);
                        assert!(!last.retryable() || attempt + 1 >= policy.max_attempts, "case {case}");
                    }
                    TaskState::Waiting => panic!("case {case}: a run that is not staged never waits"),
                }
            }
            let a = aggregate(&p, TaskLayout::direct(TaskSplit::new(spj)), &s, v);
            let c = &a.segments;
            assert_eq!(c.pending + c.running + c.succeeded + c.failed, c.total, "case {case}");
            assert_eq!(c.total as usize, n + p.failed.len());
            assert!(a.failed_segments.len() <= MAX_FAILED_SEGMENTS_IN_STATUS);
            assert_eq!(a.done, s.iter().all(TaskState::is_final));
            assert!(a.rows.matched <= a.rows.written && a.rows.written <= a.rows.total);
            if a.done {
                let r = build_result(&p, TaskLayout::direct(TaskSplit::new(1)), &s, v, 1);
                assert_eq!(r.segments_processed as u64, c.succeeded);
                assert_eq!(r.failed_segments.len() as u64, c.failed);
                assert_eq!(r.success, c.failed == 0);
                assert_eq!(r.total_rows_written, a.rows.written);
            }
        }
    }

    /// The status of a run of 100,000 segments, all failed with long messages, stays far
    /// below 100 KB (etcd's limit is 1.5 MB per object, shared with the spec).
    #[test]
    fn status_stays_small_at_100k_segments() {
        let n = 100_000;
        let p = plan_with(n, 0);
        let mut o = Outcomes::new();
        for t in 0..n as u32 {
            let mut f = failed_outcome(&p, 1, t, 2, ErrorKind::DataReadError);
            f.failed_segments[0].reason = "x".repeat(10_000);
            o.insert((t, 2), f);
        }
        let s = task_states(&p, TaskLayout::direct(TaskSplit::new(1)), view(&o), &[], POLICY);
        let a = aggregate(&p, TaskLayout::direct(TaskSplit::new(1)), &s, view(&o));
        assert_eq!(a.segments.failed, n as u64);
        let now = Time("2026-11-27T03:00:00Z".parse().unwrap());
        let cond = |t: &str| Condition {
            type_: t.into(),
            status: "True".into(),
            reason: "SegmentsFailed".into(),
            message: "m".repeat(crate::crd::MAX_MESSAGE_BYTES),
            last_transition_time: now.clone(),
            observed_generation: Some(1),
        };
        let status = BackfillStatus {
            phase: Some(Phase::Failed),
            conditions: ["Planned", "Progressing", "Complete", "Failed", "Suspended"]
                .iter()
                .map(|t| cond(t))
                .collect(),
            observed_generation: Some(1),
            run_id: Some(p.run_id.clone()),
            collection_id: Some(p.collection_id),
            new_field_names: p.new_fields.iter().map(|f| f.name.clone()).collect(),
            segments_per_job: Some(1),
            tasks: Some(n as u32),
            exchange_partitions: Some(MAX_PARTITIONS as u32),
            stage: Some("Write".into()),
            progress: Some(progress(&a.segments)),
            segments: Some(a.segments.clone()),
            rows: Some(a.rows.clone()),
            start_time: Some(now.clone()),
            completion_time: Some(now),
            execution_time_ms: Some(123_456_789),
            plan_path: Some(format!(
                "s3://milvus-bucket/{}",
                RunLayout::new("files", 1, &p.run_id).plan_key()
            )),
            result_path: Some("s3://milvus-bucket/files/backfill/1/r/result.json".into()),
            failed_segments: a.failed_segments,
            commit: Some(worst_commit(n)),
            lifecycle: vec![
                milvus_backfill_api::lifecycle::StepRecord::new(
                    milvus_backfill_api::lifecycle::Step::AddFields,
                    milvus_backfill_api::lifecycle::StepState::Done,
                    "x".repeat(512),
                );
                8
            ],
        };
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert!(bytes < 100_000, "{bytes} bytes");
        assert!(bytes < 70_000, "{bytes} bytes: more than expected");
        assert_eq!(status.failed_segments.len(), MAX_FAILED_SEGMENTS_IN_STATUS);
    }

    /// The largest commit record: `n` segments, every one left uncommitted with a long reason,
    /// many result objects.
    fn worst_commit(n: usize) -> CommitStatus {
        let segments: BTreeMap<String, String> = (0..n).map(|i| (i.to_string(), "r".repeat(10_000))).collect();
        let answer = CommitAnswer::Answered {
            result_paths: (0..100)
                .map(|i| format!("s3://b/{}/result-retry-{i}.json", "p".repeat(200)))
                .collect(),
            segments,
            success: false,
        };
        let mut c = CommitStatus::default();
        assert_eq!(record_commit(&mut c, &answer, n), CommitVerdict::Rejected);
        assert_eq!(c.failed_segments.len(), MAX_FAILED_SEGMENTS_IN_STATUS);
        assert!(c.failed_segments.iter().all(|f| f.reason.len() <= MAX_REASON_BYTES));
        assert_eq!(c.result_paths.len(), 8);
        assert!(c.message.len() <= MAX_MESSAGE_BYTES);
        c
    }

    fn answered(segments: &[(&str, &str)], success: bool) -> CommitAnswer {
        CommitAnswer::Answered {
            result_paths: vec!["s3://b/result.json".into()],
            segments: segments.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            success,
        }
    }

    #[test]
    fn commit_answers_are_recorded_and_judged() {
        let mut c = CommitStatus::default();
        let ok = answered(&[("5", COMMITTED), ("6", COMMITTED)], true);
        assert_eq!(record_commit(&mut c, &ok, 2), CommitVerdict::Committed);
        assert_eq!((c.committed_segments, c.rejections, c.message.as_str()), (2, 0, ""));
        // An early server answers 200 without per-segment statuses: every segment counts.
        let mut c = CommitStatus::default();
        assert_eq!(record_commit(&mut c, &answered(&[], true), 7), CommitVerdict::Committed);
        assert_eq!(c.committed_segments, 7);
        // Segments left: a rejection, naming one.
        let mut c = CommitStatus::default();
        let left = answered(&[("5", COMMITTED), ("6", "v3: segment is not Flushed")], false);
        assert_eq!(record_commit(&mut c, &left, 2), CommitVerdict::Rejected);
        assert_eq!((c.committed_segments, c.rejections), (1, 1));
        assert_eq!(
            c.message,
            "Milvus left 1 of 2 segment(s) uncommitted (e.g. segment 6: v3: segment is not Flushed)"
        );
        assert_eq!(c.failed_segments[0].segment_id, 6);
        // Failures without names are still a rejection.
        let mut c = CommitStatus::default();
        assert_eq!(
            record_commit(&mut c, &answered(&[("5", COMMITTED)], false), 2),
            CommitVerdict::Rejected
        );
        assert!(c.message.contains("without naming them"), "{}", c.message);
        // Errors: what another attempt can fix decides.
        let err = |kind| CommitAnswer::Error {
            kind,
            message: "m".into(),
        };
        let mut c = CommitStatus {
            committed_segments: 1,
            ..Default::default()
        };
        assert_eq!(
            record_commit(&mut c, &err(ErrorKind::ConnectionError), 2),
            CommitVerdict::Unreachable
        );
        assert_eq!(
            (c.rejections, c.committed_segments),
            (0, 1),
            "the last answer's counts stay"
        );
        assert_eq!(c.message, "ConnectionError: m");
        assert_eq!(
            record_commit(&mut c, &err(ErrorKind::WriteError), 2),
            CommitVerdict::Unreachable
        );
        assert_eq!(
            record_commit(&mut c, &err(ErrorKind::SegmentProcessingError), 2),
            CommitVerdict::Rejected
        );
        assert_eq!(c.rejections, 1);
        assert_eq!(
            record_commit(&mut c, &err(ErrorKind::ConfigError), 2),
            CommitVerdict::Refused
        );
    }

    #[test]
    fn only_successful_v2_and_v3_results_are_committable() {
        let p = plan_with(2, 0);
        let ok: Vec<SegmentOutcome> = (0..2).flat_map(|t| ok_outcome(&p, 1, t, 0, 1).segments).collect();
        let v1 = BackfillResult::build(&p, ok.clone(), vec![], 2, 1);
        let v3s: Vec<SegmentOutcome> = (0..2).flat_map(|t| v3(ok_outcome(&p, 1, t, 0, 1)).segments).collect();
        let good = BackfillResult::build(&p, v3s.clone(), vec![], 2, 1);
        let e = Some("http://p:9091");
        assert_eq!(commitability(None, &good), Commitability::NoEndpoint);
        assert_eq!(
            commitability(e, &good),
            Commitability::Commit {
                endpoint: "http://p:9091"
            }
        );
        let not = |r: &BackfillResult| match commitability(e, r) {
            Commitability::NotCommittable(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(not(&v1).contains("StorageV1"));
        // Entries with a manifest version (StorageV2: -1) are Milvus' to judge.
        let mut versioned = v1.clone();
        for s in versioned.segments.values_mut() {
            s.storage_version = Some(2);
            s.version = Some(-1);
        }
        assert_eq!(
            commitability(e, &versioned),
            Commitability::Commit {
                endpoint: "http://p:9091"
            }
        );
        let empty = BackfillResult::build(&plan_with(0, 0), vec![], vec![], 0, 1);
        assert!(not(&empty).contains("no segments"));
        let failed = BackfillResult::build(&plan_with(2, 1), v3s, vec![], 2, 1);
        assert!(not(&failed).contains("1 segment(s) failed"));
    }
}
