//! The bad-input table (`tests/data/bad-inputs.yaml`): its rows, and the check every row's
//! outcome must pass, shared by the offline runner (`tests/bad_inputs.rs`) and the real one
//! (`tests/real_env/bad_inputs.rs`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use milvus_backfill::error::ErrorKind;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub id: String,
    pub bed: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub spec: Option<serde_yaml::Value>,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub segment: Option<String>,
    #[serde(default)]
    pub binlog: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub before: Option<String>,
    pub kind: ErrorKind,
    pub phrase: String,
    pub writes: Writes,
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writes {
    /// Nothing at all.
    Nothing,
    /// Only the run's records of the failure (under `{rootPath}/backfill/`).
    Records,
}

pub fn rows(bed: &str) -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-inputs.yaml");
    let all: Vec<Row> =
        serde_yaml::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ids = std::collections::HashSet::new();
    for r in &all {
        assert!(ids.insert(r.id.clone()), "row {} twice", r.id);
        assert!(
            ["v3", "real", "v1"].contains(&r.bed.as_str()),
            "row {}: bed {}",
            r.id,
            r.bed
        );
    }
    assert!(all.len() >= 40, "the table has {} rows", all.len());
    all.into_iter().filter(|r| r.bed == bed).collect()
}

/// Merges `patch` into `base`, mapping by mapping; other values replace.
pub fn merge(base: &mut serde_yaml::Value, patch: &serde_yaml::Value) {
    match (base, patch) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// What a row's command did.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn of(out: std::process::Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The row's error kind (with its exit code) and phrase, in what the command printed; and
/// the objects written (`new`: keys that were not there before) as the row allows.
pub fn check(row: &Row, out: &Outcome, new: &[String], records_prefix: &str) -> Result<(), String> {
    let text = format!("{}{}", out.stderr, out.stdout);
    let mut problems = Vec::new();
    if out.code != Some(row.kind.exit_code()) {
        problems.push(format!("exit {:?}, want {}", out.code, row.kind.exit_code()));
    }
    if !text.contains(row.kind.as_str()) {
        problems.push(format!("no {}", row.kind.as_str()));
    }
    if !text.contains(&row.phrase) {
        problems.push(format!("no phrase {:?}", row.phrase));
    }
    let unexpected: Vec<&String> = new
        .iter()
        .filter(|k| row.writes == Writes::Nothing || !k.starts_with(records_prefix))
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!("wrote {unexpected:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n    output: {}",
            row.id,
            problems.join("; "),
            text.trim()
        ))
    }
}

/// Fails with every row that went wrong, not just the first.
pub fn report(bed: &str, failures: &[String], ran: usize) {
    eprintln!("[bad-inputs] {bed}: {ran} rows, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {ran} rows:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
