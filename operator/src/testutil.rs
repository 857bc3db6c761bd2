//! Fixtures for the unit tests.

use milvus_backfill_api::error::ErrorKind;
use milvus_backfill_api::layout::{RunLayout, TaskSplit};
use milvus_backfill_api::outcome::{FailedSegment, ManifestOp, OpFile, SegmentOutcome, TaskOutcome};
use milvus_backfill_api::place::{Place, S3Endpoint};
use milvus_backfill_api::plan::{sample_plan, BatchSize, Binlog, NewField, Plan, SegmentPlan, SkippedSegment};
use milvus_backfill_api::spec::{MilvusSpec, SourceSpec, StorageSpec};

use crate::crd::{Backfill, BackfillSpec, EngineSpec, WorkerSpec};

pub fn spec() -> BackfillSpec {
    BackfillSpec {
        engine: EngineSpec {
            milvus: MilvusSpec {
                uri: "http://milvus:19530".into(),
                collection: "c".into(),
                ..Default::default()
            },
            storage: StorageSpec {
                endpoint: "minio:9000".into(),
                bucket: "milvus-bucket".into(),
                ..Default::default()
            },
            source: SourceSpec {
                path: "s3://data/new.parquet".into(),
                ..Default::default()
            },
            ..Default::default()
        },
        worker: Some(WorkerSpec {
            image: Some("reg/milvus-backfill:1".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn backfill(name: &str) -> Backfill {
    let mut bf = Backfill::new(name, spec());
    bf.metadata.namespace = Some("ns".into());
    bf.metadata.uid = Some("uid-1".into());
    bf.metadata.generation = Some(1);
    bf
}

/// A plan with `n` segments to backfill (segment IDs 1000.., 100 rows each, partition 1 or 2)
/// and `failed` segments that failed planning (IDs 9000..).
pub fn plan_with(n: usize, failed: usize) -> Plan {
    let ep = S3Endpoint {
        endpoint: "minio:9000".into(),
        region: "us-east-1".into(),
        use_ssl: false,
    };
    Plan {
        run_id: "20261127t032700-2ee0f5".into(),
        collection_id: 470745036076876812,
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
        root_path: "files".into(),
        source: ep,
        source_place: Place::Bucket {
            bucket: "data".into(),
            prefix: "new.parquet".into(),
        },
        source_rows: 1_000_000,
        batch_size: BatchSize::DEFAULT,
        parallelism: 4,
        memory_mib: 384,
        v3_commit: Default::default(),
        segments: (0..n)
            .map(|i| {
                let seg = 1000 + i as i64;
                let part = 1 + (i % 2) as i64;
                SegmentPlan {
                    segment_id: seg,
                    partition_id: part,
                    partition_name: format!("p{part}"),
                    num_rows: 100,
                    storage_version: 0,
                    pk_binlogs: vec![Binlog {
                        key: format!("files/insert_log/1/{part}/{seg}/100/1"),
                        log_id: 1,
                        size: 10,
                        rows: 100,
                    }],
                    output_dir: format!("files/insert_log/1/{part}/{seg}/new_field"),
                    v3: None,
                    existing: vec![],
                }
            })
            .collect(),
        failed: (0..failed)
            .map(|i| SkippedSegment {
                segment_id: 9000 + i as i64,
                partition_id: 1,
                num_rows: 5,
                reason: "stale binlogs".into(),
            })
            .collect(),
        ..sample_plan()
    }
}

/// The outcome of a task whose segments all succeeded (`matched` rows each).
pub fn ok_outcome(plan: &Plan, spj: u32, task: u32, attempt: u32, matched: u64) -> TaskOutcome {
    let segs = TaskSplit::new(spj).segments(plan, task);
    TaskOutcome {
        task_id: RunLayout::of_plan(plan).task_id(task),
        attempt,
        success: true,
        segments: segs
            .iter()
            .map(|s| SegmentOutcome {
                segment_id: s.segment_id,
                partition_id: s.partition_id,
                row_count: s.num_rows,
                matched_row_count: matched,
                output_path: format!("s3://milvus-bucket/{}", s.output_dir),
                manifest_paths: vec![format!("s3://milvus-bucket/{}/manifest.json", s.output_dir)],
                execution_time_ms: 5,
                ops: vec![],
                storage_version: None,
                version: None,
                source_version: None,
                column_groups: vec![],
                used_source_by_field: Default::default(),
                used_data_file_by_field: Default::default(),
                used_source_rows: vec![],
            })
            .collect(),
        failed_segments: vec![],
        used_source_rows: matched * segs.len() as u64,
        execution_time_ms: 10,
        source_reads: Default::default(),
        stage_output: None,
    }
}

/// `o` as the outcome of StorageV3 segments: each segment carries one `replace` op (new field
/// 101, one data file covering its rows), which is what makes a result committable.
pub fn v3(mut o: TaskOutcome) -> TaskOutcome {
    for s in &mut o.segments {
        s.ops = vec![ManifestOp {
            op_type: ManifestOp::REPLACE.into(),
            columns: vec!["101".into()],
            format: ManifestOp::PARQUET.into(),
            files: vec![OpFile {
                path: format!("{}-101-0.parquet", s.segment_id),
                start_index: 0,
                end_index: s.row_count,
                properties: [("file_size", "4096"), ("footer_size", "512")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            }],
            row_count: s.row_count,
        }];
    }
    o
}

/// The outcome of a task whose segments all failed with `kind`.
pub fn failed_outcome(plan: &Plan, spj: u32, task: u32, attempt: u32, kind: ErrorKind) -> TaskOutcome {
    let segs = TaskSplit::new(spj).segments(plan, task);
    TaskOutcome {
        task_id: RunLayout::of_plan(plan).task_id(task),
        attempt,
        success: false,
        segments: vec![],
        failed_segments: segs
            .iter()
            .map(|s| FailedSegment {
                segment_id: s.segment_id,
                partition_id: s.partition_id,
                kind,
                reason: format!("segment {} broke", s.segment_id),
            })
            .collect(),
        used_source_rows: 0,
        execution_time_ms: 10,
        source_reads: Default::default(),
        stage_output: None,
    }
}

/// xorshift64*: deterministic pseudo-random numbers for property-style tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
