//! Running planned segments: all of a plan in-process (`run`), or one task (`segment`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::{BackfillResult, FailedSegment, SourceReads, TaskOutcome};
use milvus_backfill_api::stage::{Stage, StageOutput};

use crate::engine::{Group, GroupDone, Mode, StageDone};
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

/// Runs every planned segment: one pass over the source for all of them, or the exchange when
/// they exceed `memoryMiB` ([`crate::groups`]), then up to `plan.parallelism` segments written
/// at once. A failed
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
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    plan.segments.iter().for_each(|s| progress.started(s.segment_id));
    let done = process_all(&group, &plan.segments).await;
    for (seg, r) in plan.segments.iter().zip(done.outcomes) {
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
    progress.done();
    let mut result = BackfillResult::build(
        plan,
        outcomes,
        failures,
        used.count(),
        started.elapsed().as_millis() as u64,
    );
    result.source_reads = done.reads;
    result
}

/// How the segments meet the source within the plan's memory: one pass when they fit it, else
/// through the exchange (the source is read once either way).
async fn mode_for(stores: &RunStores, plan: &TaskPlan, segs: &[SegmentPlan]) -> Mode {
    let costs = source::row_costs(&stores.source, &plan.source_files, plan.key_column(), &plan.new_fields)
        .await
        .unwrap_or(source::RowCosts::UNKNOWN);
    let cost = groups::PassCost {
        pk: plan.pk_field.pk_type,
        key_bytes: costs.key_bytes,
        value_bytes_per_source_row: costs.value_bytes,
    };
    let budget = u64::from(plan.memory_mib) << 20;
    let rows: u64 = segs.iter().map(|s| s.num_rows).sum();
    if groups::fits_one_pass(rows, budget, &cost) {
        tracing::info!(
            segments = segs.len(),
            memory_mib = plan.memory_mib,
            "one pass over the source serves every segment"
        );
        return Mode::OnePass;
    }
    let partitions = crate::exchange::partitions_for(rows, budget, &cost);
    tracing::info!(
        segments = segs.len(),
        partitions,
        value_bytes_per_row = costs.value_bytes,
        memory_mib = plan.memory_mib,
        "the segments exceed one pass: keys and source go through the exchange"
    );
    Mode::Exchange { partitions }
}

/// Every segment, in the mode their memory allows; nothing at all for no segment.
async fn process_all(group: &Group<'_>, segs: &[SegmentPlan]) -> GroupDone {
    if segs.is_empty() {
        return GroupDone {
            outcomes: Vec::new(),
            reads: SourceReads::default(),
        };
    }
    let mode = mode_for(group.stores, group.plan, segs).await;
    group.process_in(segs, mode).await
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
    let done = match &task.stage {
        None => process_all(&group, &task.segments).await,
        Some(Stage::Write(w)) => group.write_task(&task.segments, w).await,
        Some(Stage::Route(w)) => return stage_outcome(task, group.route_task(&task.segments, w).await, started),
        Some(Stage::Join(w)) => return stage_outcome(task, group.join_task(w).await, started),
    };
    let mut segments = Vec::new();
    let mut failed_segments = Vec::new();
    for (seg, r) in task.segments.iter().zip(done.outcomes) {
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
    TaskOutcome {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        success: failed_segments.is_empty(),
        segments,
        failed_segments,
        used_source_rows: used.count(),
        execution_time_ms: started.elapsed().as_millis() as u64,
        source_reads: done.reads,
        stage_output: None,
    }
}

/// The outcome of a route or join task: what it hands on, or why it failed (and the segment
/// whose keys could not be routed, if that was why).
fn stage_outcome(task: &Task, done: StageDone, started: Instant) -> TaskOutcome {
    let (stage_output, failed_segments) = match done.output {
        Ok(out) => (out, Vec::new()),
        Err(e) => {
            tracing::error!(kind = %e.kind, error = %e.message, "stage task failed");
            let failed = task
                .segments
                .iter()
                .filter(|s| Some(s.segment_id) == e.segment_id)
                .map(|s| FailedSegment::from_error(s.segment_id, s.partition_id, &e))
                .collect();
            let out = StageOutput::Failed {
                error: e.kind,
                reason: e.message,
            };
            (out, failed)
        }
    };
    TaskOutcome {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        success: !matches!(stage_output, StageOutput::Failed { .. }),
        segments: Vec::new(),
        failed_segments,
        used_source_rows: 0,
        execution_time_ms: started.elapsed().as_millis() as u64,
        source_reads: done.reads,
        stage_output: Some(stage_output),
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
