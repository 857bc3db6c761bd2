//! The bad-input table's `v3` rows (`tests/data/bad-inputs.yaml`): golden StorageV3 segments
//! written by the official milvus-storage library, a snapshot file, a local source, and
//! `milvus-backfill run -f` through the CLI. Each row must fail with its error kind, exit code
//! and phrase, and write nothing the row does not allow (the bucket is listed before and after).

mod bad_inputs_table;
mod golden;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};

use bad_inputs_table::{check, merge, report, rows, Outcome, Row};

const SEGMENT: i64 = 1003;

fn pks() -> Vec<i64> {
    let e: Value = serde_json::from_slice(
        &std::fs::read(golden::shared_fixtures("milvus-storage-v3").join("expected.json")).unwrap(),
    )
    .unwrap();
    let seg = e["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["segmentId"] == SEGMENT)
        .unwrap();
    seg["pks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// A Parquet file of `columns`, `rows_per_group` rows per row group.
fn parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn ints(v: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}

fn scores(n: usize) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 / 4.0)))
}

/// The row's source under `dir`; returns the path the spec names.
fn source(kind: &str, dir: &Path) -> PathBuf {
    let keys = pks();
    let n = keys.len();
    let file = dir.join("src.parquet");
    let good = |p: &Path| parquet(p, vec![("pk", ints(keys.clone())), ("score", scores(n))], 1 << 20);
    match kind {
        "good" => good(&file),
        "garbage" => std::fs::write(&file, b"this is not a parquet file at all, just text").unwrap(),
        "empty" => std::fs::write(&file, b"").unwrap(),
        "truncated" => {
            good(&file);
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        }
        "missing" => return dir.join("nope.parquet"),
        "empty-dir" => {
            std::fs::create_dir_all(dir.join("empty")).unwrap();
            return dir.join("empty");
        }
        "key-utf8" => {
            let k: ArrayRef = Arc::new(StringArray::from_iter_values(keys.iter().map(|k| k.to_string())));
            parquet(&file, vec![("pk", k), ("score", scores(n))], 1 << 20);
        }
        "null-key" => {
            let k: ArrayRef = Arc::new(Int64Array::from_iter(
                keys.iter().enumerate().map(|(i, k)| (i != 7).then_some(*k)),
            ));
            parquet(&file, vec![("pk", k), ("score", scores(n))], 1 << 20);
        }
        "dup-key" => {
            let k = ints(keys.iter().copied().chain([keys[3]]));
            parquet(&file, vec![("pk", k), ("score", scores(n + 1))], 1 << 20);
        }
        "dup-row-groups" => {
            // The repeat of the first key lands in the last row group.
            let k = ints(keys.iter().copied().chain([keys[0]]));
            parquet(&file, vec![("pk", k), ("score", scores(n + 1))], 100);
        }
        "dup-two-files" => {
            let d = dir.join("two");
            std::fs::create_dir_all(&d).unwrap();
            let half = n / 2;
            parquet(
                &d.join("a.parquet"),
                vec![("pk", ints(keys[..half].to_vec())), ("score", scores(half))],
                1 << 20,
            );
            parquet(
                &d.join("b.parquet"),
                vec![("pk", ints(keys[half - 1..].to_vec())), ("score", scores(n - half + 1))],
                1 << 20,
            );
            return d;
        }
        "two-schemas" => {
            let d = dir.join("mixed");
            std::fs::create_dir_all(&d).unwrap();
            let half = n / 2;
            parquet(
                &d.join("a.parquet"),
                vec![("pk", ints(keys[..half].to_vec())), ("score", scores(half))],
                1 << 20,
            );
            let l: ArrayRef = Arc::new(StringArray::from_iter_values((half..n).map(|i| format!("l{i}"))));
            parquet(
                &d.join("b.parquet"),
                vec![("pk", ints(keys[half..].to_vec())), ("score", l)],
                1 << 20,
            );
            return d;
        }
        "no-key" => parquet(&file, vec![("id", ints(keys.clone())), ("score", scores(n))], 1 << 20),
        "no-new-field" => parquet(&file, vec![("pk", ints(keys.clone()))], 1 << 20),
        "vec-float64" => parquet(&file, vec![("pk", ints(keys.clone())), ("vec", scores(n))], 1 << 20),
        "two-values" => parquet(
            &file,
            vec![("pk", ints(keys.clone())), ("score", scores(n)), ("other", scores(n))],
            1 << 20,
        ),
        other => panic!("unknown source builder {other}"),
    }
    file
}

/// The snapshot of collection 1001 holding segment 1003 at manifest version 4, with the new
/// field `score` (103, Double, nullable) in the schema; mutated as the row says.
fn snapshot(kind: Option<&str>, root: &Path) -> PathBuf {
    let path = root.join("snapshot.json");
    let mut ver = 4;
    match kind {
        Some("missing") => return root.join("no-snapshot.json"),
        Some("not-json") => {
            std::fs::write(&path, b"{\"snapshot-info\": ").unwrap();
            return path;
        }
        Some("missing-version") => ver = 9,
        _ => {}
    }
    let base = format!("bkt/files/insert_log/1001/1002/{SEGMENT}");
    let mut doc = json!({
        "snapshot-info": {"name": "s1", "id": 7, "collection_id": 1001, "partition_ids": [1002]},
        "collection": {"schema": {"name": "golden", "version": 4, "fields": [
            {"fieldID": 100, "name": "pk", "is_primary_key": true, "data_type": 5},
            {"fieldID": 101, "name": "price", "data_type": 11, "nullable": true},
            {"fieldID": 102, "name": "vec", "data_type": 101, "type_params": [{"key": "dim", "value": "128"}]},
            {"fieldID": 103, "name": "score", "data_type": 11, "nullable": true},
            {"name": "RowID", "data_type": 5},
            {"fieldID": 1, "name": "Timestamp", "data_type": 5}]}},
        "manifest-list": [],
        "storagev2-manifest-list": [
            {"segmentID": SEGMENT, "manifest": json!({"ver": ver, "base_path": base}).to_string()}]
    });
    if kind == Some("no-collection") {
        doc.as_object_mut().unwrap().remove("collection");
    }
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    path
}

/// An Avro `int` (zigzag varint).
fn avro_int(v: i32, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 31)) as u32;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn damage_segment(kind: &str, bucket: &Path) {
    let seg = bucket.join(format!("files/insert_log/1001/1002/{SEGMENT}"));
    let manifest = seg.join("_metadata/manifest-4.avro");
    match kind {
        "manifest-corrupt" => std::fs::write(&manifest, vec![0x5a; 300]).unwrap(),
        "manifest-truncated" => {
            let bytes = std::fs::read(&manifest).unwrap();
            std::fs::write(&manifest, &bytes[..bytes.len() / 2]).unwrap();
        }
        "manifest-future-version" => {
            let mut bytes = Vec::new();
            avro_int(0x4D49_4C56, &mut bytes);
            avro_int(99, &mut bytes);
            bytes.extend_from_slice(&[0; 64]);
            std::fs::write(&manifest, bytes).unwrap();
        }
        "data-file-missing" => {
            let first = std::fs::read_dir(seg.join("_data")).unwrap().next().unwrap().unwrap();
            std::fs::remove_file(first.path()).unwrap();
        }
        other => panic!("unknown segment damage {other}"),
    }
}

/// Every file under `dir`, relative, with its size.
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::metadata(&p).unwrap().len());
            }
        }
    }
    out
}

fn run_cli(spec_file: &Path, env: &BTreeMap<String, String>) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_milvus-backfill"));
    cmd.args(["run", "--no-progress", "-f"]).arg(spec_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Outcome::of(cmd.output().unwrap())
}

fn run_row(row: &Row) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bucket = root.join("bkt");
    golden::copy_dir(
        &golden::shared_fixtures("milvus-storage-v3").join("files"),
        &bucket.join("files"),
    );
    if let Some(kind) = &row.segment {
        damage_segment(kind, &bucket);
    }
    let snap = snapshot(row.snapshot.as_deref(), root);
    let src_dir = root.join("src");
    std::fs::create_dir_all(&src_dir).unwrap();
    let src = source(row.source.as_deref().unwrap_or("good"), &src_dir);
    let mut spec: serde_yaml::Value = serde_yaml::from_str(&format!(
        "milvus: {{snapshot: {{path: \"{}\"}}}}\nstorage: {{endpoint: \"file://{}\", bucket: bkt}}\nsource: {{path: \"{}\"}}\n",
        snap.display(),
        root.display(),
        src.display()
    ))
    .unwrap();
    if let Some(patch) = &row.spec {
        merge(&mut spec, patch);
    }
    let file = root.join("bf.yaml");
    std::fs::write(
        &file,
        serde_yaml::to_string(&serde_yaml::Mapping::from_iter([("spec".into(), spec)])).unwrap(),
    )
    .unwrap();
    if row.before.as_deref() == Some("run") {
        let first = run_cli(&file, &row.env);
        if first.code != Some(0) {
            return Err(format!("{}: the first run failed: {}", row.id, first.stderr));
        }
    }
    // The whole bed: a run pointed at another bucket must not write there either.
    let before = listing(root);
    let out = run_cli(&file, &row.env);
    let after = listing(root);
    let new: Vec<String> = after
        .iter()
        .filter(|(k, size)| before.get(*k) != Some(size))
        .map(|(k, _)| k.clone())
        .collect();
    check(row, &out, &new, "bkt/files/backfill/")
}

#[test]
fn every_v3_bad_input_fails_clearly_and_writes_nothing() {
    let rows = rows("v3");
    let failures: Vec<String> = rows.iter().filter_map(|r| run_row(r).err()).collect();
    report("v3", &failures, rows.len());
}

/// docs/reliability.md lists every row of the table.
#[test]
fn every_row_of_the_table_is_in_the_reliability_doc() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md")).unwrap();
    let missing: Vec<String> = ["v3", "real", "v1"]
        .iter()
        .flat_map(|bed| rows(bed))
        .filter(|r| !doc.contains(&format!("| `{}` |", r.id)))
        .map(|r| r.id)
        .collect();
    assert!(missing.is_empty(), "not in docs/reliability.md: {missing:?}");
}
