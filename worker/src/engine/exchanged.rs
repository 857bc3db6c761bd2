//! A task whose segments do not fit one pass: keys and source routed into hash partitions
//! through the exchange, each partition joined alone, then each segment gathered and written.
//! The source is read once, whatever the number of segments.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::SourceReads;

use super::{read, Group, GroupDone, Indexed, Shared};
use crate::error::Result;
use crate::exchange::join::{self, JoinSpec, JoinedPartition, PartitionParts};
use crate::exchange::route::{self, KeyRouter};
use crate::exchange::{gather, Exchange};
use crate::plan::{SegmentPlan, SourceFile};

/// What routing and joining left for the segments to gather.
struct Joined {
    indexed: Vec<Indexed>,
    partitions: Vec<JoinedPartition>,
    fields: Vec<(String, arrow_schema::DataType)>,
    reads: SourceReads,
}

impl Group<'_> {
    /// Processes `segs` through an exchange of `partitions` partitions, deleted at the end.
    pub async fn process_exchanged(&self, segs: &[SegmentPlan], partitions: u32) -> GroupDone {
        let started = Instant::now();
        let prefix = RunLayout::of_task(self.plan).exchange_prefix(self.task_id, self.attempt);
        let budget = u64::from(self.plan.memory_mib) << 20;
        let ex = Arc::new(Exchange::new(self.stores.storage.clone(), prefix, partitions, budget));
        tracing::info!(
            segments = segs.len(),
            partitions,
            "segments exceed one pass: routing through the exchange"
        );
        let done = match self.route_and_join(&ex, segs).await {
            Ok(j) => self.gather_and_write(&ex, segs, j, started).await,
            Err(e) => GroupDone::failed(segs, &e),
        };
        ex.delete().await;
        done
    }

    async fn route_and_join(&self, ex: &Arc<Exchange>, segs: &[SegmentPlan]) -> Result<Joined> {
        let mut router = KeyRouter::new(ex.clone());
        let mut indexed = Vec::with_capacity(segs.len());
        let mut reads = futures_util::stream::iter(
            segs.iter()
                .map(|seg| read::segment_keys(&self.stores.storage, self.plan, seg)),
        )
        .buffered(2);
        let mut at = 0u32;
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
        let key_parts = router.finish().await?;
        let (source_parts, fields, bytes) = route::source(
            ex.clone(),
            &self.stores.source,
            &self.plan.source_files,
            &self.plan.new_fields,
        )
        .await?;
        let spec = JoinSpec {
            pk: self.plan.pk_field.pk_type,
            new_fields: &self.plan.new_fields,
            batch_size: self.plan.batch_size.rows(),
        };
        let mut partitions = Vec::with_capacity(ex.partitions as usize);
        let mut first_row = 0u64;
        for p in 0..ex.partitions {
            let parts = PartitionParts {
                partition: p,
                keys: &key_parts[p as usize],
                source: &source_parts[p as usize],
                first_row,
            };
            partitions.push(join::partition(ex, &spec, parts).await?);
            first_row += source_parts[p as usize]
                .iter()
                .map(|f: &SourceFile| f.rows)
                .sum::<u64>();
        }
        Ok(Joined {
            indexed,
            partitions,
            fields,
            reads: SourceReads {
                source_passes: 1,
                source_bytes_read: bytes,
                exchange_bytes_written: 0,
            },
        })
    }

    async fn gather_and_write(&self, ex: &Exchange, segs: &[SegmentPlan], j: Joined, started: Instant) -> GroupDone {
        let Joined {
            indexed,
            partitions,
            fields,
            mut reads,
        } = j;
        let work = segs.iter().zip(indexed).enumerate().map(|(pos, (seg, indexed))| {
            let (partitions, fields) = (&partitions, &fields);
            async move {
                let num_rows = indexed?;
                let g = gather::segment(ex, partitions, pos as u32, fields).await?;
                let shared = Shared {
                    values: g.values,
                    fields: fields.clone(),
                    source_rows: g.source_rows,
                };
                self.write_segment(seg, num_rows, &g.pairs, &shared, started).await
            }
        });
        let outcomes = futures_util::stream::iter(work)
            .buffered(self.parallelism.max(1))
            .collect::<Vec<_>>()
            .await;
        reads.exchange_bytes_written = ex.bytes_written();
        GroupDone { outcomes, reads }
    }
}
