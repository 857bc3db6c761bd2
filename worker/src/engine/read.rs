//! A segment's primary keys in storage order, by storage version, checked against its row count.
//! Files are fetched a few ahead and decoded off the IO threads; the arrays come back in row
//! order, ready to be pushed into a (group's) key index.

use arrow_array::{Array, ArrayRef};
use futures_util::{StreamExt, TryStreamExt};

use crate::binlog;
use crate::error::{BackfillError, Result};
use crate::keys::pk_accepts;
use crate::plan::{SegmentPlan, TaskPlan, V3File, V3Segment};
use crate::store::{Store, StoreError};
use crate::v3_keys;

/// The segment's primary keys in storage order, by its storage version.
pub(super) async fn segment_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan) -> Result<Vec<ArrayRef>> {
    let num_rows = super::supported_rows(seg)?;
    match (&seg.v3, seg.storage_version) {
        (Some(v3), _) => v3_keys(storage, plan, seg, v3, num_rows).await,
        (None, 2) => v2_keys(storage, plan, seg, num_rows).await,
        (None, _) => v1_keys(storage, plan, seg, num_rows).await,
    }
}

/// Reads the PK binlogs in row order and checks that they hold exactly the rows Milvus reports.
async fn v1_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<Vec<ArrayRef>> {
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
    let mut out = Vec::new();
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
        for a in &arrays {
            check_array(plan, a.as_ref())
                .map_err(|e| BackfillError::data_read(storage.display(&key), e).with_segment(seg.segment_id))?;
        }
        out.extend(arrays);
    }
    check_rows(seg, &out, num_rows, |found| {
        format!("its primary key binlogs hold {found} rows but Milvus reports {num_rows}; the files are stale or incomplete, plan again")
    })?;
    Ok(out)
}

/// Reads a V3 segment's primary keys from its PK column group.
async fn v3_keys(
    storage: &Store,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    v3: &V3Segment,
    num_rows: u32,
) -> Result<Vec<ArrayRef>> {
    let field_id = plan.pk_field.field_id;
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
        let (start, end) = (f.start_index, f.end_index);
        // Decoding is CPU work; keep it off the IO threads.
        tokio::task::spawn_blocking(move || v3_keys::read_range(data, field_id, start, end))
            .await
            .map_err(|e| BackfillError::unexpected(e.to_string()))?
            .map_err(|e| BackfillError::data_read(storage.display(&f.key), e).with_segment(seg.segment_id))
            .map(|a| (f, a))
    }))
    .buffered(4);
    let mut out = Vec::new();
    while let Some((f, arrays)) = files.try_next().await? {
        for a in &arrays {
            check_array(plan, a.as_ref())
                .map_err(|e| BackfillError::data_read(storage.display(&f.key), e).with_segment(seg.segment_id))?;
        }
        out.extend(arrays);
    }
    check_rows(seg, &out, num_rows, |found| {
        format!(
            "the primary key files of manifest version {} hold {found} rows but the manifest says {num_rows}",
            v3.manifest_version
        )
    })?;
    Ok(out)
}

/// Reads a V2 segment's primary keys: the PK's column group files in ascending log ID, whole.
async fn v2_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<Vec<ArrayRef>> {
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

/// Keys must be non-null and of the collection's primary key type before any index takes them.
fn check_array(plan: &TaskPlan, keys: &dyn Array) -> std::result::Result<(), String> {
    if keys.null_count() > 0 {
        return Err(format!("{} null primary keys", keys.null_count()));
    }
    if !pk_accepts(plan.pk_field.pk_type, keys.data_type()) {
        return Err(format!(
            "expected {:?} primary keys, found {}",
            plan.pk_field.pk_type,
            keys.data_type()
        ));
    }
    Ok(())
}

/// The files must hold exactly the rows the plan expects; `message` says so for the rows found.
fn check_rows(seg: &SegmentPlan, arrays: &[ArrayRef], expected: u32, message: impl Fn(u64) -> String) -> Result<()> {
    let found: u64 = arrays.iter().map(|a| a.len() as u64).sum();
    if found != u64::from(expected) {
        return Err(BackfillError::segment(seg.segment_id, message(found)));
    }
    Ok(())
}
