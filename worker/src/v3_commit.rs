//! `spec.output.v3Commit: manifest`: the loon transaction run here, for servers without `ops`
//! support. List `{base}/_metadata/`, take the highest `manifest-{N}.avro`, write
//! `manifest-{N+1}.avro` **only if absent** with the new columns replacing any old ones and
//! every other field kept; if another writer got there first, start again from the new N.
//! Manifests are never overwritten (readers cache them as immutable).

use bytes::Bytes;

use milvus_backfill_api::outcome::ManifestOp;
use milvus_backfill_api::plan::V3Segment;

use crate::error::{BackfillError, Result};
use crate::manifest::{GroupFile, NewGroup, RawManifest};
use crate::snapshot_planner::manifest_version;
use crate::store::{Store, StoreError};

/// Attempts before giving up on a segment whose manifest keeps moving.
const ATTEMPTS: u32 = 5;

/// The published version and the one it was built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub version: i64,
    pub source_version: i64,
}

pub fn new_groups(ops: &[ManifestOp]) -> Vec<NewGroup> {
    ops.iter()
        .map(|op| NewGroup {
            columns: op.columns.clone(),
            format: op.format.clone(),
            files: op
                .files
                .iter()
                .map(|f| GroupFile {
                    path: f.path.clone(),
                    start_index: f.start_index as i64,
                    end_index: f.end_index as i64,
                    properties: f.properties.clone(),
                })
                .collect(),
        })
        .collect()
}

pub async fn publish(store: &Store, segment_id: i64, v3: &V3Segment, ops: &[ManifestOp]) -> Result<Published> {
    let groups = new_groups(ops);
    let dir = format!("{}/_metadata/", v3.base_path);
    let fail = |m: String| BackfillError::segment(segment_id, m);
    for _ in 0..ATTEMPTS {
        let listing = store
            .list(&dir)
            .await
            .map_err(|e| BackfillError::connection(e.to_string()).with_segment(segment_id))?;
        let current = listing
            .iter()
            .filter_map(|o| manifest_version(&o.key))
            .max()
            .ok_or_else(|| fail(format!("{} holds no manifest", store.display(&dir))))?;
        let key = format!("{dir}manifest-{current}.avro");
        let bytes = store
            .get(&key)
            .await
            .map_err(|e| BackfillError::data_read(store.display(&key), e).with_segment(segment_id))?;
        let raw = RawManifest::decode(&bytes).map_err(|e| BackfillError::data_read(store.display(&key), e))?;
        let next = raw
            .replace_columns(&groups)
            .map_err(|e| fail(format!("manifest version {current}: {e}")))?;
        let next_key = format!("{dir}manifest-{}.avro", current + 1);
        let next = Bytes::from(next);
        let published = Published {
            version: current + 1,
            source_version: current,
        };
        match store.put_if_absent(&next_key, next.clone()).await {
            Ok(()) => return Ok(published),
            // Our own write, whose answer was lost and whose retry found it: done, not moved.
            Err(StoreError::AlreadyExists(_)) if store.get(&next_key).await.is_ok_and(|b| b == next) => {
                tracing::info!(
                    segment = segment_id,
                    version = current + 1,
                    "manifest version already ours"
                );
                return Ok(published);
            }
            Err(StoreError::AlreadyExists(_)) => {
                tracing::info!(
                    segment = segment_id,
                    version = current + 1,
                    "manifest version taken meanwhile; building on the new one"
                );
            }
            Err(e) => return Err(BackfillError::write(Some(segment_id), store.display(&next_key), e)),
        }
    }
    Err(fail(format!(
        "its manifest moved {ATTEMPTS} times while this run published a version; retry when writes to the segment settle"
    )))
}
