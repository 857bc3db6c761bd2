//! A live StorageV2 segment (Milvus 2.6/3.0, no snapshot): its column groups are the
//! directories `{seg}/{groupID}/` holding packed Parquet files `{logID}`. The primary key's
//! group is the one whose files carry its field ID in their Parquet schema (milvus-storage's
//! packed writer tags every column with `PARQUET:field_id`); its files, in ascending log ID,
//! are the segment's rows in storage order, and their footers give the row counts.

use std::collections::BTreeMap;

use milvus_backfill_api::layout;

use super::Collection;
use crate::plan::{Binlog, ExistingColumn, SegmentInfo, SegmentPlan, V3File, STORAGE_V2};
use crate::source::footer_fields_and_rows;
use crate::store::{ObjectMeta, Store};

/// The column groups of a segment listing: group ID → files `(log ID, key, size)` in log ID
/// order. Keys that are not `{prefix}{group}/{logID}` (a V3 `_data/`, stray files) are ignored.
pub(super) fn groups(listing: &[ObjectMeta], prefix: &str) -> BTreeMap<i64, Vec<(i64, String, u64)>> {
    let mut out: BTreeMap<i64, Vec<(i64, String, u64)>> = BTreeMap::new();
    for o in listing {
        let Some(rest) = o.key.strip_prefix(prefix) else {
            continue;
        };
        let mut parts = rest.split('/');
        let (Some(g), Some(l), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(group), Ok(log)) = (g.parse::<i64>(), l.parse::<i64>()) {
            out.entry(group).or_default().push((log, o.key.clone(), o.size));
        }
    }
    for files in out.values_mut() {
        files.sort_by_key(|(log, _, _)| *log);
    }
    out
}

/// One StorageV2 segment's plan from its files, or why it cannot be backfilled. `read`: the new
/// fields whose existing values the mode reads (the groups holding them are planned too).
pub(super) async fn read_segment(
    storage: &Store,
    root: &str,
    coll: &Collection,
    s: &SegmentInfo,
    read: &[i64],
) -> Result<SegmentPlan, String> {
    let prefix = layout::segment_insert_log_prefix(root, coll.info.collection_id, s.partition_id, s.segment_id);
    let listing = storage
        .list(&prefix)
        .await
        .map_err(|e| format!("cannot list {}: {e}", storage.display(&prefix)))?;
    let groups = groups(&listing, &prefix);
    let pk = coll.pk.field_id;
    // The first file's footer names the group's fields and gives its rows: read once.
    let mut pk_binlogs = None;
    let mut existing = Vec::new();
    for (group, files) in &groups {
        let (_, key, size) = &files[0];
        let (ids, first_rows) = footer_fields_and_rows(storage, key, *size)
            .await
            .map_err(|e| e.message)?;
        let holds: Vec<i64> = read.iter().copied().filter(|f| ids.contains(f)).collect();
        let is_pk_group = ids.contains(&pk) && pk_binlogs.is_none();
        if holds.is_empty() && !is_pk_group {
            continue;
        }
        // Each file's rows are read once, whether the group holds the key, a new field or both.
        let binlogs = group_files(storage, files, first_rows).await?;
        let total = check_rows(*group, &binlogs, s)?;
        existing.extend(holds.into_iter().map(|field_id| {
            ExistingColumn {
                field_id,
                files: binlogs
                    .iter()
                    .map(|b| V3File {
                        key: b.key.clone(),
                        start_index: 0,
                        end_index: b.rows,
                    })
                    .collect(),
            }
        }));
        if is_pk_group {
            pk_binlogs = Some((binlogs, total));
            if read.is_empty() {
                break;
            }
        }
    }
    let Some((binlogs, total)) = pk_binlogs else {
        return Err(format!(
            "no column group under {} holds the primary key field {pk} (groups {:?}): is spec.storage the storage this Milvus uses?",
            storage.display(&prefix),
            groups.keys().collect::<Vec<_>>()
        ));
    };
    Ok(SegmentPlan {
        segment_id: s.segment_id,
        partition_id: s.partition_id,
        partition_name: coll.partition_names.get(&s.partition_id).cloned().unwrap_or_default(),
        num_rows: total,
        storage_version: STORAGE_V2,
        pk_binlogs: binlogs,
        output_dir: prefix.trim_end_matches('/').to_owned(),
        v3: None,
        existing,
    })
}

/// A group's files `(log ID, key, size)` with their rows (the first file's already known).
async fn group_files(storage: &Store, files: &[(i64, String, u64)], first_rows: u64) -> Result<Vec<Binlog>, String> {
    let mut binlogs = Vec::with_capacity(files.len());
    for (i, (log_id, key, size)) in files.iter().enumerate() {
        let rows = match i {
            0 => first_rows,
            _ => {
                footer_fields_and_rows(storage, key, *size)
                    .await
                    .map_err(|e| e.message)?
                    .1
            }
        };
        binlogs.push(Binlog {
            key: key.clone(),
            log_id: *log_id,
            size: *size,
            rows,
        });
    }
    Ok(binlogs)
}

/// The group's rows, which must be the segment's.
fn check_rows(group: i64, binlogs: &[Binlog], s: &SegmentInfo) -> Result<u64, String> {
    let total: u64 = binlogs.iter().map(|b| b.rows).sum();
    if i64::try_from(total).ok() != Some(s.num_rows) {
        return Err(format!(
            "column group {group} holds {total} rows but Milvus reports num_rows {}; the segment is being rewritten \
             (a compaction in progress?): plan again later",
            s.num_rows
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_numeric_directories_in_log_id_order() {
        let o = |k: &str| ObjectMeta { key: k.into(), size: 1 };
        let listing = [
            o("p/0/30"),
            o("p/0/4"),
            o("p/101/5"),
            o("p/_data/0_x.parquet"),
            o("p/0/x"),
            o("p/stray"),
        ];
        let g = groups(&listing, "p/");
        assert_eq!(g.keys().copied().collect::<Vec<_>>(), vec![0, 101]);
        assert_eq!(g[&0].iter().map(|f| f.0).collect::<Vec<_>>(), vec![4, 30]);
    }
}
