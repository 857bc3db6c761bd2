//! One segment, end to end: PK binlogs → key index → matched source rows →
//! row-aligned new columns → Parquet parts and manifest.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};

use milvus_backfill_api::outcome::SegmentOutcome;

use crate::binlog;
use crate::error::{BackfillError, Result};
use crate::join::Joined;
use crate::keys::KeyIndex;
use crate::output;
use crate::plan::{SegmentPlan, TaskPlan, V3CommitMode, V3File, V3Segment};
use crate::source::{self, Matches};
use crate::store::{Store, StoreError};
use crate::stores::RunStores;
use crate::v2_output;
use crate::v3_commit;
use crate::v3_keys;
use crate::v3_output;

pub async fn process_segment(
    stores: &RunStores,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    task_id: &str,
    attempt: u32,
) -> Result<SegmentOutcome> {
    let started = Instant::now();
    let num_rows = supported_rows(seg)?;
    let index = Arc::new(match (&seg.v3, seg.storage_version) {
        (Some(v3), _) => read_v3_keys(&stores.storage, plan, seg, v3, num_rows).await?,
        (None, 2) => read_v2_keys(&stores.storage, plan, seg, num_rows).await?,
        (None, _) => read_keys(&stores.storage, plan, seg, num_rows).await?,
    });
    tracing::debug!(segment = seg.segment_id, rows = num_rows, range = ?index.range(), "primary keys indexed");
    let matches = scan_source(&stores.source, plan, seg, index.clone()).await?;
    let (joined, used_source_rows) = join_matches(seg, num_rows, &index, matches)?;
    let joined = Arc::new(joined);
    let written = match (&seg.v3, seg.storage_version) {
        (Some(_), _) => write_v3(stores, plan, seg, &joined).await?,
        (None, 2) => write_v2(stores, plan, seg, &joined).await?,
        (None, _) => write_export(stores, plan, seg, &joined, task_id, attempt).await?,
    };
    Ok(SegmentOutcome {
        segment_id: seg.segment_id,
        partition_id: seg.partition_id,
        row_count: joined.num_rows() as u64,
        matched_row_count: joined.matched_rows(),
        output_path: written.output_path,
        manifest_paths: written.paths,
        execution_time_ms: started.elapsed().as_millis() as u64,
        ops: written.ops,
        storage_version: written.storage_version,
        version: written.version,
        source_version: written.source_version,
        column_groups: written.column_groups,
        used_source_rows,
    })
}

/// StorageV2: one single-field column group per new field beside the segment's groups.
async fn write_v2(stores: &RunStores, plan: &TaskPlan, seg: &SegmentPlan, joined: &Arc<Joined>) -> Result<Written> {
    let cols = v2_output::columns(&plan.new_fields, &joined.schema())?;
    let groups = v2_output::write_segment(
        &stores.storage,
        &plan.root_path,
        plan.collection_id,
        seg,
        joined,
        &cols,
        plan.batch_size.rows(),
    )
    .await?;
    let paths = groups
        .iter()
        .flat_map(|g| g.binlog_files.iter().map(|k| stores.storage.display(k)))
        .collect();
    Ok(Written {
        output_path: seg.output_dir.clone(),
        paths,
        ops: vec![],
        storage_version: Some(2),
        version: Some(-1),
        source_version: None,
        column_groups: groups,
    })
}

/// Where a segment's outputs went.
struct Written {
    output_path: String,
    paths: Vec<String>,
    ops: Vec<milvus_backfill_api::outcome::ManifestOp>,
    /// `Some(2)` for a StorageV2 entry.
    storage_version: Option<i64>,
    /// `-1` for V2; the published manifest version (and its base) with `v3Commit: manifest`.
    version: Option<i64>,
    source_version: Option<i64>,
    column_groups: Vec<milvus_backfill_api::outcome::ColumnGroupEntry>,
}

/// The export layout (V1 segments): Parquet parts plus `manifest.json`, which no Milvus commits.
async fn write_export(
    stores: &RunStores,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    joined: &Arc<Joined>,
    task_id: &str,
    attempt: u32,
) -> Result<Written> {
    let written = output::write_segment(
        &stores.output,
        seg,
        joined,
        plan.collection_id,
        &plan.new_fields,
        &plan.run_id,
        task_id,
        attempt,
        plan.batch_size.rows(),
    )
    .await?;
    let mut paths: Vec<String> = written.files.iter().map(|f| stores.output.display(&f.path)).collect();
    paths.push(stores.output.display(&written.manifest_key));
    Ok(Written {
        output_path: stores.output.display(&seg.output_dir),
        paths,
        ops: vec![],
        storage_version: None,
        version: None,
        source_version: None,
        column_groups: vec![],
    })
}

/// StorageV3: loon data files under the segment's `_data/`, and the ops DataCoord applies.
/// `outputPath` is the bucket-relative base path, as the commit expects it.
async fn write_v3(stores: &RunStores, plan: &TaskPlan, seg: &SegmentPlan, joined: &Arc<Joined>) -> Result<Written> {
    let cols = v3_output::columns(&plan.new_fields, &joined.schema())?;
    let ops = v3_output::write_segment(&stores.storage, seg, joined, &cols, plan.batch_size.rows()).await?;
    let v3 = seg.v3.as_ref().expect("a V3 segment");
    let paths = ops
        .iter()
        .flat_map(|o| {
            o.files
                .iter()
                .map(|f| stores.storage.display(&format!("{}{}", v3.data_dir(), f.path)))
        })
        .collect();
    let (ops, version, source_version) = match plan.v3_commit {
        V3CommitMode::Ops => (ops, None, None),
        V3CommitMode::Manifest => {
            let p = v3_commit::publish(&stores.storage, seg.segment_id, v3, &ops).await?;
            (vec![], Some(p.version), Some(p.source_version))
        }
    };
    Ok(Written {
        output_path: v3.base_path.clone(),
        paths,
        ops,
        storage_version: None,
        version,
        source_version,
        column_groups: vec![],
    })
}

/// The segment's row count, if this version can backfill the segment at all.
fn supported_rows(seg: &SegmentPlan) -> Result<u32> {
    let supported = match seg.storage_version {
        0 | 2 => seg.v3.is_none(),
        3 => seg.v3.is_some(),
        _ => false,
    };
    if !supported {
        return Err(BackfillError::segment(
            seg.segment_id,
            format!(
                "storage version {} is not supported (V1 segments in the export layout, V2 and V3 segments from a snapshot)",
                seg.storage_version
            ),
        ));
    }
    u32::try_from(seg.num_rows).map_err(|_| {
        BackfillError::segment(
            seg.segment_id,
            format!("{} rows exceed the 2^32 rows a segment can hold", seg.num_rows),
        )
    })
}

async fn scan_source(source: &Store, plan: &TaskPlan, seg: &SegmentPlan, index: Arc<KeyIndex>) -> Result<Matches> {
    let matches = source::read_matches(
        source,
        &plan.source_files,
        index,
        &plan.new_fields,
        plan.batch_size.rows(),
    )
    .await?;
    tracing::debug!(
        segment = seg.segment_id,
        matched = matches.offsets.len(),
        row_groups_read = matches.row_groups_read,
        row_groups_skipped = matches.row_groups_skipped,
        "source scanned"
    );
    Ok(matches)
}

/// Aligns the matched source rows on the segment's rows; returns the join and the source rows
/// it used. The matched batches are dropped here, before the output is encoded.
fn join_matches(seg: &SegmentPlan, num_rows: u32, index: &KeyIndex, matches: Matches) -> Result<(Joined, Vec<u64>)> {
    // `read_matches` takes the fields from the first source file's schema whether or not any of
    // its row groups match, so they are missing only for a plan without source files or without
    // new fields, which planning never makes.
    if matches.fields.is_empty() {
        return Err(BackfillError::unexpected(format!(
            "segment {}: the source files could not be opened to learn the new fields' types",
            seg.segment_id
        )));
    }
    let joined = Joined::build(num_rows, index, &matches.offsets, &matches.batches, &matches.fields).map_err(|d| {
        BackfillError::schema(format!(
            "segment {}: {} source row(s) hit a row that another source row already set (at segment offsets {:?}); the source has duplicate `pk` values",
            seg.segment_id, d.count, d.example_offsets
        ))
        .with_segment(seg.segment_id)
    })?;
    Ok((joined, matches.source_rows))
}

/// Reads the PK binlogs in row order (a few fetched ahead) into a key index, and
/// checks that they hold exactly the rows Milvus reports.
async fn read_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<KeyIndex> {
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
async fn read_v3_keys(
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
async fn read_v2_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<KeyIndex> {
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
    read_v3_keys(storage, plan, seg, &as_v3, num_rows).await
}
