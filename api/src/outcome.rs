//! What a run produced: per segment, per task attempt, and the run's result JSON (what Milvus'
//! commit path and people read), with its summary. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::{BackfillError, ErrorKind};
use crate::plan::{shared_partition, Plan, SkippedSegment};

/// What a segment produced; the result JSON's per-segment entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentOutcome {
    pub segment_id: i64,
    pub partition_id: i64,
    /// Rows written: the segment's physical row count.
    pub row_count: u64,
    pub matched_row_count: u64,
    pub output_path: String,
    pub manifest_paths: Vec<String>,
    pub execution_time_ms: u64,
    /// StorageV3: the manifest changes DataCoord applies at commit (one `replace` per new field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<ManifestOp>,
    /// `2` marks a StorageV2 entry (Milvus' decoder reads this snake_case key).
    #[serde(default, rename = "storage_version", skip_serializing_if = "Option::is_none")]
    pub storage_version: Option<i64>,
    /// `-1` for StorageV2 entries; with `v3Commit: manifest` the manifest version this run
    /// published (`sourceVersion` + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// With `v3Commit: manifest`: the manifest version the new one was built on; Milvus refuses
    /// the commit if the segment's manifest moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<i64>,
    /// StorageV2: one single-field column group per new field.
    #[serde(default, rename = "column_groups", skip_serializing_if = "Vec::is_empty")]
    pub column_groups: Vec<ColumnGroupEntry>,
    /// Per new field, rows that kept the segment's existing value (the reference's
    /// `usedSourceByField`: "source" is the collection there). Coalesce: existing non-null
    /// values; overwrite: unmatched rows. Empty in replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used_source_by_field: BTreeMap<String, u64>,
    /// Per new field, rows that took the backfill file's value (`usedDataFileByField`).
    /// Coalesce: non-null file values that filled a null; overwrite: matched rows. Empty in replace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used_data_file_by_field: BTreeMap<String, u64>,
    /// Global indices of the source rows this segment used (for the run's
    /// unmatched count); not part of the result JSON.
    #[serde(skip)]
    pub used_source_rows: Vec<u64>,
}

/// Per-field counts summed over segments.
fn sum_by_field<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for m in maps {
        for (field, n) in m {
            *total.entry(field.clone()).or_insert(0) += n;
        }
    }
    total
}

/// One change to a V3 segment's manifest (the result JSON's `ops`, milvus-io/milvus#53491).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestOp {
    /// Always `replace` (drop the column, then add the group): unlike `add`, a retried commit
    /// of the same result succeeds.
    #[serde(rename = "type")]
    pub op_type: String,
    /// Field IDs as decimal strings, the column names of a V3 segment.
    pub columns: Vec<String>,
    pub format: String,
    pub files: Vec<OpFile>,
    pub row_count: u64,
}

/// A data file of an op: its rows `[startIndex, endIndex)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpFile {
    /// The bare file name, relative to `{base}/_data/` as manifests store it.
    pub path: String,
    pub start_index: u64,
    pub end_index: u64,
    /// `file_size` and `footer_size` (Thrift FileMetaData length + 8), in bytes, as strings.
    pub properties: BTreeMap<String, String>,
}

/// A StorageV2 column group of the result (`column_groups[]`), keys as Milvus decodes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnGroupEntry {
    /// Exactly one field ID: Milvus upserts the group under that ID.
    pub field_ids: Vec<i64>,
    /// Bucket-relative keys `{root}/insert_log/{coll}/{part}/{seg}/{fid}/{logID}`, ascending log ID.
    pub binlog_files: Vec<String>,
    pub row_count: u64,
}

impl ManifestOp {
    pub const REPLACE: &'static str = "replace";
    pub const PARQUET: &'static str = "parquet";
}

/// What one attempt of a task reports: on the worker's stdout and in the bucket at
/// [`crate::layout::RunLayout::outcome_key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutcome {
    pub task_id: String,
    pub attempt: u32,
    pub success: bool,
    pub segments: Vec<SegmentOutcome>,
    pub failed_segments: Vec<FailedSegment>,
    /// Distinct source rows this task's segments used.
    pub used_source_rows: u64,
    pub execution_time_ms: u64,
    /// How often the source was read (once for all the task's segments), and the bytes read.
    #[serde(default)]
    pub source_reads: SourceReads,
    /// What a route or join task of a routed run hands the next stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_output: Option<crate::stage::StageOutput>,
}

/// Reads of the new-field source: one pass serves a whole group of segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceReads {
    #[serde(default)]
    pub source_passes: u32,
    #[serde(default)]
    pub source_bytes_read: u64,
    /// Bytes written to the exchange (zero when every group of segments fit one pass).
    #[serde(default)]
    pub exchange_bytes_written: u64,
}

impl SourceReads {
    pub fn plus(self, other: SourceReads) -> SourceReads {
        SourceReads {
            source_passes: self.source_passes.saturating_add(other.source_passes),
            source_bytes_read: self.source_bytes_read.saturating_add(other.source_bytes_read),
            exchange_bytes_written: self.exchange_bytes_written.saturating_add(other.exchange_bytes_written),
        }
    }
}

impl TaskOutcome {
    /// Whether a failed attempt is worth another one: not when every failed segment failed
    /// with an error the same input would give again.
    pub fn retryable(&self) -> bool {
        if let Some(crate::stage::StageOutput::Failed { error, .. }) = &self.stage_output {
            return !error.is_permanent();
        }
        self.failed_segments.is_empty() || self.failed_segments.iter().any(|f| !f.kind.is_permanent())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedSegment {
    pub segment_id: i64,
    pub partition_id: i64,
    pub kind: ErrorKind,
    pub reason: String,
}

/// The result JSON. Keys follow the newest reference; `segments` is keyed by the
/// segment ID as a decimal string, as Milvus' decoder expects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillResult {
    pub success: bool,
    pub run_id: String,
    pub collection_id: i64,
    /// The partition all segments share, else 0 (never -1).
    pub partition_id: i64,
    pub schema_version: i32,
    pub segments_processed: usize,
    pub total_rows_written: u64,
    pub total_backfill_data_rows: u64,
    pub total_matched_rows: u64,
    /// Source rows whose key is in no backfilled segment; counted, never written.
    pub unmatched_backfill_rows: u64,
    pub execution_time_ms: u64,
    pub new_field_names: Vec<String>,
    pub manifest_paths: Vec<String>,
    /// `spec.mode` of the run.
    #[serde(default = "crate::plan::Mode::of_older_plans")]
    pub mode: crate::plan::Mode,
    /// The segments' `usedSourceByField` summed (empty in replace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub total_used_source_by_field: BTreeMap<String, u64>,
    /// The segments' `usedDataFileByField` summed (empty in replace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub total_used_data_file_by_field: BTreeMap<String, u64>,
    pub segments: BTreeMap<String, SegmentOutcome>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_segments: Vec<FailedSegment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_segments: Vec<SkippedSegment>,
    /// Passes over the source and the bytes they read (once per run or Job, not once per
    /// segment), and what the exchange wrote.
    #[serde(flatten)]
    pub source_reads: SourceReads,
}

impl BackfillResult {
    /// `used_source_rows_unique` is the number of distinct source rows any segment used.
    pub fn build(
        plan: &Plan,
        outcomes: Vec<SegmentOutcome>,
        failures: Vec<FailedSegment>,
        used_source_rows_unique: u64,
        execution_time_ms: u64,
    ) -> Self {
        let mut failed_segments: Vec<FailedSegment> = plan
            .failed
            .iter()
            .map(|s| FailedSegment {
                segment_id: s.segment_id,
                partition_id: s.partition_id,
                kind: ErrorKind::SegmentProcessingError,
                reason: s.reason.clone(),
            })
            .collect();
        failed_segments.extend(failures);
        failed_segments.sort_by_key(|f| f.segment_id);
        let partition_id = shared_partition(outcomes.iter().map(|o| o.partition_id));
        let total_rows_written = outcomes.iter().map(|o| o.row_count).sum();
        let total_matched_rows = outcomes.iter().map(|o| o.matched_row_count).sum();
        let manifest_paths = outcomes.iter().flat_map(|o| o.manifest_paths.iter().cloned()).collect();
        let total_used_source_by_field = sum_by_field(outcomes.iter().map(|o| &o.used_source_by_field));
        let total_used_data_file_by_field = sum_by_field(outcomes.iter().map(|o| &o.used_data_file_by_field));
        Self {
            success: failed_segments.is_empty(),
            run_id: plan.run_id.clone(),
            collection_id: plan.collection_id,
            partition_id: plan.partition_id.unwrap_or(partition_id),
            schema_version: plan.schema_version,
            segments_processed: outcomes.len(),
            total_rows_written,
            total_backfill_data_rows: plan.source_rows,
            total_matched_rows,
            unmatched_backfill_rows: plan.source_rows.saturating_sub(used_source_rows_unique),
            execution_time_ms,
            new_field_names: plan.new_fields.iter().map(|f| f.name.clone()).collect(),
            manifest_paths,
            mode: plan.mode,
            total_used_source_by_field,
            total_used_data_file_by_field,
            segments: outcomes.into_iter().map(|o| (o.segment_id.to_string(), o)).collect(),
            failed_segments,
            skipped_segments: plan.skipped.clone(),
            source_reads: SourceReads::default(),
        }
    }

    /// True only if the run succeeded and every planned segment has an outcome.
    pub fn all_segments_successful(&self, planned: usize) -> bool {
        self.success && self.segments.len() == planned
    }

    /// Splits the result into parts whose JSON stays within `max_bytes` (DataCoord reads at most
    /// 64 MiB per result object), each with the run's top-level fields and a share of the
    /// segments. One part if it fits; a single segment entry never splits.
    pub fn split(&self, max_bytes: usize) -> Vec<BackfillResult> {
        let empty = Self {
            segments: BTreeMap::new(),
            ..self.clone()
        };
        let base = serde_json::to_vec(&empty).map_or(0, |b| b.len());
        let mut parts = vec![empty.clone()];
        let mut size = base;
        for (id, entry) in &self.segments {
            // The entry, its key, quotes, colon and comma.
            let len = serde_json::to_vec(entry).map_or(0, |b| b.len()) + id.len() + 4;
            let current = parts.last_mut().expect("one part at least");
            if size + len > max_bytes && !current.segments.is_empty() {
                parts.push(empty.clone());
                size = base;
            }
            parts
                .last_mut()
                .expect("one part")
                .segments
                .insert(id.clone(), entry.clone());
            size += len;
        }
        parts
    }

    pub fn match_rate(&self) -> f64 {
        if self.total_rows_written == 0 {
            0.0
        } else {
            self.total_matched_rows as f64 / self.total_rows_written as f64
        }
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let status = if self.success { "SUCCEEDED" } else { "FAILED" };
        let _ = writeln!(s, "Backfill {status} (run {})", self.run_id);
        let _ = writeln!(s, "  collection ID:        {}", self.collection_id);
        let _ = writeln!(s, "  partition ID:         {}", self.partition_id);
        let _ = writeln!(s, "  new fields:           {}", self.new_field_names.join(", "));
        let _ = writeln!(s, "  segments processed:   {}", self.segments_processed);
        let _ = writeln!(s, "  segments failed:      {}", self.failed_segments.len());
        let _ = writeln!(s, "  segments skipped:     {}", self.skipped_segments.len());
        let _ = writeln!(s, "  rows written:         {}", self.total_rows_written);
        let _ = writeln!(
            s,
            "  rows matched:         {} ({:.1}%)",
            self.total_matched_rows,
            100.0 * self.match_rate()
        );
        let _ = writeln!(s, "  new-field data rows:  {}", self.total_backfill_data_rows);
        let _ = writeln!(s, "  unmatched data rows:  {}", self.unmatched_backfill_rows);
        let _ = writeln!(
            s,
            "  source read:          {} pass(es), {} bytes; exchange: {} bytes written",
            self.source_reads.source_passes,
            self.source_reads.source_bytes_read,
            self.source_reads.exchange_bytes_written
        );
        let _ = writeln!(
            s,
            "  execution time:       {:.3}s",
            self.execution_time_ms as f64 / 1000.0
        );
        for f in &self.failed_segments {
            let _ = writeln!(
                s,
                "  FAILED segment {} (partition {}): {}: {}",
                f.segment_id, f.partition_id, f.kind, f.reason
            );
        }
        s
    }

    pub fn segment_summary(&self) -> String {
        let mut s = String::new();
        for o in self.segments.values() {
            let rate = if o.row_count == 0 {
                0.0
            } else {
                100.0 * o.matched_row_count as f64 / o.row_count as f64
            };
            let _ = writeln!(
                s,
                "  segment {} partition {}: rows {} matched {} ({rate:.1}%) in {} ms -> {}",
                o.segment_id, o.partition_id, o.row_count, o.matched_row_count, o.execution_time_ms, o.output_path
            );
        }
        for k in &self.skipped_segments {
            let _ = writeln!(
                s,
                "  segment {} partition {}: skipped ({})",
                k.segment_id, k.partition_id, k.reason
            );
        }
        s
    }
}

impl FailedSegment {
    pub fn from_error(segment_id: i64, partition_id: i64, e: &BackfillError) -> Self {
        Self {
            segment_id,
            partition_id,
            kind: e.kind,
            reason: e.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            source_rows: 50,
            failed: vec![SkippedSegment {
                segment_id: 9,
                partition_id: 3,
                num_rows: 5,
                reason: "stale".into(),
            }],
            ..crate::plan::sample_plan()
        }
    }

    fn outcome(seg: i64, part: i64, rows: u64, matched: u64) -> SegmentOutcome {
        SegmentOutcome {
            segment_id: seg,
            partition_id: part,
            row_count: rows,
            matched_row_count: matched,
            output_path: format!("s3://b/{seg}"),
            manifest_paths: vec![format!("s3://b/{seg}/manifest.json")],
            execution_time_ms: 1,
            ops: vec![],
            storage_version: None,
            version: None,
            source_version: None,
            column_groups: vec![],
            used_source_by_field: BTreeMap::new(),
            used_data_file_by_field: BTreeMap::new(),
            used_source_rows: vec![],
        }
    }

    #[test]
    fn a_large_result_splits_under_the_limit_and_keeps_every_segment() {
        let outcomes: Vec<SegmentOutcome> = (1..=40).map(|i| outcome(i, 3, 10, 4)).collect();
        let r = BackfillResult::build(&plan(), outcomes, vec![], 10, 5);
        assert_eq!(r.split(64 << 20).len(), 1);
        let whole = serde_json::to_vec(&r).unwrap().len();
        let parts = r.split(whole / 3);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        for p in &parts {
            assert!(serde_json::to_vec(p).unwrap().len() <= whole / 3);
            assert_eq!(
                (p.collection_id, p.schema_version, p.success),
                (r.collection_id, r.schema_version, r.success)
            );
        }
        let ids: Vec<&String> = parts.iter().flat_map(|p| p.segments.keys()).collect();
        assert_eq!(ids, r.segments.keys().collect::<Vec<_>>());
        // A limit below one entry still gives one segment per part, never an empty one.
        assert!(r.split(10).iter().all(|p| p.segments.len() == 1));
    }

    #[test]
    fn totals_partition_rule_and_failures() {
        let r = BackfillResult::build(&plan(), vec![outcome(1, 3, 10, 4), outcome(2, 4, 20, 6)], vec![], 10, 5);
        assert!(!r.success, "a segment that failed planning fails the run");
        assert_eq!(r.partition_id, 0);
        assert_eq!(
            (r.total_rows_written, r.total_matched_rows, r.unmatched_backfill_rows),
            (30, 10, 40)
        );
        assert_eq!(r.failed_segments[0].segment_id, 9);
        let json = serde_json::to_value(&r).unwrap();
        for k in [
            "success",
            "collectionId",
            "partitionId",
            "segmentsProcessed",
            "totalRowsWritten",
            "totalBackfillDataRows",
            "totalMatchedRows",
            "executionTimeMs",
            "newFieldNames",
            "manifestPaths",
        ] {
            assert!(json.get(k).is_some(), "missing {k}");
        }
        let seg = &json["segments"]["1"];
        for k in [
            "segmentId",
            "partitionId",
            "rowCount",
            "matchedRowCount",
            "outputPath",
            "manifestPaths",
            "executionTimeMs",
        ] {
            assert!(seg.get(k).is_some(), "segment entry misses {k}");
        }
        assert!(seg.get("usedSourceRows").is_none());
        assert!(r.summary().contains("33.3%"));
        assert!(r.summary().contains("FAILED segment 9"));
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let failed = |kind| TaskOutcome {
            task_id: "t".into(),
            attempt: 0,
            success: false,
            segments: vec![],
            failed_segments: vec![FailedSegment {
                segment_id: 1,
                partition_id: 1,
                kind,
                reason: "r".into(),
            }],
            used_source_rows: 0,
            execution_time_ms: 0,
            source_reads: Default::default(),
            stage_output: None,
        };
        assert!(!failed(ErrorKind::SchemaValidationError).retryable());
        assert!(failed(ErrorKind::ConnectionError).retryable());
        let json = serde_json::to_value(failed(ErrorKind::ConfigError)).unwrap();
        assert_eq!(json["failedSegments"][0]["kind"], "ConfigError");
    }

    #[test]
    fn success_needs_every_segment() {
        let mut p = plan();
        p.failed.clear();
        let r = BackfillResult::build(&p, vec![outcome(1, 3, 10, 10), outcome(2, 3, 5, 0)], vec![], 10, 5);
        assert!(r.success);
        assert_eq!(r.partition_id, 3);
        assert!(r.all_segments_successful(2));
        assert!(!r.all_segments_successful(3));
    }
}
