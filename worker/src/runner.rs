//! Running planned segments: all of a plan in-process (`run`), or one task (`segment`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::{BackfillResult, FailedSegment, SegmentOutcome, TaskOutcome};

use crate::engine;
use crate::error::Result;
use crate::plan::{Plan, Task, TaskPlan};
use crate::progress::Progress;
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

/// Runs every planned segment with at most `plan.parallelism` in flight. A failed
/// segment does not stop the others.
pub async fn run_plan(plan: &Plan, stores: &RunStores, progress: &Progress) -> BackfillResult {
    let started = Instant::now();
    let tp = TaskPlan::from_plan(plan);
    let used = UsedRows::new(plan.source_rows);
    let task_id = RunLayout::of_plan(plan).local_task_id();
    let results: Vec<(i64, i64, Result<SegmentOutcome>)> =
        futures_util::stream::iter(plan.segments.iter().map(|seg| {
            let (tp, task_id, used) = (&tp, &task_id, &used);
            async move {
                progress.started(seg.segment_id);
                let r = engine::process_segment(stores, tp, seg, task_id, 0).await;
                match &r {
                    Ok(o) => {
                        used.mark(&o.used_source_rows);
                        progress.finished(seg.segment_id, o.row_count, None);
                    }
                    Err(e) => progress.finished(seg.segment_id, 0, Some(e)),
                }
                (seg.segment_id, seg.partition_id, r)
            }
        }))
        .buffer_unordered(plan.parallelism.max(1) as usize)
        .collect()
        .await;
    progress.done();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (seg, part, r) in results {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => failures.push(FailedSegment::from_error(seg, part, &e)),
        }
    }
    BackfillResult::build(
        plan,
        outcomes,
        failures,
        used.count(),
        started.elapsed().as_millis() as u64,
    )
}

/// Writes the result JSON into the run's directory in the storage bucket, split into parts
/// below Milvus' limit ([`crate::commit::MAX_RESULT_BYTES`]) when it is larger; returns the
/// parts' keys (the first is `result.json`).
pub async fn store_result(plan: &Plan, storage: &Store, result: &BackfillResult) -> Result<Vec<String>> {
    crate::commit::store_parts(storage, &RunLayout::of_plan(plan), result).await
}

pub async fn run_task(task: &Task, stores: &RunStores) -> TaskOutcome {
    let started = Instant::now();
    let used = Arc::new(UsedRows::new(task.plan.source_rows()));
    let mut segments = Vec::new();
    let mut failed_segments = Vec::new();
    for seg in &task.segments {
        match engine::process_segment(stores, &task.plan, seg, &task.task_id, task.attempt).await {
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
    TaskOutcome {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        success: failed_segments.is_empty(),
        segments,
        failed_segments,
        used_source_rows: used.count(),
        execution_time_ms: started.elapsed().as_millis() as u64,
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
