//! The planner's pure decisions: which segments to backfill ([`triage`]), which objects are a
//! segment's PK binlogs, and fresh run IDs. The plan types themselves are the contract's
//! (`milvus_backfill_api::plan`, re-exported here); the IO that fills them is in `planner`.

pub use milvus_backfill_api::plan::*;

use crate::store::ObjectMeta;

/// `commonpb.SegmentState::Flushed` and `SegmentState::Growing`.
pub const STATE_GROWING: i32 = 2;
pub const STATE_FLUSHED: i32 = 4;
/// `commonpb.SegmentLevel::L0` (delete-only segments).
pub const LEVEL_L0: i32 = 1;

/// `PersistentSegmentInfo.storage_version` values (Milvus `internal/storage`: StorageV1 = 0,
/// StorageV2 = 2, StorageV3 = 3; 2.3.5 does not send the field, which reads as 0).
pub const STORAGE_V1: i64 = 0;
pub const STORAGE_V2: i64 = 2;
pub const STORAGE_V3: i64 = 3;

/// A segment as `GetPersistentSegmentInfo` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentInfo {
    pub segment_id: i64,
    pub partition_id: i64,
    pub num_rows: i64,
    pub state: i32,
    pub level: i32,
    pub storage_version: i64,
}

/// What to do with a segment.
#[derive(Clone, Debug, PartialEq)]
pub enum Triage {
    Backfill,
    /// Not ours to backfill; the reason is reported, not an error.
    Skip(String),
    /// Reported as a warning: data that will not get values.
    Warn(String),
    /// A segment we should backfill but cannot: it fails planning, and the run with it.
    Fail(String),
}

pub fn triage(s: &SegmentInfo) -> Triage {
    if s.state == STATE_GROWING {
        return Triage::Warn(format!(
            "segment {} is Growing ({} rows) and will not be backfilled: flush the collection first (spec.flush: true)",
            s.segment_id, s.num_rows
        ));
    }
    if s.state != STATE_FLUSHED {
        return Triage::Skip(format!("state {} is not Flushed", state_name(s.state)));
    }
    if s.level == LEVEL_L0 {
        return Triage::Skip("L0 (delete-only) segment".into());
    }
    if s.num_rows <= 0 {
        return Triage::Skip("empty segment".into());
    }
    match s.storage_version {
        STORAGE_V1 | STORAGE_V2 | STORAGE_V3 => Triage::Backfill,
        v => Triage::Fail(format!(
            "storage version {v} is unknown to this version (StorageV1 = 0, StorageV2 = 2, StorageV3 = 3): upgrade milvus-backfill"
        )),
    }
}

pub fn state_name(state: i32) -> &'static str {
    match state {
        0 => "None",
        1 => "NotExist",
        2 => "Growing",
        3 => "Sealed",
        4 => "Flushed",
        5 => "Flushing",
        6 => "Dropped",
        7 => "Importing",
        _ => "Unknown",
    }
}

/// Picks the PK binlogs of one segment from a listing of
/// `{root}/insert_log/{coll}/{part}/{seg}/`, ordered by numeric log ID.
pub fn pk_binlogs(listing: &[ObjectMeta], segment_prefix: &str, pk_field_id: i64) -> Vec<Binlog> {
    let field_prefix = format!("{}/{pk_field_id}/", segment_prefix.trim_end_matches('/'));
    let mut out: Vec<Binlog> = listing
        .iter()
        .filter_map(|o| {
            let rest = o.key.strip_prefix(&field_prefix)?;
            // Only `{fieldID}/{logID}`: anything deeper or non-numeric is not a V1 binlog.
            let log_id: i64 = rest.parse().ok()?;
            Some(Binlog {
                key: o.key.clone(),
                log_id,
                size: o.size,
                rows: 0,
            })
        })
        .collect();
    out.sort_by_key(|b| b.log_id);
    out
}

/// A fresh run ID: UTC time plus random bits, sortable and unique enough per collection.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let rand = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now.as_nanos());
        h.write_u32(std::process::id());
        h.finish() & 0xff_ffff
    };
    format!(
        "{y:04}{m:02}{d:02}t{:02}{:02}{:02}-{rand:06x}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(state: i32, level: i32, rows: i64) -> SegmentInfo {
        SegmentInfo {
            segment_id: 7,
            partition_id: 1,
            num_rows: rows,
            state,
            level,
            storage_version: 0,
        }
    }

    #[test]
    fn triage_rules() {
        assert_eq!(triage(&seg(STATE_FLUSHED, 0, 10)), Triage::Backfill);
        assert_eq!(triage(&seg(STATE_FLUSHED, 2, 10)), Triage::Backfill);
        assert!(matches!(triage(&seg(STATE_FLUSHED, LEVEL_L0, 10)), Triage::Skip(r) if r.contains("L0")));
        assert!(matches!(triage(&seg(STATE_FLUSHED, 0, 0)), Triage::Skip(r) if r.contains("empty")));
        assert!(matches!(triage(&seg(STATE_GROWING, 0, 5)), Triage::Warn(r) if r.contains("flush")));
        assert!(matches!(triage(&seg(6, 0, 5)), Triage::Skip(r) if r.contains("Dropped")));
        let version = |v| SegmentInfo {
            storage_version: v,
            ..seg(STATE_FLUSHED, 2, 10)
        };
        assert_eq!(triage(&version(STORAGE_V3)), Triage::Backfill);
        assert_eq!(triage(&version(STORAGE_V2)), Triage::Backfill);
        assert!(matches!(triage(&version(7)), Triage::Fail(r) if r.contains("storage version 7 is unknown")));
        // The state rules come first: an empty V2 segment is skipped, not failed.
        let empty_v2 = SegmentInfo {
            storage_version: 2,
            ..seg(STATE_FLUSHED, 2, 0)
        };
        assert!(matches!(triage(&empty_v2), Triage::Skip(_)));
    }

    #[test]
    fn binlogs_sort_numerically_and_ignore_foreign_files() {
        let o = |k: &str| ObjectMeta { key: k.into(), size: 1 };
        let listing = vec![
            o("f/insert_log/1/2/3/100/9"),
            o("f/insert_log/1/2/3/100/10"),
            o("f/insert_log/1/2/3/100/100"),
            o("f/insert_log/1/2/3/101/5"),
            o("f/insert_log/1/2/3/100/x.tmp"),
            o("f/insert_log/1/2/3/new_field/manifest.json"),
            o("f/insert_log/1/2/3/1000/1"),
        ];
        let ids: Vec<i64> = pk_binlogs(&listing, "f/insert_log/1/2/3/", 100)
            .iter()
            .map(|b| b.log_id)
            .collect();
        assert_eq!(ids, vec![9, 10, 100]);
    }

    #[test]
    fn run_ids_are_dated_and_distinct() {
        let a = new_run_id();
        assert_eq!(a.len(), "20261127t030405-abcdef".len());
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_ne!(a, new_run_id());
    }
}
