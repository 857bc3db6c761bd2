//! The live collection's StorageV3 segments (Milvus 2.6/3.0, no snapshot): each is read at its
//! newest manifest, the highest `manifest-N.avro` under `{base}/_metadata/`. Unlike a
//! snapshot, nothing protects the segments from compaction until the commit, hence the plan's
//! warning.

use futures_util::StreamExt;

use milvus_backfill_api::layout;
use milvus_backfill_api::spec::EngineSpec;

use super::{Collection, Planned, SegmentPlans};
use crate::error::{BackfillError, Result};
use crate::manifest::Manifest;
use crate::plan::{self, SegmentInfo, SegmentPlan, SkippedSegment, Triage, STORAGE_V1, STORAGE_V2, STORAGE_V3};
use crate::snapshot_planner::{manifest_version, v3_segment};
use crate::store::{ObjectMeta, Store, StoreError};
use crate::stores::{RunLocations, RunStores};
use crate::targets;

pub const NO_SNAPSHOT_WARNING: &str =
    "planned from the live StorageV3 segments at their newest manifests: a compaction before the commit rewrites a segment and its \
     commit then fails; a snapshot (spec.milvus.snapshot.name with create: true) protects the segments and is the consistent choice";

/// The rules the collection's segments need. StorageV1 segments are exported beside the
/// binlogs, so their new fields must not exist in the schema yet; StorageV3 outputs are
/// committed into the segments, so their new fields must exist (AddCollectionField first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Rules {
    V1Export,
    V3,
}

/// One set of rules for the whole plan, or why the collection needs two.
pub(super) fn rules(segments: &[SegmentInfo]) -> Result<Rules> {
    let ids = |version: i64| -> Vec<&SegmentInfo> {
        segments
            .iter()
            .filter(|s| s.storage_version == version && plan::triage(s) == Triage::Backfill)
            .collect()
    };
    // StorageV2 outputs are committed into the segments too: the same rules as V3.
    let (v1, v3) = (ids(STORAGE_V1), [ids(STORAGE_V2), ids(STORAGE_V3)].concat());
    if v3.is_empty() {
        return Ok(Rules::V1Export);
    }
    if v1.is_empty() {
        return Ok(Rules::V3);
    }
    let both: Vec<i64> = partitions(&v1)
        .into_iter()
        .filter(|p| partitions(&v3).contains(p))
        .collect();
    let fix = if both.is_empty() {
        "backfill one partition at a time (spec.milvus.partition): each holds one kind".to_owned()
    } else {
        format!(
            "partition(s) {both:?} hold both kinds and cannot be backfilled until compaction has rewritten their StorageV1 \
             segments; the other partitions can be backfilled one at a time (spec.milvus.partition)"
        )
    };
    Err(BackfillError::schema(format!(
        "the collection holds both StorageV1 segments ({}) and StorageV3 segments ({}); they cannot share a plan: StorageV1 \
         outputs are exported, so the new fields must not exist in the schema yet, while StorageV3 outputs are committed into \
         the segments, so the new fields must exist. {fix}",
        describe(&v1),
        describe(&v3)
    )))
}

fn partitions(segments: &[&SegmentInfo]) -> Vec<i64> {
    let mut out: Vec<i64> = segments.iter().map(|s| s.partition_id).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `3 segment(s), e.g. 11, 12, 13 in partition(s) [1, 2]`.
fn describe(segments: &[&SegmentInfo]) -> String {
    let examples: Vec<String> = segments.iter().take(3).map(|s| s.segment_id.to_string()).collect();
    format!(
        "{} segment(s), e.g. {} in partition(s) {:?}",
        segments.len(),
        examples.join(", "),
        partitions(segments)
    )
}

/// The plan of a collection whose segments to backfill are all StorageV3.
pub(super) async fn plan(
    spec: &EngineSpec,
    at: RunLocations,
    stores: RunStores,
    coll: Collection,
    checks: &mut crate::precheck::Checks,
) -> Result<Planned> {
    if spec.output_path().is_some() {
        return Err(BackfillError::config(
            "spec.output.path cannot be used for StorageV3 segments: Milvus commits only files under each segment's _data/ \
             directory; remove spec.output.path",
        ));
    }
    let (schema, new_fields) = targets::checked_source(
        &stores.source,
        &at.source_place,
        &crate::source::Join {
            pk: &coll.pk,
            mapping: spec.column_mapping.as_ref(),
        },
        &coll.info.fields,
        &coll.name,
        checks,
    )
    .await?;
    let read = spec.mode().fields_to_read(&new_fields);
    let mut segments = plan_segments(&stores.storage, spec.storage.root_path(), &coll, &read).await;
    // `true`: the GC warning is about the StorageV1 export layout; V3 outputs are the segments' own files.
    segments.add_run_warnings(&coll.name, true);
    if !segments.planned.is_empty() {
        segments.warnings.insert(0, NO_SNAPSHOT_WARNING.to_owned());
    }
    let plan = super::assemble(
        spec,
        at,
        super::Learned {
            collection_name: coll.name,
            collection_id: coll.info.collection_id,
            partition_id: coll.only_partition,
            schema_version: coll.info.schema_version,
            pk_field: coll.pk,
            source_key_column: schema.key_column,
            new_fields,
            source_files: schema.files,
            source_rows: schema.rows,
            segments,
        },
    )?;
    Ok(Planned { plan, stores })
}

/// Triages every segment and reads the manifests of the ones to backfill, a few at a time. A
/// segment that cannot be planned fails alone, with the reason.
/// `read`: the new fields whose existing values the mode reads.
async fn plan_segments(storage: &Store, root: &str, coll: &Collection, read: &[i64]) -> SegmentPlans {
    let mut out = SegmentPlans::default();
    let mut todo = Vec::new();
    for s in &coll.segments {
        let entry = |reason: String| SkippedSegment {
            segment_id: s.segment_id,
            partition_id: s.partition_id,
            num_rows: s.num_rows,
            reason,
        };
        match plan::triage(s) {
            Triage::Backfill => todo.push(s.clone()),
            Triage::Skip(r) => out.skipped.push(entry(r)),
            Triage::Warn(w) => {
                out.warnings.push(w.clone());
                out.skipped.push(entry(w));
            }
            Triage::Fail(r) => out.failed.push(entry(r)),
        }
    }
    // Owned segments: a stream of futures borrowing its items is not `Send` for every
    // lifetime, which the operator's controller future must be.
    let results: Vec<(SegmentInfo, std::result::Result<SegmentPlan, String>)> =
        futures_util::stream::iter(todo.into_iter().map(|s| async move {
            let r = if s.storage_version == STORAGE_V2 {
                super::live_v2::read_segment(storage, root, coll, &s, read).await
            } else {
                read_segment(storage, root, coll, &s, read).await
            };
            (s, r)
        }))
        .buffered(16)
        .collect()
        .await;
    for (s, r) in results {
        match r {
            Ok(p) => out.planned.push(p),
            Err(reason) => out.failed.push(SkippedSegment {
                segment_id: s.segment_id,
                partition_id: s.partition_id,
                num_rows: s.num_rows,
                reason,
            }),
        }
    }
    out
}

/// One StorageV3 segment at its newest manifest, or why it cannot be backfilled.
async fn read_segment(
    storage: &Store,
    root: &str,
    coll: &Collection,
    s: &SegmentInfo,
    read: &[i64],
) -> std::result::Result<SegmentPlan, String> {
    let prefix = layout::segment_insert_log_prefix(root, coll.info.collection_id, s.partition_id, s.segment_id);
    let base = prefix.trim_end_matches('/').to_owned();
    let metadata = format!("{base}/_metadata/");
    let listing = storage
        .list(&metadata)
        .await
        .map_err(|e| format!("cannot list {}: {e}", storage.display(&metadata)))?;
    let Some((version, key)) = newest_manifest(&listing) else {
        return Err(format!(
            "no manifest-<N>.avro under {}: is spec.storage (bucket, rootPath {root}) the storage this Milvus uses?",
            storage.display(&metadata)
        ));
    };
    let bytes = storage.get(&key).await.map_err(|e| match e {
        StoreError::NotFound(_) => format!(
            "manifest {} went away while planning (compacted?): plan again",
            storage.display(&key)
        ),
        e => format!("cannot read {}: {e}", storage.display(&key)),
    })?;
    let manifest = Manifest::decode(&bytes).map_err(|e| format!("{}: {e}", storage.display(&key)))?;
    let v3 = v3_segment(&manifest, &base, version, &coll.pk)?;
    let num_rows = v3.rows();
    if i64::try_from(num_rows).ok() != Some(s.num_rows) {
        return Err(format!(
            "manifest version {version} holds {num_rows} rows but Milvus reports num_rows {}; the segment is being rewritten \
             (a compaction or flush in progress?): plan again later",
            s.num_rows
        ));
    }
    Ok(SegmentPlan {
        segment_id: s.segment_id,
        partition_id: s.partition_id,
        partition_name: coll.partition_names.get(&s.partition_id).cloned().unwrap_or_default(),
        num_rows,
        storage_version: STORAGE_V3,
        pk_binlogs: vec![],
        existing: manifest.existing_columns(read, &base),
        output_dir: base,
        v3: Some(v3),
    })
}

/// The highest `manifest-N.avro` of a `_metadata/` listing: (N, key).
pub(super) fn newest_manifest(listing: &[ObjectMeta]) -> Option<(i64, String)> {
    listing
        .iter()
        .filter_map(|o| Some((manifest_version(&o.key)?, o.key.clone())))
        .max_by_key(|(v, _)| *v)
}

#[cfg(test)]
#[path = "live_v3_tests.rs"]
mod tests;
