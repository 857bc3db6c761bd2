//! Builds the benchmark's data with the project's own V1 binlog writer (which
//! round-trips the real 2.3.5 fixtures, see tests/fixtures.rs):
//!   - `<segments>` segments (default 1) sharing `<rows>` Int64 keys (random order) as PK
//!     binlogs under `<out>/storage/milvus-bucket/files/insert_log/1/2/<segment>/100/` (4
//!     binlogs for a single segment, 1 each otherwise);
//!   - a new-field file of `--source-rows` rows (`pk`, `score` Float64, `label` Utf8)
//!     holding every other segment key plus keys in no segment, shuffled;
//!   - `segment_keys.parquet` (`segment_id`, `row_offset`, `pk`) for the peers (DuckDB,
//!     Spark), which do not read binlogs;
//!   - `task.json` for `milvus-backfill segment --task`, reading the copy of the bucket
//!     through a `file://` storage endpoint.
//!
//! Usage: cargo run --release --example bench_gen -- <out> <rows> <source_rows> [segments]

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use milvus_backfill::binlog::BinlogWriter;
use milvus_backfill::config::{Place, S3Endpoint};
use milvus_backfill::keys::PkType;
use milvus_backfill::plan::{Binlog, NewField, PkField, SegmentPlan, SourceFile, Task, TaskPlan};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

fn write_parquet(path: &std::path::Path, batch: RecordBatch, row_group: usize) {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    let step = 1 << 16;
    let mut at = 0;
    while at < batch.num_rows() {
        let n = step.min(batch.num_rows() - at);
        w.write(&batch.slice(at, n)).unwrap();
        at += n;
    }
    w.close().unwrap();
}

/// Writes one segment's keys as `files` V1 PK binlogs; log IDs 9, 1009, ... so that numeric
/// order differs from string order.
fn write_segment_binlogs(
    root: &std::path::Path,
    (coll, part, seg, field): (i64, i64, i64, i64),
    keys: &[i64],
    files: usize,
) -> Vec<Binlog> {
    let dir = root.join(format!("files/insert_log/{coll}/{part}/{seg}/{field}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut binlogs = Vec::new();
    for (i, chunk) in keys.chunks(keys.len().div_ceil(files).max(1)).enumerate() {
        let log_id = 9 + i as i64 * 1000;
        let w = BinlogWriter::int64_pk(coll, part, seg, field);
        let bytes = w.write_insert(Arc::new(Int64Array::from(chunk.to_vec()))).unwrap();
        let key = format!("files/insert_log/{coll}/{part}/{seg}/{field}/{log_id}");
        std::fs::write(root.join(&key), &bytes).unwrap();
        binlogs.push(Binlog {
            key,
            log_id,
            size: bytes.len() as u64,
            rows: chunk.len() as u64,
        });
    }
    binlogs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).expect("usage: bench_gen <out> <rows> <source_rows>"));
    let rows: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let source_rows: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10_000_000);
    let segments: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(1);
    let mut rng = Rng(42);

    // Segment keys: even numbers in random order (storage order = this order).
    let mut seg_keys: Vec<i64> = (0..rows as i64).map(|i| i * 2).collect();
    rng.shuffle(&mut seg_keys);
    let out_dir = out.join("out");
    let plans = write_segments(&out, &out_dir, &seg_keys, segments);
    let src_path = write_source(&out, &seg_keys, source_rows, &mut rng);
    let size = std::fs::metadata(&src_path).unwrap().len();
    let task = Task {
        task_id: "bench".into(),
        attempt: 0,
        plan: task_plan(&out, &src_path, source_rows as u64, &out_dir),
        segments: plans,
        stage: None,
    };
    std::fs::write(out.join("task.json"), serde_json::to_vec_pretty(&task).unwrap()).unwrap();
    eprintln!(
        "bench data in {}: {segments} segment(s), {rows} rows, source {source_rows} rows ({size} bytes)",
        out.display()
    );
}

const COLLECTION: i64 = 1;
const PARTITION: i64 = 2;
const PK_FIELD: i64 = 100;

/// The segments' binlogs and plans, and `segment_keys.parquet` for the peers.
fn write_segments(
    out: &std::path::Path,
    out_dir: &std::path::Path,
    seg_keys: &[i64],
    segments: usize,
) -> Vec<SegmentPlan> {
    let (coll, part, field) = (COLLECTION, PARTITION, PK_FIELD);
    let root = out.join("storage/milvus-bucket");
    let per_segment = seg_keys.len().div_ceil(segments.max(1)).max(1);
    let mut plans = Vec::new();
    let (mut key_segments, mut key_offsets) = (Vec::new(), Vec::new());
    for (s, keys) in seg_keys.chunks(per_segment).enumerate() {
        let seg = 3 + s as i64;
        let binlogs = write_segment_binlogs(&root, (coll, part, seg, field), keys, if segments == 1 { 4 } else { 1 });
        key_segments.extend(std::iter::repeat_n(seg, keys.len()));
        key_offsets.extend(0..keys.len() as i64);
        plans.push(SegmentPlan {
            segment_id: seg,
            partition_id: part,
            partition_name: "_default".into(),
            num_rows: keys.len() as u64,
            storage_version: 0,
            pk_binlogs: binlogs,
            output_dir: format!(
                "{}/{coll}/{part}/{seg}/new_field",
                out_dir.strip_prefix("/").unwrap().display()
            ),
            v3: None,
            existing: vec![],
        });
    }
    let ks = Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Int64, false),
        Field::new("row_offset", DataType::Int64, false),
        Field::new("pk", DataType::Int64, false),
    ]));
    let kb = RecordBatch::try_new(
        ks,
        vec![
            Arc::new(Int64Array::from(key_segments)),
            Arc::new(Int64Array::from(key_offsets)),
            Arc::new(Int64Array::from(seg_keys.to_vec())),
        ],
    )
    .unwrap();
    write_parquet(&out.join("segment_keys.parquet"), kb, 128 * 1024);
    plans
}

/// The source: every other segment key, then odd keys (in no segment), shuffled.
fn write_source(out: &std::path::Path, seg_keys: &[i64], source_rows: usize, rng: &mut Rng) -> std::path::PathBuf {
    let mut src: Vec<i64> = seg_keys.iter().step_by(2).copied().collect();
    let mut k = 1i64;
    while src.len() < source_rows {
        src.push(k);
        k += 2;
    }
    rng.shuffle(&mut src);
    let score = Float64Array::from_iter_values(src.iter().map(|k| *k as f64 * 0.25));
    let label = StringArray::from_iter_values(src.iter().map(|k| format!("label-{k}")));
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(src)), Arc::new(score), Arc::new(label)];
    let src_dir = out.join("source");
    std::fs::create_dir_all(&src_dir).unwrap();
    let src_path = src_dir.join("new_fields.parquet");
    write_parquet(&src_path, RecordBatch::try_new(schema, cols).unwrap(), 128 * 1024);
    src_path
}

/// What the task runs on: the bucket copy and the source through `file://` endpoints.
fn task_plan(
    out: &std::path::Path,
    src_path: &std::path::Path,
    source_rows: u64,
    out_dir: &std::path::Path,
) -> TaskPlan {
    let local = |p: &std::path::Path| S3Endpoint {
        endpoint: format!("file://{}", p.display()),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let nf = |name: &str, arrow_type: &str| NewField {
        vector: None,
        source_column: None,
        name: name.into(),
        arrow_type: arrow_type.into(),
        field_id: None,
    };
    let src_dir = src_path.parent().unwrap();
    TaskPlan {
        source_key_column: None,
        mode: milvus_backfill::plan::Mode::Replace,
        run_id: "bench".into(),
        collection_id: COLLECTION,
        pk_field: PkField {
            int_width: None,
            physical: false,
            field_id: PK_FIELD,
            name: "id".into(),
            pk_type: PkType::Int64,
        },
        new_fields: vec![nf("score", "Float64"), nf("label", "Utf8")],
        storage: local(&out.join("storage")),
        storage_bucket: "milvus-bucket".into(),
        source: local(src_dir),
        source_place: Place::Local {
            path: src_dir.to_path_buf(),
        },
        source_files: vec![SourceFile {
            key: src_path.strip_prefix("/").unwrap().display().to_string(),
            size: std::fs::metadata(src_path).unwrap().len(),
            rows: source_rows,
            first_row: 0,
        }],
        output_place: Place::Local {
            path: out_dir.to_path_buf(),
        },
        batch_size: milvus_backfill_api::plan::BatchSize::DEFAULT,
        root_path: "files".into(),
        memory_mib: 384,
        v3_commit: Default::default(),
    }
}
