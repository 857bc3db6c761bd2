//! Planning time at many segments: `<segments>` V1 segments (default 10,000) of `<rows>` rows
//! each (default 100) written with the project's own binlog writer, each with its PK binlog and
//! three other fields' binlogs beside it (so that a partition listing is as large as a real
//! one), served by a stand-in MilvusService over gRPC (DescribeCollection, ShowPartitions and
//! GetPersistentSegmentInfo answer the real wire format from `proto/`), then
//! `planner::plan` timed twice (cold and warm file cache). No timing is asserted; every segment
//! must be planned with its rows.
//!
//! Usage: cargo run --release --example plan_bench -- <out> [segments] [rows]

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use milvus_backfill::binlog::BinlogWriter;
use milvus_backfill::config::{BackfillDoc, MilvusToken};
use milvus_backfill::planner;
use milvus_proto::common;
use milvus_proto::milvus as pb;
use milvus_proto::milvus::milvus_service_server::{MilvusService, MilvusServiceServer};
use milvus_proto::schema;
use tonic::{Request, Response, Status};

const COLLECTION_ID: i64 = 1;
const PARTITION_ID: i64 = 2;
const FIRST_SEGMENT: i64 = 1000;

struct Stand {
    segments: i64,
    rows: i64,
}

fn ok() -> Option<common::Status> {
    Some(common::Status::default())
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not served by the planning benchmark"))
}

#[tonic::async_trait]
impl MilvusService for Stand {
    async fn describe_collection(
        &self,
        _: Request<pb::DescribeCollectionRequest>,
    ) -> Result<Response<pb::DescribeCollectionResponse>, Status> {
        let f = |id, name: &str, dt, pk| schema::FieldSchema {
            field_id: id,
            name: name.into(),
            is_primary_key: pk,
            data_type: dt,
            ..Default::default()
        };
        Ok(Response::new(pb::DescribeCollectionResponse {
            status: ok(),
            schema: Some(schema::CollectionSchema {
                name: "many".into(),
                fields: vec![
                    f(100, "id", 5, true),
                    f(101, "vec", 101, false),
                    f(102, "title", 21, false),
                ],
                ..Default::default()
            }),
            collection_id: COLLECTION_ID,
            collection_name: "many".into(),
            ..Default::default()
        }))
    }

    async fn show_partitions(
        &self,
        _: Request<pb::ShowPartitionsRequest>,
    ) -> Result<Response<pb::ShowPartitionsResponse>, Status> {
        Ok(Response::new(pb::ShowPartitionsResponse {
            status: ok(),
            partition_names: vec!["_default".into()],
            partition_i_ds: vec![PARTITION_ID],
            ..Default::default()
        }))
    }

    async fn flush(&self, _: Request<pb::FlushRequest>) -> Result<Response<pb::FlushResponse>, Status> {
        unimplemented()
    }

    async fn get_flush_state(
        &self,
        _: Request<pb::GetFlushStateRequest>,
    ) -> Result<Response<pb::GetFlushStateResponse>, Status> {
        unimplemented()
    }

    async fn get_persistent_segment_info(
        &self,
        _: Request<pb::GetPersistentSegmentInfoRequest>,
    ) -> Result<Response<pb::GetPersistentSegmentInfoResponse>, Status> {
        let infos = (0..self.segments)
            .map(|i| pb::PersistentSegmentInfo {
                segment_id: FIRST_SEGMENT + i,
                collection_id: COLLECTION_ID,
                partition_id: PARTITION_ID,
                num_rows: self.rows,
                state: 4, // commonpb.SegmentState::Flushed
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::GetPersistentSegmentInfoResponse {
            status: ok(),
            infos,
        }))
    }

    async fn add_collection_field(
        &self,
        _: Request<pb::AddCollectionFieldRequest>,
    ) -> Result<Response<common::Status>, Status> {
        unimplemented()
    }

    async fn create_snapshot(&self, _: Request<pb::CreateSnapshotRequest>) -> Result<Response<common::Status>, Status> {
        unimplemented()
    }

    async fn create_index(&self, _: Request<pb::CreateIndexRequest>) -> Result<Response<common::Status>, Status> {
        unimplemented()
    }

    async fn describe_index(
        &self,
        _: Request<pb::DescribeIndexRequest>,
    ) -> Result<Response<pb::DescribeIndexResponse>, Status> {
        unimplemented()
    }

    async fn query(&self, _: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResults>, Status> {
        unimplemented()
    }

    async fn describe_snapshot(
        &self,
        _: Request<pb::DescribeSnapshotRequest>,
    ) -> Result<Response<pb::DescribeSnapshotResponse>, Status> {
        unimplemented()
    }
}

/// Each segment: its PK binlog (field 100) and three more fields' binlogs beside it.
fn write_segments(root: &std::path::Path, segments: i64, rows: i64) {
    for i in 0..segments {
        let seg = FIRST_SEGMENT + i;
        let keys: Vec<i64> = (0..rows).map(|r| i * rows + r).collect();
        let w = BinlogWriter::int64_pk(COLLECTION_ID, PARTITION_ID, seg, 100);
        let bytes = w.write_insert(Arc::new(Int64Array::from(keys))).unwrap();
        for field in [0, 1, 100, 101] {
            let dir = root.join(format!("files/insert_log/{COLLECTION_ID}/{PARTITION_ID}/{seg}/{field}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("449"), &bytes).unwrap();
        }
    }
}

fn write_source(path: &std::path::Path, keys: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
    ]));
    let pk = Int64Array::from_iter_values((0..keys).step_by(2));
    let score = Float64Array::from_iter_values(pk.values().iter().map(|k| *k as f64));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(pk), Arc::new(score)]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = std::path::PathBuf::from(args.get(1).expect("usage: plan_bench <out> [segments] [rows]"));
    let segments: i64 = args.get(2).map_or(10_000, |s| s.parse().unwrap());
    let rows: i64 = args.get(3).map_or(100, |s| s.parse().unwrap());
    let storage = out.join("storage");
    let bucket = storage.join("milvus-bucket");
    if !bucket
        .join(format!(
            "files/insert_log/{COLLECTION_ID}/{PARTITION_ID}/{}",
            FIRST_SEGMENT + segments - 1
        ))
        .exists()
    {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(&out);
        write_segments(&bucket, segments, rows);
        eprintln!("wrote {segments} segments in {:.1}s", t.elapsed().as_secs_f64());
    }
    let source = out.join("source.parquet");
    write_source(&source, segments * rows);

    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(MilvusServiceServer::new(Stand { segments, rows }), incoming),
    );
    let doc = BackfillDoc::parse(&format!(
        "milvus: {{uri: \"http://{addr}\", collection: many}}\n\
         storage: {{endpoint: \"file://{}\", bucket: milvus-bucket}}\n\
         source: {{path: \"{}\"}}\n\
         output: {{path: \"{}\"}}\n",
        storage.display(),
        source.display(),
        out.join("out").display()
    ))
    .unwrap();
    for pass in ["cold", "warm"] {
        let t = Instant::now();
        let planned = planner::plan(&doc, &MilvusToken(None)).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let p = &planned.plan;
        assert_eq!(
            p.segments.len() as i64,
            segments,
            "every segment planned: {:?}",
            p.failed.first()
        );
        assert!(p
            .segments
            .iter()
            .all(|s| s.num_rows == rows as u64 && s.pk_binlogs.len() == 1));
        println!("plan of {segments} segments ({rows} rows each), {pass}: {secs:.2}s");
    }
}
