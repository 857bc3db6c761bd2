//! Integration tests on the real environment: Milvus 2.3.5 writing to s3s-fs on
//! loopback (`e2e/run-e2e.sh` starts both and builds the dataset). Every output row
//! is checked against the value of the key stored at that offset.
//!
//! Without `MB_E2E_DATA` the tests are skipped, unless `MB_REQUIRE_E2E=1` (as in
//! `make test`), where a missing environment is a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::{Array, Float64Array, Int64Array, StringArray};
use milvus_backfill::config::{BackfillDoc, MilvusToken, Place};
use milvus_backfill::error::ErrorKind;
use milvus_backfill::output::{read_back, read_manifest};
use milvus_backfill::planner;
use milvus_backfill::progress::Progress;
use milvus_backfill::runner;
use milvus_backfill::stores::{RunLocations, RunStores, StoreCredentials};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

struct Env {
    data: PathBuf,
    expected: Value,
}

fn env() -> Option<Env> {
    match std::env::var("MB_E2E_DATA") {
        Ok(d) => {
            let data = PathBuf::from(d);
            let expected = serde_json::from_slice(&std::fs::read(data.join("expected.json")).expect("expected.json"))
                .expect("expected.json parses");
            Some(Env { data, expected })
        }
        Err(_) if std::env::var("MB_REQUIRE_E2E").as_deref() == Ok("1") => {
            panic!("MB_REQUIRE_E2E=1 but MB_E2E_DATA is not set: run e2e/run-e2e.sh")
        }
        Err(_) => {
            eprintln!("skipped: MB_E2E_DATA not set (run `make e2e-test`)");
            None
        }
    }
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (source $MB_HOME/e2e/env)"))
}

#[path = "real_env/bad_inputs.rs"]
mod bad_inputs;
mod bad_inputs_table;
#[path = "real_env/faults.rs"]
mod faults;

fn yaml(collection: &str, source: &str, extra: &str) -> String {
    yaml_at(collection, source, extra, &var("S3_ENDPOINT"))
}

/// The spec with S3 at `s3` (a fault proxy's address, say) for the bucket and the source.
fn yaml_at(collection: &str, source: &str, extra: &str, s3: &str) -> String {
    format!(
        r#"apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {{name: e2e}}
spec:
  milvus: {{uri: "{uri}", collection: {collection}}}
  storage: {{endpoint: "{s3}", bucket: {bucket}, rootPath: {root}}}
  source: {{path: "{source}"}}
  batchSize: 256
  parallelism: 2
{extra}"#,
        uri = var("MILVUS_URI"),
        bucket = var("S3_BUCKET"),
        root = var("MILVUS_ROOT_PATH"),
    )
}

/// key (as JSON text) → (score, label) from the local copy of the source.
fn source_values(path: &Path) -> HashMap<String, (Option<f64>, Option<String>)> {
    let f = std::fs::File::open(path).unwrap();
    let mut out = HashMap::new();
    for b in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
        let b = b.unwrap();
        let pk = b.column_by_name("pk").unwrap();
        let score = b
            .column_by_name("score")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        let label = b
            .column_by_name("label")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            let key = match pk.as_any().downcast_ref::<Int64Array>() {
                Some(a) => Value::from(a.value(i)).to_string(),
                None => Value::from(pk.as_any().downcast_ref::<StringArray>().unwrap().value(i)).to_string(),
            };
            let s = score.is_valid(i).then(|| score.value(i));
            let l = label.is_valid(i).then(|| label.value(i).to_owned());
            out.insert(key, (s, l));
        }
    }
    out
}

async fn plan_and_run(
    text: &str,
) -> (
    milvus_backfill::plan::Plan,
    RunStores,
    milvus_backfill_api::outcome::BackfillResult,
) {
    let doc = BackfillDoc::parse(text).unwrap();
    let planned = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap();
    let progress = Progress::new(planned.plan.segments.len(), true);
    let result = runner::run_plan(&planned.plan, &planned.stores, &progress).await;
    runner::store_result(&planned.plan, &planned.stores.storage, &result)
        .await
        .unwrap();
    (planned.plan, planned.stores, result)
}

/// The result JSON the run stored beside its outputs.
async fn stored_result(stores: &RunStores, plan: &milvus_backfill::plan::Plan) -> Value {
    let key = milvus_backfill_api::layout::RunLayout::of_plan(plan).result_key();
    serde_json::from_slice(&stores.storage.get(&key).await.unwrap()).unwrap()
}

/// Checks every row of every segment's output against the source value of the key
/// Milvus stored at that offset (null where the source has no such key).
async fn verify_outputs(
    e: &Env,
    collection: &str,
    plan: &milvus_backfill::plan::Plan,
    stores: &RunStores,
    result: &milvus_backfill_api::outcome::BackfillResult,
) -> u64 {
    let exp = &e.expected[collection];
    let values = source_values(Path::new(exp["newField"]["local"].as_str().unwrap()));
    let out_store = &stores.output;
    let mut checked = 0u64;
    let mut matched = 0u64;
    for seg in &plan.segments {
        let truth = exp["segments"][seg.segment_id.to_string()]["pks"]
            .as_array()
            .unwrap_or_else(|| {
                panic!("segment {} is not in expected.json", seg.segment_id);
            });
        let manifest = read_manifest(out_store, &seg.manifest_key())
            .await
            .unwrap()
            .expect("manifest written");
        assert_eq!(manifest.row_count as usize, truth.len());
        assert_eq!(manifest.run_id, plan.run_id);
        let batches = read_back(out_store, &manifest).await.unwrap();
        let mut offset = 0usize;
        for b in &batches {
            let score = b
                .column_by_name("score")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            let label = b
                .column_by_name("label")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                let key = truth[offset].to_string();
                let got = (
                    score.is_valid(i).then(|| score.value(i)),
                    label.is_valid(i).then(|| label.value(i).to_owned()),
                );
                match values.get(&key) {
                    Some(want) => {
                        assert_eq!(&got, want, "segment {} offset {offset} key {key}", seg.segment_id);
                        matched += 1;
                    }
                    None => assert_eq!(
                        got,
                        (None, None),
                        "segment {} offset {offset} key {key} has no source row",
                        seg.segment_id
                    ),
                }
                offset += 1;
                checked += 1;
            }
        }
        assert_eq!(offset, truth.len(), "segment {} row count", seg.segment_id);
        let r = &result.segments[&seg.segment_id.to_string()];
        assert_eq!(r.row_count as usize, truth.len());
    }
    assert_eq!(result.total_matched_rows, matched);
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int64_collection_single_object_default_output() {
    let Some(e) = env() else { return };
    let c = "e2e_int64";
    let (plan, stores, r) = plan_and_run(&yaml(c, e.expected[c]["newField"]["single"].as_str().unwrap(), "")).await;
    assert!(r.success, "{}", r.summary());
    let segs = e.expected[c]["segments"].as_object().unwrap();
    assert_eq!(plan.segments.len(), segs.len(), "every flushed segment is planned");
    assert!(
        plan.segments.iter().any(|s| s.pk_binlogs.len() > 1),
        "the dataset has multi-binlog segments"
    );
    let checked = verify_outputs(&e, c, &plan, &stores, &r).await;
    let total: u64 = segs.values().map(|s| s["numRows"].as_u64().unwrap()).sum();
    assert_eq!((checked, r.total_rows_written), (total, total));
    assert_eq!(r.partition_id, 0, "segments of two partitions → partitionId 0");
    // Unmatched = source keys that are in no segment.
    let all: std::collections::HashSet<String> = segs
        .values()
        .flat_map(|s| s["pks"].as_array().unwrap().iter().map(|k| k.to_string()))
        .collect();
    let src = source_values(Path::new(e.expected[c]["newField"]["local"].as_str().unwrap()));
    let unmatched = src.keys().filter(|k| !all.contains(*k)).count() as u64;
    assert!(unmatched > 0);
    assert_eq!(r.unmatched_backfill_rows, unmatched);
    assert_eq!(r.total_backfill_data_rows, src.len() as u64);
    // The result JSON is stored beside the outputs.
    let stored = stored_result(&stores, &plan).await;
    assert_eq!(stored["totalRowsWritten"], total);
    assert!(plan.warnings.iter().any(|w| w.contains("garbage collector")));
}

/// Dozens of sealed segments: one pass over the source serves them all, so the source is read
/// once (the result says how often and how much), and every row of every segment is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_segments_read_the_source_once() {
    let Some(e) = env() else { return };
    let c = "e2e_many";
    let multi = e.expected[c]["newField"]["multi"].as_str().unwrap();
    let (plan, stores, r) = plan_and_run(&yaml(c, multi, "")).await;
    assert!(r.success, "{}", r.summary());
    let segs = e.expected[c]["segments"].as_object().unwrap();
    assert!(segs.len() >= 40, "the dataset has {} segments", segs.len());
    assert_eq!(plan.segments.len(), segs.len(), "every flushed segment is planned");
    let checked = verify_outputs(&e, c, &plan, &stores, &r).await;
    assert_eq!(checked, r.total_rows_written);
    let source_bytes: u64 = plan.source_files.iter().map(|f| f.size).sum();
    assert_eq!(r.source_reads.source_passes, 1, "{}", r.summary());
    assert!(
        r.source_reads.source_bytes_read > 0 && r.source_reads.source_bytes_read * 10 <= source_bytes * 13,
        "read {} bytes of a {source_bytes}-byte source",
        r.source_reads.source_bytes_read
    );
    // The stored result says the same.
    let stored = stored_result(&stores, &plan).await;
    assert_eq!(stored["sourcePasses"], 1);
    assert_eq!(stored["sourceBytesRead"], r.source_reads.source_bytes_read);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varchar_collection_multi_file_prefix_custom_output() {
    let Some(e) = env() else { return };
    let c = "e2e_varchar";
    let files = e.expected[c]["newField"]["multiFiles"].as_array().unwrap();
    let first = files[0].as_str().unwrap();
    let prefix = &first[..first.rfind('/').unwrap() + 1];
    let out = format!("s3://{}/backfill-out/varchar", var("S3_BUCKET"));
    let (plan, stores, r) = plan_and_run(&yaml(c, prefix, &format!("  output: {{path: \"{out}\"}}\n"))).await;
    assert!(r.success, "{}", r.summary());
    assert_eq!(plan.source_files.len(), files.len());
    assert_eq!(
        plan.output_place,
        Place::Storage {
            prefix: "backfill-out/varchar".into()
        }
    );
    assert!(plan
        .segments
        .iter()
        .all(|s| s.output_dir.starts_with("backfill-out/varchar/")));
    assert!(!plan.warnings.iter().any(|w| w.contains("garbage collector")));
    let checked = verify_outputs(&e, c, &plan, &stores, &r).await;
    assert_eq!(checked, r.total_rows_written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_from_a_local_source() {
    let Some(e) = env() else { return };
    let c = "e2e_int64";
    let local = e.expected[c]["newField"]["local"].as_str().unwrap();
    let out = e.data.join("out-partition");
    let extra = format!("  output: {{path: \"{}\"}}\n", out.display());
    let extra = format!("{extra}  flush: true\n");
    let text = yaml(c, local, &extra).replace(
        &format!("collection: {c}}}"),
        &format!("collection: {c}, partition: p1}}"),
    );
    let (plan, stores, r) = plan_and_run(&text).await;
    assert!(r.success, "{}", r.summary());
    let p1 = e.expected[c]["partitions"]["p1"].as_i64().unwrap();
    assert!(!plan.segments.is_empty());
    assert!(plan.segments.iter().all(|s| s.partition_id == p1));
    assert_eq!(r.partition_id, p1);
    verify_outputs(&e, c, &plan, &stores, &r).await;
    assert!(
        out.join(format!("{}/{p1}", plan.collection_id)).is_dir(),
        "outputs on the local file system"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_planning_with_a_clear_error_and_write_nothing() {
    let Some(e) = env() else { return };
    let c = "e2e_int64";
    use milvus_backfill_api::precheck::{Check, CheckState};
    let cases = [
        ("bad_dup_e2e_int64.parquet", "duplicate `pk`", Check::Keys),
        ("bad_null_e2e_int64.parquet", "null `pk`", Check::Keys),
        (
            "bad_type_e2e_int64.parquet",
            "but the join key field `id` is Int64",
            Check::Mapping,
        ),
        ("bad_nopk.parquet", "no `pk` column", Check::Mapping),
        (
            "bad_clash_e2e_int64.parquet",
            "already exist in the collection",
            Check::Mapping,
        ),
    ];
    let creds = milvus_backfill::stores::StoreCredentials::from_env().unwrap();
    for (file, needle, check) in cases {
        let out = e.data.join(format!("out-{file}"));
        let text = yaml(
            c,
            &e.data.join(file).display().to_string(),
            &format!("  output: {{path: \"{}\"}}\n", out.display()),
        );
        let doc = BackfillDoc::parse(&text).unwrap();
        let err = planner::plan(&doc, &MilvusToken::from_env())
            .await
            .err()
            .unwrap_or_else(|| panic!("{file} must fail"));
        assert_eq!(err.kind, ErrorKind::SchemaValidationError, "{file}: {}", err.message);
        assert!(err.message.contains(needle), "{file}: {}", err.message);
        // The precheck names the check that failed, and runs none after it.
        let (report, planned) = planner::precheck(&doc, &MilvusToken::from_env(), &creds).await;
        assert!(planned.is_err() && !report.passed, "{file}");
        let failed: Vec<_> = report.failed().collect();
        assert_eq!(failed.len(), 1, "{file}: {}", report.summary());
        assert_eq!(failed[0].check, check, "{file}: {}", report.summary());
        assert!(failed[0].detail.contains(needle), "{file}: {}", failed[0].detail);
        let sample = report.checks.iter().find(|c| c.check == Check::Sample).unwrap();
        assert_eq!(sample.state, CheckState::NotRun, "{file}");
        assert!(!out.exists(), "{file}: nothing may be written");
    }
    let text = yaml("no_such_collection", "/tmp/x.parquet", "");
    let err = planner::plan(&BackfillDoc::parse(&text).unwrap(), &MilvusToken::from_env())
        .await
        .err()
        .unwrap();
    assert!(err.message.contains("no_such_collection"), "{}", err.message);
    // Through the CLI: the report on stdout, failed at the collection, exit 3 (fix the input).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = bin().args(["plan", "-f"]).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("precheck: FAILED\n"), "{stdout}");
    assert!(
        stdout.contains("  FAIL collection ") && stdout.contains("no_such_collection"),
        "{stdout}"
    );
    let out = bin().args(["plan", "-o", "yaml", "-f"]).arg(&file).output().unwrap();
    let v: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precheck"]["passed"], Value::Bool(false), "{v}");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_milvus-backfill"))
}

#[test]
fn cli_plan_json_then_segment_task_then_run() {
    let Some(e) = env() else { return };
    let c = "e2e_varchar";
    let out = format!("s3://{}/backfill-out/cli", var("S3_BUCKET"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf.yaml");
    let src = e.expected[c]["newField"]["single"].as_str().unwrap();
    std::fs::write(&file, yaml(c, src, &format!("  output: {{path: \"{out}\"}}\n"))).unwrap();

    let text = bin().args(["plan", "-f"]).arg(&file).output().unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("primary key:  pk") && stdout.contains("binlog "),
        "{stdout}"
    );

    let json = bin().args(["plan", "-o", "json", "-f"]).arg(&file).output().unwrap();
    assert!(json.status.success());
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["precheck"]["passed"], Value::Bool(true), "{}", v["precheck"]);
    let sample = &v["precheck"]["sample"];
    assert_eq!(sample["columns"][0], "pk", "{sample}");
    assert_eq!(sample["rows"].as_array().map(Vec::len), Some(5), "{sample}");
    assert!(stdout.contains("precheck: passed\n"), "{stdout}");
    let task = &v["tasks"][0];
    let seg_id = task["segments"][0]["segmentId"].as_i64().unwrap();
    let task_file = dir.path().join("task.json");
    std::fs::write(&task_file, task.to_string()).unwrap();
    // No Milvus needed: a bogus MILVUS_URI proves the worker does not call it.
    let seg = bin()
        .args(["segment", "--task"])
        .arg(&task_file)
        .env("MILVUS_URI", "http://127.0.0.1:1")
        .output()
        .unwrap();
    // The same task read from storage, as a Job does.
    let stored = format!("s3://{}/files/backfill/e2e-cli-task.json", var("S3_BUCKET"));
    let doc = BackfillDoc::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let creds = StoreCredentials::from_env().unwrap();
        let stores = RunStores::open(&RunLocations::of_spec(&doc.spec), &creds).await;
        stores
            .storage
            .put("files/backfill/e2e-cli-task.json", task.to_string().into_bytes().into())
            .await
            .unwrap();
    });
    let from_s3 = bin()
        .args(["segment", "--task", &stored, "--endpoint", &var("S3_ENDPOINT")])
        .output()
        .unwrap();
    assert!(from_s3.status.success(), "{}", String::from_utf8_lossy(&from_s3.stderr));
    let o2: Value = serde_json::from_slice(&from_s3.stdout).unwrap();
    assert_eq!(o2["segments"][0]["segmentId"], seg_id);
    let missing = bin()
        .args([
            "segment",
            "--task",
            &format!("{stored}.nope"),
            "--endpoint",
            &var("S3_ENDPOINT"),
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3), "a missing task is a config error");
    assert!(seg.status.success(), "{}", String::from_utf8_lossy(&seg.stderr));
    let outcome: Value = serde_json::from_slice(&seg.stdout).unwrap();
    assert_eq!(outcome["success"], true);
    assert_eq!(outcome["segments"][0]["segmentId"], seg_id);
    assert!(outcome["segments"][0]["matchedRowCount"].as_u64().unwrap() > 0);

    let result_file = dir.path().join("result.json");
    let run = bin()
        .args(["run", "-v", "-f"])
        .arg(&file)
        .arg("--result")
        .arg(&result_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        stdout.contains("Backfill SUCCEEDED") && stdout.contains("rows matched:") && stdout.contains("segment "),
        "{stdout}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    assert_eq!(r["success"], true);
    assert_eq!(r["segments"][seg_id.to_string()]["segmentId"], seg_id);
    // Secrets are never printed.
    let secret = var("AWS_SECRET_ACCESS_KEY");
    for s in [&text.stderr, &run.stderr, &run.stdout, &seg.stderr] {
        assert!(
            !String::from_utf8_lossy(s).contains(&secret),
            "the S3 secret appeared in the output"
        );
    }

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        yaml(c, &e.data.join("bad_nopk.parquet").display().to_string(), ""),
    )
    .unwrap();
    let r = bin().args(["run", "-f"]).arg(&bad).output().unwrap();
    assert_eq!(r.status.code(), Some(3), "schema errors exit 3");
    assert!(String::from_utf8_lossy(&r.stderr).contains("SchemaValidationError"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unflushed_rows_are_a_warning_and_flush_true_seals_them() {
    let Some(e) = env() else { return };
    let g: Value = serde_json::from_slice(&std::fs::read(e.data.join("growing.json")).unwrap()).unwrap();
    let c = g["collection"].as_str().unwrap();
    let src = e.expected["e2e_int64"]["newField"]["local"].as_str().unwrap();
    let doc = BackfillDoc::parse(&yaml(c, src, "")).unwrap();
    let p = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap().plan;
    assert!(p.segments.is_empty(), "unflushed rows are never backfilled");
    assert!(
        p.warnings.iter().any(|w| w.contains("Growing") && w.contains("flush")),
        "{:?}",
        p.warnings
    );

    let doc = BackfillDoc::parse(&yaml(c, src, "  flush: true\n")).unwrap();
    let p = planner::plan(&doc, &MilvusToken::from_env()).await.unwrap().plan;
    let rows: u64 = p.segments.iter().map(|s| s.num_rows).sum();
    assert_eq!(
        rows,
        g["rows"].as_u64().unwrap(),
        "after Flush + GetFlushState the rows are in sealed segments"
    );
}

/// Create-if-absent on the real S3 server: of two writers of one key exactly one wins
/// (`If-None-Match: *`, answered 412 PreconditionFailed), and the first body stays.
#[tokio::test(flavor = "multi_thread")]
async fn create_if_absent_on_the_real_s3_server() {
    if env().is_none() {
        return;
    }
    use milvus_backfill::config::{S3Credentials, S3Endpoint};
    use milvus_backfill::store::{Store, StoreError};
    let ep = S3Endpoint {
        endpoint: var("S3_ENDPOINT"),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let creds = S3Credentials::storage_from_env().unwrap();
    let store = Store::s3(&ep, &var("S3_BUCKET"), creds.as_ref()).await;
    let key = format!("e2e-probe/if-absent-{}.json", std::process::id());
    store.delete(&key).await.unwrap();
    store
        .put_json_if_absent(&key, &serde_json::json!({"writer": 1}))
        .await
        .unwrap();
    let second = store.put_json_if_absent(&key, &serde_json::json!({"writer": 2})).await;
    assert!(matches!(second, Err(StoreError::AlreadyExists(_))), "{second:?}");
    let kept: Option<Value> = store.get_json(&key).await.unwrap();
    assert_eq!(kept, Some(serde_json::json!({"writer": 1})));
    store.delete(&key).await.unwrap();
}

/// Milvus 2.3.5 has no AddCollectionField: `add-fields` says so, exits with a configuration
/// error, and the schema stays as it was (the V1 export run still plans).
#[test]
fn add_fields_on_milvus_2_3_5_is_refused_clearly() {
    let Some(e) = env() else { return };
    let c = "e2e_int64";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf.yaml");
    let src = e.expected[c]["newField"]["single"].as_str().unwrap();
    std::fs::write(&file, yaml(c, src, "")).unwrap();
    let out = bin().args(["add-fields", "-f"]).arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("ConfigError") && stderr.contains("no AddCollectionField (it needs Milvus 2.6 or later"),
        "{stderr}"
    );
    let plan = bin().args(["plan", "-f"]).arg(&file).output().unwrap();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("score (Float64)") && text.contains("label (Utf8)"),
        "{text}"
    );
}

/// The lifecycle on the real Milvus 2.3.5: `flush` runs and is recorded in the plan;
/// `addFields` stops `run` with a clear error that names the step, before anything is written
/// under the run's prefix; and the calls of the steps after the commit work on the real server:
/// CreateIndex then DescribeIndex until built (an index that exists is kept on a re-run), and
/// Query, whose results decode to the values Milvus holds.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_on_milvus_2_3_5_flush_runs_add_fields_is_refused_and_index_and_query_work() {
    use milvus_backfill::after_commit::{self, IndexWait, PostCommitMilvus};
    use milvus_backfill::milvus_post::Value as V;
    use milvus_backfill_api::lifecycle::{Step, StepState};
    let Some(e) = env() else { return };
    let c = "e2e_int64";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bf.yaml");
    let src = e.expected[c]["newField"]["single"].as_str().unwrap();

    std::fs::write(&file, yaml(c, src, "  lifecycle:\n    flush: true\n")).unwrap();
    let plan = bin().args(["plan", "-o", "json", "-f"]).arg(&file).output().unwrap();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let doc: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(doc["plan"]["lifecycle"][0]["step"], "flush");
    assert_eq!(doc["plan"]["lifecycle"][0]["state"], "Done");
    assert_eq!(doc["steps"], serde_json::json!(["flush", "backfill"]));

    let refused = "  runId: lifecycle-refused\n  lifecycle:\n    flush: true\n    addFields: {}\n";
    std::fs::write(&file, yaml(c, src, refused)).unwrap();
    let run = bin().args(["run", "-f"]).arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("step addFields (lifecycle.addFields)") && stderr.contains("no AddCollectionField"),
        "{stderr}"
    );
    let ep = milvus_backfill::config::S3Endpoint {
        endpoint: var("S3_ENDPOINT"),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let creds = milvus_backfill::config::S3Credentials::storage_from_env().unwrap();
    let store = milvus_backfill::store::Store::s3(&ep, &var("S3_BUCKET"), creds.as_ref()).await;
    let prefix = format!(
        "{}/backfill/{}/lifecycle-refused/",
        var("MILVUS_ROOT_PATH"),
        e.expected[c]["collectionId"]
    );
    assert!(
        store.list(&prefix).await.unwrap().is_empty(),
        "nothing written under {prefix}"
    );

    // The steps after the commit, on the real server (no commit exists for 2.3.5 segments, so
    // the index goes on the collection's vector field, which Query also needs to load).
    let spec_text = yaml(
        c,
        src,
        "  lifecycle:\n    commit: {endpoint: \"http://127.0.0.1:1\"}\n    createIndex:\n      - {field: vec, indexType: FLAT, metricType: L2}\n",
    );
    let doc = BackfillDoc::parse(&spec_text).unwrap();
    let mut plan = planner::plan(
        &BackfillDoc::parse(&yaml(c, src, "")).unwrap(),
        &MilvusToken::from_env(),
    )
    .await
    .unwrap()
    .plan;
    plan.new_fields.clear();
    let mut milvus =
        milvus_backfill::milvus::MilvusClient::connect(&var("MILVUS_URI"), "default", &MilvusToken::from_env())
            .await
            .unwrap();
    let wait = IndexWait {
        poll: std::time::Duration::from_millis(500),
        timeout: std::time::Duration::from_secs(120),
    };
    let first = after_commit::run(&doc.spec, &plan, &mut milvus, None, wait).await;
    assert_eq!(
        (first[0].step, first[0].state),
        (Step::CreateIndex, StepState::Done),
        "{}",
        first[0].message
    );
    assert!(
        first[0].message.contains("field vec: FLAT index"),
        "{}",
        first[0].message
    );
    let again = after_commit::run(&doc.spec, &plan, &mut milvus, None, wait).await;
    assert_eq!(again[0].state, StepState::AlreadyDone, "{}", again[0].message);

    let load = Command::new(var("MB_PY"))
        .args([
            "-c",
            "import sys; from pymilvus import connections, Collection; connections.connect(uri=sys.argv[1]); Collection(sys.argv[2]).load()",
            &var("MILVUS_URI"),
            c,
        ])
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let deleted: Vec<i64> = serde_json::from_value(e.expected[c]["deleted"].clone()).unwrap();
    let keys: Vec<i64> = e.expected[c]["segments"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|s| s["pks"].as_array().unwrap().iter().take(4).map(|k| k.as_i64().unwrap()))
        .filter(|k| !deleted.contains(k))
        .collect();
    let asked: Vec<V> = keys.iter().map(|k| V::Int(*k)).collect();
    let fields = vec!["title".to_owned(), "vec".to_owned()];
    let rows = milvus
        .query_keys(c, ("id", milvus_backfill::plan::PkType::Int64), &asked, &fields)
        .await
        .unwrap();
    assert_eq!(rows.keys.len(), keys.len(), "every key asked for is found");
    for (i, k) in rows.keys.iter().enumerate() {
        let V::Int(k) = k else { panic!("{k:?}") };
        let title = format!("title-{k}-{}", "x".repeat((*k % 23) as usize));
        assert_eq!(rows.fields[0].1[i], V::Str(title), "key {k}");
        assert!(
            matches!(&rows.fields[1].1[i], V::Bytes(b) if b.len() == 8 * 4),
            "key {k}"
        );
    }
}
