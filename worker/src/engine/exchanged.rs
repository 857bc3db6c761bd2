//! A task whose segments do not fit one pass: keys and source routed into hash partitions
//! through the exchange, each partition joined alone, then each segment gathered and written,
//! the stages of a routed run ([`super::staged`]) in one process. The source is read once,
//! whatever the number of segments.

use std::time::Instant;

use milvus_backfill_api::stage::{self, StageOutput};

use super::{Group, GroupDone};
use crate::error::Result;
use crate::exchange::join::JoinedPartition;
use crate::exchange::Exchange;
use crate::plan::SegmentPlan;

impl Group<'_> {
    /// Processes `segs` through an exchange of `partitions` partitions, deleted at the end.
    pub async fn process_exchanged(&self, segs: &[SegmentPlan], partitions: u32) -> GroupDone {
        let started = Instant::now();
        let ex = self.exchange(partitions);
        tracing::info!(
            segments = segs.len(),
            partitions,
            "segments exceed one pass: routing through the exchange"
        );
        let mut done = match self.route_and_join(&ex, segs).await {
            Ok((routed, joined, bytes_read)) => {
                let mut done = self
                    .gather_and_write(
                        &ex,
                        segs,
                        0..segs.len() as u32,
                        (routed.indexed, &joined, &routed.fields),
                        started,
                    )
                    .await;
                done.reads.source_bytes_read = bytes_read;
                done.reads.source_passes = 1;
                done
            }
            Err(e) => GroupDone::failed(segs, &e),
        };
        done.reads.exchange_bytes_written = ex.bytes_written();
        ex.delete().await;
        done
    }

    /// Routes every segment and the whole source, then joins each partition in turn.
    async fn route_and_join(
        &self,
        ex: &std::sync::Arc<Exchange>,
        segs: &[SegmentPlan],
    ) -> Result<(super::staged::Routed, Vec<JoinedPartition>, u64)> {
        let workers = crate::exchange::routing_workers() as u32;
        let slices: Vec<_> = stage::source_slices(&self.plan.source_files, workers)
            .into_iter()
            .flatten()
            .collect();
        let mut routed = self.route_into(ex, segs, 0, &slices).await?;
        let out = StageOutput::Routed {
            keys: std::mem::take(&mut routed.keys),
            source: std::mem::take(&mut routed.source),
            unreadable: Vec::new(),
        };
        let mut joined = Vec::with_capacity(ex.partitions as usize);
        for w in stage::join_works(ex.partitions, &[&out]) {
            joined.push(self.join_one(ex, &w).await?);
        }
        let bytes_read = routed.bytes_read;
        Ok((routed, joined, bytes_read))
    }
}
