//! Running planned segments: all of a plan in-process (`run`), or one task (`segment`).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::{BackfillResult, FailedSegment, SourceReads, TaskOutcome};

use crate::engine::{Group, Mode};
use crate::error::Result;
use crate::groups;
use crate::plan::{Plan, SegmentPlan, Task, TaskPlan};
use crate::progress::Progress;
use crate::source;
use crate::store::Store;
use crate::stores::RunStores;

/// A bitmap over all source rows, shared by the segments of one run, so that
/// rows used by several segments are counted once.
pub struct UsedRows(Vec<AtomicU64>);

impl UsedRows {
    pub fn new(rows: u64) -> Self {
        Self((0..rows.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }
    pub fn mark(&self, rows: &[u64]) {
        for &r in rows {
            if let Some(w) = self.0.get((r / 64) as usize) {
                w.fetch_or(1 << (r % 64), Ordering::Relaxed);
            }
        }
    }
    pub fn count(&self) -> u64 {
        self.0
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }
}

/// Runs every planned segment: one pass over the source per group of segments
/// ([`crate::groups`]), then up to `plan.parallelism` segments written at once. A failed
/// segment does not stop the others.
pub async fn run_plan(plan: &Plan, stores: &RunStores, progress: &Progress) -> BackfillResult {
    let started = Instant::now();
    let tp = TaskPlan::from_plan(plan);
    let used = UsedRows::new(plan.source_rows);
    let task_id = RunLayout::of_plan(plan).local_task_id();
    let group = Group {
        stores,
        plan: &tp,
        task_id: &task_id,
        attempt: 0,
        parallelism: plan.parallelism.max(1) as usize,
    };
    let mut reads = SourceReads::default();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (range, mode) in passes(stores, &tp, &plan.segments).await {
        let segs = &plan.segments[range];
        segs.iter().for_each(|s| progress.started(s.segment_id));
        let done = group.process_in(segs, mode).await;
        reads = reads.plus(done.reads);
        for (seg, r) in segs.iter().zip(done.outcomes) {
            match r {
                Ok(o) => {
                    used.mark(&o.used_source_rows);
                    progress.finished(seg.segment_id, o.row_count, None);
                    outcomes.push(o);
                }
                Err(e) => {
                    progress.finished(seg.segment_id, 0, Some(&e));
                    failures.push(FailedSegment::from_error(seg.segment_id, seg.partition_id, &e));
                }
            }
        }
    }
    progress.done();
    let mut result = BackfillResult::build(
        plan,
        outcomes,
        failures,
        used.count(),
        started.elapsed().as_millis() as u64,
    );
    result.source_reads = reads;
    result
}

/// How the segments are processed within the plan's memory: in one pass over the source when
/// they fit it, else all of them through the exchange (the source read once either way).
async fn passes(stores: &RunStores, plan: &TaskPlan, segs: &[SegmentPlan]) -> Vec<(Range<usize>, Mode)> {
    let costs = source::row_costs(&stores.source, &plan.source_files, &plan.new_fields)
        .await
        .unwrap_or(source::RowCosts::UNKNOWN);
    let cost = groups::PassCost {
        pk: plan.pk_field.pk_type,
        key_bytes: costs.key_bytes,
        value_bytes_per_source_row: costs.value_bytes,
    };
    let budget = u64::from(plan.memory_mib) << 20;
    let rows: Vec<u64> = segs.iter().map(|s| s.num_rows).collect();
    let ranges = groups::plan_groups(&rows, budget, &cost);
    if ranges.len() <= 1 {
        tracing::info!(
            segments = segs.len(),
            memory_mib = plan.memory_mib,
            "one pass over the source serves every segment"
        );
        return ranges.into_iter().map(|r| (r, Mode::OnePass)).collect();
    }
    let partitions = crate::exchange::partitions_for(rows.iter().sum(), budget, &cost);
    tracing::info!(
        segments = segs.len(),
        would_be_passes = ranges.len(),
        partitions,
        value_bytes_per_row = costs.value_bytes,
        memory_mib = plan.memory_mib,
        "the segments exceed one pass: keys and source go through the exchange"
    );
    vec![(0..segs.len(), Mode::Exchange { partitions })]
}

/// Writes the result JSON into the run's directory in the storage bucket, split into parts
/// below Milvus' limit ([`crate::commit::MAX_RESULT_BYTES`]) when it is larger; returns the
/// parts' keys (the first is `result.json`).
pub async fn store_result(plan: &Plan, storage: &Store, result: &BackfillResult) -> Result<Vec<String>> {
    crate::commit::store_parts(storage, &RunLayout::of_plan(plan), result).await
}

pub async fn run_task(task: &Task, stores: &RunStores) -> TaskOutcome {
    let started = Instant::now();
    let used = UsedRows::new(task.plan.source_rows());
    let group = Group {
        stores,
        plan: &task.plan,
        task_id: &task.task_id,
        attempt: task.attempt,
        parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4),
    };
    let mut reads = SourceReads::default();
    let mut segments = Vec::new();
    let mut failed_segments = Vec::new();
    for (range, mode) in passes(stores, &task.plan, &task.segments).await {
        let segs = &task.segments[range];
        let done = group.process_in(segs, mode).await;
        reads = reads.plus(done.reads);
        for (seg, r) in segs.iter().zip(done.outcomes) {
            match r {
                Ok(o) => {
                    used.mark(&o.used_source_rows);
                    tracing::info!(
                        segment = o.segment_id,
                        rows = o.row_count,
                        matched = o.matched_row_count,
                        ms = o.execution_time_ms,
                        "segment done"
                    );
                    segments.push(o);
                }
                Err(e) => {
                    tracing::error!(segment = seg.segment_id, kind = %e.kind, error = %e.message, "segment failed");
                    failed_segments.push(FailedSegment::from_error(seg.segment_id, seg.partition_id, &e));
                }
            }
        }
    }
    TaskOutcome {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        success: failed_segments.is_empty(),
        segments,
        failed_segments,
        used_source_rows: used.count(),
        execution_time_ms: started.elapsed().as_millis() as u64,
        source_reads: reads,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn used_rows_count_each_row_once() {
        let u = super::UsedRows::new(130);
        u.mark(&[0, 64, 129, 64]);
        u.mark(&[0, 1]);
        assert_eq!(u.count(), 4);
    }
}
