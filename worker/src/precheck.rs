//! The precheck: planning, check by check. The planners record each check as they pass it
//! ([`Checks`]); the first failure is recorded where it happens, so the report names the check
//! that stopped planning, not only the error. After a plan, a few source rows are read and
//! normalized as they will be written ([`sample`]). Writes nothing.

use milvus_backfill_api::precheck::{Check, CheckRecord, PrecheckReport, SampleRows};

use crate::error::{BackfillError, ErrorKind, Result};
use crate::plan::{NewField, PkType, Plan};
use crate::source::SourceSchema;
use crate::store::Store;

/// Source rows the report shows.
pub const SAMPLE_ROWS: u32 = 5;

/// The checks recorded so far in one planning.
#[derive(Debug, Default)]
pub struct Checks {
    records: Vec<CheckRecord>,
}

impl Checks {
    /// Records `check` as failed with `r`'s error, unless an earlier failure was recorded (the
    /// first failure is the one that stopped planning); returns `r`.
    pub fn within<T>(&mut self, check: Check, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.fail(check, e);
        }
        r
    }

    /// [`Self::within`] for reads of the source: an IO or decoding error is the source's,
    /// anything else `check`'s.
    pub fn within_source<T>(&mut self, check: Check, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            let at = match e.kind {
                ErrorKind::DataReadError | ErrorKind::ConnectionError => Check::Source,
                _ => check,
            };
            self.fail(at, e);
        }
        r
    }

    pub fn pass(&mut self, check: Check, detail: impl Into<String>) {
        self.records.push(CheckRecord::passed(check, detail));
    }

    pub fn not_run(&mut self, check: Check, detail: impl Into<String>) {
        self.records.push(CheckRecord::not_run(check, detail));
    }

    fn fail(&mut self, check: Check, e: &BackfillError) {
        if !self.records.iter().any(|c| c.kind.is_some()) {
            self.records.push(CheckRecord::failed(check, e.kind, &e.message));
        }
    }

    /// The report of this planning: `outcome` is the planner's, `sample` what [`sample`] read.
    pub fn report(
        self,
        backfill: &str,
        collection: &str,
        outcome: Option<&BackfillError>,
        sample: Option<SampleRows>,
    ) -> PrecheckReport {
        let error = outcome.map(|e| (e.kind, e.message.as_str()));
        PrecheckReport::assemble(backfill, collection, self.records, error, sample)
    }
}

/// Reads [`SAMPLE_ROWS`] rows spread over the source, each new field as it will be written.
pub async fn sample(source: &Store, plan: &Plan, checks: &mut Checks) -> Option<SampleRows> {
    let read = crate::verify::read_sample(source, plan, SAMPLE_ROWS).await;
    let rows = checks.within_source(Check::Sample, read).ok()?;
    let mut columns = vec![plan
        .source_key_column
        .clone()
        .unwrap_or_else(|| crate::plan::DEFAULT_KEY_COLUMN.to_owned())];
    columns.extend(plan.new_fields.iter().map(|f| f.name.clone()));
    let shown: Vec<Vec<String>> = (0..rows.keys.len())
        .map(|i| {
            let mut row = vec![crate::verify::show(&rows.keys[i])];
            row.extend(rows.fields.iter().map(|(_, vals)| crate::verify::show(&vals[i])));
            row
        })
        .collect();
    checks.pass(
        Check::Sample,
        format!(
            "{} of {} source rows read and normalized as they will be written",
            shown.len(),
            plan.source_rows
        ),
    );
    Some(SampleRows { columns, rows: shown })
}

/// The source and mapping checks, passed: what was found.
pub fn record_source(schema: &SourceSchema, new_fields: &[NewField], at: &str, checks: &mut Checks) {
    checks.pass(
        Check::Source,
        format!("{} file(s), {} rows, under {at}", schema.files.len(), schema.rows),
    );
    let mapped: Vec<String> = new_fields.iter().map(mapped_field).collect();
    checks.pass(
        Check::Mapping,
        format!(
            "join key column `{}`; new fields: {}",
            schema.key_column(),
            mapped.join(", ")
        ),
    );
}

/// `title (Utf8)`, `src → title (Utf8, field 105)`, `emb (FloatVector dim 4, field 106)`.
fn mapped_field(f: &NewField) -> String {
    let mut target = match f.vector {
        Some(v) => format!("{:?} dim {} from {}", v.kind, v.dim, f.arrow_type),
        None => f.arrow_type.clone(),
    };
    if let Some(id) = f.field_id {
        target += &format!(", field {id}");
    }
    if f.column() == f.name {
        format!("{} ({target})", f.name)
    } else {
        format!("{} → {} ({target})", f.column(), f.name)
    }
}

/// Null and duplicate join keys over the whole source, recorded with their counts.
pub async fn check_keys(store: &Store, schema: &SourceSchema, pk_type: PkType, checks: &mut Checks) -> Result<()> {
    let counted = crate::source::check_keys(store, &schema.files, schema.key_column(), pk_type).await;
    let report = checks.within_source(Check::Keys, counted)?;
    let column = report.column.clone();
    let rows = checks.within(Check::Keys, report.into_result())?;
    checks.pass(
        Check::Keys,
        format!("{rows} `{column}` values: none null, none repeated"),
    );
    Ok(())
}

/// The checks a finished plan passed that no planner step records itself.
pub fn record_plan(plan: &Plan, checks: &mut Checks) {
    let planned = plan.segments.len();
    let mut segments = format!(
        "{planned} segment(s) planned, {} skipped, {} cannot be planned",
        plan.skipped.len(),
        plan.failed.len()
    );
    if !plan.failed.is_empty() {
        segments += "; those fail in the run, the others are written (see `plan -o json`, `failed`)";
    }
    checks.pass(Check::Segments, segments);
    checks.pass(
        Check::Spec,
        format!(
            "{} new field(s), mode {}, parallelism {}",
            plan.new_fields.len(),
            format!("{:?}", plan.mode).to_lowercase(),
            plan.parallelism
        ),
    );
}

/// The report as `plan` prints it.
pub fn report_text(r: &PrecheckReport) -> String {
    use milvus_backfill_api::precheck::CheckState;
    let mut s = format!("precheck: {}\n", if r.passed { "passed" } else { "FAILED" });
    for c in &r.checks {
        let mark = match c.state {
            CheckState::Passed => "ok  ",
            CheckState::Failed => "FAIL",
            CheckState::NotRun => "-   ",
        };
        let detail = match c.kind {
            Some(k) => format!("{k}: {}", c.detail),
            None => c.detail.clone(),
        };
        s += &format!("  {mark} {:<10} {detail}\n", c.check.as_str());
    }
    if let Some(sample) = r.sample.as_ref().filter(|s| !s.rows.is_empty()) {
        s += "  sample rows, as they will be written:\n";
        for row in &sample.rows {
            let cells: Vec<String> = sample
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| format!("{c}={v}"))
                .collect();
            s += &format!("    {}\n", cells.join("  "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use milvus_backfill_api::precheck::CheckState;

    #[test]
    fn the_first_failure_is_the_one_reported() {
        let mut checks = Checks::default();
        checks.pass(Check::Collection, "collection docs");
        let first: Result<()> = Err(BackfillError::schema("2 duplicate `pk` values"));
        assert!(checks.within(Check::Keys, first).is_err());
        let later: Result<()> = Err(BackfillError::config("the wrapper's error"));
        assert!(checks.within(Check::Collection, later).is_err());
        let r = checks.report("bf", "docs", Some(&BackfillError::config("the wrapper's error")), None);
        assert!(!r.passed);
        let failed: Vec<_> = r.failed().collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].check, Check::Keys);
        assert_eq!(failed[0].detail, "2 duplicate `pk` values");
        let collection = r.checks.iter().find(|c| c.check == Check::Collection).unwrap();
        assert_eq!(collection.state, CheckState::Passed);
    }

    #[test]
    fn a_read_error_is_the_sources_whatever_check_read() {
        let mut checks = Checks::default();
        let r: Result<()> = Err(BackfillError::data_read("s3://b/new.parquet", "not a Parquet file"));
        assert!(checks.within_source(Check::Keys, r).is_err());
        let report = checks.report("bf", "docs", None, None);
        assert_eq!(report.failed().next().unwrap().check, Check::Source);
        let mut checks = Checks::default();
        let r: Result<()> = Err(BackfillError::schema("no column `pk`"));
        assert!(checks.within_source(Check::Mapping, r).is_err());
        let report = checks.report("bf", "docs", None, None);
        assert_eq!(report.failed().next().unwrap().check, Check::Mapping);
    }

    #[test]
    fn the_text_marks_each_check_and_shows_the_sample() {
        let mut checks = Checks::default();
        checks.pass(Check::Collection, "collection docs");
        let sample = SampleRows {
            columns: vec!["pk".into(), "title".into()],
            rows: vec![vec!["1".into(), "\"a\"".into()]],
        };
        let text = report_text(&checks.report("bf", "docs", None, Some(sample)));
        assert!(text.starts_with("precheck: passed\n"), "{text}");
        assert!(text.contains("  ok   collection collection docs\n"), "{text}");
        assert!(text.contains("  -    keys       does not apply"), "{text}");
        assert!(text.contains("    pk=1  title=\"a\"\n"), "{text}");
        let mut checks = Checks::default();
        let _ = checks.within::<()>(Check::Keys, Err(BackfillError::schema("1 null `pk`")));
        let text = report_text(&checks.report("bf", "docs", None, None));
        assert!(text.starts_with("precheck: FAILED\n"), "{text}");
        assert!(
            text.contains("  FAIL keys       SchemaValidationError: 1 null `pk`\n"),
            "{text}"
        );
        assert!(text.contains("not run: an earlier check failed"), "{text}");
    }
}
