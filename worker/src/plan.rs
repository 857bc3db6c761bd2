//! The plan: what a run will read and write, computed once and handed to workers.
//! Everything here is data plus pure functions; the IO that fills it is in `planner`.

use serde::{Deserialize, Serialize};

use crate::config::{Place, S3Endpoint};
use crate::keys::PkType;
use crate::store::ObjectMeta;

/// `commonpb.SegmentState::Flushed` and `SegmentState::Growing`.
pub const STATE_GROWING: i32 = 2;
pub const STATE_FLUSHED: i32 = 4;
/// `commonpb.SegmentLevel::L0` (delete-only segments).
pub const LEVEL_L0: i32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PkField {
    pub field_id: i64,
    pub name: String,
    pub pk_type: PkType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewField {
    pub name: String,
    /// Arrow type of the source column, as Arrow prints it (e.g. `Float64`, `Utf8`).
    #[serde(rename = "type")]
    pub arrow_type: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceFile {
    pub key: String,
    pub size: u64,
    pub rows: u64,
    /// Index of this file's first row among all source rows (files in plan order).
    pub first_row: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binlog {
    pub key: String,
    pub log_id: i64,
    pub size: u64,
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentPlan {
    pub segment_id: i64,
    pub partition_id: i64,
    pub partition_name: String,
    pub num_rows: u64,
    /// 0 = V1 (also when Milvus does not report it), 2 = V2, 3 = V3.
    pub storage_version: i64,
    /// The primary key binlogs in row order (numeric log ID).
    pub pk_binlogs: Vec<Binlog>,
    /// Directory (key prefix) of this segment's outputs: `.../{segmentID}/new_field`.
    pub output_dir: String,
}

impl SegmentPlan {
    pub fn manifest_key(&self) -> String {
        format!("{}/manifest.json", self.output_dir)
    }
    pub fn part_key(&self, task_id: &str, attempt: u32, part: usize) -> String {
        format!(
            "{}/binlog_0/task_{task_id}_{attempt}/part-{part:05}.parquet",
            self.output_dir
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedSegment {
    pub segment_id: i64,
    pub partition_id: i64,
    pub num_rows: i64,
    pub reason: String,
}

/// Everything a worker needs to process segments without asking Milvus.
/// It holds no secrets: those come from the worker's environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub run_id: String,
    pub database: String,
    pub collection_name: String,
    pub collection_id: i64,
    /// Set when `spec.milvus.partition` names one partition.
    pub partition_id: Option<i64>,
    /// `CollectionSchema.version` (0 before Milvus 2.6.8).
    pub schema_version: i32,
    pub pk_field: PkField,
    pub new_fields: Vec<NewField>,
    pub storage: S3Endpoint,
    pub storage_bucket: String,
    pub root_path: String,
    pub source: S3Endpoint,
    pub source_place: Place,
    pub source_files: Vec<SourceFile>,
    pub source_rows: u64,
    pub output_place: Place,
    pub batch_size: u32,
    pub parallelism: u32,
    pub segments: Vec<SegmentPlan>,
    pub skipped: Vec<SkippedSegment>,
    /// Segments that failed planning (unsupported format, binlogs not matching
    /// `num_rows`); the run reports them as failed.
    pub failed: Vec<SkippedSegment>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// Where the run's result JSON goes, beside the outputs.
    pub fn result_key(&self) -> String {
        format!(
            "{}/backfill/{}/{}/result.json",
            self.root_path, self.collection_id, self.run_id
        )
    }

    /// Splits the plan into tasks of at most `segments_per_task` segments.
    pub fn tasks(&self, segments_per_task: usize) -> Vec<Task> {
        self.segments
            .chunks(segments_per_task.max(1))
            .enumerate()
            .map(|(i, segs)| Task {
                task_id: format!("{}-{i}", self.run_id),
                attempt: 0,
                plan: TaskPlan::from_plan(self),
                segments: segs.to_vec(),
            })
            .collect()
    }
}

/// The plan fields every task carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPlan {
    pub run_id: String,
    pub collection_id: i64,
    pub pk_field: PkField,
    pub new_fields: Vec<NewField>,
    pub storage: S3Endpoint,
    pub storage_bucket: String,
    pub source: S3Endpoint,
    pub source_place: Place,
    pub source_files: Vec<SourceFile>,
    pub output_place: Place,
    pub batch_size: u32,
    pub root_path: String,
}

impl TaskPlan {
    pub fn from_plan(p: &Plan) -> Self {
        Self {
            run_id: p.run_id.clone(),
            collection_id: p.collection_id,
            pk_field: p.pk_field.clone(),
            new_fields: p.new_fields.clone(),
            storage: p.storage.clone(),
            storage_bucket: p.storage_bucket.clone(),
            source: p.source.clone(),
            source_place: p.source_place.clone(),
            source_files: p.source_files.clone(),
            output_place: p.output_place.clone(),
            batch_size: p.batch_size,
            root_path: p.root_path.clone(),
        }
    }
}

/// One unit of work: what `milvus-backfill segment --task` executes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: String,
    /// Retry attempt; part files of different attempts never overwrite each other.
    pub attempt: u32,
    #[serde(flatten)]
    pub plan: TaskPlan,
    pub segments: Vec<SegmentPlan>,
}

impl Task {
    /// The run's prefix in the storage bucket: plan, tasks, outcomes and result live here.
    pub fn run_prefix(&self) -> String {
        run_prefix(&self.plan.root_path, self.plan.collection_id, &self.plan.run_id)
    }
    /// Where a controller stores this task for its Job to read.
    pub fn task_key(&self) -> String {
        format!("{}/tasks/{}.json", self.run_prefix(), self.task_id)
    }
    /// Where the worker records this attempt's outcome.
    pub fn outcome_key(&self) -> String {
        format!("{}/outcomes/{}-{}.json", self.run_prefix(), self.task_id, self.attempt)
    }
}

/// `{rootPath}/backfill/{collectionID}/{runId}`.
pub fn run_prefix(root_path: &str, collection_id: i64, run_id: &str) -> String {
    format!("{root_path}/backfill/{collection_id}/{run_id}")
}

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
    if s.storage_version != 0 {
        return Triage::Fail(format!(
            "storage version {} is not supported yet; only StorageV1 segments (Milvus before 2.6) can be backfilled by this version",
            s.storage_version
        ));
    }
    Triage::Backfill
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

/// The partition ID the result JSON reports: the one all segments share, else 0
/// (never -1, which Milvus' commit rejects for multi-partition results).
pub fn shared_partition(segments: impl IntoIterator<Item = i64>) -> i64 {
    let mut it = segments.into_iter();
    match it.next() {
        Some(first) if it.all(|p| p == first) => first,
        _ => 0,
    }
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

/// A small plan for unit tests across modules.
#[cfg(test)]
pub(crate) fn sample_plan() -> Plan {
    let ep = S3Endpoint {
        endpoint: "e".into(),
        region: "r".into(),
        use_ssl: false,
    };
    Plan {
        run_id: "r1".into(),
        database: "default".into(),
        collection_name: "c".into(),
        collection_id: 10,
        partition_id: None,
        schema_version: 0,
        pk_field: PkField {
            field_id: 100,
            name: "id".into(),
            pk_type: PkType::Int64,
        },
        new_fields: vec![NewField {
            name: "score".into(),
            arrow_type: "Float64".into(),
        }],
        storage: ep.clone(),
        storage_bucket: "b".into(),
        root_path: "files".into(),
        source: ep,
        source_place: Place::Local { path: "/x".into() },
        source_files: vec![],
        source_rows: 0,
        output_place: Place::Storage { prefix: String::new() },
        batch_size: 10,
        parallelism: 1,
        segments: vec![],
        skipped: vec![],
        failed: vec![],
        warnings: vec![],
    }
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
        for v in [2, 3] {
            let s = SegmentInfo {
                storage_version: v,
                ..seg(STATE_FLUSHED, 2, 10)
            };
            assert!(matches!(triage(&s), Triage::Fail(r) if r.contains(&format!("storage version {v}"))));
        }
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
    fn shared_partition_is_never_negative() {
        assert_eq!(shared_partition([5, 5]), 5);
        assert_eq!(shared_partition([5, 6]), 0);
        assert_eq!(shared_partition([]), 0);
    }

    #[test]
    fn run_ids_are_dated_and_distinct() {
        let a = new_run_id();
        assert_eq!(a.len(), "20261127t030405-abcdef".len());
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_ne!(a, new_run_id());
    }
}
