//! A segment's outputs, by storage version.

use std::sync::Arc;

use milvus_backfill_api::outcome::{ColumnGroupEntry, ManifestOp};

use crate::error::Result;
use crate::join::Joined;
use crate::output;
use crate::plan::{SegmentPlan, TaskPlan, V3CommitMode};
use crate::stores::RunStores;
use crate::v2_output;
use crate::v3_commit;
use crate::v3_output;

/// StorageV2: one single-field column group per new field beside the segment's groups.
pub(super) async fn v2(
    stores: &RunStores,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    joined: &Arc<Joined>,
) -> Result<Written> {
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
pub(super) struct Written {
    pub(super) output_path: String,
    pub(super) paths: Vec<String>,
    pub(super) ops: Vec<ManifestOp>,
    /// `Some(2)` for a StorageV2 entry.
    pub(super) storage_version: Option<i64>,
    /// `-1` for V2; the published manifest version (and its base) with `v3Commit: manifest`.
    pub(super) version: Option<i64>,
    pub(super) source_version: Option<i64>,
    pub(super) column_groups: Vec<ColumnGroupEntry>,
}

/// The export layout (V1 segments): Parquet parts plus `manifest.json`, which no Milvus commits.
pub(super) async fn export(
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
pub(super) async fn v3(
    stores: &RunStores,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    joined: &Arc<Joined>,
) -> Result<Written> {
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
