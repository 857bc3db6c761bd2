//! Many segments, little memory: the task's segments do not fit one pass, so keys and source go
//! through the exchange. Every output row must equal what one pass writes and what the keys
//! say, the source must be read once, and the exchange must be gone afterwards. V1 segments are
//! written with the project's binlog writer (which round-trips the real 2.3.5 fixtures).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use milvus_backfill::binlog::BinlogWriter;
use milvus_backfill::config::{Place, S3Endpoint};
use milvus_backfill::keys::PkType;
use milvus_backfill::output::{read_back, read_manifest};
use milvus_backfill::plan::{Binlog, NewField, PkField, SegmentPlan, SourceFile, Task, TaskPlan};
use milvus_backfill::runner;
use milvus_backfill::stores::{RunLocations, RunStores, StoreCredentials};
use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::TaskOutcome;
use milvus_backfill_api::stage::{self, JoinWork, RouteWork, Stage, StageOutput};

const SEGMENTS: i64 = 30;
const ROWS: i64 = 2_000;

struct Bed {
    dir: tempfile::TempDir,
    task: Task,
    /// Each segment's keys in storage order.
    keys: Vec<Vec<i64>>,
}

/// Keys 0..SEGMENTS*ROWS spread over the segments by a fixed shuffle (each segment's key range
/// spans nearly everything, as with random keys); the source holds every third key, plus keys
/// in no segment, with `label` null for some rows.
fn bed() -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<i64> = (0..SEGMENTS * ROWS).collect();
    let mut x = 7u64;
    for i in (1..all.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        all.swap(i, (x >> 33) as usize % (i + 1));
    }
    let keys: Vec<Vec<i64>> = all.chunks(ROWS as usize).map(<[i64]>::to_vec).collect();
    let out = dir.path().join("out");
    let segments = write_segments(&dir.path().join("storage/milvus-bucket"), &out, &keys);
    let src = dir.path().join("source/new.parquet");
    let rows = write_source(&src);
    let task = Task {
        task_id: "t".into(),
        attempt: 0,
        plan: task_plan(dir.path(), &src, rows, out),
        segments,
        stage: None,
    };
    Bed { dir, task, keys }
}

/// One V1 PK binlog per segment.
fn write_segments(bucket: &std::path::Path, out: &std::path::Path, keys: &[Vec<i64>]) -> Vec<SegmentPlan> {
    let mut segments = Vec::new();
    for (s, k) in keys.iter().enumerate() {
        let seg = 100 + s as i64;
        let key = format!("files/insert_log/1/2/{seg}/100/9");
        let w = BinlogWriter::int64_pk(1, 2, seg, 100);
        let bytes = w.write_insert(Arc::new(Int64Array::from(k.clone()))).unwrap();
        std::fs::create_dir_all(bucket.join(&key).parent().unwrap()).unwrap();
        std::fs::write(bucket.join(&key), &bytes).unwrap();
        segments.push(SegmentPlan {
            segment_id: seg,
            partition_id: 2,
            partition_name: "_default".into(),
            num_rows: ROWS as u64,
            storage_version: 0,
            pk_binlogs: vec![Binlog {
                key,
                log_id: 9,
                size: bytes.len() as u64,
                rows: ROWS as u64,
            }],
            output_dir: format!("{}/1/2/{seg}/new_field", out.strip_prefix("/").unwrap().display()),
            v3: None,
            existing: vec![],
        });
    }
    segments
}

/// `(pk, score, label)`: every third key, and keys in no segment; returns the row count.
fn write_source(src: &std::path::Path) -> u64 {
    let src_keys: Vec<i64> = (0..SEGMENTS * ROWS).step_by(3).chain(-500..0).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new("label", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(src_keys.clone())),
            Arc::new(Float64Array::from_iter_values(src_keys.iter().map(|&k| k as f64 / 2.0))),
            Arc::new(StringArray::from_iter(
                src_keys.iter().map(|&k| (k % 7 != 0).then(|| format!("l{k}"))),
            )),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(4096))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(src).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    src_keys.len() as u64
}

fn task_plan(dir: &std::path::Path, src: &std::path::Path, rows: u64, out: std::path::PathBuf) -> TaskPlan {
    let local = |p: &std::path::Path| S3Endpoint {
        endpoint: format!("file://{}", p.display()),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    let nf = |name: &str, t: &str| NewField {
        vector: None,
        source_column: None,
        name: name.into(),
        arrow_type: t.into(),
        field_id: None,
    };
    TaskPlan {
        source_key_column: None,
        mode: milvus_backfill::plan::Mode::Replace,
        run_id: "exchange".into(),
        collection_id: 1,
        pk_field: PkField {
            int_width: None,
            physical: false,
            field_id: 100,
            name: "id".into(),
            pk_type: PkType::Int64,
        },
        new_fields: vec![nf("score", "Float64"), nf("label", "Utf8")],
        storage: local(&dir.join("storage")),
        storage_bucket: "milvus-bucket".into(),
        source: local(src.parent().unwrap()),
        source_place: Place::Local {
            path: src.parent().unwrap().to_path_buf(),
        },
        source_files: vec![SourceFile {
            key: src.strip_prefix("/").unwrap().display().to_string(),
            size: std::fs::metadata(src).unwrap().len(),
            rows,
            first_row: 0,
        }],
        output_place: Place::Local { path: out },
        batch_size: milvus_backfill_api::plan::BatchSize::new(500).unwrap(),
        root_path: "files".into(),
        memory_mib: 384,
        v3_commit: Default::default(),
    }
}

async fn run(task: &Task) -> (RunStores, TaskOutcome) {
    let stores = RunStores::open(&RunLocations::of_task(&task.plan), &StoreCredentials::default()).await;
    let outcome = runner::run_task(task, &stores).await;
    (stores, outcome)
}

/// Every segment's `(score, label)` column, row by row.
async fn outputs(stores: &RunStores, task: &Task) -> Vec<Vec<(Option<f64>, Option<String>)>> {
    let mut all = Vec::new();
    for seg in &task.segments {
        let m = read_manifest(&stores.output, &seg.manifest_key())
            .await
            .unwrap()
            .expect("manifest");
        let mut rows = Vec::new();
        for b in read_back(&stores.output, &m).await.unwrap() {
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
                rows.push((
                    score.is_valid(i).then(|| score.value(i)),
                    label.is_valid(i).then(|| label.value(i).to_owned()),
                ));
            }
        }
        all.push(rows);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_over_the_budget_go_through_the_exchange_and_write_what_one_pass_writes() {
    let bed = bed();
    let (stores, one_pass) = run(&bed.task).await;
    assert!(one_pass.success, "{:?}", one_pass.failed_segments);
    assert_eq!(
        (
            one_pass.source_reads.source_passes,
            one_pass.source_reads.exchange_bytes_written
        ),
        (1, 0)
    );
    let expected = outputs(&stores, &bed.task).await;

    let mut small = bed.task.clone();
    small.plan.memory_mib = 1;
    small.attempt = 1;
    std::fs::remove_dir_all(bed.dir.path().join("out")).unwrap();
    let (stores, exchanged) = run(&small).await;
    assert!(exchanged.success, "{:?}", exchanged.failed_segments);
    let reads = exchanged.source_reads;
    assert_eq!(reads.source_passes, 1, "the source is read once");
    assert!(reads.exchange_bytes_written > 0, "{reads:?}");
    let source_size = small.plan.source_files[0].size;
    assert!(
        reads.source_bytes_read <= source_size * 13 / 10,
        "{reads:?} of a {source_size}-byte source"
    );
    assert_eq!(exchanged.used_source_rows, one_pass.used_source_rows);
    let got = outputs(&stores, &small).await;
    assert_eq!(got, expected, "the exchange writes what one pass writes");

    // And both say what the keys say: every third key has its values, others are null.
    for (s, rows) in got.iter().enumerate() {
        for (k, row) in bed.keys[s].iter().zip(rows) {
            let want = if k % 3 == 0 {
                (Some(*k as f64 / 2.0), (k % 7 != 0).then(|| format!("l{k}")))
            } else {
                (None, None)
            };
            assert_eq!(row, &want, "segment {s} key {k}");
        }
    }
    let matched: HashMap<i64, u64> = exchanged
        .segments
        .iter()
        .map(|o| (o.segment_id, o.matched_row_count))
        .collect();
    assert_eq!(matched.values().sum::<u64>(), ((SEGMENTS * ROWS) as u64).div_ceil(3));

    // Nothing of the exchange is left under the run's prefix.
    let prefix = RunLayout::of_task(&small.plan).exchange_prefix("t", 1);
    assert_eq!(stores.storage.list(&prefix).await.unwrap(), vec![], "exchange deleted");
}

/// The task, as the operator stores it and a Job reads it back.
fn stage_task(bed: &Bed, index: usize, segments: std::ops::Range<usize>, stage: Stage) -> Task {
    let json = serde_json::to_string(&Task {
        task_id: format!("t{index}"),
        attempt: 0,
        plan: bed.task.plan.clone(),
        segments: bed.task.segments[segments].to_vec(),
        stage: Some(stage),
    })
    .unwrap();
    serde_json::from_str(&json).unwrap()
}

async fn run_ok(task: &Task) -> TaskOutcome {
    let (_, o) = run(task).await;
    assert!(
        o.success,
        "{}: {:?} {:?}",
        task.task_id, o.failed_segments, o.stage_output
    );
    o
}

/// The stages as a cluster runs them, each task on its own as a Job would: three route tasks
/// (a third of the segments' keys and a slice of the source each), one join task per
/// partition, two write tasks. The outputs are those of one pass; the source is read once in
/// all, and no slice is read twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stages_as_separate_tasks_write_what_one_pass_writes() {
    let bed = bed();
    let (stores, one_pass) = run(&bed.task).await;
    assert!(one_pass.success);
    let expected = outputs(&stores, &bed.task).await;
    std::fs::remove_dir_all(bed.dir.path().join("out")).unwrap();

    let n = bed.task.segments.len();
    let (partitions, routes) = (4u32, 3usize);
    let slices = stage::source_slices(&bed.task.plan.source_files, routes as u32);
    let mut routed = Vec::new();
    let mut bytes_read = 0;
    for (r, slices) in slices.into_iter().enumerate() {
        let segs = r * n / routes..(r + 1) * n / routes;
        let work = RouteWork {
            partitions,
            first_segment: segs.start as u32,
            slices,
        };
        let o = run_ok(&stage_task(&bed, r, segs, Stage::Route(work))).await;
        bytes_read += o.source_reads.source_bytes_read;
        routed.push(o.stage_output.unwrap());
    }
    let source_size = bed.task.plan.source_files[0].size;
    // Each route task reads its own row groups and the footer (a 64 KiB tail read): a slice
    // read twice would add a third of the source.
    let footers = routes as u64 * (64 << 10);
    assert!(bytes_read <= source_size + footers, "{bytes_read} of {source_size}");
    assert!(bytes_read >= source_size * 9 / 10, "{bytes_read} of {source_size}");
    let mut joined = Vec::new();
    for (p, w) in stage::join_works(partitions, &routed.iter().collect::<Vec<_>>())
        .into_iter()
        .enumerate()
    {
        let o = run_ok(&stage_task(&bed, 10 + p, 0..0, Stage::Join(w))).await;
        joined.push(o.stage_output.unwrap());
    }
    let joined: Vec<&StageOutput> = joined.iter().collect();
    let mut matched = 0;
    for (i, segs) in [0..n / 2, n / 2..n].into_iter().enumerate() {
        let work = stage::write_work(segs.start as u32..segs.end as u32, &joined);
        let o = run_ok(&stage_task(&bed, 20 + i, segs, Stage::Write(work))).await;
        matched += o.segments.iter().map(|s| s.matched_row_count).sum::<u64>();
    }
    assert_eq!(matched, ((SEGMENTS * ROWS) as u64).div_ceil(3));
    assert_eq!(
        outputs(&stores, &bed.task).await,
        expected,
        "the stages write what one pass writes"
    );
}

/// A join task whose parts are gone fails as a whole, and says which object is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_task_that_fails_says_why_and_hands_nothing_on() {
    let bed = bed();
    let gone = SourceFile {
        key: "files/backfill/1/exchange/gone/keys/00000-k-00000.parquet".into(),
        size: 100,
        rows: 10,
        first_row: 0,
    };
    let work = JoinWork {
        partition: 0,
        keys: vec![gone.clone()],
        source: vec![gone],
        first_row: 0,
    };
    let (_, o) = run(&stage_task(&bed, 0, 0..0, Stage::Join(work))).await;
    assert!(!o.success);
    match o.stage_output {
        Some(StageOutput::Failed { reason, .. }) => assert!(reason.contains("00000-k-00000"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// A segment whose binlog is gone fails alone: its route task still routes the others and
/// names it; its write task reports it failed and writes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_the_route_stage_cannot_read_fails_alone() {
    let bed = bed();
    let gone = &bed.task.segments[1];
    std::fs::remove_file(
        bed.dir
            .path()
            .join("storage/milvus-bucket")
            .join(&gone.pk_binlogs[0].key),
    )
    .unwrap();
    let segs = 0..4usize;
    let work = RouteWork {
        partitions: 2,
        first_segment: 0,
        slices: stage::source_slices(&bed.task.plan.source_files, 1).remove(0),
    };
    let route = run_ok(&stage_task(&bed, 0, segs.clone(), Stage::Route(work))).await;
    let routed = route.stage_output.unwrap();
    let StageOutput::Routed { unreadable, .. } = &routed else {
        panic!("{routed:?}")
    };
    assert_eq!(
        unreadable.iter().map(|f| f.segment_id).collect::<Vec<_>>(),
        vec![gone.segment_id]
    );
    assert!(unreadable[0].reason.contains("gone"), "{}", unreadable[0].reason);
    let mut joined = Vec::new();
    for (p, w) in stage::join_works(2, &[&routed]).into_iter().enumerate() {
        joined.push(
            run_ok(&stage_task(&bed, 10 + p, 0..0, Stage::Join(w)))
                .await
                .stage_output
                .unwrap(),
        );
    }
    let mut work = stage::write_work(0..4, &joined.iter().collect::<Vec<_>>());
    work.unreadable = unreadable.clone();
    let (_, o) = run(&stage_task(&bed, 20, segs, Stage::Write(work))).await;
    assert_eq!(o.segments.len(), 3, "{:?}", o.failed_segments);
    assert_eq!(o.failed_segments.len(), 1);
    assert_eq!(o.failed_segments[0].segment_id, gone.segment_id);
}

/// The bed's source as `spec.columnMapping` `{user: id, s: score, label: label}` reads it: other
/// names, the key last, and a column that is not mapped (it must not be read or written).
fn write_mapped_source(plain: &std::path::Path, mapped: &std::path::Path) {
    let file = std::fs::File::open(plain).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("noise", DataType::Int64, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("s", DataType::Float64, true),
        Field::new("user", DataType::Int64, false),
    ]));
    std::fs::create_dir_all(mapped.parent().unwrap()).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(4096))
        .build();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(mapped).unwrap(), schema.clone(), Some(props))
            .unwrap();
    for b in reader {
        let b = b.unwrap();
        let noise = Arc::new(Int64Array::from_iter_values((0..b.num_rows() as i64).map(|i| -i)));
        let cols = vec![noise, b.column(2).clone(), b.column(1).clone(), b.column(0).clone()];
        w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap()).unwrap();
    }
    w.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_source_columns_write_what_the_plain_source_writes_in_one_pass_and_through_the_exchange() {
    let bed = bed();
    let (stores, plain) = run(&bed.task).await;
    assert!(plain.success);
    let expected = outputs(&stores, &bed.task).await;

    let plain_src = bed.dir.path().join("source/new.parquet");
    let mapped_src = bed.dir.path().join("mapped/new.parquet");
    write_mapped_source(&plain_src, &mapped_src);
    let out = bed.dir.path().join("out");
    let mut task = bed.task.clone();
    task.plan = task_plan(bed.dir.path(), &mapped_src, bed.task.plan.source_rows(), out.clone());
    task.plan.source_key_column = Some("user".into());
    task.plan.new_fields[0].source_column = Some("s".into());
    for (attempt, memory_mib) in [(1, 384), (2, 1)] {
        std::fs::remove_dir_all(&out).unwrap();
        task.attempt = attempt;
        task.plan.memory_mib = memory_mib;
        let (stores, mapped) = run(&task).await;
        assert!(mapped.success, "memoryMiB {memory_mib}: {:?}", mapped.failed_segments);
        assert_eq!(
            mapped.source_reads.exchange_bytes_written > 0,
            memory_mib == 1,
            "memoryMiB {memory_mib}: {:?}",
            mapped.source_reads
        );
        assert_eq!(mapped.used_source_rows, plain.used_source_rows);
        assert_eq!(outputs(&stores, &task).await, expected, "memoryMiB {memory_mib}");
    }
}
