//! The stages of a routed run ([`milvus_backfill_api::stage`]) as tasks of their own: route a
//! slice of the source and a batch of segment keys, join one partition, or gather and write a
//! batch of segments. Each hands the next stage its files through its outcome; the local
//! exchange ([`super::exchanged`]) runs the same steps in one process.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::{FailedSegment, SourceReads};
use milvus_backfill_api::stage::{JoinWork, JoinedFile, RouteWork, SourceSlice, StageOutput, WriteWork};

use super::{read, Group, GroupDone, Indexed, Shared};
use crate::error::{BackfillError, Result};
use crate::exchange::join::{self, JoinSpec, JoinedPartition, PartitionParts};
use crate::exchange::route::{self, KeyRouter};
use crate::exchange::{gather, Exchange};
use crate::plan::{SegmentPlan, SourceFile};
use crate::source;

/// What routing wrote: each partition's key and source parts, and what it read.
pub(super) struct Routed {
    /// Each segment's key count, or why its keys could not be read.
    pub indexed: Vec<Indexed>,
    pub keys: Vec<Vec<SourceFile>>,
    pub source: Vec<Vec<SourceFile>>,
    pub fields: Vec<(String, arrow_schema::DataType)>,
    pub bytes_read: u64,
}

/// A route or join task's result.
pub struct StageDone {
    pub output: Result<StageOutput>,
    pub reads: SourceReads,
}

impl Group<'_> {
    pub(super) fn exchange(&self, partitions: u32) -> Arc<Exchange> {
        let prefix = RunLayout::of_task(self.plan).exchange_prefix(self.task_id, self.attempt);
        let budget = u64::from(self.plan.memory_mib) << 20;
        Arc::new(Exchange::new(self.stores.storage.clone(), prefix, partitions, budget))
    }

    /// Routes the keys of `segs` (numbered from `first_segment`) and the rows of `slices`.
    pub(super) async fn route_into(
        &self,
        ex: &Arc<Exchange>,
        segs: &[SegmentPlan],
        first_segment: u32,
        slices: &[SourceSlice],
    ) -> Result<Routed> {
        let mut router = KeyRouter::new(ex.clone());
        let mut indexed = Vec::with_capacity(segs.len());
        let mut reads = futures_util::stream::iter(
            segs.iter()
                .map(|seg| read::segment_keys(&self.stores.storage, self.plan, seg)),
        )
        .buffered(2);
        let mut at = first_segment;
        while let Some(keys) = reads.next().await {
            indexed.push(match keys {
                Ok(arrays) => {
                    router.push(at, &arrays).await?;
                    Ok(arrays.iter().map(|a| a.len() as u32).sum())
                }
                Err(e) => Err(e),
            });
            at += 1;
        }
        drop(reads);
        let keys = router.finish().await?;
        let (source, fields, bytes_read) = if slices.is_empty() {
            (vec![Vec::new(); ex.partitions as usize], Vec::new(), 0)
        } else {
            route::source(
                ex.clone(),
                &self.stores.source,
                slices,
                self.plan.key_column(),
                &self.plan.new_fields,
            )
            .await?
        };
        Ok(Routed {
            indexed,
            keys,
            source,
            fields,
            bytes_read,
        })
    }

    /// Joins one partition of the exchange `ex`.
    pub(super) async fn join_one(&self, ex: &Exchange, w: &JoinWork) -> Result<JoinedPartition> {
        let spec = JoinSpec {
            pk: self.plan.pk_field.pk_type,
            new_fields: &self.plan.new_fields,
            batch_size: self.plan.batch_size.rows(),
        };
        let parts = PartitionParts {
            partition: w.partition,
            keys: &w.keys,
            source: &w.source,
            first_row: w.first_row,
        };
        join::partition(ex, &spec, parts).await
    }

    /// A route task: its segments' keys and its source slices into `w.partitions`
    /// partitions, kept for the join stage (deleted when the task fails).
    pub async fn route_task(&self, segs: &[SegmentPlan], w: &RouteWork) -> StageDone {
        let ex = self.exchange(w.partitions);
        let routed = self.route_into(&ex, segs, w.first_segment, &w.slices).await;
        let reads = SourceReads {
            source_passes: 0,
            source_bytes_read: routed.as_ref().map_or(0, |r| r.bytes_read),
            exchange_bytes_written: ex.bytes_written(),
        };
        let output = routed.and_then(|r| {
            // Storage out of reach fails the task, so that it is retried; a segment whose keys
            // cannot be read (binlogs gone, row counts off) fails alone, in its write task.
            let mut unreadable = Vec::new();
            for (seg, i) in segs.iter().zip(&r.indexed) {
                match i {
                    Err(e) if e.kind == ErrorKind::ConnectionError => return Err(e.clone()),
                    Err(e) => unreadable.push(FailedSegment::from_error(seg.segment_id, seg.partition_id, e)),
                    Ok(_) => {}
                }
            }
            Ok(StageOutput::Routed {
                keys: r.keys,
                source: r.source,
                unreadable,
            })
        });
        if output.is_err() {
            ex.delete().await;
        }
        StageDone { output, reads }
    }

    /// A join task: one partition joined, kept for the write stage.
    pub async fn join_task(&self, w: &JoinWork) -> StageDone {
        let ex = self.exchange(1);
        let output = self
            .join_one(&ex, w)
            .await
            .map(|j| StageOutput::Joined { file: j.to_file() });
        if output.is_err() {
            ex.delete().await;
        }
        StageDone {
            output,
            reads: SourceReads {
                exchange_bytes_written: ex.bytes_written(),
                ..SourceReads::default()
            },
        }
    }

    /// A write task: each segment's matches gathered from the joined partitions, then its
    /// outputs written as a one-pass run writes them.
    pub async fn write_task(&self, segs: &[SegmentPlan], w: &WriteWork) -> GroupDone {
        let started = Instant::now();
        let ex = self.exchange(1);
        let opened = futures_util::stream::iter(w.joined.iter().map(|f| JoinedPartition::open(ex.store(), f)))
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        let partitions = match opened.into_iter().collect::<Result<Vec<_>>>() {
            Ok(p) => p,
            Err(e) => return GroupDone::failed(segs, &e),
        };
        let plan = self.plan;
        let fields = match source::planned_field_types(&self.stores.source, &plan.source_files, &plan.new_fields).await
        {
            Ok(f) => f,
            Err(e) => return GroupDone::failed(segs, &e),
        };
        let indexed = segs
            .iter()
            .map(|s| match w.unreadable.iter().find(|f| f.segment_id == s.segment_id) {
                Some(f) => Err(BackfillError::new(f.kind, f.reason.clone()).with_segment(s.segment_id)),
                None => super::supported_rows(s),
            })
            .collect();
        let positions = w.first_segment..w.first_segment + segs.len() as u32;
        self.gather_and_write(&ex, segs, positions, (indexed, &partitions, &fields), started)
            .await
    }

    /// Gathers each of `segs` (at `positions` in the exchange) and writes it.
    pub(super) async fn gather_and_write(
        &self,
        ex: &Exchange,
        segs: &[SegmentPlan],
        positions: std::ops::Range<u32>,
        (indexed, partitions, fields): (Vec<Indexed>, &[JoinedPartition], &[(String, arrow_schema::DataType)]),
        started: Instant,
    ) -> GroupDone {
        let work = segs
            .iter()
            .zip(indexed)
            .zip(positions)
            .map(|((seg, indexed), pos)| async move {
                let num_rows = indexed?;
                let g = gather::segment(ex, partitions, pos, fields).await?;
                if g.pairs.iter().any(|&(offset, _)| offset >= num_rows) {
                    return Err(BackfillError::unexpected(format!(
                        "the exchange holds offsets past the {num_rows} rows of segment {}",
                        seg.segment_id
                    ))
                    .with_segment(seg.segment_id));
                }
                let shared = Shared {
                    values: g.values,
                    fields: fields.to_vec(),
                    source_rows: g.source_rows,
                };
                self.write_segment(seg, num_rows, &g.pairs, &shared, started).await
            });
        let outcomes = futures_util::stream::iter(work)
            .buffered(self.parallelism.max(1))
            .collect::<Vec<_>>()
            .await;
        GroupDone {
            outcomes,
            reads: SourceReads {
                exchange_bytes_written: ex.bytes_written(),
                ..SourceReads::default()
            },
        }
    }
}

impl JoinedPartition {
    /// What the write stage needs of it, or `None` when nothing in it matched.
    pub fn to_file(&self) -> Option<JoinedFile> {
        self.file.as_ref().map(|(file, _)| JoinedFile {
            file: file.clone(),
            row_groups: self.row_groups.iter().map(|&(s, g)| (s, g as u32)).collect(),
        })
    }
}
