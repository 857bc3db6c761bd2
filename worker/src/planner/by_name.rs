//! Planning from a snapshot named in Milvus 3.0+ (`spec.milvus.snapshot.name`): flush when
//! asked, create the snapshot when asked, then plan exactly as from a snapshot file
//! ([`crate::snapshot_planner`]), at the metadata JSON that DescribeSnapshot points to.

use milvus_backfill_api::lifecycle::{Step, StepRecord, StepState};
use milvus_backfill_api::place::S3Uri;
use milvus_backfill_api::spec::{EngineSpec, SnapshotSpec};

use super::Planned;
use crate::config::{BackfillDoc, MilvusToken};
use crate::error::{BackfillError, Result};
use crate::milvus::{Created, MilvusClient, SnapshotInfo};
use crate::precheck::Checks;
use crate::stores::StoreCredentials;
use milvus_backfill_api::precheck::Check;

pub(super) async fn plan(
    doc: &BackfillDoc,
    snapshot: &SnapshotSpec,
    token: &MilvusToken,
    creds: &StoreCredentials,
    checks: &mut Checks,
) -> Result<Planned> {
    let spec = &doc.spec;
    let name = snapshot.name.as_deref().unwrap_or_default();
    // Before anything changes in Milvus: a refused spec must not leave a new snapshot behind.
    checks.within(Check::Spec, check_spec(spec))?;
    let collection = &spec.milvus.collection;
    let connected = MilvusClient::connect(&spec.milvus.uri, spec.milvus.database(), token).await;
    let mut milvus = checks.within(Check::Collection, connected)?;
    // CreateSnapshot captures sealed segments and the schema: the flush seals the recent
    // inserts and the new fields must be in the schema first.
    let before = super::steps::before_planning(spec, &mut milvus, creds).await;
    let mut steps = checks.within(Check::Lifecycle, before)?;
    let mut warnings = Vec::new();
    if snapshot.create() {
        let protection = snapshot.compaction_protection_seconds();
        let created = milvus
            .create_snapshot(name, collection, protection)
            .await
            .map_err(|e| super::steps::in_step(Step::Snapshot, e));
        let created = checks.within(Check::Lifecycle, created)?;
        steps.push(match created {
            Created::New => {
                tracing::info!(snapshot = name, protection, "snapshot created");
                StepRecord::new(
                    Step::Snapshot,
                    StepState::Done,
                    format!("created snapshot {name:?}; its segments are protected from compaction for {protection} s"),
                )
            }
            Created::Existed(reason) => {
                warnings.push(existed_warning(name, &reason));
                StepRecord::new(
                    Step::Snapshot,
                    StepState::AlreadyDone,
                    format!("snapshot {name:?} existed already; planned from it"),
                )
            }
        });
    }
    let info = checks.within(Check::Collection, milvus.describe_snapshot(name, collection).await)?;
    let location = checks.within(Check::Collection, metadata_uri(&info, &spec.storage.bucket))?;
    tracing::info!(snapshot = name, %location, "planning from the snapshot");
    // The flush and the new fields are done; the snapshot planner, which has no Milvus
    // connection, refuses both.
    let mut doc = doc.clone();
    doc.spec.flush = None;
    if let Some(l) = doc.spec.lifecycle.as_mut() {
        (l.flush, l.add_fields) = (None, None);
    }
    let mut planned = crate::snapshot_planner::plan(&doc, &location, creds, checks)
        .await
        .map_err(|e| name_the_snapshot(e, name, &location))?;
    planned.plan.warnings.extend(warnings);
    planned.plan.lifecycle.splice(0..0, steps);
    Ok(planned)
}

/// The snapshot planner's spec rules, worded for `snapshot.name`.
fn check_spec(spec: &EngineSpec) -> Result<()> {
    if spec.milvus.partition.is_some() {
        return Err(BackfillError::config(
            "spec.milvus.partition cannot be combined with spec.milvus.snapshot.name: a snapshot covers the whole collection; \
             leave it out to backfill the snapshot's segments",
        ));
    }
    if spec.output_path().is_some() {
        return Err(BackfillError::config(
            "spec.output.path cannot be used when planning from a snapshot: Milvus commits only files under each segment's \
             _data/ directory; remove spec.output.path",
        ));
    }
    Ok(())
}

fn existed_warning(name: &str, reason: &str) -> String {
    format!(
        "snapshot {name:?} existed already ({reason}), so none was created: planned from the existing one. Rows inserted after it \
         was taken get no values, and its compaction protection may have expired; use a new spec.milvus.snapshot.name for a fresh snapshot"
    )
}

/// Errors about the metadata file say which snapshot it belongs to (the snapshot planner names
/// only the location).
fn name_the_snapshot(mut e: BackfillError, name: &str, location: &str) -> BackfillError {
    if e.message.contains(location) {
        e.message = format!(
            "snapshot {name:?} (DescribeSnapshot s3_location {location}; read with spec.storage): {}",
            e.message
        );
    }
    e
}

/// DescribeSnapshot's `s3_location` as an `s3://` URI: a bare key is in `spec.storage.bucket`.
pub(super) fn metadata_uri(info: &SnapshotInfo, bucket: &str) -> Result<String> {
    let loc = info.s3_location.trim();
    if loc.is_empty() {
        return Err(BackfillError::connection(format!(
            "DescribeSnapshot gave no s3_location for snapshot {:?}: its metadata is not written yet (a snapshot still being \
             created?); plan again later",
            info.name
        )));
    }
    if let Some(uri) = S3Uri::parse(loc) {
        return Ok(uri.to_string());
    }
    if let Some((scheme, _)) = loc.split_once("://") {
        return Err(BackfillError::config(format!(
            "snapshot {:?} is at {loc}: scheme {scheme}:// is not readable here; only s3:// (or a bucket-relative key) is",
            info.name
        )));
    }
    Ok(S3Uri {
        bucket: bucket.to_owned(),
        key: loc.trim_start_matches('/').to_owned(),
    }
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(location: &str) -> SnapshotInfo {
        SnapshotInfo {
            name: "s1".into(),
            collection_name: "c".into(),
            create_ts: 0,
            s3_location: location.into(),
        }
    }

    #[test]
    fn a_bare_location_is_a_key_in_the_storage_bucket() {
        let uri = |l: &str| metadata_uri(&info(l), "milvus-bucket");
        let key = "files/snapshots/1001/metadata/7.json";
        assert_eq!(uri(key).unwrap(), format!("s3://milvus-bucket/{key}"));
        assert_eq!(uri(&format!("/{key}")).unwrap(), format!("s3://milvus-bucket/{key}"));
        assert_eq!(uri("s3://other/k.json").unwrap(), "s3://other/k.json");
        assert_eq!(uri("s3a://other/k.json").unwrap(), "s3://other/k.json");
        let e = uri("gs://other/k.json").unwrap_err();
        assert!(e.message.contains("gs://") && e.kind.is_permanent(), "{e}");
        let e = uri(" ").unwrap_err();
        assert!(e.message.contains("no s3_location") && !e.kind.is_permanent(), "{e}");
    }

    #[test]
    fn spec_fields_a_snapshot_cannot_honour_are_refused_by_their_names() {
        let mut spec = EngineSpec::default();
        assert!(check_spec(&spec).is_ok());
        spec.milvus.partition = Some("p".into());
        assert!(check_spec(&spec)
            .unwrap_err()
            .message
            .contains("spec.milvus.snapshot.name"));
        spec.milvus.partition = None;
        spec.output = Some(milvus_backfill_api::spec::OutputSpec {
            path: Some("s3://o/p".into()),
            v3_commit: None,
        });
        assert!(check_spec(&spec)
            .unwrap_err()
            .message
            .contains("remove spec.output.path"));
    }
}
