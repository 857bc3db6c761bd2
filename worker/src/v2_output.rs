//! A StorageV2 segment's new columns: per new field one single-field column group, files
//! `{root}/insert_log/{coll}/{part}/{seg}/{fieldID}/{logID}` (decimal log ID, no extension)
//! holding one column named by the field name and tagged `PARQUET:field_id`, with the footer
//! key-values milvus-storage's packed writer writes (`group_field_id_list = "{fid}"`,
//! `row_group_metadata`, `storage_version`), and the result's `column_groups` entry.
//!
//! Log IDs: Milvus allocates IDs from its timestamp oracle (`physical ms << 18 | logical`),
//! about 2^58.7 today and below 2^62 until the year 2527. Ours are `2^62 + ms * 1024 + r`
//! (a random `r < 1024`, then one per file), so they never meet an ID Milvus allocated, differ
//! between attempts, and ascend within a segment as the result lists them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use milvus_backfill_api::layout;
use milvus_backfill_api::outcome::ColumnGroupEntry;

use crate::error::{BackfillError, Result};
use crate::join::Joined;
use crate::plan::{NewField, SegmentPlan};
use crate::store::Store;
use crate::v3_output::{encode_with, named_columns, Column, Naming};

pub const LOG_ID_BASE: i64 = 1 << 62;

/// The first log ID of one write: above every ID Milvus allocates.
pub fn first_log_id(now_ms: u64, random: u16) -> i64 {
    LOG_ID_BASE + (now_ms as i64) * 1024 + i64::from(random % 1024)
}

pub fn columns(fields: &[NewField], joined: &arrow_schema::SchemaRef) -> Result<Vec<Column>> {
    named_columns(fields, joined, Naming::FieldName)
}

/// Writes every new column of a V2 segment, one file per field; returns one column group per field.
pub async fn write_segment(
    store: &Store,
    root: &str,
    collection_id: i64,
    seg: &SegmentPlan,
    joined: &Arc<Joined>,
    cols: &[Column],
    batch_size: usize,
) -> Result<Vec<ColumnGroupEntry>> {
    let n = joined.num_rows();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut log_id = first_log_id(now_ms, uuid::Uuid::new_v4().as_u128() as u16);
    let prefix = layout::segment_insert_log_prefix(root, collection_id, seg.partition_id, seg.segment_id);
    let mut groups = Vec::with_capacity(cols.len());
    for col in cols {
        let mut keys = Vec::new();
        // One file per field: Milvus records only the group's row count and spreads it evenly
        // over the files (remainder to the last), so any other split would misstate rows.
        for (start, end) in [(0, n)] {
            let key = format!("{prefix}{}/{log_id}", col.field_id);
            log_id += 1;
            let werr = |e: &dyn std::fmt::Display| BackfillError::write(Some(seg.segment_id), store.display(&key), e);
            let (j, c) = (joined.clone(), col.clone());
            let leading = [("group_field_id_list", col.field_id.to_string())];
            let file = tokio::task::spawn_blocking(move || encode_with(&j, &c, start, end, batch_size, &leading))
                .await
                .map_err(|e| werr(&e))?
                .map_err(|e| werr(&e))?;
            store.put(&key, Bytes::from(file.bytes)).await.map_err(|e| werr(&e))?;
            keys.push(key);
        }
        groups.push(ColumnGroupEntry {
            field_ids: vec![col.field_id],
            binlog_files: keys,
            row_count: n as u64,
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ids_stay_above_milvus_ids_and_ascend() {
        // A Milvus TSO ID of 2026: ms << 18.
        let milvus_now = (1_796_000_000_000i64) << 18;
        let ours = first_log_id(1_796_000_000_000, 1023);
        assert!(ours > milvus_now && ours > LOG_ID_BASE);
        // Year 2500 is still far below i64::MAX, and a later write gets larger IDs.
        assert!(first_log_id(16_725_225_600_000, 0) < i64::MAX - 1_000_000);
        assert!(first_log_id(1_796_000_000_001, 0) > ours);
    }
}
