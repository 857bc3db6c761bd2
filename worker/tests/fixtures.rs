//! The binlog reader and the engine against real Milvus 2.3.5 files
//! (`tests/data/milvus-2.3.5`, written by a real Milvus on a real S3 server).

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use milvus_backfill::binlog::{self, BinlogWriter};
use milvus_backfill::config::{Place, S3Endpoint};
use milvus_backfill::engine::process_segment;
use milvus_backfill::error::ErrorKind;
use milvus_backfill::keys::PkType;
use milvus_backfill::output::{read_back, read_manifest};
use milvus_backfill::plan::{self, NewField, PkField, SegmentPlan, SourceFile, TaskPlan};
use milvus_backfill::source;
use milvus_backfill::store::Store;
use milvus_backfill::stores::{RunLocations, RunStores, StoreCredentials};
use serde_json::Value;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/milvus-2.3.5")
}

fn manifest() -> Value {
    serde_json::from_slice(&std::fs::read(data_dir().join("manifest.json")).unwrap()).unwrap()
}

fn insert_logs(m: &Value) -> Vec<&Value> {
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"].as_str().unwrap().contains("/insert_log/"))
        .collect()
}

fn as_strings(a: &ArrayRef) -> Vec<Value> {
    if let Some(i) = a.as_any().downcast_ref::<Int64Array>() {
        i.values().iter().map(|v| Value::from(*v)).collect()
    } else {
        let s = a
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("int64 or string payload");
        s.iter().map(|v| Value::from(v.unwrap())).collect()
    }
}

#[test]
fn reader_decodes_every_real_insert_binlog() {
    let m = manifest();
    let files = insert_logs(&m);
    assert!(files.len() >= 10);
    for f in files {
        let path = f["path"].as_str().unwrap();
        let bytes = Bytes::from(std::fs::read(data_dir().join(path)).unwrap());
        let parsed = binlog::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        let d = &f["descriptor"];
        assert_eq!(
            parsed.descriptor.collection_id,
            d["collectionID"].as_i64().unwrap(),
            "{path}"
        );
        assert_eq!(parsed.descriptor.segment_id, d["segmentID"].as_i64().unwrap(), "{path}");
        assert_eq!(parsed.descriptor.field_id, d["fieldID"].as_i64().unwrap(), "{path}");
        assert_eq!(parsed.descriptor.start_ts, d["startTs"].as_u64().unwrap(), "{path}");
        assert_eq!(
            parsed.descriptor.extras["original_size"], d["extras"]["original_size"],
            "{path}"
        );
        let ev = &f["events"][0];
        assert_eq!(parsed.events.len(), f["events"].as_array().unwrap().len());
        assert_eq!(
            parsed.events[0].payload.start as u64,
            ev["payloadOffset"].as_u64().unwrap(),
            "{path}"
        );

        let (_, arrays) = binlog::read_values(bytes).unwrap();
        let values: Vec<Value> = arrays.iter().flat_map(as_strings).collect();
        assert_eq!(values.len() as u64, f["num_rows"].as_u64().unwrap(), "{path}");
        if let Some(expected) = f.get("values_in_order") {
            assert_eq!(
                &Value::from(values),
                expected,
                "{path}: values differ from what Milvus stored"
            );
        } else {
            let first: Vec<Value> = f["first_values"].as_array().unwrap().clone();
            assert_eq!(&values[..first.len()], &first[..], "{path}");
        }
    }
}

#[tokio::test]
async fn row_counts_come_from_framing_and_footer_alone() {
    let m = manifest();
    for f in insert_logs(&m) {
        let path = data_dir().join(f["path"].as_str().unwrap());
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        let mut calls = 0;
        let rows = binlog::count_rows(bytes.len() as u64, |r| {
            calls += 1;
            let b = bytes.slice(r.start as usize..r.end as usize);
            async move { Ok(b) }
        })
        .await
        .unwrap();
        assert_eq!(rows, f["num_rows"].as_u64().unwrap());
        // Head, event header, footer length, footer: never the whole payload.
        assert!(calls <= 4, "{calls} reads");
    }
}

#[test]
fn writer_reproduces_the_real_framing() {
    let m = manifest();
    for f in insert_logs(&m)
        .into_iter()
        .filter(|f| f["path"].as_str().unwrap().contains("/100/"))
    {
        let path = f["path"].as_str().unwrap();
        let real = Bytes::from(std::fs::read(data_dir().join(path)).unwrap());
        let (desc, arrays) = binlog::read_values(real.clone()).unwrap();
        let values = arrow_select::concat::concat(&arrays.iter().map(|a| a.as_ref()).collect::<Vec<_>>()).unwrap();
        let w = BinlogWriter {
            collection_id: desc.collection_id,
            partition_id: desc.partition_id,
            segment_id: desc.segment_id,
            field_id: desc.field_id,
            payload_type: desc.payload_type,
            start_ts: desc.start_ts,
            end_ts: desc.end_ts,
            writer_ts: 1 << 18,
        };
        let ours = w.write_insert(values.clone()).unwrap();
        let (d2, a2) = binlog::read_values(Bytes::from(ours.clone())).unwrap();
        assert_eq!(
            d2, desc,
            "{path}: descriptor (IDs, timestamps, type, extras) must match"
        );
        assert_eq!(a2[0].as_ref(), values.as_ref());
        // The descriptor event has the same length, so data events start at the same offset.
        let real_first = binlog::parse(&real).unwrap().events[0].payload.start;
        let ours_first = binlog::parse(&ours).unwrap().events[0].payload.start;
        assert_eq!(real_first, ours_first, "{path}");
    }
}

/// Writes a source Parquet with keys `keys` and value columns derived from them.
fn write_source(path: &std::path::Path, keys: ArrayRef, row_group: usize) {
    let n = keys.len();
    let label: Vec<Option<String>> = (0..n).map(|i| Some(format!("label-{}", key_str(&keys, i)))).collect();
    let score: Vec<Option<f64>> = (0..n)
        .map(|i| if i % 7 == 3 { None } else { Some(i as f64 * 0.5) })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", keys.data_type().clone(), true),
        Field::new("score", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            keys,
            Arc::new(Float64Array::from(score)),
            Arc::new(StringArray::from(label)),
        ],
    )
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn file_size(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("src.parquet")).unwrap().len()
}

fn key_str(keys: &ArrayRef, i: usize) -> String {
    match keys.as_any().downcast_ref::<Int64Array>() {
        Some(a) => a.value(i).to_string(),
        None => keys.as_any().downcast_ref::<StringArray>().unwrap().value(i).to_owned(),
    }
}

struct Case {
    stores: RunStores,
    plan: TaskPlan,
    seg: SegmentPlan,
    _tmp: tempfile::TempDir,
}

/// A task over one fixture segment, with a source that covers every other key of
/// the segment (in reverse order) plus keys that are in no segment.
async fn case(collection: &str, segment: &str, pk_type: PkType) -> (Case, Vec<Value>) {
    let m = manifest();
    let c = &m["collections"][collection];
    let coll_id = c["collectionID"].as_i64().unwrap();
    let part_name = c["segments"][segment]["partition"].as_str().unwrap();
    let part_id = c["partitions"][part_name].as_i64().unwrap();
    let seg_id: i64 = segment.parse().unwrap();
    let fixtures = Store::Local { root: data_dir() };
    let listing = fixtures
        .list(&format!("files/insert_log/{coll_id}/{part_id}/{seg_id}/"))
        .await
        .unwrap();
    let mut binlogs = plan::pk_binlogs(
        &listing,
        &format!("files/insert_log/{coll_id}/{part_id}/{seg_id}/"),
        100,
    );
    // Ground truth: the PK values Milvus stored, in numeric log ID order.
    let mut truth = Vec::new();
    for b in &mut binlogs {
        let f = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == b.key.as_str())
            .unwrap();
        b.rows = f["num_rows"].as_u64().unwrap();
        truth.extend(f["values_in_order"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(truth.len() as u64, c["segments"][segment]["num_rows"].as_u64().unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let chosen: Vec<&Value> = truth.iter().step_by(2).rev().collect();
    let keys: ArrayRef = match pk_type {
        PkType::Int64 => Arc::new(Int64Array::from_iter_values(
            chosen
                .iter()
                .map(|v| v.as_i64().unwrap())
                .chain([-1, -2, 99_999_999_999]),
        )),
        PkType::VarChar => Arc::new(StringArray::from_iter_values(
            chosen
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .chain(["nope-1".to_owned(), "nope-2".to_owned()]),
        )),
    };
    let rows = keys.len() as u64;
    write_source(&tmp.path().join("src.parquet"), keys, 97);
    let src_store = Store::Local {
        root: tmp.path().to_path_buf(),
    };
    let ep = S3Endpoint {
        endpoint: "unused".into(),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let plan = TaskPlan {
        source_key_column: None,
        mode: milvus_backfill::plan::Mode::Replace,
        run_id: "test-run".into(),
        collection_id: coll_id,
        pk_field: PkField {
            int_width: None,
            physical: false,
            field_id: 100,
            name: "pk".into(),
            pk_type,
        },
        new_fields: vec![
            NewField {
                vector: None,
                source_column: None,
                name: "score".into(),
                arrow_type: "Float64".into(),
                field_id: None,
            },
            NewField {
                vector: None,
                source_column: None,
                name: "label".into(),
                arrow_type: "Utf8".into(),
                field_id: None,
            },
        ],
        storage: ep.clone(),
        storage_bucket: "milvus-bucket".into(),
        source: ep,
        source_place: Place::Local {
            path: tmp.path().to_path_buf(),
        },
        source_files: vec![SourceFile {
            key: "src.parquet".into(),
            size: file_size(tmp.path()),
            rows,
            first_row: 0,
        }],
        output_place: Place::Local {
            path: tmp.path().join("out"),
        },
        batch_size: milvus_backfill_api::plan::BatchSize::new(100).unwrap(),
        root_path: "files".into(),
        memory_mib: 384,
        v3_commit: Default::default(),
    };
    let seg = SegmentPlan {
        segment_id: seg_id,
        partition_id: part_id,
        partition_name: part_name.into(),
        num_rows: truth.len() as u64,
        storage_version: 0,
        pk_binlogs: binlogs,
        output_dir: format!("out/{coll_id}/{part_id}/{seg_id}/new_field"),
        v3: None,
        existing: vec![],
    };
    let stores = RunStores {
        storage: fixtures,
        source: src_store.clone(),
        output: src_store,
    };
    (
        Case {
            stores,
            plan,
            seg,
            _tmp: tmp,
        },
        truth,
    )
}

async fn check_engine(collection: &str, segment: &str, pk_type: PkType) {
    let (c, truth) = case(collection, segment, pk_type).await;
    let out = process_segment(&c.stores, &c.plan, &c.seg, "t0", 0).await.unwrap();
    assert_eq!(out.row_count, truth.len() as u64);
    assert_eq!(out.matched_row_count, truth.len().div_ceil(2) as u64);
    let manifest = read_manifest(&c.stores.output, &c.seg.manifest_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(manifest.row_count, truth.len() as u64);
    assert_eq!(
        manifest.files.iter().map(|f| f.row_count).sum::<u64>(),
        truth.len() as u64
    );
    let batches = read_back(&c.stores.output, &manifest).await.unwrap();
    let labels: Vec<Option<String>> = batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name("label")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..a.len())
                .map(move |i| a.is_valid(i).then(|| a.value(i).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(labels.len(), truth.len());
    for (offset, (label, key)) in labels.iter().zip(&truth).enumerate() {
        let key = key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string());
        if offset % 2 == 0 {
            assert_eq!(
                label.as_deref(),
                Some(format!("label-{key}").as_str()),
                "offset {offset}"
            );
        } else {
            assert_eq!(label, &None, "offset {offset} has no source row");
        }
    }
}

#[tokio::test]
async fn engine_aligns_values_on_a_real_multi_binlog_segment() {
    check_engine("bf_multi", "470712559048465179", PkType::Int64).await;
}

#[tokio::test]
async fn engine_aligns_values_on_a_real_varchar_segment() {
    check_engine("bf_varchar", "470712559048465100", PkType::VarChar).await;
}

#[tokio::test]
async fn rerun_replaces_the_manifest_and_removes_old_parts() {
    let (c, _) = case("bf_int64", "470712559048265072", PkType::Int64).await;
    process_segment(&c.stores, &c.plan, &c.seg, "t0", 0).await.unwrap();
    let first = read_manifest(&c.stores.output, &c.seg.manifest_key())
        .await
        .unwrap()
        .unwrap();
    process_segment(&c.stores, &c.plan, &c.seg, "t0", 1).await.unwrap();
    let second = read_manifest(&c.stores.output, &c.seg.manifest_key())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first.files[0].path, second.files[0].path);
    let listed: Vec<String> = c
        .stores
        .output
        .list(&format!("{}/", c.seg.output_dir))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        !listed.contains(&first.files[0].path),
        "old part must be deleted: {listed:?}"
    );
    assert!(listed.contains(&second.files[0].path));
}

#[tokio::test]
async fn stale_binlog_list_fails_the_segment_and_writes_nothing() {
    let (mut c, _) = case("bf_multi", "470712559048465179", PkType::Int64).await;
    c.seg.pk_binlogs.pop();
    let e = process_segment(&c.stores, &c.plan, &c.seg, "t0", 0).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SegmentProcessingError);
    assert!(e.message.contains("4500 rows but Milvus reports 6000"), "{}", e.message);
    assert!(c.stores.output.list("out/").await.unwrap().is_empty());
}

#[tokio::test]
async fn duplicate_source_keys_fail_validation() {
    let (c, truth) = case("bf_varchar", "470712559048465100", PkType::VarChar).await;
    let dir = match &c.plan.source_place {
        Place::Local { path } => path.clone(),
        _ => unreachable!(),
    };
    let k = truth[0].as_str().unwrap();
    write_source(
        &dir.join("src.parquet"),
        Arc::new(StringArray::from(vec![k, "x", k])),
        10,
    );
    let mut plan = c.plan.clone();
    plan.source_files[0].rows = 3;
    plan.source_files[0].size = file_size(&dir);
    let e = process_segment(&c.stores, &plan, &c.seg, "t0", 0).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SchemaValidationError);
    let files = vec![source::list_files(&c.stores.source, "src.parquet").await.unwrap()[0].clone()];
    let schema = source::inspect(
        &c.stores.source,
        &files,
        &join_on(&pk_of(PkType::VarChar)),
        &["pk".into(), "vec".into()],
    )
    .await
    .unwrap();
    let report = source::check_keys(&c.stores.source, &schema.files, schema.key_column(), PkType::VarChar)
        .await
        .unwrap();
    assert_eq!((report.rows, report.duplicates), (3, 1));
    let err = report.into_result().unwrap_err();
    assert!(err.message.contains("1 duplicate `pk`"), "{}", err.message);
}

fn pk_of(pk_type: PkType) -> PkField {
    PkField {
        int_width: None,
        physical: false,
        field_id: 100,
        name: "id".into(),
        pk_type,
    }
}

fn join_on(pk: &PkField) -> source::Join<'_> {
    source::Join { pk, mapping: None }
}

#[tokio::test]
async fn schema_checks_name_what_to_fix() {
    let (c, _) = case("bf_varchar", "470712559048465100", PkType::VarChar).await;
    let files = source::list_files(&c.stores.source, "src.parquet").await.unwrap();
    // The fixture source has a string `pk`: wrong for an Int64 collection.
    let e = source::inspect(&c.stores.source, &files, &join_on(&pk_of(PkType::Int64)), &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SchemaValidationError);
    assert!(
        e.message.contains("is Utf8, but the join key field `id` is Int64"),
        "{}",
        e.message
    );
    let e = source::inspect(
        &c.stores.source,
        &files,
        &join_on(&pk_of(PkType::VarChar)),
        &["Label".into()],
    )
    .await
    .unwrap_err();
    assert!(e.message.contains("[\"label\"] already exist"), "{}", e.message);
    let e = source::list_files(&c.stores.source, "missing/").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::DataReadError);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_does_not_stop_the_others() {
    use milvus_backfill::plan::Plan;
    use milvus_backfill::progress::Progress;
    let (a, _) = case("bf_multi", "470712559048465179", PkType::Int64).await;
    let (b, truth_b) = case("bf_int64", "470712559048265072", PkType::Int64).await;
    let mut broken = b.seg.clone();
    broken.pk_binlogs[0].key.push_str("-missing");
    // `RunStores` opens local places at the file system root, as the planner does.
    let tmp = match &a.plan.source_place {
        Place::Local { path } => path.strip_prefix("/").unwrap().display().to_string(),
        _ => unreachable!(),
    };
    let mut seg_a = a.seg.clone();
    seg_a.output_dir = format!("{tmp}/{}", seg_a.output_dir);
    broken.output_dir = format!("{tmp}/{}", broken.output_dir);
    let mut source_files = a.plan.source_files.clone();
    source_files[0].key = format!("{tmp}/src.parquet");
    let ep = a.plan.storage.clone();
    // The fixture bucket through a `file://` storage endpoint.
    let at = RunLocations {
        storage: S3Endpoint {
            endpoint: format!("file://{}", data_dir().parent().unwrap().display()),
            ..ep.clone()
        },
        storage_bucket: "milvus-2.3.5".into(),
        source: ep.clone(),
        source_place: a.plan.source_place.clone(),
        output_place: a.plan.output_place.clone(),
    };
    let plan = Plan {
        source_key_column: None,
        mode: milvus_backfill::plan::Mode::Replace,
        run_id: "r".into(),
        database: "default".into(),
        collection_name: "c".into(),
        collection_id: a.plan.collection_id,
        partition_id: None,
        schema_version: 0,
        pk_field: a.plan.pk_field.clone(),
        new_fields: a.plan.new_fields.clone(),
        storage: at.storage.clone(),
        storage_bucket: at.storage_bucket.clone(),
        root_path: "files".into(),
        source: ep,
        source_place: a.plan.source_place.clone(),
        source_rows: source_files[0].rows,
        source_files,
        output_place: a.plan.output_place.clone(),
        batch_size: milvus_backfill_api::plan::BatchSize::new(100).unwrap(),
        parallelism: 2,
        memory_mib: 384,
        v3_commit: Default::default(),
        segments: vec![seg_a, broken],
        skipped: vec![],
        failed: vec![],
        warnings: vec![],
        lifecycle: vec![],
    };
    let stores = RunStores::open(&at, &StoreCredentials::default()).await;
    let r = milvus_backfill::runner::run_plan(&plan, &stores, &Progress::new(2, true)).await;
    assert!(!r.success);
    assert_eq!(r.segments_processed, 1);
    assert!(r.segments.contains_key(&a.seg.segment_id.to_string()));
    assert_eq!(r.failed_segments.len(), 1);
    assert_eq!(r.failed_segments[0].segment_id, b.seg.segment_id);
    assert!(
        r.failed_segments[0].reason.contains("-missing"),
        "{}",
        r.failed_segments[0].reason
    );
    // The source holds half the keys of segment A plus 3 keys in no segment.
    assert_eq!(r.unmatched_backfill_rows, 3);
    assert!(r.summary().contains(&format!("FAILED segment {}", b.seg.segment_id)));
    assert_eq!(truth_b.len(), 1000);
}
