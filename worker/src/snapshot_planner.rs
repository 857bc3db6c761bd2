//! Planning from a Milvus 3.0 snapshot file alone (`spec.milvus.snapshot.path`): schema, field
//! IDs, schema version, primary key and segments come from the snapshot; each StorageV3
//! segment is read at the snapshot's manifest version, each StorageV2 segment from its
//! manifest-list entry ([`crate::v2_planner`]). No Milvus connection. Writes nothing.

use futures_util::StreamExt;

use milvus_backfill_api::place::S3Uri;
use milvus_backfill_api::plan::V3Segment;
use milvus_backfill_api::spec::EngineSpec;

use crate::config::BackfillDoc;
use crate::error::{BackfillError, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::plan::{PkField, SegmentPlan, SkippedSegment};
use crate::planner::{self, Planned, SegmentPlans};
use crate::precheck::Checks;
use crate::snapshot::{Snapshot, V3Entry};
use crate::store::{Store, StoreError};
use crate::stores::{RunLocations, RunStores, StoreCredentials};
use crate::targets;
use crate::v2_planner;
use milvus_backfill_api::precheck::Check;

pub const CONSISTENCY_NOTE: &str =
    "planned from a snapshot: its segments are protected from compaction, so the rows read now are the rows Milvus commits onto";

pub async fn plan(
    doc: &BackfillDoc,
    snapshot_path: &str,
    creds: &StoreCredentials,
    checks: &mut Checks,
) -> Result<Planned> {
    let spec = &doc.spec;
    checks.within(Check::Spec, check_spec(spec))?;
    let at = RunLocations::of_spec(spec);
    let stores = RunStores::open(&at, creds).await;
    let read = read_snapshot(spec, snapshot_path, &stores.storage, creds).await;
    let snap = checks.within(Check::Collection, read)?;
    if !spec.milvus.collection.is_empty() && spec.milvus.collection != snap.collection_name {
        return checks.within(
            Check::Collection,
            Err(BackfillError::config(format!(
                "spec.milvus.collection is {:?} but the snapshot {snapshot_path} is of collection {:?}",
                spec.milvus.collection, snap.collection_name
            ))),
        );
    }
    checks.pass(
        Check::Collection,
        format!(
            "snapshot {snapshot_path} of collection {:?} (ID {}, schema version {}): {} StorageV3 segment(s), {} manifest list(s) of other segments",
            snap.collection_name,
            snap.collection.collection_id,
            snap.collection.schema_version,
            snap.v3_segments.len(),
            snap.manifest_list.len()
        ),
    );
    let pk = checks.within(
        Check::Mapping,
        planner::join_field(&snap.collection, spec.primary_key_field_id, spec.join_key.as_deref()),
    )?;
    let (schema, new_fields) = targets::checked_source(
        &stores.source,
        &at.source_place,
        &crate::source::Join {
            pk: &pk,
            mapping: spec.column_mapping.as_ref(),
        },
        &snap.collection.fields,
        &snap.collection_name,
        checks,
    )
    .await?;
    let read = spec.mode().fields_to_read(&new_fields);
    let mut segments = plan_segments(&stores.storage, &at.storage_bucket, &snap, &pk, &read).await;
    let v2 = v2_planner::plan_all(&stores.storage, spec.storage.root_path(), &snap, &pk, &read)
        .await
        .map_err(|e| BackfillError::schema(format!("spec.milvus.snapshot.path {snapshot_path}: {e}")));
    let v2 = checks.within(Check::Segments, v2)?;
    for p in v2 {
        match p {
            v2_planner::Planned::Segment(s) => segments.planned.push(s),
            v2_planner::Planned::Skipped(s) => segments.skipped.push(s),
            v2_planner::Planned::Failed(s) => segments.failed.push(s),
        }
    }
    segments.planned.sort_by_key(|s| s.segment_id);
    checks.within(Check::Segments, something_planned(&segments, &stores.storage))?;
    segments.warnings.insert(0, CONSISTENCY_NOTE.to_owned());
    let plan = planner::assemble(
        spec,
        at,
        planner::Learned {
            collection_name: snap.collection_name,
            collection_id: snap.collection.collection_id,
            partition_id: None,
            schema_version: snap.collection.schema_version,
            pk_field: pk,
            source_key_column: schema.key_column,
            new_fields,
            source_files: schema.files,
            source_rows: schema.rows,
            segments,
        },
    )?;
    Ok(Planned { plan, stores })
}

fn check_spec(spec: &EngineSpec) -> Result<()> {
    if spec.milvus.partition.is_some() {
        return Err(BackfillError::config(
            "spec.milvus.partition cannot be combined with spec.milvus.snapshot.path: a snapshot names partitions by ID only; \
             leave it out to backfill the snapshot's segments",
        ));
    }
    if spec.output_path().is_some() {
        return Err(BackfillError::config(
            "spec.output.path cannot be used when planning from a snapshot: Milvus commits only files under each segment's \
             _data/ directory; remove spec.output.path",
        ));
    }
    if spec.flush() {
        return Err(BackfillError::config(
            "spec.flush needs a Milvus connection; with a snapshot, flush before creating the snapshot and remove spec.flush",
        ));
    }
    if spec.add_fields().is_some() {
        return Err(BackfillError::config(
            "spec.lifecycle.addFields cannot change a snapshot file's schema: add the fields before the snapshot is taken \
             (or plan with spec.lifecycle.snapshot, which adds them first), and remove spec.lifecycle.addFields",
        ));
    }
    Ok(())
}

async fn read_snapshot(spec: &EngineSpec, path: &str, storage: &Store, creds: &StoreCredentials) -> Result<Snapshot> {
    let what = format!("spec.milvus.snapshot.path {path}");
    let bytes = match S3Uri::parse(path) {
        Some(uri) if uri.bucket == spec.storage.bucket => storage.get(&uri.key).await,
        Some(uri) => {
            let at = RunLocations::of_spec(spec);
            Store::open_bucket(&at.storage, &uri.bucket, creds.storage.as_ref())
                .await
                .get(&uri.key)
                .await
        }
        None => tokio::fs::read(path).await.map(Into::into).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(path.to_owned()),
            _ => StoreError::Other(e.to_string()),
        }),
    };
    let bytes = bytes.map_err(|e| match e {
        StoreError::NotFound(_) => BackfillError::config(format!(
            "{what} does not exist: give DescribeSnapshot's s3_location (s3://<bucket>/<key>) or a local copy"
        )),
        e => BackfillError::connection(format!("{what} cannot be read: {e}")),
    })?;
    Snapshot::parse(&bytes).map_err(|e| BackfillError::config(format!("{what}: {e}")))
}

/// A run in which every segment failed planning would write only its failure: it stops here
/// instead, before anything is written. When no segment's manifest exists at all, the spec's
/// storage is not this Milvus' storage (a wrong bucket or rootPath), which is the user's to fix.
fn something_planned(segments: &SegmentPlans, storage: &Store) -> Result<()> {
    if !segments.planned.is_empty() || segments.failed.is_empty() {
        return Ok(());
    }
    let first = &segments.failed[0];
    let n = segments.failed.len();
    if segments.failed.iter().all(|f| f.reason.contains("does not exist")) {
        return Err(BackfillError::config(format!(
            "none of the snapshot's {n} segment manifest(s) exists in {}: check spec.storage (bucket, rootPath) is \
             the storage of the Milvus that took the snapshot (segment {}: {})",
            storage.describe(),
            first.segment_id,
            first.reason
        )));
    }
    Err(BackfillError::new(
        ErrorKind::SegmentProcessingError,
        format!(
            "every segment failed planning ({n}); segment {}: {}",
            first.segment_id, first.reason
        ),
    ))
}

/// Every V3 segment, manifests read a few at a time. A segment that cannot be planned fails
/// alone, with the reason.
/// `read`: the new fields whose existing values the mode reads.
async fn plan_segments(storage: &Store, bucket: &str, snap: &Snapshot, pk: &PkField, read: &[i64]) -> SegmentPlans {
    let coll = snap.collection.collection_id;
    // Owned entries: a stream of futures borrowing its items is not `Send` for every
    // lifetime, which the operator's controller future must be.
    let results: Vec<(V3Entry, std::result::Result<Read, String>)> =
        futures_util::stream::iter(snap.v3_segments.clone().into_iter().map(|e| async move {
            let r = read_segment(storage, bucket, coll, &e, pk, read).await;
            (e, r)
        }))
        .buffered(16)
        .collect()
        .await;
    let mut out = SegmentPlans::default();
    for (e, r) in results {
        let entry = |partition_id, num_rows, reason: String| SkippedSegment {
            segment_id: e.segment_id,
            partition_id,
            num_rows,
            reason,
        };
        match r {
            Ok(read) if read.segment.num_rows == 0 => {
                out.skipped
                    .push(entry(read.segment.partition_id, 0, "empty segment".into()));
            }
            Ok(read) => {
                out.warnings.extend(read.warning);
                out.planned.push(read.segment);
            }
            Err(reason) => {
                let part = e.collection_and_partition().map_or(0, |(_, p)| p);
                out.failed.push(entry(part, 0, reason));
            }
        }
    }
    out
}

struct Read {
    segment: SegmentPlan,
    warning: Option<String>,
}

async fn read_segment(
    storage: &Store,
    bucket: &str,
    coll: i64,
    e: &V3Entry,
    pk: &PkField,
    read: &[i64],
) -> std::result::Result<Read, String> {
    let base = e.base_key(bucket);
    let Some((c, partition_id)) = e.collection_and_partition() else {
        return Err(format!(
            "base_path {:?} is not <rootPath>/insert_log/<collection>/<partition>/<segment>",
            e.base_path
        ));
    };
    if c != coll {
        return Err(format!("base_path {:?} is not under collection {coll}", e.base_path));
    }
    let manifest = read_manifest(storage, &base, e.version).await?;
    let v3 = v3_segment(&manifest, &base, e.version, pk)?;
    let num_rows = v3.rows();
    let warning = newer_manifest(storage, &base, e.version, num_rows).await?;
    Ok(Read {
        segment: SegmentPlan {
            segment_id: e.segment_id,
            partition_id,
            partition_name: String::new(),
            num_rows,
            storage_version: 3,
            pk_binlogs: vec![],
            existing: manifest.existing_columns(read, &base),
            output_dir: base,
            v3: Some(v3),
        },
        warning,
    })
}

/// A V3 segment read at `version` of its manifest, or why not: the column groups must line up
/// and one must hold the primary key. Pure; the live planner's StorageV3 segments use it too.
pub fn v3_segment(
    manifest: &Manifest,
    base: &str,
    version: i64,
    pk: &PkField,
) -> std::result::Result<V3Segment, String> {
    if let Some((g, rows)) = manifest.uneven_groups().first() {
        return Err(format!(
            "manifest version {version} is inconsistent: column group {g} holds {rows} rows, group 0 holds {}",
            manifest.rows()
        ));
    }
    let pk_files = manifest.files_of(pk.field_id, base).ok_or_else(|| {
        format!(
            "no column group of manifest version {version} holds the primary key (column \"{}\")",
            pk.field_id
        )
    })?;
    Ok(V3Segment {
        base_path: base.to_owned(),
        manifest_version: version,
        pk_files,
    })
}

fn manifest_key(base: &str, version: i64) -> String {
    format!("{base}/_metadata/manifest-{version}.avro")
}

async fn read_manifest(storage: &Store, base: &str, version: i64) -> std::result::Result<Manifest, String> {
    let key = manifest_key(base, version);
    let bytes = storage.get(&key).await.map_err(|e| match e {
        StoreError::NotFound(_) => format!(
            "manifest version {version} ({}) does not exist: the snapshot's segment is gone or spec.storage is not this Milvus' storage",
            storage.display(&key)
        ),
        e => format!("cannot read {}: {e}", storage.display(&key)),
    })?;
    Manifest::decode(&bytes).map_err(|e| format!("{}: {e}", storage.display(&key)))
}

/// A note when the segment has moved on since the snapshot, or an error when its rows changed
/// (the rows read at the snapshot's version would not line up with the current ones).
async fn newer_manifest(
    storage: &Store,
    base: &str,
    version: i64,
    rows: u64,
) -> std::result::Result<Option<String>, String> {
    let listing = storage
        .list(&format!("{base}/_metadata/"))
        .await
        .map_err(|e| format!("cannot list {base}/_metadata/: {e}"))?;
    let newest = listing
        .iter()
        .filter_map(|o| manifest_version(&o.key))
        .max()
        .unwrap_or(version);
    if newest <= version {
        return Ok(None);
    }
    let current = read_manifest(storage, base, newest).await?;
    if current.rows() != rows {
        return Err(format!(
            "its manifest moved from version {version} (the snapshot's) to {newest}, and the rows changed from {rows} to {}: \
             the segment was rewritten since the snapshot; take a new snapshot",
            current.rows()
        ));
    }
    Ok(Some(format!(
        "segment under {base} has manifest versions up to {newest}, newer than the snapshot's {version}: rows are read at {version}; \
         the commit adds the new columns onto the current manifest (same {rows} rows)"
    )))
}

/// `.../_metadata/manifest-12.avro` → 12.
pub fn manifest_version(key: &str) -> Option<i64> {
    key.rsplit('/')
        .next()?
        .strip_prefix("manifest-")?
        .strip_suffix(".avro")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifest_versions_are_numeric() {
        assert_eq!(super::manifest_version("b/_metadata/manifest-12.avro"), Some(12));
        assert_eq!(super::manifest_version("b/_metadata/manifest-x.avro"), None);
        assert_eq!(super::manifest_version("b/_metadata/other.json"), None);
    }
}
