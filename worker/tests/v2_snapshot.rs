//! StorageV2 from a snapshot: a segment laid out with the packed files milvus-storage's own
//! tests wrote (`../shared/fixtures/milvus-storage-v2`, groups `100,102;101;103`), described by
//! a format-4 manifest-list entry (Milvus' `snapshotio` layout, encoded by our codec: a contract
//! test, no Milvus 3.0 runs here). Checks the new column group file and the result entry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::{json, Value};

use milvus_backfill::config::{BackfillDoc, MilvusToken};
use milvus_backfill::planner;
use milvus_backfill::progress::Progress;
use milvus_backfill::runner;
use milvus_backfill::snapshot_manifest::{self, BinlogEntry, FieldBinlog, SegmentEntry};
use milvus_backfill::stores::StoreCredentials;

mod golden;

fn fixtures() -> PathBuf {
    golden::shared_fixtures("milvus-storage-v2")
}

const SEG: &str = "files/insert_log/5001/5002/5003";

/// Places the three packed files as a V2 segment's groups 0, 101 and 103 and writes the
/// snapshot (format 4) with the new field `score` (104).
fn bed(root: &Path, format: i64) -> PathBuf {
    let groups = [
        (0, 11, "column_group_0.parquet"),
        (101, 12, "column_group_1.parquet"),
        (103, 13, "column_group_2.parquet"),
    ];
    for (group, log, file) in groups {
        let dir = root.join(format!("bkt/{SEG}/{group}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixtures().join(file), dir.join(log.to_string())).unwrap();
    }
    let binlog = |log_id| BinlogEntry {
        log_id,
        entries_num: 100,
        log_path: String::new(),
        log_size: 1000,
    };
    let entry = SegmentEntry {
        segment_id: 5003,
        partition_id: 5002,
        segment_level: 2,
        num_rows: 100,
        storage_version: 2,
        binlogs: vec![
            FieldBinlog {
                field_id: 0,
                child_fields: vec![100, 102],
                binlogs: vec![binlog(11)],
            },
            FieldBinlog {
                field_id: 101,
                child_fields: vec![101],
                binlogs: vec![binlog(12)],
            },
            FieldBinlog {
                field_id: 103,
                child_fields: vec![103],
                binlogs: vec![binlog(13)],
            },
        ],
    };
    let manifest = "snapshots/5001/manifests/data-file-manifest-1.avro";
    let at = root.join("bkt/files").join(manifest);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::write(&at, snapshot_manifest::encode(&entry, format).unwrap()).unwrap();
    let doc = json!({
        "format-version": format,
        "snapshot-info": {"name": "s", "collection_id": 5001, "partition_ids": [5002]},
        "collection": {"schema": {"name": "packed", "version": 2, "fields": [
            {"fieldID": 100, "name": "id", "is_primary_key": true, "data_type": 5},
            {"fieldID": 101, "name": "name", "data_type": 21},
            {"fieldID": 102, "name": "value", "data_type": 11},
            {"fieldID": 103, "name": "vector", "data_type": 101},
            {"fieldID": 104, "name": "score", "data_type": 11, "nullable": true}]}},
        "manifest-list": [manifest],
        "storagev2-manifest-list": []
    });
    let p = root.join("snapshot.json");
    std::fs::write(&p, doc.to_string()).unwrap();
    p
}

/// Scores for every third id: score(id) = id * 1.5.
fn source(path: &Path) {
    let ids: Vec<i64> = (0..100).step_by(3).chain(1000..1010).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Float64Array::from_iter_values(ids.iter().map(|i| *i as f64 * 1.5))),
        ],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The §15.3 rules of a V2 result entry.
fn v2_violations(id: &str, s: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let rows = s["rowCount"].as_u64().unwrap_or(0);
    if s["storage_version"] != 2 || s["version"] != -1 {
        v.push(format!("{id}: storage_version 2 and version -1"));
    }
    let groups = s["column_groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() || s.get("ops").is_some() {
        v.push(format!("{id}: column_groups, no ops"));
    }
    for g in groups {
        if g["field_ids"].as_array().map(Vec::len) != Some(1) {
            v.push(format!("{id}: exactly one field ID per group"));
        }
        if g["row_count"].as_u64() != Some(rows) || rows == 0 {
            v.push(format!("{id}: group row_count must be the segment's rows (> 0)"));
        }
        for f in g["binlog_files"].as_array().cloned().unwrap_or_default() {
            let f = f.as_str().unwrap_or_default();
            let last_is_numeric = f.rsplit('/').next().is_some_and(|l| l.parse::<i64>().is_ok());
            if !f.starts_with("files/insert_log/") || f.contains("://") || !last_is_numeric {
                v.push(format!("{id}: {f} must be a bucket-relative key ending in the log ID"));
            }
        }
    }
    v
}

fn footer_keys(bytes: &[u8]) -> Vec<(String, String)> {
    let r = SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes)).unwrap();
    r.metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn contract_a_v2_segment_gets_a_single_field_column_group() {
    check_v2_backfill(4).await;
}

/// Before format 4 a snapshot records no child fields: the PK's group is found from the files.
#[tokio::test]
async fn contract_an_older_snapshot_finds_the_pk_group_in_the_file_footers() {
    check_v2_backfill(2).await;
}

async fn check_v2_backfill(format: i64) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let snapshot = bed(root, format);
    let src = root.join("source.parquet");
    source(&src);
    let doc = BackfillDoc::parse(&format!(
        "spec:\n  milvus:\n    snapshot:\n      path: {}\n  storage:\n    endpoint: file://{}\n    bucket: bkt\n  source:\n    path: {}\n",
        snapshot.display(),
        root.display(),
        src.display()
    ))
    .unwrap();
    let planned = planner::plan_with(&doc, &MilvusToken::default(), &StoreCredentials::default())
        .await
        .unwrap();
    assert_eq!(planned.plan.segments.len(), 1);
    assert_eq!(planned.plan.segments[0].pk_binlogs[0].key, format!("{SEG}/0/11"));
    let r = runner::run_plan(&planned.plan, &planned.stores, &Progress::new(1, true)).await;
    assert!(r.success, "{}", r.summary());
    let json = serde_json::to_value(&r).unwrap();
    let entry = &json["segments"]["5003"];
    assert_eq!(v2_violations("5003", entry), Vec::<String>::new());
    assert_eq!(
        (json["collectionId"].as_i64(), json["partitionId"].as_i64()),
        (Some(5001), Some(5002))
    );
    let group = &entry["column_groups"][0];
    assert_eq!(group["field_ids"], json!([104]));
    let key = group["binlog_files"][0].as_str().unwrap();
    assert!(key.starts_with(&format!("{SEG}/104/")), "{key}");
    let log_id: i64 = key.rsplit('/').next().unwrap().parse().unwrap();
    assert!(log_id > 1 << 62, "log IDs stay above Milvus' allocator range");

    // The footer has the keys of milvus-storage's packed writer, in its order, as the fixture.
    let ours = std::fs::read(root.join("bkt").join(key)).unwrap();
    let theirs = std::fs::read(fixtures().join("column_group_1.parquet")).unwrap();
    let key_names = |kv: Vec<(String, String)>| kv.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        key_names(footer_keys(&ours)),
        vec!["group_field_id_list", "row_group_metadata", "storage_version"]
    );
    let mut fixture_keys = key_names(footer_keys(&theirs));
    fixture_keys.sort();
    let mut sorted_ours = key_names(footer_keys(&ours));
    sorted_ours.sort();
    assert_eq!(sorted_ours, fixture_keys);
    let kv = footer_keys(&ours);
    assert_eq!(kv[0].1, "104");
    assert_eq!(kv[2].1, "1.0.0");
    assert_eq!(kv[1].1.split('|').nth(1), Some("100"));

    // Named by the field name, tagged with the field ID; aligned with the PK group's rows.
    let batch = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(ours))
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let f = batch.schema().field(0).clone();
    assert_eq!(
        (f.name().as_str(), f.metadata()["PARQUET:field_id"].as_str()),
        ("score", "104")
    );
    let ids_file = std::fs::read(root.join(format!("bkt/{SEG}/0/11"))).unwrap();
    let ids = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(ids_file))
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let ids = ids.column(0).as_primitive::<Int64Type>();
    let score = batch.column(0).as_primitive::<Float64Type>();
    for row in 0..100 {
        let id = ids.value(row);
        if id % 3 == 0 {
            assert_eq!(score.value(row), id as f64 * 1.5, "row {row}");
        } else {
            assert!(score.is_null(row), "row {row}");
        }
    }
}
