//! A segment's primary keys in storage order, by storage version, checked against its row count.

use futures_util::{StreamExt, TryStreamExt};

use crate::binlog;
use crate::error::{BackfillError, Result};
use crate::keys::KeyIndex;
use crate::plan::{SegmentPlan, TaskPlan, V3File, V3Segment};
use crate::store::{Store, StoreError};
use crate::v3_keys;

/// Reads the PK binlogs in row order (a few fetched ahead) into a key index, and
/// checks that they hold exactly the rows Milvus reports.
pub(super) async fn v1_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<KeyIndex> {
    let mut index = KeyIndex::new(plan.pk_field.pk_type, num_rows as usize);
    let mut files = futures_util::stream::iter(seg.pk_binlogs.iter().map(|b| async move {
        let data = storage.get(&b.key).await.map_err(|e| match e {
            StoreError::NotFound(_) => BackfillError::segment(
                seg.segment_id,
                format!(
                    "binlog {} is gone (compacted or garbage-collected since planning?); plan again",
                    storage.display(&b.key)
                ),
            ),
            e => BackfillError::connection(e.to_string()).with_segment(seg.segment_id),
        })?;
        // Decoding is CPU work; keep it off the IO threads.
        let key = b.key.clone();
        tokio::task::spawn_blocking(move || binlog::read_values(data).map(|v| (key, v)))
            .await
            .map_err(|e| BackfillError::unexpected(e.to_string()))?
            .map_err(|e| BackfillError::data_read(storage.display(&b.key), e).with_segment(seg.segment_id))
    }))
    .buffered(4);
    while let Some((key, (desc, arrays))) = files.try_next().await? {
        if desc.field_id != plan.pk_field.field_id || desc.segment_id != seg.segment_id {
            return Err(BackfillError::segment(
                seg.segment_id,
                format!(
                    "{} describes field {} of segment {}, expected field {} of segment {}",
                    storage.display(&key),
                    desc.field_id,
                    desc.segment_id,
                    plan.pk_field.field_id,
                    seg.segment_id
                ),
            ));
        }
        for a in arrays {
            index
                .push(a.as_ref())
                .map_err(|e| BackfillError::data_read(storage.display(&key), e).with_segment(seg.segment_id))?;
        }
    }
    index.seal();
    if index.rows() != num_rows {
        return Err(BackfillError::segment(
            seg.segment_id,
            format!(
                "its primary key binlogs hold {} rows but Milvus reports {num_rows}; the files are stale or incomplete, plan again",
                index.rows()
            ),
        ));
    }
    Ok(index)
}

/// Reads a V3 segment's primary keys from its PK column group (a few files fetched ahead).
pub(super) async fn v3_keys(
    storage: &Store,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    v3: &V3Segment,
    num_rows: u32,
) -> Result<KeyIndex> {
    let mut index = KeyIndex::new(plan.pk_field.pk_type, num_rows as usize);
    let mut files = futures_util::stream::iter(v3.pk_files.iter().map(|f| async move {
        let data = storage.get(&f.key).await.map_err(|e| match e {
            StoreError::NotFound(_) => BackfillError::segment(
                seg.segment_id,
                format!(
                    "data file {} of manifest version {} is gone (compacted or garbage-collected since the snapshot?)",
                    storage.display(&f.key),
                    v3.manifest_version
                ),
            ),
            e => BackfillError::connection(e.to_string()).with_segment(seg.segment_id),
        })?;
        Ok::<_, BackfillError>((f, data))
    }))
    .buffered(4);
    while let Some((f, data)) = files.try_next().await? {
        let (field_id, start, end) = (plan.pk_field.field_id, f.start_index, f.end_index);
        // Decoding is CPU work; keep it off the IO threads.
        index = tokio::task::spawn_blocking(move || {
            v3_keys::push_range(&mut index, data, field_id, start, end).map(|()| index)
        })
        .await
        .map_err(|e| BackfillError::unexpected(e.to_string()))?
        .map_err(|e| BackfillError::data_read(storage.display(&f.key), e).with_segment(seg.segment_id))?;
    }
    index.seal();
    if index.rows() != num_rows {
        return Err(BackfillError::segment(
            seg.segment_id,
            format!(
                "the primary key files of manifest version {} hold {} rows but the manifest says {num_rows}",
                v3.manifest_version,
                index.rows()
            ),
        ));
    }
    Ok(index)
}

/// Reads a V2 segment's primary keys: the PK's column group files in ascending log ID, whole.
pub(super) async fn v2_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<KeyIndex> {
    let files: Vec<V3File> = seg
        .pk_binlogs
        .iter()
        .map(|b| V3File {
            key: b.key.clone(),
            start_index: 0,
            end_index: b.rows,
        })
        .collect();
    let as_v3 = V3Segment {
        base_path: seg.output_dir.clone(),
        manifest_version: 0,
        pk_files: files,
    };
    v3_keys(storage, plan, seg, &as_v3, num_rows).await
}
