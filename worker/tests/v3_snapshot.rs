//! Planning from a snapshot and writing StorageV3 outputs, on segments the official
//! milvus-storage library wrote (`../shared/fixtures/milvus-storage-v3`, with the primary keys
//! in row order in `expected.json`). The official library's own commit and read-back of these
//! outputs is in `e2e/v3/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde_json::{json, Value};

use milvus_backfill::config::{BackfillDoc, MilvusToken};
use milvus_backfill::error::ErrorKind;
use milvus_backfill::planner;
use milvus_backfill::progress::Progress;
use milvus_backfill::runner;
use milvus_backfill::stores::StoreCredentials;

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

/// A bucket directory holding the golden segments, served as `file://<root>` bucket `bkt`.
struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        copy_dir(&fixtures().join("files"), &root.join("bkt/files"));
        Self { _dir: dir, root }
    }

    fn segment(&self, id: i64) -> Value {
        expected()["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["segmentId"] == id)
            .unwrap()
            .clone()
    }

    /// A snapshot of collection 1001 holding `segment` at manifest version `ver`, with the new
    /// field `score` (103, Double, nullable) added to the schema.
    fn snapshot(&self, segment: i64, ver: i64, pk_type: i32) -> PathBuf {
        let base = format!("bkt/files/insert_log/1001/1002/{segment}");
        let doc = json!({
            "snapshot-info": {"name": "s1", "id": 7, "collection_id": 1001, "partition_ids": [1002]},
            "collection": {"schema": {"name": "golden", "version": 4, "fields": [
                {"fieldID": 100, "name": "pk", "is_primary_key": true, "data_type": pk_type},
                {"fieldID": 101, "name": "price", "data_type": 11, "nullable": true},
                {"fieldID": 102, "name": "vec", "data_type": 100, "type_params": [{"key": "dim", "value": "128"}]},
                {"fieldID": 103, "name": "score", "data_type": 11, "nullable": true},
                {"name": "RowID", "data_type": 5},
                {"fieldID": 1, "name": "Timestamp", "data_type": 5}]}},
            "manifest-list": [],
            "storagev2-manifest-list": [
                {"segmentID": segment, "manifest": json!({"ver": ver, "base_path": base}).to_string()}]
        });
        let p = self.root.join(format!("snapshot-{segment}-{ver}.json"));
        std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
        p
    }

    fn doc(&self, snapshot: &Path, source: &Path) -> BackfillDoc {
        BackfillDoc::parse(&format!(
            "spec:\n  milvus:\n    snapshot:\n      path: {}\n  storage:\n    endpoint: file://{}\n    bucket: bkt\n  source:\n    path: {}\n",
            snapshot.display(),
            self.root.display(),
            source.display()
        ))
        .unwrap()
    }

    fn data_files(&self, segment: i64) -> Vec<String> {
        let dir = self
            .root
            .join(format!("bkt/files/insert_log/1001/1002/{segment}/_data"));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

/// `pk` + one value column: every other key of the segment (value = its row offset / 4),
/// plus keys in no segment.
fn write_source(path: &Path, pks: &[Value], value: DataType) -> HashMap<String, f64> {
    let mut want = HashMap::new();
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    for (i, pk) in pks.iter().enumerate().step_by(2) {
        let v = i as f64 / 4.0;
        want.insert(pk.to_string(), v);
        keys.push(pk.clone());
        vals.push(v);
    }
    for extra in 0..50 {
        keys.push(if pks[0].is_i64() {
            json!(-1 - extra)
        } else {
            json!(format!("none-{extra}"))
        });
        vals.push(-1.0);
    }
    let key_array: ArrayRef = if pks[0].is_i64() {
        Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k.as_i64().unwrap())))
    } else {
        Arc::new(StringArray::from_iter_values(
            keys.iter().map(|k| k.as_str().unwrap().to_owned()),
        ))
    };
    let val_array: ArrayRef = match value {
        DataType::Float32 => Arc::new(Float32Array::from_iter_values(vals.iter().map(|v| *v as f32))),
        _ => Arc::new(Float64Array::from(vals)),
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", key_array.data_type().clone(), false),
        Field::new("score", value, true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![key_array, val_array]).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    want
}

async fn plan_and_run(
    doc: &BackfillDoc,
) -> milvus_backfill::error::Result<milvus_backfill_api::outcome::BackfillResult> {
    let planned = planner::plan_with(doc, &MilvusToken::default(), &StoreCredentials::default()).await?;
    Ok(runner::run_plan(
        &planned.plan,
        &planned.stores,
        &Progress::new(planned.plan.segments.len(), true),
    )
    .await)
}

#[tokio::test]
async fn a_snapshot_alone_plans_and_writes_row_aligned_v3_columns() {
    for (segment, pk_type) in [(1003, 5), (1004, 21)] {
        let bed = Bed::new();
        let seg = bed.segment(segment);
        let pks = seg["pks"].as_array().unwrap().clone();
        let source = bed.root.join("source.parquet");
        let want = write_source(&source, &pks, DataType::Float64);
        let ver = seg["manifestVersion"].as_i64().unwrap();
        let before = bed.data_files(segment);
        let result = plan_and_run(&bed.doc(&bed.snapshot(segment, ver, pk_type), &source))
            .await
            .unwrap();
        assert!(result.success, "{}", result.summary());
        assert_eq!(
            (result.collection_id, result.partition_id, result.schema_version),
            (1001, 1002, 4)
        );
        assert_eq!(result.new_field_names, vec!["score"]);
        let out = &result.segments[&segment.to_string()];
        assert_eq!(out.row_count, pks.len() as u64);
        assert_eq!(out.output_path, format!("files/insert_log/1001/1002/{segment}"));
        assert_eq!(out.ops.len(), 1);
        let op = &out.ops[0];
        assert_eq!(
            (op.op_type.as_str(), op.columns.clone(), op.format.as_str()),
            ("replace", vec!["103".to_owned()], "parquet")
        );
        let covered: u64 = op.files.iter().map(|f| f.end_index - f.start_index).sum();
        assert_eq!((covered, op.row_count), (pks.len() as u64, pks.len() as u64));
        // The new file is beside the official writer's, and only new files were written.
        let after = bed.data_files(segment);
        assert_eq!(after.len(), before.len() + op.files.len());
        let file = &op.files[0];
        assert!(file.path.starts_with("0_") && file.path.ends_with(".parquet") && !file.path.contains('/'));
        let bytes = std::fs::read(bed.root.join(format!("bkt/{}/_data/{}", out.output_path, file.path))).unwrap();
        assert_eq!(file.properties["file_size"], bytes.len().to_string());
        let batch = read_all(bytes);
        assert_eq!(batch.schema().field(0).name(), "103");
        let col = batch.column(0).as_primitive::<Float64Type>();
        for (i, pk) in pks.iter().enumerate() {
            match want.get(&pk.to_string()) {
                Some(v) => assert_eq!(col.value(i), *v, "segment {segment} row {i}"),
                None => assert!(col.is_null(i), "segment {segment} row {i} should be null"),
            }
        }
        assert_eq!(out.matched_row_count, want.len() as u64);
    }
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let bed = Bed::new();
    let pks = bed.segment(1003)["pks"].as_array().unwrap().clone();
    let before = bed.data_files(1003);
    let snap = bed.snapshot(1003, 4, 5);

    // A column whose type is not exactly the field's.
    let f32_source = bed.root.join("f32.parquet");
    write_source(&f32_source, &pks, DataType::Float32);
    let e = plan_and_run(&bed.doc(&snap, &f32_source)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SchemaValidationError);
    assert!(
        e.message.contains("`score` is Float32 but field `score` is Double"),
        "{}",
        e.message
    );

    // A column with no field of its name.
    let source = bed.root.join("source.parquet");
    write_source(&source, &pks, DataType::Float64);
    let renamed = std::fs::read_to_string(&snap)
        .unwrap()
        .replace("\"score\"", "\"other\"");
    let no_field = bed.root.join("no-field.json");
    std::fs::write(&no_field, renamed).unwrap();
    let e = plan_and_run(&bed.doc(&no_field, &source)).await.unwrap_err();
    assert!(
        e.message
            .contains("`score` (Float64) has no field \"score\" in collection \"golden\""),
        "{}",
        e.message
    );
    assert!(e.message.contains("AddCollectionField"));

    // A snapshot that is not there, or not a snapshot.
    let e = plan_and_run(&bed.doc(&bed.root.join("absent.json"), &source))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let garbage = bed.root.join("garbage.json");
    std::fs::write(&garbage, b"{\"snapshot-info\": 3}").unwrap();
    let e = plan_and_run(&bed.doc(&garbage, &source)).await.unwrap_err();
    assert!(
        e.message.contains("not a Milvus snapshot metadata JSON"),
        "{}",
        e.message
    );

    assert_eq!(bed.data_files(1003), before, "nothing was written");
}

/// A segment whose manifest is gone or was rewritten cannot be planned; when it is the
/// snapshot's only segment, planning stops with the reason instead of a run that would only
/// record it, and nothing is written.
#[tokio::test]
async fn a_snapshot_whose_segments_cannot_be_planned_is_refused_before_anything_is_written() {
    let bed = Bed::new();
    let pks = bed.segment(1003)["pks"].as_array().unwrap().clone();
    let source = bed.root.join("source.parquet");
    write_source(&source, &pks, DataType::Float64);
    let before = bed.data_files(1003);

    // Version 9 was never written: no manifest of the snapshot exists, so spec.storage is wrong.
    let e = plan_and_run(&bed.doc(&bed.snapshot(1003, 9, 5), &source))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigError, "{}", e.message);
    assert!(
        e.message.contains("manifest version 9") && e.message.contains("check spec.storage"),
        "{}",
        e.message
    );

    // At version 2 the segment had 2,000 rows; the newest manifest (4) has 2,500.
    let e = plan_and_run(&bed.doc(&bed.snapshot(1003, 2, 5), &source))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SegmentProcessingError, "{}", e.message);
    assert!(
        e.message.contains("every segment failed planning")
            && e.message.contains("rows changed from 2000 to 2500")
            && e.message.contains("take a new snapshot"),
        "{}",
        e.message
    );
    assert_eq!(bed.data_files(1003), before, "nothing was written");
    let runs = bed.root.join("bkt/files/backfill");
    assert!(!runs.exists(), "no result was written");

    // At version 3 it had all 2,500 rows (version 4 added the vector group): planned at 3.
    let r = plan_and_run(&bed.doc(&bed.snapshot(1003, 3, 5), &source))
        .await
        .unwrap();
    assert!(r.success, "{}", r.summary());
}

// ------------------------------------------------------------------ commit contract tests
// No Milvus 3.0 server runs here: a local HTTP server implements the documented endpoint
// (`GET /management/datacoord/backfill/commit?result_path=`, milvus-storage.md §11.3/§15.3)
// and checks every rule of the newest result decoder on what we send it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod golden;
use golden::{copy_dir, read_all};

fn fixtures() -> PathBuf {
    golden::shared_fixtures("milvus-storage-v3")
}

/// The §15.3 rules a V3 delta result must satisfy; each violation as a sentence.
fn contract_violations(r: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            v.push(what);
        }
    };
    need(r["success"] == true, "success must be true".into());
    need(
        r["collectionId"].as_i64().is_some_and(|c| c > 0),
        "collectionId must be > 0".into(),
    );
    need(
        r["partitionId"].as_i64().is_some_and(|p| p >= 0),
        "partitionId must be the shared partition or 0".into(),
    );
    need(
        r["schemaVersion"].as_i64().is_some(),
        "schemaVersion must be an int32".into(),
    );
    need(
        r["newFieldNames"].as_array().is_some_and(|n| !n.is_empty()),
        "newFieldNames must list the fields".into(),
    );
    let segments = r["segments"].as_object().cloned().unwrap_or_default();
    need(!segments.is_empty(), "segments must not be empty".into());
    for (id, s) in &segments {
        need(
            id.parse::<i64>().is_ok(),
            format!("segment key {id} must be a decimal ID"),
        );
        let rows = s["rowCount"].as_u64().unwrap_or(0);
        need(rows > 0, format!("segment {id}: rowCount must be > 0"));
        need(
            s.get("version").is_none(),
            format!("segment {id}: a delta entry carries ops, not version"),
        );
        let ops = s["ops"].as_array().cloned().unwrap_or_default();
        need(!ops.is_empty(), format!("segment {id}: ops must not be empty"));
        let mut columns = Vec::new();
        for op in &ops {
            need(
                op["type"] == "replace" || op["type"] == "add",
                format!("segment {id}: op type"),
            );
            need(
                op["format"] == "parquet",
                format!("segment {id}: format must be parquet"),
            );
            for c in op["columns"].as_array().cloned().unwrap_or_default() {
                let c = c.as_str().unwrap_or_default().to_owned();
                need(
                    c.parse::<i64>().is_ok_and(|f| f >= 100),
                    format!("segment {id}: column {c} must be a field ID"),
                );
                need(
                    !columns.contains(&c),
                    format!("segment {id}: column {c} in more than one op"),
                );
                columns.push(c);
            }
            let mut total = 0;
            for f in op["files"].as_array().cloned().unwrap_or_default() {
                let (start, end) = (
                    f["startIndex"].as_u64().unwrap_or(0),
                    f["endIndex"].as_u64().unwrap_or(0),
                );
                need(end > start, format!("segment {id}: endIndex must exceed startIndex"));
                let path = f["path"].as_str().unwrap_or_default();
                need(
                    !path.is_empty() && !path.starts_with("_data/"),
                    format!("segment {id}: path {path:?}"),
                );
                total += end - start;
            }
            need(
                total == rows,
                format!("segment {id}: files cover {total} rows, rowCount is {rows}"),
            );
            need(
                op["rowCount"].as_u64() == Some(rows),
                format!("segment {id}: op rowCount"),
            );
        }
    }
    v
}

/// What the fake endpoint saw: each call's result path, segments and rule violations.
#[derive(Default)]
struct Calls(std::sync::Mutex<Vec<Call>>);

/// (result path, segment IDs, rule violations).
type Call = (String, Vec<String>, Vec<String>);

/// Serves the commit endpoint over the bucket at `bucket_dir`. `fail_first` segments fail on
/// their first commit ("not Flushed" yet), then succeed; `status` overrides the HTTP status.
async fn commit_server(bucket_dir: PathBuf, fail_first: Vec<String>, status: u16) -> (String, Arc<Calls>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Calls::default());
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                n += sock.read(&mut buf[n..]).await.unwrap();
            }
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = head.split_whitespace().nth(1).unwrap().to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let key = query
                .strip_prefix("result_path=")
                .unwrap_or_default()
                .replace("%20", " ");
            let (code, body) = if path != "/management/datacoord/backfill/commit" || status == 404 {
                (404, "404 page not found".to_owned())
            } else if status != 200 {
                (
                    status,
                    r#"{"reason": "no backfill segments passed pre-validation"}"#.to_owned(),
                )
            } else {
                let result: Value = serde_json::from_slice(&std::fs::read(bucket_dir.join(&key)).unwrap()).unwrap();
                let violations = contract_violations(&result);
                let segs: Vec<String> = result["segments"].as_object().unwrap().keys().cloned().collect();
                let earlier = seen
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|c| c.1.iter().any(|s| fail_first.contains(s)))
                    .count();
                let statuses: Vec<Value> = segs
                    .iter()
                    .map(|s| {
                        let ok = violations.is_empty() && !(fail_first.contains(s) && earlier == 0);
                        json!({"segment_id": s.parse::<i64>().unwrap(), "ok": ok, "kind": "v3",
                               "reason": if ok { "" } else { "segment is not Flushed" }})
                    })
                    .collect();
                let failed = statuses.iter().filter(|s| s["ok"] == false).count();
                seen.0.lock().unwrap().push((key.clone(), segs.clone(), violations));
                (
                    200,
                    json!({"total_segments": segs.len(), "committed_segments": segs.len() - failed,
                             "failed_segments": failed, "segment_statuses": statuses})
                    .to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    (format!("http://{addr}"), calls)
}

async fn stored_run(
    bed: &Bed,
) -> (
    milvus_backfill_api::outcome::BackfillResult,
    String,
    milvus_backfill::store::Store,
) {
    let pks = bed.segment(1003)["pks"].as_array().unwrap().clone();
    let source = bed.root.join("source.parquet");
    write_source(&source, &pks, DataType::Float64);
    let doc = bed.doc(&bed.snapshot(1003, 4, 5), &source);
    let planned = planner::plan_with(&doc, &MilvusToken::default(), &StoreCredentials::default())
        .await
        .unwrap();
    let r = runner::run_plan(&planned.plan, &planned.stores, &Progress::new(1, true)).await;
    runner::store_result(&planned.plan, &planned.stores.storage, &r)
        .await
        .unwrap();
    let key = milvus_backfill_api::layout::RunLayout::of_plan(&planned.plan).result_key();
    (r, key, planned.stores.storage.clone())
}

#[tokio::test]
async fn contract_the_result_passes_every_decoder_rule_and_commits() {
    let bed = Bed::new();
    let (r, key, storage) = stored_run(&bed).await;
    let (endpoint, calls) = commit_server(bed.root.join("bkt"), vec![], 200).await;
    let done = milvus_backfill::commit::commit_run(&storage, &endpoint, &r, &key, 2)
        .await
        .unwrap();
    assert!(done.success);
    assert_eq!(done.segments["1003"], "committed");
    let calls = calls.0.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, key);
    assert!(calls[0].2.is_empty(), "rule violations: {:?}", calls[0].2);
}

/// The commit endpoint behind `mb-fault-proxy`: refused connections, a gateway's 503 and an
/// answer lost after DataCoord committed are all sent again (the commit is idempotent), and
/// each still ends committed; an endpoint that stays down fails with a connection error that
/// names it, after a bounded number of attempts.
#[tokio::test]
async fn contract_a_commit_is_sent_again_while_milvus_is_unreachable_or_its_answer_is_lost() {
    use mb_fault_proxy::{Mode, Proxy, Rule};
    let bed = Bed::new();
    let (r, key, storage) = stored_run(&bed).await;
    let (endpoint, calls) = commit_server(bed.root.join("bkt"), vec![], 200).await;
    let upstream: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let rules = |rs: &[&str]| rs.iter().map(|r| Rule::parse(r).unwrap()).collect::<Vec<_>>();
    let tcp = Proxy::start("127.0.0.1:0", upstream, Mode::Tcp, rules(&["refuse first=2"]), 1)
        .await
        .unwrap();
    let done = milvus_backfill::commit::commit_run(&storage, &format!("http://{}", tcp.addr()), &r, &key, 0)
        .await
        .unwrap();
    assert!(done.success, "{done:?}");
    assert_eq!((tcp.stats().faults, calls.0.lock().unwrap().len()), (2, 1));

    let http = Proxy::start(
        "127.0.0.1:0",
        upstream,
        Mode::Http,
        rules(&["status:503 first=1", "lost-answer first=1"]),
        1,
    )
    .await
    .unwrap();
    let done = milvus_backfill::commit::commit_run(&storage, &format!("http://{}", http.addr()), &r, &key, 0)
        .await
        .unwrap();
    assert!(done.success, "{done:?}");
    assert_eq!(http.stats().faults, 2);
    assert_eq!(
        calls.0.lock().unwrap().len(),
        3,
        "the lost answer's commit reached DataCoord, then the retry"
    );

    tcp.set_rules(rules(&["refuse"]));
    let down = format!("http://{}", tcp.addr());
    let e = milvus_backfill::commit::commit_run(&storage, &down, &r, &key, 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConnectionError, "{}", e.message);
    assert!(e.message.contains(&down), "{}", e.message);
    assert_eq!(tcp.stats().faults, u64::from(milvus_backfill::retry::COMMIT.attempts));
}

#[tokio::test]
async fn contract_a_failed_segment_is_committed_again_alone() {
    let bed = Bed::new();
    let (r, key, storage) = stored_run(&bed).await;
    let (endpoint, calls) = commit_server(bed.root.join("bkt"), vec!["1003".into()], 200).await;
    let done = milvus_backfill::commit::commit_run(&storage, &endpoint, &r, &key, 2)
        .await
        .unwrap();
    assert!(done.success, "{done:?}");
    let calls = calls.0.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].0.ends_with("result-retry-1.json"), "{}", calls[1].0);
    assert_eq!(calls[1].1, vec!["1003"]);
    assert_eq!(done.result_paths, vec![key.clone(), calls[1].0.clone()]);
}

#[tokio::test]
async fn contract_servers_without_the_endpoint_or_rejecting_the_result_say_so() {
    let bed = Bed::new();
    let (r, key, storage) = stored_run(&bed).await;
    let (old, _) = commit_server(bed.root.join("bkt"), vec![], 404).await;
    let e = milvus_backfill::commit::commit_run(&storage, &old, &r, &key, 0)
        .await
        .unwrap_err();
    assert!(e.message.contains("needs Milvus 3.0"), "{}", e.message);
    let (rejecting, _) = commit_server(bed.root.join("bkt"), vec![], 500).await;
    let e = milvus_backfill::commit::commit_run(&storage, &rejecting, &r, &key, 0)
        .await
        .unwrap_err();
    assert!(
        e.message.contains("HTTP 500") && e.message.contains("pre-validation"),
        "{}",
        e.message
    );
    let e = milvus_backfill::commit::call("http://127.0.0.1:9", &key)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConnectionError);
}

#[tokio::test]
async fn the_manifest_mode_publishes_the_next_version_only_if_absent() {
    let bed = Bed::new();
    let pks = bed.segment(1003)["pks"].as_array().unwrap().clone();
    let source = bed.root.join("source.parquet");
    let want = write_source(&source, &pks, DataType::Float64);
    let snap = bed.snapshot(1003, 4, 5);
    let yaml = |extra: &str| {
        format!(
            "spec:\n  milvus:\n    snapshot:\n      path: {}\n  storage:\n    endpoint: file://{}\n    bucket: bkt\n  source:\n    path: {}\n{extra}",
            snap.display(),
            bed.root.display(),
            source.display()
        )
    };
    let doc = BackfillDoc::parse(&yaml("  output:\n    v3Commit: manifest\n")).unwrap();
    let meta = bed.root.join("bkt/files/insert_log/1001/1002/1003/_metadata");
    for (round, version) in [(1, 5), (2, 6)] {
        let r = plan_and_run(&doc).await.unwrap();
        assert!(r.success, "{}", r.summary());
        let out = &r.segments["1003"];
        assert!(out.ops.is_empty(), "the version replaces the ops");
        assert_eq!(
            (out.version, out.source_version),
            (Some(version), Some(version - 1)),
            "round {round}"
        );
        let bytes = std::fs::read(meta.join(format!("manifest-{version}.avro"))).unwrap();
        let m = milvus_backfill::manifest::Manifest::decode(&bytes).unwrap();
        // The official writer's two groups stay; the new column has exactly one group.
        assert_eq!(m.column_groups.len(), 3, "round {round}");
        assert_eq!(m.column_groups.iter().filter(|g| g.columns == ["103"]).count(), 1);
        let file = &m.group_of(103).unwrap().files[0];
        let data = std::fs::read(bed.root.join(format!("bkt/{}/_data/{}", out.output_path, file.path))).unwrap();
        let col = read_all(data);
        let col = col.column(0).as_primitive::<Float64Type>();
        let first = want.get(&pks[0].to_string()).copied();
        assert_eq!(col.is_null(0), first.is_none());
    }
    // Earlier versions are never rewritten.
    let names: Vec<String> = std::fs::read_dir(&meta)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    // Milvus' decoder classifies an entry without ops as a legacy V3 entry: `version` > 0 is required.
    let r = plan_and_run(&BackfillDoc::parse(&yaml("")).unwrap()).await.unwrap();
    assert!(r.segments["1003"].version.is_none() && !r.segments["1003"].ops.is_empty());
}

/// A manifest whose row ranges claim more rows than its files hold (written here in the Avro
/// container encoding) fails its segment when the keys are read, before anything is written.
#[tokio::test]
async fn a_manifest_claiming_more_rows_than_its_files_fails_its_segment() {
    use apache_avro::types::{Record, Value as Avro};
    let bed = Bed::new();
    let seg = bed.segment(1003);
    let schema = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Manifest","namespace":"milvus_storage","fields":[
         {"name":"column_groups","type":{"type":"array","items":{"type":"record","name":"ColumnGroup","fields":[
           {"name":"columns","type":{"type":"array","items":"string"}},
           {"name":"files","type":{"type":"array","items":{"type":"record","name":"ColumnGroupFile","fields":[
             {"name":"path","type":"string"},{"name":"start_index","type":"long"},{"name":"end_index","type":"long"},
             {"name":"properties","type":{"type":"map","values":"string"}}]}}},
           {"name":"format","type":"string"}]}}},
         {"name":"delta_logs","type":{"type":"array","items":{"type":"record","name":"DeltaLog","fields":[
           {"name":"path","type":"string"},{"name":"type","type":"int"},{"name":"num_entries","type":"long"}]}}},
         {"name":"stats","type":{"type":"map","values":{"type":"record","name":"Statistics","fields":[
           {"name":"paths","type":{"type":"array","items":"string"}},{"name":"metadata","type":{"type":"map","values":"string"}}]}}}]}"#,
    )
    .unwrap();
    // The official writer's files, each range one row longer than the first file holds.
    let group = |g: &Value, extra: i64| {
        let files = g["files"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = f["path"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
                let end = f["end_index"].as_i64().unwrap() + if i == 0 { extra } else { 0 };
                Avro::Record(vec![
                    ("path".into(), Avro::String(name)),
                    ("start_index".into(), Avro::Long(0)),
                    ("end_index".into(), Avro::Long(end)),
                    ("properties".into(), Avro::Map(Default::default())),
                ])
            })
            .collect();
        let cols = g["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Avro::String(c.as_str().unwrap().into()))
            .collect();
        Avro::Record(vec![
            ("columns".into(), Avro::Array(cols)),
            ("files".into(), Avro::Array(files)),
            ("format".into(), Avro::String("parquet".into())),
        ])
    };
    let groups = seg["manifest"]["column_groups"].as_array().unwrap();
    let mut rec = Record::new(&schema).unwrap();
    rec.put(
        "column_groups",
        Avro::Array(vec![group(&groups[0], 100), group(&groups[1], 100)]),
    );
    rec.put("delta_logs", Avro::Array(vec![]));
    rec.put("stats", Avro::Map(Default::default()));
    let mut w = apache_avro::Writer::new(&schema, Vec::new()).unwrap();
    w.append_value(rec).unwrap();
    let meta = bed.root.join("bkt/files/insert_log/1001/1002/1003/_metadata");
    std::fs::write(meta.join("manifest-5.avro"), w.into_inner().unwrap()).unwrap();

    let pks = seg["pks"].as_array().unwrap().clone();
    let source = bed.root.join("source.parquet");
    write_source(&source, &pks, DataType::Float64);
    let before = bed.data_files(1003);
    let r = plan_and_run(&bed.doc(&bed.snapshot(1003, 5, 5), &source))
        .await
        .unwrap();
    assert!(!r.success);
    let f = &r.failed_segments[0];
    assert_eq!((f.segment_id, f.kind), (1003, ErrorKind::DataReadError));
    assert!(
        f.reason
            .contains("the manifest reads rows [0, 1100) but the file holds 1000"),
        "{}",
        f.reason
    );
    assert_eq!(bed.data_files(1003), before, "nothing was written");
}

/// `spec.columnMapping`: the source names the key and the field otherwise and holds a column
/// that is not mapped; the output is the one of the plain source. A mapping that names a
/// missing column, or maps no column to the primary key, is refused before anything is written.
#[tokio::test]
async fn a_column_mapping_renames_and_drops_source_columns() {
    let segment = 1003;
    let bed = Bed::new();
    let seg = bed.segment(segment);
    let pks = seg["pks"].as_array().unwrap().clone();
    let ver = seg["manifestVersion"].as_i64().unwrap();
    let plain = bed.root.join("plain.parquet");
    let want = write_source(&plain, &pks, DataType::Float64);
    let source = bed.root.join("src/mapped.parquet");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    let batch = read_all(std::fs::read(&plain).unwrap());
    let schema = Arc::new(Schema::new(vec![
        Field::new("value", DataType::Float64, true),
        Field::new("comment", DataType::Utf8, true),
        Field::new("key", batch.schema().field(0).data_type().clone(), false),
    ]));
    let comment: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..batch.num_rows()).map(|i| format!("c{i}")),
    ));
    let mapped = RecordBatch::try_new(
        schema.clone(),
        vec![batch.column(1).clone(), comment, batch.column(0).clone()],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(&source).unwrap(), schema, None).unwrap();
    w.write(&mapped).unwrap();
    w.close().unwrap();
    let snapshot = bed.snapshot(segment, ver, 5);
    let before = bed.data_files(segment);
    let with = |pairs: &[(&str, &str)]| {
        let mut doc = bed.doc(&snapshot, &source);
        doc.spec.column_mapping = Some(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect());
        doc
    };

    for (pairs, says) in [
        (
            &[("key", "pk"), ("missing", "score")][..],
            r#"source column(s) ["missing"] that the source does not have"#,
        ),
        (
            &[("key", "id"), ("value", "score")][..],
            r#"maps no column to the primary key "pk""#,
        ),
        (
            &[("key", "pk"), ("comment", "score")][..],
            "source column `comment` is Utf8 but field `score` is Double",
        ),
    ] {
        let e = plan_and_run(&with(pairs)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::SchemaValidationError, "{pairs:?}");
        assert!(e.message.contains(says), "{pairs:?}: {}", e.message);
        assert_eq!(bed.data_files(segment), before, "nothing written for {pairs:?}");
    }

    let result = plan_and_run(&with(&[("key", "pk"), ("value", "score")])).await.unwrap();
    assert!(result.success, "{}", result.summary());
    assert_eq!(result.new_field_names, vec!["score"]);
    let out = &result.segments[&segment.to_string()];
    let file = &out.ops[0].files[0];
    let written =
        read_all(std::fs::read(bed.root.join(format!("bkt/{}/_data/{}", out.output_path, file.path))).unwrap());
    assert_eq!(written.num_columns(), 1, "the unmapped column is not written");
    let col = written.column(0).as_primitive::<Float64Type>();
    for (i, pk) in pks.iter().enumerate() {
        match want.get(&pk.to_string()) {
            Some(v) => assert_eq!(col.value(i), *v, "row {i}"),
            None => assert!(col.is_null(i), "row {i} should be null"),
        }
    }
    assert_eq!(out.matched_row_count, want.len() as u64);
}

/// `price` (101) already holds values (with nulls) in the golden segments: each mode merges the
/// source with them as the reference does, row by row, and counts where each value came from.
#[tokio::test]
async fn each_mode_merges_the_source_with_the_existing_column() {
    use milvus_backfill::plan::Mode;
    for (segment, pk_type) in [(1003, 5), (1004, 21)] {
        let bed = Bed::new();
        let seg = bed.segment(segment);
        let pks = seg["pks"].as_array().unwrap().clone();
        let existing = existing_prices(&seg);
        let source = bed.root.join("price.parquet");
        // Every other key; every third of those with a null value.
        let every_other = write_source(&source, &pks, DataType::Float64);
        let matched = rewrite_as_price(
            &source,
            &pks,
            every_other.into_iter().map(|(k, v)| (k, Some(v + 1000.0))).collect(),
        );
        let snapshot = bed.snapshot(segment, seg["manifestVersion"].as_i64().unwrap(), pk_type);
        for mode in [Mode::Replace, Mode::Coalesce, Mode::Overwrite] {
            let mut doc = bed.doc(&snapshot, &source);
            doc.spec.mode = Some(mode);
            let result = plan_and_run(&doc).await.unwrap();
            assert!(result.success, "{mode:?}: {}", result.summary());
            assert_eq!(result.mode, mode);
            let out = &result.segments[&segment.to_string()];
            assert_eq!(out.ops[0].columns, vec!["101".to_owned()]);
            let file = &out.ops[0].files[0];
            let written =
                read_all(std::fs::read(bed.root.join(format!("bkt/{}/_data/{}", out.output_path, file.path))).unwrap());
            let col = written.column(0).as_primitive::<Float64Type>();
            let (mut kept, mut filled) = (0, 0);
            for (i, pk) in pks.iter().enumerate() {
                let src = matched.get(&pk.to_string());
                let want = match (mode, src, existing[i]) {
                    (Mode::Replace, Some(v), _) => *v,
                    (Mode::Replace, None, _) => None,
                    (Mode::Coalesce, _, Some(e)) => Some(e),
                    (Mode::Coalesce, Some(v), None) => *v,
                    (Mode::Coalesce, None, None) => None,
                    (Mode::Overwrite, Some(v), _) => *v,
                    (Mode::Overwrite, None, e) => e,
                };
                let got = col.is_valid(i).then(|| col.value(i));
                assert_eq!(got, want, "{mode:?} segment {segment} row {i}");
                match mode {
                    Mode::Coalesce if existing[i].is_some() => kept += 1,
                    Mode::Coalesce if src.is_some_and(|v| v.is_some()) => filled += 1,
                    Mode::Overwrite if src.is_some() => filled += 1,
                    Mode::Overwrite => kept += 1,
                    _ => {}
                }
            }
            let counts = |m: &std::collections::BTreeMap<String, u64>| m.get("price").copied();
            if mode == Mode::Replace {
                assert!(out.used_source_by_field.is_empty() && out.used_data_file_by_field.is_empty());
            } else {
                assert_eq!(
                    (counts(&out.used_source_by_field), counts(&out.used_data_file_by_field)),
                    (Some(kept), Some(filled)),
                    "{mode:?} provenance"
                );
                assert_eq!(result.total_used_data_file_by_field, out.used_data_file_by_field);
                assert!(kept > 0 && filled > 0, "{mode:?}: both sides are used");
            }
            assert!(existing.iter().any(|e| e.is_none()), "the existing column holds nulls");
        }
    }
}

/// The golden segment's `price` values in row order, from its manifest's first group.
fn existing_prices(seg: &Value) -> Vec<Option<f64>> {
    let group = &seg["manifest"]["column_groups"][0];
    assert!(group["columns"].as_array().unwrap().contains(&json!("101")));
    let mut out = Vec::new();
    for f in group["files"].as_array().unwrap() {
        let batch = read_all(std::fs::read(fixtures().join(f["path"].as_str().unwrap())).unwrap());
        let col = batch
            .column(batch.schema().index_of("101").unwrap())
            .as_primitive::<Float64Type>();
        let (start, end) = (
            f["start_index"].as_u64().unwrap() as usize,
            f["end_index"].as_u64().unwrap() as usize,
        );
        out.extend((start..end).map(|i| col.is_valid(i).then(|| col.value(i))));
    }
    out
}

/// Rewrites `path` as `(pk, price)`: the keys of `values` with their value, null for every
/// third; returns what each key holds.
fn rewrite_as_price(path: &Path, pks: &[Value], values: HashMap<String, Option<f64>>) -> HashMap<String, Option<f64>> {
    let mut keys: Vec<&Value> = pks.iter().filter(|p| values.contains_key(&p.to_string())).collect();
    keys.sort_by_key(|p| p.to_string());
    let want: HashMap<String, Option<f64>> = keys
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), if i % 3 == 0 { None } else { values[&p.to_string()] }))
        .collect();
    let key_array: ArrayRef = if pks[0].is_i64() {
        Arc::new(Int64Array::from_iter_values(keys.iter().map(|k| k.as_i64().unwrap())))
    } else {
        Arc::new(StringArray::from_iter_values(
            keys.iter().map(|k| k.as_str().unwrap().to_owned()),
        ))
    };
    let vals: ArrayRef = Arc::new(Float64Array::from(
        keys.iter().map(|p| want[&p.to_string()]).collect::<Vec<_>>(),
    ));
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", key_array.data_type().clone(), false),
        Field::new("price", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![key_array, vals]).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    want
}

/// A run ID the user chose names one run: a second run with it is refused before it writes.
#[tokio::test]
async fn a_run_id_used_before_is_refused_before_anything_is_written() {
    let segment = 1003;
    let bed = Bed::new();
    let seg = bed.segment(segment);
    let pks = seg["pks"].as_array().unwrap().clone();
    let source = bed.root.join("source.parquet");
    write_source(&source, &pks, DataType::Float64);
    let mut doc = bed.doc(
        &bed.snapshot(segment, seg["manifestVersion"].as_i64().unwrap(), 5),
        &source,
    );
    doc.spec.run_id = Some("nightly-42".into());
    // As `run` does: plan, write, store the result.
    let planned = planner::plan_with(&doc, &MilvusToken::default(), &StoreCredentials::default())
        .await
        .unwrap();
    let first = runner::run_plan(&planned.plan, &planned.stores, &Progress::new(1, true)).await;
    assert!(first.success, "{}", first.summary());
    assert_eq!(first.run_id, "nightly-42");
    runner::store_result(&planned.plan, &planned.stores.storage, &first)
        .await
        .unwrap();
    let after_first = bed.data_files(segment);
    let e = plan_and_run(&doc).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(
        e.message.contains("spec.runId \"nightly-42\" was used before")
            && e.message.contains("and its result.json")
            && e.message.contains("choose another spec.runId or leave it out"),
        "{}",
        e.message
    );
    assert_eq!(bed.data_files(segment), after_first, "nothing written");
    // A plan alone (stored, then the run never started) does not use the ID up.
    doc.spec.run_id = Some("planned-only".into());
    let planned = planner::plan_with(&doc, &MilvusToken::default(), &StoreCredentials::default())
        .await
        .unwrap();
    let plan_key = milvus_backfill_api::layout::RunLayout::of_plan(&planned.plan).plan_key();
    let plan_json = serde_json::to_vec(&planned.plan).unwrap();
    planned.stores.storage.put(&plan_key, plan_json.into()).await.unwrap();
    planner::plan_with(&doc, &MilvusToken::default(), &StoreCredentials::default())
        .await
        .expect("planned again");
    doc.spec.run_id = Some("Bad_ID".into());
    let e = milvus_backfill::config::validate(&doc.spec).unwrap_err();
    assert!(e.message.contains("spec.runId must be"), "{}", e.message);
}

/// The snapshot of `Bed::snapshot` with the new field 103 as `emb2`, a nullable FloatVector of dim 2.
fn vector_snapshot(bed: &Bed, segment: i64, ver: i64) -> PathBuf {
    let path = bed.snapshot(segment, ver, 5);
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let fields = doc["collection"]["schema"]["fields"].as_array_mut().unwrap();
    let f = fields.iter_mut().find(|f| f["fieldID"] == 103).unwrap();
    *f = json!({"fieldID": 103, "name": "emb2", "data_type": 101, "nullable": true,
                "type_params": [{"key": "dim", "value": "2"}]});
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    path
}

/// `pk` + `emb2` as a list of float32: `[i, -i]` for every other key of the segment; row `bad_row`
/// of the file (if any) gets three elements.
fn write_vector_source(path: &Path, pks: &[Value], bad_row: Option<usize>) -> HashMap<i64, [f32; 2]> {
    let mut want = HashMap::new();
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    for (i, pk) in pks.iter().enumerate().step_by(2) {
        let v = [i as f32, -(i as f32)];
        want.insert(pk.as_i64().unwrap(), v);
        keys.push(pk.as_i64().unwrap());
        vals.push(Some(v.iter().map(|x| Some(*x)).collect::<Vec<_>>()));
    }
    if let Some(r) = bad_row {
        vals[r] = Some(vec![Some(1.0), Some(2.0), Some(3.0)]);
    }
    let list = arrow_array::ListArray::from_iter_primitive::<arrow_array::types::Float32Type, _, _>(vals);
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", DataType::Int64, false),
        Field::new("emb2", list.data_type().clone(), true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys)), Arc::new(list)]).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    want
}

#[tokio::test]
async fn a_vector_target_is_normalized_and_a_bad_vector_is_refused_before_anything_is_written() {
    let bed = Bed::new();
    let seg = bed.segment(1003);
    let pks = seg["pks"].as_array().unwrap().clone();
    let ver = seg["manifestVersion"].as_i64().unwrap();
    let snap = vector_snapshot(&bed, 1003, ver);
    let before = bed.data_files(1003);

    let bad = bed.root.join("bad.parquet");
    write_vector_source(&bad, &pks, Some(7));
    let e = plan_and_run(&bed.doc(&snap, &bad)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SchemaValidationError);
    for phrase in [
        "bad.parquet: row 7 (0-based) of column `emb2` cannot fill vector field `emb2` (FloatVector, dim 2)",
        "has 3 elements, the field needs 2",
    ] {
        assert!(e.message.contains(phrase), "{phrase} not in {}", e.message);
    }
    assert_eq!(bed.data_files(1003), before, "nothing was written");

    let good = bed.root.join("good.parquet");
    let want = write_vector_source(&good, &pks, None);
    let result = plan_and_run(&bed.doc(&snap, &good)).await.unwrap();
    assert!(result.success, "{}", result.summary());
    let out = &result.segments["1003"];
    let file = &out.ops[0].files[0];
    let batch = read_all(std::fs::read(bed.root.join(format!("bkt/{}/_data/{}", out.output_path, file.path))).unwrap());
    assert_eq!(
        (
            batch.schema().field(0).name().as_str(),
            batch.schema().field(0).data_type()
        ),
        ("103", &DataType::Binary)
    );
    let col = batch.column(0).as_binary::<i32>();
    for (i, pk) in pks.iter().enumerate() {
        match want.get(&pk.as_i64().unwrap()) {
            Some(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                assert_eq!(col.value(i), &bytes[..], "row {i}");
            }
            None => assert!(col.is_null(i), "row {i} should be null"),
        }
    }
    assert_eq!(out.matched_row_count, want.len() as u64);
}

/// `milvus-backfill run -f SPEC ARGS...` (with no Milvus: the snapshot alone plans).
fn run_cli(spec: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_milvus-backfill"))
        .args(args.iter().take_while(|a| **a != "run"))
        .args(["run", "-f"])
        .arg(spec)
        .args(args.iter().skip_while(|a| **a != "run").skip(1))
        .env_remove("LOG_FORMAT")
        .output()
        .unwrap()
}

fn spec_file(bed: &Bed, snapshot: &Path, source: &Path) -> PathBuf {
    let p = bed.root.join("spec.yaml");
    let text = format!(
        "spec:\n  milvus:\n    snapshot:\n      path: {}\n  storage:\n    endpoint: file://{}\n    bucket: bkt\n  source:\n    path: {}\n",
        snapshot.display(),
        bed.root.display(),
        source.display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn run_prints_the_result_document_with_o_json_or_yaml_and_an_error_once() {
    let bed = Bed::new();
    let seg = bed.segment(1003);
    let pks = seg["pks"].as_array().unwrap().clone();
    let source = bed.root.join("source.parquet");
    write_source(&source, &pks, DataType::Float64);
    let snap = bed.snapshot(1003, seg["manifestVersion"].as_i64().unwrap(), 5);
    let spec = spec_file(&bed, &snap, &source);

    let out = run_cli(&spec, &["run", "-o", "json"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let doc: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"));
    assert_eq!(
        (doc["success"].as_bool(), doc["segments"]["1003"]["rowCount"].as_u64()),
        (Some(true), Some(pks.len() as u64))
    );
    assert!(
        stderr.contains("result:") && stderr.contains("commit with:"),
        "the people's lines go to stderr: {stderr}"
    );

    let out = run_cli(&spec, &["run", "-o", "yaml"]);
    assert!(out.status.success());
    let doc: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["success"].as_bool(), Some(true));

    // An error: one line, `Kind: message`, and the exit code of a permanent error.
    let missing = spec_file(&bed, &bed.root.join("absent.json"), &source);
    let out = run_cli(&missing, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.matches("does not exist").count(), 1, "printed once: {stderr}");
    assert!(stderr.contains("ConfigError: "), "{stderr}");
    // With JSON logs every stderr line is a JSON object, the error among them.
    let out = run_cli(&missing, &["--log-format", "json", "run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert_eq!(lines.iter().filter(|l| l["level"] == "ERROR").count(), 1, "{stderr}");
}
