//! Planning a snapshot's StorageV1/V2 segments from its `manifest-list`: each file is one
//! segment's `ManifestEntry` (raw Avro of the snapshot's format version). V2 segments get a
//! plan (the PK's column group files in ascending log ID); V1 segments fail, since Milvus
//! commits backfills only for V2 and V3.

use futures_util::StreamExt;

use milvus_backfill_api::layout;

use crate::plan::{Binlog, ExistingColumn, PkField, SegmentPlan, SkippedSegment, V3File, LEVEL_L0};
use crate::snapshot::Snapshot;
use crate::snapshot_manifest::{self, FieldBinlog, SegmentEntry};
use crate::store::{Store, StoreError};

/// A manifest-list entry's outcome.
pub enum Planned {
    Segment(SegmentPlan),
    Skipped(SkippedSegment),
    Failed(SkippedSegment),
}

/// `existing`: the new fields whose existing values the mode reads (their groups are planned too).
pub async fn plan_all(
    storage: &Store,
    root: &str,
    snap: &Snapshot,
    pk: &PkField,
    existing: &[i64],
) -> Result<Vec<Planned>, String> {
    let coll = snap.collection.collection_id;
    let entries: Vec<Result<SegmentEntry, String>> =
        futures_util::stream::iter(snap.manifest_list.clone().into_iter().map(|path| async move {
            let bytes = read(storage, root, &path).await?;
            snapshot_manifest::decode(&bytes, snap.format_version).map_err(|e| format!("{path}: {e}"))
        }))
        .buffered(16)
        .collect()
        .await;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let mut entry = e?;
        let untagged = entry.binlogs.iter().any(|g| g.child_fields.is_empty());
        if entry.storage_version == 2
            && (field_group(&entry.binlogs, pk.field_id).is_none() || (untagged && !existing.is_empty()))
        {
            // Snapshots before format 4 lack child fields: ask the files which groups hold the
            // PK (and the fields whose existing values are read).
            tag_groups(storage, root, coll, &mut entry, pk.field_id, !existing.is_empty()).await;
        }
        out.push(plan_entry(&entry, root, coll, pk, existing));
    }
    Ok(out)
}

/// Reads the footer of each group's first file and records its fields as the group's child
/// fields, so that [`field_group`] finds the group holding the primary key (and, with `all`,
/// every other field). A footer that cannot be read leaves the group as it was (the segment then
/// fails with the reason, or the field reads as having no data).
async fn tag_groups(storage: &Store, root: &str, coll: i64, e: &mut SegmentEntry, pk_field: i64, all: bool) {
    let prefix = layout::segment_insert_log_prefix(root, coll, e.partition_id, e.segment_id);
    for g in e.binlogs.iter_mut().filter(|g| g.child_fields.is_empty()) {
        let Some(first) = g.binlogs.iter().min_by_key(|b| b.log_id) else {
            continue;
        };
        let key = format!("{prefix}{}/{}", g.field_id, first.log_id);
        let Ok(size) = storage.head(&key).await else {
            continue;
        };
        if let Ok((ids, _rows)) = crate::source::footer_fields_and_rows(storage, &key, size).await {
            g.child_fields = ids;
        }
        if g.child_fields.contains(&pk_field) && !all {
            return;
        }
    }
}

/// A manifest-list path is a key in the bucket, or relative to the root path.
async fn read(storage: &Store, root: &str, path: &str) -> Result<bytes::Bytes, String> {
    match storage.get(path).await {
        Err(StoreError::NotFound(_)) if !path.starts_with(&format!("{root}/")) => {
            let under_root = format!("{root}/{path}");
            storage
                .get(&under_root)
                .await
                .map_err(|e| format!("snapshot manifest {path}: {e}"))
        }
        r => r.map_err(|e| format!("snapshot manifest {path}: {e}")),
    }
}

fn plan_entry(e: &SegmentEntry, root: &str, coll: i64, pk: &PkField, read: &[i64]) -> Planned {
    let entry = |reason: String| SkippedSegment {
        segment_id: e.segment_id,
        partition_id: e.partition_id,
        num_rows: e.num_rows,
        reason,
    };
    if e.segment_level == i64::from(LEVEL_L0) {
        return Planned::Skipped(entry("L0 (delete-only) segment".into()));
    }
    if e.num_rows <= 0 {
        return Planned::Skipped(entry("empty segment".into()));
    }
    if e.storage_version != 2 {
        return Planned::Failed(entry(format!(
            "storage version {}: Milvus commits backfills only for StorageV2 and V3 segments; let Milvus rewrite it (compaction) first",
            e.storage_version
        )));
    }
    let existing = match existing_columns(e, root, coll, read) {
        Ok(x) => x,
        Err(reason) => return Planned::Failed(entry(reason)),
    };
    match pk_binlogs(e, root, coll, pk.field_id) {
        Ok(binlogs) => Planned::Segment(SegmentPlan {
            segment_id: e.segment_id,
            partition_id: e.partition_id,
            partition_name: String::new(),
            num_rows: e.num_rows as u64,
            storage_version: 2,
            pk_binlogs: binlogs,
            output_dir: layout::segment_insert_log_prefix(root, coll, e.partition_id, e.segment_id)
                .trim_end_matches('/')
                .to_owned(),
            v3: None,
            existing,
        }),
        Err(reason) => Planned::Failed(entry(reason)),
    }
}

/// The files of the PK's column group in ascending log ID, with their rows; they must add up to
/// the segment's rows.
pub fn pk_binlogs(e: &SegmentEntry, root: &str, coll: i64, pk_field: i64) -> Result<Vec<Binlog>, String> {
    let group = field_group(&e.binlogs, pk_field).ok_or_else(|| {
        format!(
            "no column group lists the primary key field {pk_field} (groups {:?}); snapshots of format 4 record child fields, older ones only single-field groups",
            e.binlogs.iter().map(|g| g.field_id).collect::<Vec<_>>()
        )
    })?;
    group_binlogs(e, group, root, coll, "the primary key group")
}

/// The new fields of `read` that a group of the segment holds, with that group's files.
fn existing_columns(e: &SegmentEntry, root: &str, coll: i64, read: &[i64]) -> Result<Vec<ExistingColumn>, String> {
    let mut out = Vec::new();
    for &field_id in read {
        let Some(group) = field_group(&e.binlogs, field_id) else {
            continue;
        };
        let what = format!("the group holding field {field_id}");
        let files = group_binlogs(e, group, root, coll, &what)?
            .into_iter()
            .map(|b| V3File {
                key: b.key,
                start_index: 0,
                end_index: b.rows,
            })
            .collect();
        out.push(ExistingColumn { field_id, files });
    }
    Ok(out)
}

/// A group's files in ascending log ID, with their rows, which must add up to the segment's.
fn group_binlogs(
    e: &SegmentEntry,
    group: &FieldBinlog,
    root: &str,
    coll: i64,
    what: &str,
) -> Result<Vec<Binlog>, String> {
    let prefix = layout::segment_insert_log_prefix(root, coll, e.partition_id, e.segment_id);
    let mut binlogs: Vec<Binlog> = group
        .binlogs
        .iter()
        .map(|b| Binlog {
            // Milvus leaves log_path empty and rebuilds the key from the IDs.
            key: if b.log_path.is_empty() {
                format!("{prefix}{}/{}", group.field_id, b.log_id)
            } else {
                crate::manifest::bucket_key(&b.log_path)
            },
            log_id: b.log_id,
            size: b.log_size.max(0) as u64,
            rows: b.entries_num.max(0) as u64,
        })
        .collect();
    binlogs.sort_by_key(|b| b.log_id);
    let total: u64 = binlogs.iter().map(|b| b.rows).sum();
    if total != e.num_rows as u64 {
        return Err(format!(
            "{what}'s files hold {total} rows but the snapshot says num_of_rows {}",
            e.num_rows
        ));
    }
    Ok(binlogs)
}

/// The group holding `field_id`: the one listing it as a child field, else a single-field
/// group named by it (snapshots before format 4).
fn field_group(groups: &[FieldBinlog], field_id: i64) -> Option<&FieldBinlog> {
    groups.iter().find(|g| g.child_fields.contains(&field_id)).or_else(|| {
        groups
            .iter()
            .find(|g| g.child_fields.is_empty() && g.field_id == field_id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot_manifest::BinlogEntry;

    fn entry(groups: Vec<FieldBinlog>, rows: i64) -> SegmentEntry {
        SegmentEntry {
            segment_id: 9,
            partition_id: 8,
            segment_level: 2,
            num_rows: rows,
            storage_version: 2,
            binlogs: groups,
        }
    }

    fn group(id: i64, children: Vec<i64>, logs: &[(i64, i64)]) -> FieldBinlog {
        FieldBinlog {
            field_id: id,
            child_fields: children,
            binlogs: logs
                .iter()
                .map(|&(log_id, rows)| BinlogEntry {
                    log_id,
                    entries_num: rows,
                    log_path: String::new(),
                    log_size: 10,
                })
                .collect(),
        }
    }

    #[test]
    fn the_pk_group_files_in_log_id_order() {
        let e = entry(
            vec![
                group(0, vec![0, 1, 100], &[(30, 5), (4, 7)]),
                group(101, vec![101], &[(5, 12)]),
            ],
            12,
        );
        let b = pk_binlogs(&e, "files", 7, 100).unwrap();
        assert_eq!(
            b.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(),
            vec!["files/insert_log/7/8/9/0/4", "files/insert_log/7/8/9/0/30"]
        );
    }

    #[test]
    fn the_fields_a_mode_reads_come_with_their_groups_files() {
        let e = entry(
            vec![
                group(0, vec![0, 1, 100, 101], &[(30, 5), (4, 7)]),
                group(102, vec![], &[(6, 12)]),
            ],
            12,
        );
        // 101 in the main group, 102 a single-field group, 103 nowhere (reads as all null).
        let x = existing_columns(&e, "files", 7, &[101, 102, 103]).unwrap();
        assert_eq!(x.iter().map(|c| c.field_id).collect::<Vec<_>>(), vec![101, 102]);
        assert_eq!(
            x[0].files
                .iter()
                .map(|f| (f.key.as_str(), f.end_index))
                .collect::<Vec<_>>(),
            vec![("files/insert_log/7/8/9/0/4", 7), ("files/insert_log/7/8/9/0/30", 5)]
        );
        assert_eq!(x[1].files[0].key, "files/insert_log/7/8/9/102/6");
        let Planned::Segment(p) = plan_entry(&e, "files", 7, &pk(), &[102]) else {
            panic!("planned")
        };
        assert_eq!(p.existing.len(), 1);
        let Planned::Segment(p) = plan_entry(&e, "files", 7, &pk(), &[]) else {
            panic!("planned")
        };
        assert!(p.existing.is_empty(), "replace reads nothing");
        let short = entry(
            vec![group(0, vec![0, 100], &[(1, 12)]), group(102, vec![], &[(6, 11)])],
            12,
        );
        assert!(existing_columns(&short, "files", 7, &[102])
            .unwrap_err()
            .contains("the group holding field 102's files hold 11 rows"));
    }

    fn pk() -> PkField {
        PkField {
            int_width: None,
            physical: false,
            field_id: 100,
            name: "id".into(),
            pk_type: crate::plan::PkType::Int64,
        }
    }

    #[test]
    fn rows_must_add_up_and_the_group_must_be_known() {
        let short = entry(vec![group(0, vec![0, 100], &[(1, 5)])], 6);
        assert!(pk_binlogs(&short, "files", 7, 100).unwrap_err().contains("hold 5 rows"));
        // Format < 4: only a single-field group named by the PK can be found.
        let old = entry(vec![group(0, vec![], &[(1, 6)])], 6);
        assert!(pk_binlogs(&old, "files", 7, 100)
            .unwrap_err()
            .contains("no column group"));
        let single = entry(vec![group(100, vec![], &[(1, 6)])], 6);
        assert_eq!(
            pk_binlogs(&single, "files", 7, 100).unwrap()[0].key,
            "files/insert_log/7/8/9/100/1"
        );
    }
}
