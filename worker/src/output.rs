//! Writing one segment's new fields: Parquet parts, then the manifest (the commit
//! point), then removal of the files an earlier manifest pointed to.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{BackfillError, Result};
use crate::join::Joined;
use crate::plan::{NewField, SegmentPlan};
use crate::store::{Store, StoreError};

/// Rows per part file. Each part is built in memory before its PUT, so this bounds
/// the writer's memory; it is a multiple of any batch size that divides it.
pub const ROWS_PER_PART: usize = 1 << 20;

/// `{seg}/new_field/manifest.json`: which files, in which order, make the new column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentManifest {
    pub segment_id: i64,
    pub collection_id: i64,
    pub partition_id: i64,
    pub row_count: u64,
    pub fields: Vec<NewField>,
    pub files: Vec<ManifestFile>,
    pub run_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// Key inside the output store.
    pub path: String,
    pub row_count: u64,
}

pub struct WriteOutcome {
    pub manifest_key: String,
    pub files: Vec<ManifestFile>,
}

/// Row ranges of the part files: at most [`ROWS_PER_PART`] rows each, split further
/// so that every core gets a part when the segment is large, each a multiple of the
/// batch size; one empty part for an empty segment.
pub fn part_spans(rows: usize, batch_size: usize, workers: usize) -> Vec<(usize, usize)> {
    let b = batch_size.max(1);
    let by_workers = rows.div_ceil(workers.max(1)).max(MIN_ROWS_PER_PART);
    // Round up to a batch multiple, except at the cap, which is never exceeded.
    let per_part = if by_workers >= ROWS_PER_PART {
        (ROWS_PER_PART / b).max(1) * b
    } else {
        by_workers.div_ceil(b) * b
    };
    if rows == 0 {
        return vec![(0, 0)];
    }
    (0..rows)
        .step_by(per_part)
        .map(|s| (s, (s + per_part).min(rows)))
        .collect()
}

/// Below this, splitting a segment's output over cores is not worth a second file.
const MIN_ROWS_PER_PART: usize = 256 * 1024;

/// Row group size: the largest multiple of `batch_size` not above 128 Ki rows,
/// and at least one batch.
pub fn row_group_rows(batch_size: usize) -> usize {
    let b = batch_size.max(1);
    ((128 * 1024) / b).max(1) * b
}

fn props(batch_size: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level 3")))
        .set_max_row_group_row_count(Some(row_group_rows(batch_size)))
        .set_created_by(format!("milvus-backfill {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Encodes rows `[start, end)` of the join as one Parquet file.
pub fn encode_part(joined: &Joined, start: usize, end: usize, batch_size: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, joined.schema(), Some(props(batch_size))).map_err(|e| e.to_string())?;
    let mut at = start;
    while at < end {
        let to = (at + batch_size.max(1)).min(end);
        w.write(&joined.chunk(at, to)).map_err(|e| e.to_string())?;
        at = to;
    }
    w.close().map_err(|e| e.to_string())?;
    Ok(buf)
}

#[allow(clippy::too_many_arguments)]
pub async fn write_segment(
    store: &Store,
    seg: &SegmentPlan,
    joined: &Arc<Joined>,
    collection_id: i64,
    fields: &[NewField],
    run_id: &str,
    task_id: &str,
    attempt: u32,
    batch_size: usize,
) -> Result<WriteOutcome> {
    let werr = |key: &str, e: &dyn std::fmt::Display| BackfillError::write(Some(seg.segment_id), store.display(key), e);
    let previous = read_manifest(store, &seg.manifest_key()).await.ok().flatten();

    let n = joined.num_rows();
    let workers = std::thread::available_parallelism().map_or(1, |w| w.get()).clamp(1, 8);
    let spans = part_spans(n, batch_size, workers);
    // Parts are encoded on all cores (ZSTD dominates) and uploaded in order.
    let mut encoders = futures_util::stream::iter(spans.into_iter().enumerate().map(|(part, (start, end))| {
        let joined = joined.clone();
        async move {
            let data = tokio::task::spawn_blocking(move || encode_part(&joined, start, end, batch_size))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            (part, start, end, data)
        }
    }))
    .buffered(workers);
    let mut files = Vec::new();
    while let Some((part, start, end, data)) = encoders.next().await {
        let key = seg.part_key(task_id, attempt, part);
        let data = data.map_err(|e| werr(&key, &e))?;
        store.put(&key, Bytes::from(data)).await.map_err(|e| werr(&key, &e))?;
        files.push(ManifestFile {
            path: key,
            row_count: (end - start) as u64,
        });
    }
    let manifest = SegmentManifest {
        segment_id: seg.segment_id,
        collection_id,
        partition_id: seg.partition_id,
        row_count: n as u64,
        fields: fields.to_vec(),
        files: files.clone(),
        run_id: run_id.to_owned(),
    };
    let mkey = seg.manifest_key();
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| werr(&mkey, &e))?;
    store.put(&mkey, Bytes::from(body)).await.map_err(|e| werr(&mkey, &e))?;

    // The new manifest is in place; files only the old one named are now garbage.
    if let Some(old) = previous {
        for f in old.files.iter().filter(|f| !files.iter().any(|n| n.path == f.path)) {
            if let Err(e) = store.delete(&f.path).await {
                tracing::warn!(segment = seg.segment_id, file = %store.display(&f.path), error = %e, "could not delete a replaced output file");
            }
        }
    }
    Ok(WriteOutcome {
        manifest_key: mkey,
        files,
    })
}

/// The manifest at `key`, `None` if there is none.
pub async fn read_manifest(store: &Store, key: &str) -> Result<Option<SegmentManifest>> {
    match store.get(key).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| BackfillError::data_read(store.display(key), format!("not a segment manifest: {e}"))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(BackfillError::connection(e.to_string())),
    }
}

/// Reads a written column back, for checks and tests: all part files in manifest order.
pub async fn read_back(store: &Store, manifest: &SegmentManifest) -> Result<Vec<arrow_array::RecordBatch>> {
    let mut out = Vec::new();
    for f in &manifest.files {
        let data = store
            .get(&f.path)
            .await
            .map_err(|e| BackfillError::data_read(store.display(&f.path), e))?;
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .map_err(|e| BackfillError::data_read(store.display(&f.path), e))?;
        for b in r {
            out.push(b.map_err(|e| BackfillError::data_read(store.display(&f.path), e))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_rows_in_batch_multiples() {
        assert_eq!(part_spans(0, 1024, 2), vec![(0, 0)]);
        assert_eq!(part_spans(1000, 1024, 2), vec![(0, 1000)]);
        let s = part_spans(1_000_000, 1024, 2);
        assert_eq!(s, vec![(0, 500_736), (500_736, 1_000_000)]);
        let big = part_spans(5_000_000, 1000, 1);
        assert!(big.iter().all(|(a, b)| b - a <= ROWS_PER_PART && a % 1000 == 0));
        assert_eq!(big.last().unwrap().1, 5_000_000);
    }

    #[test]
    fn row_groups_are_batch_multiples() {
        assert_eq!(row_group_rows(1024), 131072);
        assert_eq!(row_group_rows(1000), 131000);
        assert_eq!(row_group_rows(500_000), 500_000);
        assert_eq!(row_group_rows(0), 131072);
    }
}
