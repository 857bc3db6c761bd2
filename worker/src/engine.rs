//! One segment, end to end: its primary keys in storage order ([`read`]: V1 binlogs, V2 packed
//! files, V3 loon files) → key index → matched source rows → row-aligned new columns → the
//! outputs of its storage version ([`write`]: V1 export layout, V2 column groups, V3 data files
//! and ops or a published manifest).

mod read;
mod write;

use std::sync::Arc;
use std::time::Instant;

use milvus_backfill_api::outcome::SegmentOutcome;

use crate::error::{BackfillError, Result};
use crate::join::Joined;
use crate::keys::KeyIndex;
use crate::plan::{SegmentPlan, TaskPlan};
use crate::source::{self, Matches};
use crate::store::Store;
use crate::stores::RunStores;

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
        (Some(v3), _) => read::v3_keys(&stores.storage, plan, seg, v3, num_rows).await?,
        (None, 2) => read::v2_keys(&stores.storage, plan, seg, num_rows).await?,
        (None, _) => read::v1_keys(&stores.storage, plan, seg, num_rows).await?,
    });
    tracing::debug!(segment = seg.segment_id, rows = num_rows, range = ?index.range(), "primary keys indexed");
    let matches = scan_source(&stores.source, plan, seg, index.clone()).await?;
    let (joined, used_source_rows) = join_matches(seg, num_rows, &index, matches)?;
    let joined = Arc::new(joined);
    let written = match (&seg.v3, seg.storage_version) {
        (Some(_), _) => write::v3(stores, plan, seg, &joined).await?,
        (None, 2) => write::v2(stores, plan, seg, &joined).await?,
        (None, _) => write::export(stores, plan, seg, &joined, task_id, attempt).await?,
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
