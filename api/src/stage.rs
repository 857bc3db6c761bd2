//! A routed run: the source read once for every segment of the run, by stages of tasks that
//! hand each other files in the storage bucket.
//!
//! ```text
//! route (slices of the source, batches of segment keys) ─► join (one partition each) ─► write (segment batches)
//! ```
//!
//! A route task splits its source slice and its segments' keys by key hash into partitions; a
//! join task joins one partition (every route task's parts of it); a write task gathers each
//! of its segments' matches from every joined partition and writes the segment's outputs.
//! Each task reports what it wrote in its outcome ([`StageOutput`]); the next stage's tasks
//! are built from those outcomes by the functions here, so a finished task is never repeated.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::layout::{RunLayout, TaskSplit};
use crate::outcome::FailedSegment;
use crate::plan::{Plan, SegmentPlan, SourceFile, Task};

/// What a task of a routed run does, beside the segments it carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Stage {
    Route(RouteWork),
    Join(JoinWork),
    Write(WriteWork),
}

/// Route: the task's segments' keys (numbered from `firstSegment` in the plan) and its slices
/// of the source, into `partitions` partitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteWork {
    pub partitions: u32,
    pub first_segment: u32,
    pub slices: Vec<SourceSlice>,
}

/// Chunk `chunk` of `chunks` equal runs of a source file's row groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSlice {
    pub file: SourceFile,
    pub chunk: u32,
    pub chunks: u32,
}

impl SourceSlice {
    /// The row groups of this chunk among `row_groups`.
    pub fn row_groups(&self, row_groups: usize) -> Range<usize> {
        let per = row_groups.div_ceil(self.chunks.max(1) as usize).max(1);
        let start = (self.chunk as usize * per).min(row_groups);
        start..(start + per).min(row_groups)
    }
}

/// Join: one partition's key parts and source parts; its source rows are numbered from
/// `firstRow`, so that every source row has one number in the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinWork {
    pub partition: u32,
    pub keys: Vec<SourceFile>,
    pub source: Vec<SourceFile>,
    pub first_row: u64,
}

/// Write: the task's segments (numbered from `firstSegment` in the plan) and the joined
/// partitions holding rows of any of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteWork {
    pub first_segment: u32,
    pub joined: Vec<JoinedFile>,
    /// The task's segments whose keys the route stage could not read: failed, not written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<FailedSegment>,
}

/// A joined partition: one row group per segment with matches, as `(segment, row group)`
/// in segment order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinedFile {
    pub file: SourceFile,
    pub row_groups: Vec<(u32, u32)>,
}

/// What a route or join task hands on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StageOutput {
    /// Each partition's key parts and source parts, and the segments whose keys cannot be
    /// read for a reason a retry would not fix (their write task reports them failed).
    Routed {
        keys: Vec<Vec<SourceFile>>,
        source: Vec<Vec<SourceFile>>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unreadable: Vec<FailedSegment>,
    },
    /// The joined partition; `None` when nothing in it matched.
    Joined { file: Option<JoinedFile> },
    /// The task failed as a whole: nothing to hand on.
    Failed { error: ErrorKind, reason: String },
}

/// The slices of `files` for `tasks` route tasks: each file cut into enough chunks that there
/// are about as many slices as tasks, dealt out in turn.
pub fn source_slices(files: &[SourceFile], tasks: u32) -> Vec<Vec<SourceSlice>> {
    let tasks = tasks.max(1) as usize;
    let chunks = tasks.div_ceil(files.len().max(1)) as u32;
    let mut out = vec![Vec::new(); tasks];
    let all = files.iter().flat_map(|f| {
        (0..chunks).map(move |chunk| SourceSlice {
            file: f.clone(),
            chunk,
            chunks,
        })
    });
    for (i, s) in all.enumerate() {
        out[i % tasks].push(s);
    }
    out
}

/// The join tasks, one per partition, from the route tasks' outputs (in task order).
pub fn join_works(partitions: u32, routed: &[&StageOutput]) -> Vec<JoinWork> {
    let mut works: Vec<JoinWork> = (0..partitions)
        .map(|p| JoinWork {
            partition: p,
            keys: Vec::new(),
            source: Vec::new(),
            first_row: 0,
        })
        .collect();
    for out in routed {
        if let StageOutput::Routed { keys, source, .. } = out {
            for (w, k) in works.iter_mut().zip(keys) {
                w.keys.extend(k.iter().cloned());
            }
            for (w, s) in works.iter_mut().zip(source) {
                w.source.extend(s.iter().cloned());
            }
        }
    }
    let mut next = 0u64;
    for w in &mut works {
        w.first_row = next;
        next += w.source.iter().map(|f| f.rows).sum::<u64>();
    }
    works
}

/// The write work of the segments `segments` (positions in the plan), from the join tasks'
/// outputs: the partitions holding rows of any of them, with just their row groups.
pub fn write_work(segments: Range<u32>, joined: &[&StageOutput]) -> WriteWork {
    let files = joined.iter().filter_map(|o| match o {
        StageOutput::Joined { file: Some(f) } => {
            let groups: Vec<(u32, u32)> = f
                .row_groups
                .iter()
                .copied()
                .filter(|(s, _)| segments.contains(s))
                .collect();
            (!groups.is_empty()).then(|| JoinedFile {
                file: f.file.clone(),
                row_groups: groups,
            })
        }
        _ => None,
    });
    WriteWork {
        first_segment: segments.start,
        joined: files.collect(),
        unreadable: Vec::new(),
    }
}

/// The tasks of a run: segment tasks that each read the source (`partitions: None`), or the
/// three stages of a routed run over the same segment batches: route tasks `[0, B)`, join
/// tasks `[B, B+P)`, write tasks `[B+P, 2B+P)` for `B` batches and `P` partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLayout {
    pub split: TaskSplit,
    pub partitions: Option<u32>,
}

/// What task `index` of a layout does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Batch `n`'s segments, reading the source themselves.
    Segments(u32),
    /// Batch `n`'s keys and slice `n` of the source.
    Route(u32),
    /// Partition `n`.
    Join(u32),
    /// Batch `n`'s segments, gathered from the joined partitions.
    Write(u32),
}

impl Role {
    /// The stage: tasks of a stage start when every task of the stages before has succeeded.
    pub fn stage(self) -> u32 {
        match self {
            Role::Segments(_) | Role::Route(_) => 0,
            Role::Join(_) => 1,
            Role::Write(_) => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Segments(_) => "segments",
            Role::Route(_) => "route",
            Role::Join(_) => "join",
            Role::Write(_) => "write",
        }
    }
}

impl TaskLayout {
    pub fn direct(split: TaskSplit) -> Self {
        Self {
            split,
            partitions: None,
        }
    }
    pub fn count(self, p: &Plan) -> u32 {
        let batches = self.split.count(p);
        match self.partitions {
            None => batches,
            Some(parts) => 2 * batches + parts,
        }
    }
    /// The role of task `index` (an index past the end reads as a write of no segments).
    pub fn role(self, p: &Plan, index: u32) -> Role {
        let Some(parts) = self.partitions else {
            return Role::Segments(index);
        };
        let batches = self.split.count(p);
        if index < batches {
            Role::Route(index)
        } else if index < batches + parts {
            Role::Join(index - batches)
        } else {
            Role::Write(index - batches - parts)
        }
    }
    /// The tasks of `stage`, in order.
    pub fn stage_tasks(self, p: &Plan, stage: u32) -> Range<u32> {
        let (batches, parts) = (self.split.count(p), self.partitions.unwrap_or(0));
        match (self.partitions, stage) {
            (None, 0) => 0..batches,
            (None, _) => batches..batches,
            (Some(_), 0) => 0..batches,
            (Some(_), 1) => batches..batches + parts,
            (Some(_), _) => batches + parts..2 * batches + parts,
        }
    }
    /// The segments whose outcomes task `index` reports (none for route and join tasks).
    pub fn result_segments(self, p: &Plan, index: u32) -> &[SegmentPlan] {
        match self.role(p, index) {
            Role::Segments(b) | Role::Write(b) => self.split.segments(p, b),
            Role::Route(_) | Role::Join(_) => &[],
        }
    }
    /// What attempt `attempt` of task `index` runs; `output` gives a task's stage output (of
    /// its succeeded attempt). `None` while an earlier stage's output is missing.
    pub fn task(self, p: &Plan, index: u32, attempt: u32, output: &dyn Fn(u32) -> Option<StageOutput>) -> Option<Task> {
        let outputs = |stage: u32| -> Option<Vec<StageOutput>> { self.stage_tasks(p, stage).map(output).collect() };
        let stage = match self.role(p, index) {
            Role::Segments(_) => None,
            Role::Route(b) => {
                let slices = source_slices(&p.source_files, self.split.count(p)).swap_remove(b as usize);
                let work = RouteWork {
                    partitions: self.partitions.unwrap_or(1),
                    first_segment: b * self.split.segments_per_task(),
                    slices,
                };
                Some(Stage::Route(work))
            }
            Role::Join(n) => {
                let routed = outputs(0)?;
                let mut works = join_works(self.partitions.unwrap_or(1), &routed.iter().collect::<Vec<_>>());
                Some(Stage::Join(works.swap_remove(n as usize)))
            }
            Role::Write(b) => {
                let joined = outputs(1)?;
                let first = b * self.split.segments_per_task();
                let segs = self.split.segments(p, b);
                let range = first..first + segs.len() as u32;
                let mut work = write_work(range, &joined.iter().collect::<Vec<_>>());
                work.unreadable = outputs(0)?
                    .into_iter()
                    .flat_map(|o| match o {
                        StageOutput::Routed { unreadable, .. } => unreadable,
                        _ => Vec::new(),
                    })
                    .filter(|f| segs.iter().any(|s| s.segment_id == f.segment_id))
                    .collect();
                Some(Stage::Write(work))
            }
        };
        Some(self.task_with(p, index, attempt, stage))
    }

    /// Task `index` with `stage` as its work: its id, and the segments it carries (a batch for
    /// segment, route and write tasks; none for a join).
    pub fn task_with(self, p: &Plan, index: u32, attempt: u32, stage: Option<Stage>) -> Task {
        let batch = match self.role(p, index) {
            Role::Segments(b) | Role::Route(b) | Role::Write(b) => b,
            Role::Join(_) => u32::MAX,
        };
        let mut task = self.split.task(p, batch, attempt);
        task.task_id = RunLayout::of_plan(p).task_id(index);
        task.stage = stage;
        task
    }
}

/// How many partitions keep one join within `memory_mib`, at least `parallelism` so that the
/// joins run side by side: an estimate from the plan alone (the key index's bytes per key and
/// the source's bytes per row, doubled for decoding), with a fifth of headroom.
pub fn partitions_for(p: &Plan, parallelism: u32) -> u32 {
    let rows: u64 = p.segments.iter().map(|s| s.num_rows).sum();
    let source_bytes: u64 = p.source_files.iter().map(|f| f.size).sum();
    let per_row = 48 + 2 * source_bytes / p.source_rows.max(1);
    let budget = (u64::from(p.memory_mib) << 20).max(1);
    let needed = (rows.saturating_mul(per_row) / budget + 1) * 6 / 5;
    needed.max(u64::from(parallelism)).clamp(1, MAX_PARTITIONS) as u32
}

/// Join tasks of one run at most.
pub const MAX_PARTITIONS: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, rows: u64) -> SourceFile {
        SourceFile {
            key: key.into(),
            size: rows * 10,
            rows,
            first_row: 0,
        }
    }

    #[test]
    fn chunks_cover_every_row_group_once() {
        for (groups, chunks) in [(10usize, 3u32), (2, 5), (0, 2), (7, 1)] {
            let mut seen = Vec::new();
            for chunk in 0..chunks {
                let s = SourceSlice {
                    file: file("a", 1),
                    chunk,
                    chunks,
                };
                seen.extend(s.row_groups(groups));
            }
            assert_eq!(
                seen,
                (0..groups).collect::<Vec<_>>(),
                "{groups} groups in {chunks} chunks"
            );
        }
    }

    #[test]
    fn slices_deal_every_file_out_to_the_tasks() {
        let files = [file("a", 1), file("b", 1)];
        let s = source_slices(&files, 3);
        assert_eq!(s.len(), 3);
        let all: Vec<(String, u32)> = s.iter().flatten().map(|x| (x.file.key.clone(), x.chunk)).collect();
        assert_eq!(all.len(), 4, "two chunks of each file: {all:?}");
        assert!(s.iter().all(|t| !t.is_empty()));
        let one = source_slices(&files, 1);
        assert_eq!(one[0].len(), 2);
        assert!(one[0].iter().all(|x| x.chunks == 1));
    }

    #[test]
    fn joins_gather_each_partition_and_number_rows_across_partitions() {
        let r1 = StageOutput::Routed {
            keys: vec![vec![file("k1p0", 2)], vec![]],
            source: vec![vec![file("s1p0", 3)], vec![file("s1p1", 4)]],
            unreadable: vec![],
        };
        let r2 = StageOutput::Routed {
            keys: vec![vec![], vec![file("k2p1", 1)]],
            source: vec![vec![file("s2p0", 5)], vec![]],
            unreadable: vec![],
        };
        let w = join_works(2, &[&r1, &r2]);
        assert_eq!(w[0].keys, vec![file("k1p0", 2)]);
        assert_eq!(w[0].source.len(), 2);
        assert_eq!((w[0].first_row, w[1].first_row), (0, 8));
        assert_eq!(w[1].keys, vec![file("k2p1", 1)]);
    }

    #[test]
    fn a_write_gets_only_its_segments_row_groups() {
        let j = |key: &str, groups: Vec<(u32, u32)>| StageOutput::Joined {
            file: Some(JoinedFile {
                file: file(key, 1),
                row_groups: groups,
            }),
        };
        let (a, b, none) = (
            j("a", vec![(0, 0), (3, 1)]),
            j("b", vec![(1, 0)]),
            StageOutput::Joined { file: None },
        );
        let w = write_work(2..4, &[&a, &b, &none]);
        assert_eq!(w.first_segment, 2);
        assert_eq!(w.joined.len(), 1);
        assert_eq!(w.joined[0].row_groups, vec![(3, 1)]);
    }

    fn plan_of(n: i64) -> Plan {
        Plan {
            source_files: vec![file("src", 100)],
            source_rows: 100,
            ..crate::layout::tests::plan_with(n)
        }
    }

    fn routed(plan: &Plan) -> (TaskLayout, u32) {
        let layout = TaskLayout {
            split: TaskSplit::new(2),
            partitions: Some(3),
        };
        (layout, layout.split.count(plan))
    }

    #[test]
    fn a_routed_layout_has_route_join_and_write_tasks_in_order() {
        let plan = plan_of(4);
        let (layout, b) = routed(&plan);
        assert_eq!(layout.count(&plan), 2 * b + 3);
        assert_eq!(layout.role(&plan, 0), Role::Route(0));
        assert_eq!(layout.role(&plan, b), Role::Join(0));
        assert_eq!(layout.role(&plan, b + 3), Role::Write(0));
        assert_eq!(layout.stage_tasks(&plan, 1), b..b + 3);
        assert!(
            layout.result_segments(&plan, 0).is_empty(),
            "a route task reports no segment"
        );
        assert_eq!(layout.result_segments(&plan, b + 3), layout.split.segments(&plan, 0));
        let direct = TaskLayout::direct(TaskSplit::new(2));
        assert_eq!(direct.count(&plan), b);
        assert_eq!(direct.role(&plan, 1), Role::Segments(1));
    }

    #[test]
    fn each_stage_is_built_from_the_outputs_of_the_one_before() {
        let plan = plan_of(4);
        let (layout, b) = routed(&plan);
        let none = |_: u32| None;
        let route = layout.task(&plan, 0, 1, &none).expect("a route task needs nothing");
        assert_eq!(route.task_id, RunLayout::of_plan(&plan).task_id(0));
        assert_eq!(route.segments, layout.split.segments(&plan, 0));
        assert!(matches!(
            route.stage,
            Some(Stage::Route(RouteWork {
                partitions: 3,
                first_segment: 0,
                ..
            }))
        ));
        assert_eq!(
            layout.task(&plan, b, 0, &none),
            None,
            "no join before every route output"
        );
        let routed_out = |t: u32| {
            (t < b).then(|| StageOutput::Routed {
                keys: vec![vec![file(&format!("k{t}"), 1)], vec![], vec![]],
                source: vec![vec![], vec![], vec![file(&format!("s{t}"), 2)]],
                // Route task 0 could not read segment 2's keys (it is in batch 1).
                unreadable: (t == 0)
                    .then(|| FailedSegment {
                        segment_id: 2,
                        partition_id: 1,
                        kind: ErrorKind::SegmentProcessingError,
                        reason: "binlog gone".into(),
                    })
                    .into_iter()
                    .collect(),
            })
        };
        let join = layout.task(&plan, b, 0, &routed_out).unwrap();
        let Some(Stage::Join(w)) = &join.stage else {
            panic!("{join:?}")
        };
        assert_eq!(w.keys.len() as u32, b);
        assert!(join.segments.is_empty());
        let joined = |t: u32| {
            if t < b {
                return routed_out(t);
            }
            (b..b + 3).contains(&t).then(|| StageOutput::Joined {
                file: Some(JoinedFile {
                    file: file("j", 1),
                    row_groups: vec![(0, 0), (2, 1)],
                }),
            })
        };
        let write = layout.task(&plan, b + 4, 0, &joined).unwrap();
        let Some(Stage::Write(w)) = &write.stage else {
            panic!("{write:?}")
        };
        assert_eq!(w.first_segment, 2);
        assert!(w.joined.iter().all(|j| j.row_groups == vec![(2, 1)]));
        assert_eq!(write.segments, layout.split.segments(&plan, 1));
        assert_eq!(w.unreadable.iter().map(|f| f.segment_id).collect::<Vec<_>>(), vec![2]);
        let Some(Stage::Write(w0)) = layout.task(&plan, b + 3, 0, &joined).unwrap().stage else {
            panic!("a write task")
        };
        assert!(w0.unreadable.is_empty(), "batch 0 holds no unreadable segment");
    }

    #[test]
    fn partitions_keep_a_join_within_memory_and_run_side_by_side() {
        let mut plan = plan_of(4);
        assert_eq!(partitions_for(&plan, 4), 4, "a small run: one partition per Job slot");
        plan.memory_mib = 1;
        plan.segments.iter_mut().for_each(|s| s.num_rows = 1_000_000);
        let p = partitions_for(&plan, 1);
        assert!(p as usize >= plan.segments.len() * 48, "{p}");
    }
}
