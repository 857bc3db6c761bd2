//! The lifecycle as people read it: every declared step in order, with what it did or when it
//! runs. `plan` prints it before anything after planning runs; `run` prints it at the end.

use std::fmt::Write as _;

use milvus_backfill_api::lifecycle::{steps, Step, StepRecord, StepState};
use milvus_backfill_api::spec::EngineSpec;

/// One line per declared step; nothing when the spec declares only the backfill.
pub fn lines(spec: &EngineSpec, records: &[StepRecord], backfill: &str) -> String {
    let declared = steps(spec);
    if declared == [Step::Backfill] {
        return String::new();
    }
    let mut s = String::from("  lifecycle:\n");
    for (i, step) in declared.iter().enumerate() {
        let what = match records.iter().rev().find(|r| r.step == *step) {
            Some(r) => format!("{}: {}", state_word(r.state), r.message),
            None if *step == Step::Backfill => backfill.to_owned(),
            None if step.before_planning() => "to run".to_owned(),
            None => "runs after the backfill".to_owned(),
        };
        let _ = writeln!(s, "    {}. {:<12} {what}", i + 1, step.to_string());
    }
    s
}

fn state_word(s: StepState) -> &'static str {
    match s {
        StepState::Done => "done",
        StepState::AlreadyDone => "already done",
        StepState::NotRun => "not run",
        StepState::Failed => "FAILED",
    }
}

/// Whether any record failed (the run's exit code says so).
pub fn any_failed(records: &[StepRecord]) -> bool {
    records.iter().any(|r| r.state == StepState::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_step_is_listed_in_order_with_its_outcome() {
        let spec: EngineSpec = serde_json::from_value(serde_json::json!({
            "milvus": {"uri": "http://m:19530", "collection": "c"},
            "storage": {"endpoint": "s:9000", "bucket": "b"},
            "source": {"path": "s3://d/x.parquet"},
            "lifecycle": {"flush": true, "addFields": {}, "commit": {"endpoint": "http://m:9091"}, "verify": {}}
        }))
        .unwrap();
        let records = vec![
            StepRecord::new(Step::Flush, StepState::Done, "flushed"),
            StepRecord::new(
                Step::AddFields,
                StepState::AlreadyDone,
                "every new field exists already: score",
            ),
        ];
        let text = lines(&spec, &records, "3 segments planned");
        let want = [
            "1. flush        done: flushed",
            "2. addFields    already done: every new field exists already: score",
            "3. backfill     3 segments planned",
            "4. commit       runs after the backfill",
            "5. verify       runs after the backfill",
        ];
        for w in want {
            assert!(text.contains(w), "{w}\n{text}");
        }
        let plain: EngineSpec = serde_json::from_value(serde_json::json!({
            "milvus": {"uri": "http://m:19530", "collection": "c"},
            "storage": {"endpoint": "s:9000", "bucket": "b"},
            "source": {"path": "s3://d/x.parquet"}
        }))
        .unwrap();
        assert_eq!(lines(&plain, &[], "x"), "");
        assert!(!any_failed(&records));
    }
}
