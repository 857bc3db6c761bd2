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
use crate::plan::SourceFile;

/// What a task of a routed run does, beside the segments it carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Stage {
    Route(RouteWork),
    Join(JoinWork),
    Write(WriteWork),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Route(_) => "route",
            Stage::Join(_) => "join",
            Stage::Write(_) => "write",
        }
    }
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
    /// Each partition's key parts and source parts.
    Routed {
        keys: Vec<Vec<SourceFile>>,
        source: Vec<Vec<SourceFile>>,
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
        if let StageOutput::Routed { keys, source } = out {
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
    }
}

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
        };
        let r2 = StageOutput::Routed {
            keys: vec![vec![], vec![file("k2p1", 1)]],
            source: vec![vec![file("s2p0", 5)], vec![]],
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
}
