//! Every bucket key a run uses, and how a plan splits into tasks. The only place that knows
//! them: the planner, the workers and the operator all ask here.
//!
//! A run lives under `{rootPath}/backfill/{collectionId}/{runId}/`:
//!
//! | key | written by | what |
//! |---|---|---|
//! | `plan.json` | operator, once, before any Job | the [`Plan`] |
//! | `tasks/{taskId}.json` | operator, before attempt 0's Job | the [`Task`] a Job runs |
//! | `tasks/{taskId}-{attempt}.json` | operator, before a retry's Job | the same task, `attempt` set |
//! | `outcomes/{taskId}-{attempt}.json` | the worker, or the operator when a Job died without one | [`TaskOutcome`](crate::outcome::TaskOutcome) |
//! | `result.json` | operator or `run`, at the end | [`BackfillResult`](crate::outcome::BackfillResult) |
//!
//! `taskId` is `{runId}-{index}`: task `index` holds the segments
//! `[index * segmentsPerTask, (index + 1) * segmentsPerTask)` of `plan.segments`.
//! A segment's outputs go to its `outputDir` ([`segment_output_dir`]).

use crate::plan::{Plan, SegmentPlan, Task, TaskPlan};

/// The keys of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLayout {
    prefix: String,
    run_id: String,
}

impl RunLayout {
    pub fn new(root_path: &str, collection_id: i64, run_id: &str) -> Self {
        Self {
            prefix: format!("{root_path}/backfill/{collection_id}/{run_id}"),
            run_id: run_id.to_owned(),
        }
    }
    pub fn of_plan(p: &Plan) -> Self {
        Self::new(&p.root_path, p.collection_id, &p.run_id)
    }
    pub fn of_task(t: &TaskPlan) -> Self {
        Self::new(&t.root_path, t.collection_id, &t.run_id)
    }

    /// `{rootPath}/backfill/{collectionId}/{runId}`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn plan_key(&self) -> String {
        format!("{}/plan.json", self.prefix)
    }
    /// Where one task attempt's exchange lives while it runs (deleted when it ends).
    /// Every exchange of the run (deleted when it ends).
    pub fn exchange_root(&self) -> String {
        format!("{}/exchange/", self.prefix)
    }
    pub fn exchange_prefix(&self, task_id: &str, attempt: u32) -> String {
        format!("{}/exchange/{task_id}-{attempt}", self.prefix)
    }
    pub fn result_key(&self) -> String {
        format!("{}/result.json", self.prefix)
    }
    /// Part `n` (from 1) of a result split below Milvus' size limit; part 1 is `result.json`.
    pub fn result_part_key(&self, n: usize) -> String {
        if n <= 1 {
            self.result_key()
        } else {
            format!("{}/result-part-{n}.json", self.prefix)
        }
    }
    /// The task object of one attempt. Attempt 0 has the plain name; a retry gets its own
    /// object, because the worker takes the attempt from the task (it names part files and
    /// the outcome by it).
    pub fn task_key(&self, task_id: &str, attempt: u32) -> String {
        if attempt == 0 {
            format!("{}/tasks/{task_id}.json", self.prefix)
        } else {
            format!("{}/tasks/{task_id}-{attempt}.json", self.prefix)
        }
    }
    pub fn outcome_key(&self, task_id: &str, attempt: u32) -> String {
        format!("{}/outcomes/{task_id}-{attempt}.json", self.prefix)
    }
    pub fn outcomes_prefix(&self) -> String {
        format!("{}/outcomes/", self.prefix)
    }
    /// `(task index, attempt)` of an outcome key of this run, or `None` for anything else
    /// (the local `run`'s `{runId}-local` task among them).
    pub fn parse_outcome_key(&self, key: &str) -> Option<(u32, u32)> {
        let name = key.rsplit('/').next()?.strip_suffix(".json")?;
        let rest = name.strip_prefix(self.run_id.as_str())?.strip_prefix('-')?;
        let (index, attempt) = rest.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(index) || !digits(attempt) {
            return None;
        }
        Some((index.parse().ok()?, attempt.parse().ok()?))
    }
    /// `{runId}-{index}`.
    pub fn task_id(&self, index: u32) -> String {
        format!("{}-{index}", self.run_id)
    }
    /// The one task of a local `run` (never parsed as a cluster task).
    pub fn local_task_id(&self) -> String {
        format!("{}-local", self.run_id)
    }
}

/// How a plan splits into tasks: consecutive runs of `segments_per_task` segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSplit {
    per_task: usize,
}

impl TaskSplit {
    /// At least one segment per task.
    pub fn new(segments_per_task: u32) -> Self {
        Self {
            per_task: segments_per_task.max(1) as usize,
        }
    }
    pub fn segments_per_task(self) -> u32 {
        self.per_task as u32
    }
    pub fn count(self, p: &Plan) -> u32 {
        p.segments.len().div_ceil(self.per_task) as u32
    }
    /// The segments of task `index` (empty past the end).
    pub fn segments(self, p: &Plan, index: u32) -> &[SegmentPlan] {
        let start = (index as usize).saturating_mul(self.per_task).min(p.segments.len());
        let end = start.saturating_add(self.per_task).min(p.segments.len());
        &p.segments[start..end]
    }
    /// What attempt `attempt` of task `index` runs.
    pub fn task(self, p: &Plan, index: u32, attempt: u32) -> Task {
        Task {
            task_id: RunLayout::of_plan(p).task_id(index),
            attempt,
            plan: TaskPlan::from_plan(p),
            segments: self.segments(p, index).to_vec(),
            stage: None,
        }
    }
    /// Attempt 0 of every task.
    pub fn tasks(self, p: &Plan) -> Vec<Task> {
        (0..self.count(p)).map(|i| self.task(p, i, 0)).collect()
    }
}

/// Milvus' StorageV1 insert logs of one partition: `{root}/insert_log/{coll}/{part}/`.
pub fn partition_insert_log_prefix(root: &str, coll: i64, part: i64) -> String {
    format!("{root}/insert_log/{coll}/{part}/")
}

/// One segment's insert logs, `{root}/insert_log/{coll}/{part}/{seg}/`; a field's binlogs are
/// `{fieldID}/{logID}` below it.
pub fn segment_insert_log_prefix(root: &str, coll: i64, part: i64, seg: i64) -> String {
    format!("{}{seg}/", partition_insert_log_prefix(root, coll, part))
}

/// Where a segment's outputs go: beside its binlogs, or under `output.path`.
pub fn segment_output_dir(custom_prefix: Option<&str>, root: &str, coll: i64, part: i64, seg: i64) -> String {
    match custom_prefix {
        Some(p) => join(p, &format!("{coll}/{part}/{seg}/new_field")),
        None => format!("{}new_field", segment_insert_log_prefix(root, coll, part, seg)),
    }
}

fn join(prefix: &str, rest: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        rest.to_owned()
    } else {
        format!("{p}/{rest}")
    }
}

impl SegmentPlan {
    pub fn manifest_key(&self) -> String {
        format!("{}/manifest.json", self.output_dir)
    }
    /// A new loon data file of a V3 segment: `{base}/_data/0_{uuid}.parquet` (group index 0,
    /// as the official writer names a one-group write). `None` for other segments.
    pub fn v3_data_key(&self, uuid: &str) -> Option<String> {
        self.v3.as_ref().map(|v| format!("{}0_{uuid}.parquet", v.data_dir()))
    }
    /// Part files of different tasks and attempts never overwrite each other.
    pub fn part_key(&self, task_id: &str, attempt: u32, part: usize) -> String {
        format!(
            "{}/binlog_0/task_{task_id}_{attempt}/part-{part:05}.parquet",
            self.output_dir
        )
    }
}

impl Task {
    pub fn layout(&self) -> RunLayout {
        RunLayout::of_task(&self.plan)
    }
    /// Where the worker records this attempt's outcome.
    pub fn outcome_key(&self) -> String {
        self.layout().outcome_key(&self.task_id, self.attempt)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plan::sample_plan;

    pub(crate) fn plan_with(n: i64) -> Plan {
        let seg = |id| SegmentPlan {
            segment_id: id,
            partition_id: 1,
            partition_name: "_default".into(),
            num_rows: 10,
            storage_version: 0,
            pk_binlogs: vec![],
            output_dir: format!("o/{id}"),
            v3: None,
            existing: vec![],
        };
        Plan {
            run_id: "run1".into(),
            collection_id: 7,
            segments: (0..n).map(seg).collect(),
            ..sample_plan()
        }
    }

    #[test]
    fn keys_of_a_run() {
        let l = RunLayout::of_plan(&plan_with(1));
        assert_eq!(l.prefix(), "files/backfill/7/run1");
        assert_eq!(l.plan_key(), "files/backfill/7/run1/plan.json");
        assert_eq!(l.result_key(), "files/backfill/7/run1/result.json");
        assert_eq!(l.task_key("run1-3", 0), "files/backfill/7/run1/tasks/run1-3.json");
        assert_eq!(l.task_key("run1-3", 2), "files/backfill/7/run1/tasks/run1-3-2.json");
        assert_eq!(
            l.outcome_key("run1-3", 2),
            "files/backfill/7/run1/outcomes/run1-3-2.json"
        );
        assert!(l.outcome_key("t", 0).starts_with(&l.outcomes_prefix()));
    }

    #[test]
    fn retries_get_their_own_task_object() {
        let l = RunLayout::new("p", 1, "r");
        let keys: std::collections::BTreeSet<String> = (0..5).map(|a| l.task_key("r-1", a)).collect();
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn outcome_keys_parse_strictly() {
        let run = "20261127t032700-2ee0f5";
        let l = RunLayout::new("x", 1, run);
        assert_eq!(l.parse_outcome_key(&l.outcome_key(&l.task_id(12), 3)), Some((12, 3)));
        for bad in [
            format!("x/outcomes/{run}-12.json"),
            format!("x/outcomes/{run}-a-1.json"),
            format!("x/outcomes/{run}-1-1.tmp"),
            "x/outcomes/other-1-1.json".to_owned(),
            l.outcome_key(&l.local_task_id(), 0),
        ] {
            assert_eq!(l.parse_outcome_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_split_covers_every_segment_once_in_order() {
        for n in [0, 1, 2, 5, 10, 11] {
            let p = plan_with(n);
            for spt in 1..=4u32 {
                let split = TaskSplit::new(spt);
                let tasks = split.tasks(&p);
                assert_eq!(tasks.len() as u32, split.count(&p));
                let ids: Vec<i64> = tasks
                    .iter()
                    .flat_map(|t| t.segments.iter().map(|s| s.segment_id))
                    .collect();
                assert_eq!(ids, (0..n).collect::<Vec<_>>(), "n={n} spt={spt}");
                assert!(tasks.iter().all(|t| t.segments.len() <= spt as usize));
                for (i, t) in tasks.iter().enumerate() {
                    assert_eq!(t.task_id, format!("run1-{i}"));
                    let again = Task {
                        attempt: 2,
                        ..t.clone()
                    };
                    assert_eq!(
                        RunLayout::of_plan(&p).parse_outcome_key(&again.outcome_key()),
                        Some((i as u32, 2))
                    );
                }
                assert!(split.segments(&p, split.count(&p)).is_empty());
            }
        }
        assert_eq!(TaskSplit::new(0).segments_per_task(), 1);
    }

    #[test]
    fn outputs_sit_beside_the_binlogs_or_under_the_prefix() {
        assert_eq!(
            segment_output_dir(None, "files", 1, 2, 3),
            "files/insert_log/1/2/3/new_field"
        );
        assert_eq!(
            segment_output_dir(Some("out/"), "files", 1, 2, 3),
            "out/1/2/3/new_field"
        );
        assert_eq!(segment_output_dir(Some(""), "files", 1, 2, 3), "1/2/3/new_field");
        let seg = &plan_with(1).segments[0];
        assert_eq!(seg.manifest_key(), "o/0/manifest.json");
        assert_eq!(seg.part_key("t", 1, 2), "o/0/binlog_0/task_t_1/part-00002.parquet");
    }
}
