//! The exchange: when a task's segments hold more keys than one pass over the source may keep
//! in memory (`spec.memoryMiB`), the source is still read once. Their keys and the source rows
//! are split by key hash into partitions written under the run's prefix in the storage bucket
//! ([`route`]); each partition is joined alone, its keys in one index ([`join`]), and each
//! segment then gathers its matched rows from every partition ([`gather`]). Equal keys always
//! land in the same partition, so a partition's join sees every source row a key could match.
//! Memory stays within the budget whatever the number of segments or the source size; the
//! exchange is deleted when the task ends.

pub mod gather;
pub mod join;
pub mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{BackfillError, Result};
use crate::groups::PassCost;
use crate::plan::SourceFile;
use crate::store::Store;

/// A partition's buffered rows are written out as a part file once they reach the part size:
/// the pass budget shared by every partition of every routing worker, within these bounds.
const MIN_PART_BYTES: usize = 256 << 10;
const MAX_PART_BYTES: usize = 8 << 20;

/// The part size that keeps all routing buffers within half of `budget_bytes`.
pub fn part_bytes(budget_bytes: u64, partitions: u32, workers: usize) -> usize {
    let share = budget_bytes / 2 / u64::from(partitions.max(1)) / workers.max(1) as u64;
    (share as usize).clamp(MIN_PART_BYTES, MAX_PART_BYTES)
}

/// How many partitions keep one partition's join within `budget_bytes`: the hash spreads keys
/// evenly, with a fifth of headroom for an unlucky partition.
pub fn partitions_for(total_rows: u64, budget_bytes: u64, cost: &PassCost) -> u32 {
    let mut p = 1u64;
    while p < u64::from(u32::MAX) && cost.bytes(total_rows.div_ceil(p) * 6 / 5) > budget_bytes {
        p *= 2;
    }
    p as u32
}

/// The partition of a key hash. The hash is mixed again first: the key index's prefilter uses
/// the hash's own bits, which would otherwise be the same for every key of a partition.
pub fn partition_of(hash: u64, partitions: u32) -> u32 {
    let mut m = hash ^ (hash >> 33);
    m = m.wrapping_mul(0xff51_afd7_ed55_8ccd);
    m ^= m >> 33;
    ((u128::from(m) * u128::from(partitions)) >> 64) as u32
}

/// Where one task's exchange lives, and what it wrote.
pub struct Exchange {
    store: Store,
    prefix: String,
    pub partitions: u32,
    part_bytes: usize,
    written: AtomicU64,
    keys: Mutex<Vec<String>>,
}

impl Exchange {
    /// `prefix` is the task attempt's own directory under the run prefix; routing buffers stay
    /// within half of `budget_bytes`.
    pub fn new(store: Store, prefix: String, partitions: u32, budget_bytes: u64) -> Self {
        Self {
            store,
            prefix,
            partitions,
            part_bytes: part_bytes(budget_bytes, partitions, routing_workers()),
            written: AtomicU64::new(0),
            keys: Mutex::new(Vec::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}.parquet", self.prefix.trim_end_matches('/'))
    }

    /// Writes `batches` as one Parquet object (LZ4: the exchange is read once, soon).
    pub async fn put(&self, kind: &str, name: &str, batches: &[RecordBatch]) -> Result<SourceFile> {
        let key = self.key(kind, name);
        let body = encode(batches, false).map_err(|e| BackfillError::unexpected(format!("exchange {key}: {e}")))?;
        self.put_encoded(key, body, batches.iter().map(|b| b.num_rows() as u64).sum())
            .await
    }

    pub(crate) async fn put_encoded(&self, key: String, body: Vec<u8>, rows: u64) -> Result<SourceFile> {
        let size = body.len() as u64;
        self.keys.lock().expect("exchange keys").push(key.clone());
        self.store
            .put(&key, Bytes::from(body))
            .await
            .map_err(|e| BackfillError::write(None, self.store.display(&key), e))?;
        self.written.fetch_add(size, Ordering::Relaxed);
        Ok(SourceFile {
            key,
            size,
            rows,
            first_row: 0,
        })
    }

    /// Deletes every object the exchange wrote; a failure is a warning, not a failed task.
    pub async fn delete(&self) {
        let keys = std::mem::take(&mut *self.keys.lock().expect("exchange keys"));
        for k in keys {
            if let Err(e) = self.store.delete(&k).await {
                tracing::warn!(key = %self.store.display(&k), error = %e, "exchange object not deleted");
            }
        }
    }
}

/// Tasks that route the source at once: one per core, at most 8.
pub fn routing_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}

/// Parquet bytes of `batches`; with `group_per_batch` each batch is a row group of its own.
pub(crate) fn encode(batches: &[RecordBatch], group_per_batch: bool) -> std::result::Result<Vec<u8>, String> {
    let Some(first) = batches.first() else {
        return Err("nothing to write".into());
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        // A segment's row group is never split, whatever its size.
        .set_max_row_group_row_count(Some(if group_per_batch { usize::MAX } else { 1 << 20 }))
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), first.schema(), Some(props)).map_err(|e| e.to_string())?;
    for b in batches {
        w.write(b).map_err(|e| e.to_string())?;
        if group_per_batch {
            w.flush().map_err(|e| e.to_string())?;
        }
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// Rows routed to each partition, buffered until a part file is worth writing.
pub struct PartitionBuffers {
    kind: &'static str,
    /// Names parts apart when several writers fill the same partitions.
    writer: String,
    buffers: Vec<(Vec<RecordBatch>, usize)>,
    parts: Vec<Vec<SourceFile>>,
    exchange: Arc<Exchange>,
}

impl PartitionBuffers {
    pub fn new(exchange: Arc<Exchange>, kind: &'static str, writer: String) -> Self {
        let n = exchange.partitions as usize;
        Self {
            kind,
            writer,
            buffers: (0..n).map(|_| (Vec::new(), 0)).collect(),
            parts: vec![Vec::new(); n],
            exchange,
        }
    }

    pub async fn push(&mut self, partition: u32, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (batches, bytes) = &mut self.buffers[partition as usize];
        *bytes += batch.get_array_memory_size();
        batches.push(batch);
        if *bytes >= self.exchange.part_bytes {
            self.flush(partition).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, partition: u32) -> Result<()> {
        let (batches, _) = std::mem::take(&mut self.buffers[partition as usize]);
        if batches.is_empty() {
            return Ok(());
        }
        let name = format!(
            "{partition:05}-{}-{:05}",
            self.writer,
            self.parts[partition as usize].len()
        );
        let part = self.exchange.put(self.kind, &name, &batches).await?;
        self.parts[partition as usize].push(part);
        Ok(())
    }

    /// Writes what is left; returns each partition's part files.
    pub async fn finish(mut self) -> Result<Vec<Vec<SourceFile>>> {
        for p in 0..self.exchange.partitions {
            self.flush(p).await?;
        }
        Ok(self.parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{hash_i64, PkType};

    #[test]
    fn routing_buffers_share_half_the_budget() {
        assert_eq!(part_bytes(64 << 20, 8, 2), 2 << 20);
        assert_eq!(part_bytes(u64::MAX, 1, 1), MAX_PART_BYTES);
        assert_eq!(part_bytes(1 << 20, 1024, 8), MIN_PART_BYTES);
    }

    #[test]
    fn partitions_grow_until_one_fits_the_budget() {
        let cost = PassCost {
            pk: PkType::Int64,
            key_bytes: 8,
            value_bytes_per_source_row: 20,
        };
        assert_eq!(partitions_for(1000, u64::MAX, &cost), 1);
        let p = partitions_for(10_000_000, 64 << 20, &cost);
        assert!(p > 1 && p.is_power_of_two(), "{p}");
        assert!(cost.bytes(10_000_000u64.div_ceil(u64::from(p)) * 6 / 5) <= 64 << 20);
        assert!(cost.bytes(10_000_000u64.div_ceil(u64::from(p / 2)) * 6 / 5) > 64 << 20);
    }

    /// Keys spread evenly over the partitions, and a key always goes to the same one.
    #[test]
    fn keys_spread_evenly_and_stay_put() {
        let mut counts = [0u32; 8];
        for k in 0..80_000i64 {
            counts[partition_of(hash_i64(k * 2), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        assert_eq!(partition_of(hash_i64(42), 8), partition_of(hash_i64(42), 8));
        assert_eq!(partition_of(hash_i64(42), 1), 0);
    }
}
