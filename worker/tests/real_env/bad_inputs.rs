//! The bad-input table's `real` and `v1` rows (`tests/data/bad-inputs.yaml`) on Milvus 2.3.5
//! and s3s-fs, through the CLI: `run -f` for the spec and server rows; for the binlog rows, a
//! task planned by the real Milvus whose binlogs are copied and damaged in the real bucket, run
//! with `segment --task`. Each row must fail with its kind, exit code and phrase, and write
//! nothing the row does not allow (its prefixes are listed before and after).

use milvus_backfill::config::{S3Credentials, S3Endpoint};
use milvus_backfill::store::Store;

use super::bad_inputs_table::{check, merge, report, rows, Outcome, Row};
use super::*;

const COLLECTION: &str = "e2e_int64";

async fn bucket() -> Store {
    let ep = S3Endpoint {
        endpoint: var("S3_ENDPOINT"),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let creds = S3Credentials::storage_from_env().unwrap();
    Store::s3(&ep, &var("S3_BUCKET"), creds.as_ref()).await
}

async fn keys_under(store: &Store, prefixes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in prefixes {
        out.extend(store.list(p).await.unwrap().into_iter().map(|o| o.key));
    }
    out
}

/// Where a row may write: its output prefix and its run's prefix.
struct Scratch {
    run_id: String,
    out_prefix: String,
    run_prefix: String,
}

fn scratch(e: &Env, row: &Row) -> Scratch {
    let run_id = format!("bad-{}-{}", std::process::id(), row.id);
    Scratch {
        out_prefix: format!("f/b/{}/{}/", std::process::id(), row.id),
        run_prefix: format!(
            "{}/backfill/{}/{run_id}/",
            var("MILVUS_ROOT_PATH"),
            e.expected[COLLECTION]["collectionId"]
        ),
        run_id,
    }
}

fn spec_text(e: &Env, row: &Row, s: &Scratch) -> String {
    let source = match row.source.as_deref() {
        None => e.expected[COLLECTION]["newField"]["local"].as_str().unwrap().to_owned(),
        Some("s3-missing") => format!("s3://{}/no/such/source.parquet", var("DATA_BUCKET")),
        Some("dataset-dup") => e.data.join("bad_dup_e2e_int64.parquet").display().to_string(),
        Some(other) => panic!("unknown source builder {other}"),
    };
    let extra = format!(
        "  runId: {}\n  output: {{path: \"s3://{}/{}\"}}\n",
        s.run_id,
        var("S3_BUCKET"),
        s.out_prefix.trim_end_matches('/')
    );
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&yaml(COLLECTION, &source, &extra)).unwrap();
    if let Some(patch) = &row.spec {
        merge(&mut doc["spec"], patch);
    }
    serde_yaml::to_string(&doc).unwrap()
}

fn cli(args: &[&str], file: &Path, env: &std::collections::BTreeMap<String, String>) -> Outcome {
    let mut cmd = bin();
    cmd.args(args).arg(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Outcome::of(cmd.output().unwrap())
}

async fn run_spec_row(e: &Env, row: &Row, store: &Store) -> Result<(), String> {
    let s = scratch(e, row);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf.yaml");
    std::fs::write(&file, spec_text(e, row, &s)).unwrap();
    run_and_check(row, store, &s, &["run", "--no-progress", "-f"], &file).await
}

/// Runs the CLI on `file` and checks the row's outcome, with what it wrote under the row's
/// prefixes (listed before and after).
async fn run_and_check(row: &Row, store: &Store, s: &Scratch, args: &[&str], file: &Path) -> Result<(), String> {
    let prefixes = [s.out_prefix.clone(), s.run_prefix.clone()];
    let before = keys_under(store, &prefixes).await;
    let out = cli(args, file, &row.env);
    let new: Vec<String> = keys_under(store, &prefixes)
        .await
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    check(row, &out, &new, &s.run_prefix)
}

/// A task of the real plan whose first segment's binlogs are copies under the row's prefix,
/// damaged as the row says.
async fn damaged_task(e: &Env, row: &Row, s: &Scratch, store: &Store, dir: &Path) -> Value {
    let file = dir.join("bf.yaml");
    std::fs::write(&file, spec_text(e, row, s)).unwrap();
    let planned = bin().args(["plan", "-o", "json", "-f"]).arg(&file).output().unwrap();
    assert!(planned.status.success(), "{}", String::from_utf8_lossy(&planned.stderr));
    let plan: Value = serde_json::from_slice(&planned.stdout).unwrap();
    let mut task = plan["tasks"][0].clone();
    task["segments"].as_array_mut().unwrap().truncate(1);
    let seg = &mut task["segments"][0];
    let seg_dir = {
        let k = seg["pkBinlogs"][0]["key"].as_str().unwrap();
        k[..k.rfind("/100/").unwrap() + 1].to_owned()
    };
    for (i, b) in seg["pkBinlogs"].as_array_mut().unwrap().iter_mut().enumerate() {
        let key = b["key"].as_str().unwrap().to_owned();
        let copy = format!("{}binlogs/{key}", s.out_prefix);
        let mut bytes = store.get(&key).await.unwrap().to_vec();
        if i == 0 {
            match row.binlog.as_deref() {
                Some("truncated") => bytes.truncate(bytes.len() / 2),
                Some("bad-magic") => bytes[..4].copy_from_slice(&[0, 0, 0, 0]),
                // The descriptor event's length: after the magic, its timestamp and type code.
                Some("event-length") => bytes[13..17].copy_from_slice(&3i32.to_le_bytes()),
                Some("other-field") => {
                    let other = store
                        .list(&seg_dir)
                        .await
                        .unwrap()
                        .into_iter()
                        .find(|o| {
                            !o.key[seg_dir.len()..].starts_with("100/")
                                && !o.key[seg_dir.len()..].starts_with("0/")
                                && !o.key[seg_dir.len()..].starts_with("1/")
                        })
                        .expect("a binlog of another field");
                    bytes = store.get(&other.key).await.unwrap().to_vec();
                }
                _ => {}
            }
        }
        if !(i == 0 && row.binlog.as_deref() == Some("missing")) {
            store.put(&copy, bytes.into()).await.unwrap();
        }
        b["key"] = Value::String(copy);
    }
    if row.task.as_deref() == Some("row-count") {
        let n = seg["numRows"].as_u64().unwrap();
        seg["numRows"] = (n + 1).into();
    }
    task
}

async fn run_task_row(e: &Env, row: &Row, store: &Store) -> Result<(), String> {
    let s = scratch(e, row);
    let dir = tempfile::tempdir().unwrap();
    let task = damaged_task(e, row, &s, store, dir.path()).await;
    let file = dir.path().join("task.json");
    let body = match row.task.as_deref() {
        Some("not-json") => "{\"segments\": [".to_owned(),
        _ => task.to_string(),
    };
    std::fs::write(&file, body).unwrap();
    // The damaged copies are in place already: what is new afterwards, the command wrote.
    run_and_check(row, store, &s, &["segment", "--task"], &file).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_bad_input_fails_clearly_and_writes_nothing() {
    let Some(e) = env() else { return };
    let store = bucket().await;
    let mut failures = Vec::new();
    let real = rows("real");
    for row in &real {
        if let Err(f) = run_spec_row(&e, row, &store).await {
            failures.push(f);
        }
    }
    let v1 = rows("v1");
    for row in &v1 {
        if let Err(f) = run_task_row(&e, row, &store).await {
            failures.push(f);
        }
    }
    report("real and v1", &failures, real.len() + v1.len());
}
