//! The precheck report: what planning checked before anything is written, check by check, with
//! `passed: true|false` (the precheck of Zilliz Cloud's Data Backfill). `milvus-backfill plan`
//! prints it; the operator stores it beside the planning attempt (`precheck.json`) and refuses
//! to start a run whose precheck did not pass (reason `PrecheckFailed`).
//!
//! The checks run in the order of [`Check::ALL`]; the first failure stops the others, which
//! the report lists as not run. Pure: the worker records the checks, this module assembles them.

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// One thing the precheck checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Check {
    /// The spec's own settings (batch size, output place, which planning source).
    Spec,
    /// The lifecycle's steps before planning (flush, addFields, snapshot) and the fields
    /// `createIndex` names.
    Lifecycle,
    /// The collection: its schema, partition and sealed segments, from Milvus or a snapshot.
    Collection,
    /// The source files: listed, each a readable Parquet file.
    Source,
    /// The join key, the column mapping and each new field's type against the schema.
    Mapping,
    /// The source's join keys: none null, none repeated.
    Keys,
    /// Every vector value: dimension, finite values, sparse indices increasing.
    Vectors,
    /// Each segment's binlogs or manifest, planned.
    Segments,
    /// `spec.runId`, when set, names no earlier run.
    RunId,
    /// A few source rows, read and normalized as they will be written.
    Sample,
}

impl Check {
    pub const ALL: [Check; 10] = [
        Check::Spec,
        Check::Lifecycle,
        Check::Collection,
        Check::Source,
        Check::Mapping,
        Check::Keys,
        Check::Vectors,
        Check::Segments,
        Check::RunId,
        Check::Sample,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Spec => "spec",
            Check::Lifecycle => "lifecycle",
            Check::Collection => "collection",
            Check::Source => "source",
            Check::Mapping => "mapping",
            Check::Keys => "keys",
            Check::Vectors => "vectors",
            Check::Segments => "segments",
            Check::RunId => "runId",
            Check::Sample => "sample",
        }
    }

    /// The check an error that no check claimed belongs to, by its kind.
    pub fn of_kind(kind: ErrorKind) -> Check {
        match kind {
            ErrorKind::ConfigError => Check::Spec,
            ErrorKind::SchemaValidationError => Check::Mapping,
            ErrorKind::DataReadError => Check::Source,
            ErrorKind::SegmentProcessingError => Check::Segments,
            _ => Check::Collection,
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckState {
    Passed,
    Failed,
    /// Not run: an earlier check failed, or it does not apply to this plan.
    NotRun,
}

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    pub check: Check,
    pub state: CheckState,
    /// What was checked and found; for a failed check, the error (kind and message).
    pub detail: String,
    /// The error kind of a failed check ([`ErrorKind::is_permanent`]: fix the input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

impl CheckRecord {
    fn new(check: Check, state: CheckState, detail: String, kind: Option<ErrorKind>) -> Self {
        Self {
            check,
            state,
            detail,
            kind,
        }
    }
    pub fn passed(check: Check, detail: impl Into<String>) -> Self {
        Self::new(check, CheckState::Passed, detail.into(), None)
    }
    pub fn not_run(check: Check, detail: impl Into<String>) -> Self {
        Self::new(check, CheckState::NotRun, detail.into(), None)
    }
    pub fn failed(check: Check, kind: ErrorKind, message: &str) -> Self {
        Self::new(check, CheckState::Failed, message.to_owned(), Some(kind))
    }
}

/// Source rows as they will be written: the join key first, then each new field, every value
/// shown as text (vectors as their Milvus row bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SampleRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The precheck's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrecheckReport {
    /// True when no check failed: the run may start.
    pub passed: bool,
    /// The Backfill (or document) name.
    pub backfill: String,
    pub collection: String,
    /// Every check of [`Check::ALL`], in that order.
    pub checks: Vec<CheckRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleRows>,
}

impl PrecheckReport {
    /// The report of the checks recorded. `error`: what stopped planning, when something did;
    /// if no recorded check failed with it, it is placed by its kind ([`Check::of_kind`]).
    pub fn assemble(
        backfill: &str,
        collection: &str,
        mut recorded: Vec<CheckRecord>,
        error: Option<(ErrorKind, &str)>,
        sample: Option<SampleRows>,
    ) -> Self {
        let any_failed = |r: &[CheckRecord]| r.iter().any(|c| c.state == CheckState::Failed);
        if let Some((kind, message)) = error {
            if !any_failed(&recorded) {
                let check = Check::of_kind(kind);
                recorded.retain(|c| c.check != check);
                recorded.push(CheckRecord::failed(check, kind, message));
            }
        }
        let failed = any_failed(&recorded);
        let checks = Check::ALL
            .iter()
            .map(|&check| {
                // A check recorded twice (a passed step, then its failure) reads as its last record.
                recorded
                    .iter()
                    .rev()
                    .find(|c| c.check == check)
                    .cloned()
                    .unwrap_or_else(|| {
                        CheckRecord::not_run(
                            check,
                            if failed {
                                "not run: an earlier check failed"
                            } else {
                                "does not apply to this plan"
                            },
                        )
                    })
            })
            .collect();
        Self {
            passed: !failed,
            backfill: backfill.to_owned(),
            collection: collection.to_owned(),
            checks,
            sample,
        }
    }

    pub fn failed(&self) -> impl Iterator<Item = &CheckRecord> {
        self.checks.iter().filter(|c| c.state == CheckState::Failed)
    }

    /// One line for an Event or a condition: the verdict and each failed check.
    pub fn summary(&self) -> String {
        if self.passed {
            let n = self.checks.iter().filter(|c| c.state == CheckState::Passed).count();
            return format!("precheck passed ({n} checks)");
        }
        let failed: Vec<String> = self
            .failed()
            .map(|c| match c.kind {
                Some(k) => format!("{}: {k}: {}", c.check, c.detail),
                None => format!("{}: {}", c.check, c.detail),
            })
            .collect();
        format!("precheck failed at {}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_is_listed_in_order_and_the_first_failure_fails_the_report() {
        let recorded = vec![
            CheckRecord::passed(Check::Collection, "collection docs: 3 sealed segments"),
            CheckRecord::passed(Check::Source, "1 file, 10 rows"),
            CheckRecord::failed(Check::Keys, ErrorKind::SchemaValidationError, "2 duplicate `pk` values"),
        ];
        let r = PrecheckReport::assemble("bf", "docs", recorded, None, None);
        assert!(!r.passed);
        let order: Vec<Check> = r.checks.iter().map(|c| c.check).collect();
        assert_eq!(order, Check::ALL);
        let state = |c: Check| r.checks.iter().find(|x| x.check == c).unwrap().state;
        assert_eq!(state(Check::Collection), CheckState::Passed);
        assert_eq!(state(Check::Keys), CheckState::Failed);
        assert_eq!(state(Check::Vectors), CheckState::NotRun);
        assert_eq!(
            r.summary(),
            "precheck failed at keys: SchemaValidationError: 2 duplicate `pk` values"
        );
    }

    #[test]
    fn an_error_no_check_claimed_is_placed_by_its_kind() {
        let r = PrecheckReport::assemble(
            "bf",
            "docs",
            vec![CheckRecord::passed(Check::Collection, "ok")],
            Some((ErrorKind::ConfigError, "spec.batchSize must be > 0")),
            None,
        );
        assert!(!r.passed);
        let spec = &r.checks[0];
        assert_eq!((spec.check, spec.state), (Check::Spec, CheckState::Failed));
        assert_eq!(spec.kind, Some(ErrorKind::ConfigError));
        // A recorded failure wins over the error's kind.
        let r = PrecheckReport::assemble(
            "bf",
            "docs",
            vec![CheckRecord::failed(
                Check::Keys,
                ErrorKind::SchemaValidationError,
                "nulls",
            )],
            Some((ErrorKind::SchemaValidationError, "nulls")),
            None,
        );
        assert_eq!(r.failed().map(|c| c.check).collect::<Vec<_>>(), vec![Check::Keys]);
    }

    #[test]
    fn a_clean_report_passes_and_serializes_with_camel_case_names() {
        let recorded = Check::ALL
            .iter()
            .filter(|c| **c != Check::Vectors)
            .map(|&c| CheckRecord::passed(c, "fine"))
            .collect();
        let r = PrecheckReport::assemble("bf", "docs", recorded, None, None);
        assert!(r.passed);
        assert_eq!(r.summary(), "precheck passed (9 checks)");
        let vectors = r.checks.iter().find(|c| c.check == Check::Vectors).unwrap();
        assert_eq!(vectors.detail, "does not apply to this plan");
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"passed":true,"#), "{text}");
        assert!(text.contains(r#""check":"runId","state":"passed""#), "{text}");
        assert!(text.contains(r#""state":"notRun""#), "{text}");
        assert_eq!(serde_json::from_str::<PrecheckReport>(&text).unwrap(), r);
    }
}
