//! The layout of a run in the storage bucket, and how a plan splits into tasks. Pure.
//!
//! Everything lives under the run prefix `{rootPath}/backfill/{collectionId}/{runId}/`:
//!
//! | key | written by | what |
//! |---|---|---|
//! | `plan.json` | operator, once, before any Job | the engine's [`Plan`] |
//! | `tasks/{taskId}.json` | operator, before attempt 0's Job | the [`Task`] a Job runs |
//! | `tasks/{taskId}-{attempt}.json` | operator, before a retry's Job | the same task, `attempt` set |
//! | `outcomes/{taskId}-{attempt}.json` | the worker ([`Task::outcome_key`]), or the operator when a Job died without one | [`TaskOutcome`](milvus_backfill::runner::TaskOutcome) |
//! | `result.json` | operator, at the end | [`BackfillResult`](milvus_backfill::result::BackfillResult) |
//!
//! `taskId` is `{runId}-{index}` as in [`Plan::tasks`]: task `index` holds the segments
//! `[index * segmentsPerJob, (index + 1) * segmentsPerJob)` of `plan.segments`.

use milvus_backfill::plan::{self, Plan, SegmentPlan, Task, TaskPlan};

pub fn run_prefix(p: &Plan) -> String {
    plan::run_prefix(&p.root_path, p.collection_id, &p.run_id)
}

pub fn plan_key(root_path: &str, collection_id: i64, run_id: &str) -> String {
    format!("{}/plan.json", plan::run_prefix(root_path, collection_id, run_id))
}

pub fn task_id(run_id: &str, index: u32) -> String {
    format!("{run_id}-{index}")
}

/// Number of tasks the plan splits into.
pub fn task_count(p: &Plan, segments_per_job: u32) -> u32 {
    p.segments.len().div_ceil(segments_per_job.max(1) as usize) as u32
}

/// The segments of task `index` (empty past the end).
pub fn task_segments(p: &Plan, segments_per_job: u32, index: u32) -> &[SegmentPlan] {
    let spj = segments_per_job.max(1) as usize;
    let start = (index as usize).saturating_mul(spj).min(p.segments.len());
    let end = start.saturating_add(spj).min(p.segments.len());
    &p.segments[start..end]
}

/// The task a Job runs for `attempt` of task `index`.
pub fn make_task(p: &Plan, segments_per_job: u32, index: u32, attempt: u32) -> Task {
    Task {
        task_id: task_id(&p.run_id, index),
        attempt,
        plan: TaskPlan::from_plan(p),
        segments: task_segments(p, segments_per_job, index).to_vec(),
    }
}

/// Where the operator stores the task of one attempt. Attempt 0 is [`Task::task_key`]; a
/// retry gets its own object, because the worker takes the attempt number from the task
/// (it names part files and the outcome by it).
pub fn task_object_key(run_prefix: &str, task_id: &str, attempt: u32) -> String {
    if attempt == 0 {
        format!("{run_prefix}/tasks/{task_id}.json")
    } else {
        format!("{run_prefix}/tasks/{task_id}-{attempt}.json")
    }
}

/// Where the outcome of one attempt is stored ([`Task::outcome_key`]).
pub fn outcome_key(run_prefix: &str, task_id: &str, attempt: u32) -> String {
    format!("{run_prefix}/outcomes/{task_id}-{attempt}.json")
}

pub fn outcomes_prefix(run_prefix: &str) -> String {
    format!("{run_prefix}/outcomes/")
}

/// `(task index, attempt)` of an outcome key of run `run_id`, or `None` for anything else.
pub fn parse_outcome_key(key: &str, run_id: &str) -> Option<(u32, u32)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json")?;
    let rest = name.strip_prefix(run_id)?.strip_prefix('-')?;
    let (index, attempt) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(attempt) {
        return None;
    }
    Some((index.parse().ok()?, attempt.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_with;

    #[test]
    fn tasks_match_the_engine_split() {
        for n in [0usize, 1, 2, 5, 10, 11] {
            let p = plan_with(n, 0);
            for spj in 1..=4u32 {
                let engine = p.tasks(spj as usize);
                assert_eq!(task_count(&p, spj) as usize, engine.len(), "n={n} spj={spj}");
                for (i, t) in engine.iter().enumerate() {
                    let ours = make_task(&p, spj, i as u32, 0);
                    assert_eq!(&ours, t);
                    assert_eq!(ours.task_key(), task_object_key(&run_prefix(&p), &t.task_id, 0));
                    for a in 0..3 {
                        let ta = make_task(&p, spj, i as u32, a);
                        assert_eq!(ta.outcome_key(), outcome_key(&run_prefix(&p), &t.task_id, a));
                        assert_eq!(parse_outcome_key(&ta.outcome_key(), &p.run_id), Some((i as u32, a)));
                    }
                }
                assert!(task_segments(&p, spj, task_count(&p, spj)).is_empty());
            }
        }
    }

    #[test]
    fn retries_get_their_own_task_object() {
        let keys: std::collections::BTreeSet<String> = (0..5).map(|a| task_object_key("p", "r-1", a)).collect();
        assert_eq!(keys.len(), 5);
        assert_eq!(task_object_key("p", "r-1", 0), "p/tasks/r-1.json");
        assert_eq!(task_object_key("p", "r-1", 2), "p/tasks/r-1-2.json");
    }

    #[test]
    fn outcome_keys_parse_strictly() {
        let run = "20261127t032700-2ee0f5";
        assert_eq!(
            parse_outcome_key(&format!("x/outcomes/{run}-12-3.json"), run),
            Some((12, 3))
        );
        for bad in [
            format!("x/outcomes/{run}-12.json"),
            format!("x/outcomes/{run}-a-1.json"),
            format!("x/outcomes/{run}-1-1.tmp"),
            "x/outcomes/other-1-1.json".to_owned(),
            format!("x/outcomes/{run}-local-0.json"),
        ] {
            assert_eq!(parse_outcome_key(&bad, run), None, "{bad}");
        }
    }

    #[test]
    fn plan_key_is_under_the_run_prefix() {
        let p = plan_with(1, 0);
        assert_eq!(
            plan_key(&p.root_path, p.collection_id, &p.run_id),
            format!("{}/plan.json", run_prefix(&p))
        );
        assert_eq!(plan_key("files", 7, "r"), "files/backfill/7/r/plan.json");
    }
}
