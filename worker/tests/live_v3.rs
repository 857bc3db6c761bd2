//! Planning from a live Milvus 2.6/3.0 without a snapshot (StorageV3 segments at their newest
//! manifest) and from a snapshot named in Milvus (`spec.milvus.snapshot.name`, optionally
//! created first), on the official milvus-storage library's golden V3 segments
//! (`../shared/fixtures/milvus-storage-v3`).
//!
//! No Milvus 3.0 runs here: the `contract_*` tests serve a stand-in MilvusService over gRPC
//! (the real wire format and paths, from `proto/`) that answers the way milvus-storage.md §12
//! describes, and records every call so that the order of Flush, CreateSnapshot and
//! DescribeSnapshot is checked. Its answers are our reading of the server, not the server's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

use milvus_backfill::config::{BackfillDoc, MilvusToken};
use milvus_backfill::error::{ErrorKind, Result};
use milvus_backfill::planner::{self, Planned};
use milvus_backfill::progress::Progress;
use milvus_backfill::runner;
use milvus_backfill::stores::StoreCredentials;
use milvus_backfill_api::outcome::BackfillResult;
use milvus_backfill_api::precheck::{Check, CheckState, PrecheckReport};
use milvus_proto::common;
use milvus_proto::milvus as pb;
use milvus_proto::milvus::milvus_service_server::{MilvusService, MilvusServiceServer};
use milvus_proto::schema;

mod golden;
use golden::{copy_dir, read_all};

fn fixtures() -> PathBuf {
    golden::shared_fixtures("milvus-storage-v3")
}

const COLLECTION: &str = "golden";
const COLLECTION_ID: i64 = 1001;
const PARTITION_ID: i64 = 1002;
const FLUSHED: i32 = 4;
const LEVEL_L1: i32 = 2;

/// The golden segment: its primary keys in row order and its newest manifest version.
fn golden(segment: i64) -> (Vec<Value>, i64) {
    let doc: Value = serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    let s = doc["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["segmentId"] == segment)
        .unwrap();
    (
        s["pks"].as_array().unwrap().clone(),
        s["manifestVersion"].as_i64().unwrap(),
    )
}

// ------------------------------------------------------------------ the stand-in Milvus

/// A segment as GetPersistentSegmentInfo reports it.
#[derive(Clone)]
struct Seg {
    id: i64,
    rows: i64,
    storage_version: i64,
}

struct State {
    /// The bucket directory, where CreateSnapshot writes the metadata JSON as DataCoord does.
    bucket: PathBuf,
    pk_type: i32,
    /// The schema holds `score` (103, Double, nullable): AddCollectionField was called.
    has_score: bool,
    segments: Vec<Seg>,
    /// `false`: a server before 3.0, which answers the snapshot calls UNIMPLEMENTED.
    snapshots_supported: bool,
    /// name → s3_location.
    snapshots: BTreeMap<String, String>,
    /// s3_location as DescribeSnapshot gives it: `true` for `s3://bucket/key`, else the bare key.
    location_as_uri: bool,
    /// Every call, in order, with what matters of its request.
    calls: Vec<String>,
    /// field → index type, as CreateIndex made them.
    indexes: BTreeMap<String, String>,
}

#[derive(Clone)]
struct FakeMilvus(Arc<Mutex<State>>);

fn ok() -> Option<common::Status> {
    Some(common::Status::default())
}

/// A failed status as merr words it: `code` plus the reason.
fn failed(code: i32, reason: &str) -> Option<common::Status> {
    Some(common::Status {
        code,
        reason: reason.into(),
        ..Default::default()
    })
}

impl FakeMilvus {
    fn record(&self, call: String) {
        self.0.lock().unwrap().calls.push(call);
    }

    fn fields(s: &State) -> Vec<schema::FieldSchema> {
        let f = |id, name: &str, dt, pk, nullable| schema::FieldSchema {
            field_id: id,
            name: name.into(),
            is_primary_key: pk,
            data_type: dt,
            nullable,
            ..Default::default()
        };
        let mut fields = vec![
            f(0, "RowID", 5, false, false),
            f(1, "Timestamp", 5, false, false),
            f(100, "pk", s.pk_type, true, false),
            f(101, "price", 11, false, true),
            f(102, "vec", 101, false, false),
        ];
        if s.has_score {
            fields.push(f(103, "score", 11, false, true));
        }
        fields
    }

    /// The snapshot metadata JSON DataCoord writes (milvus-storage.md §10), of every V3 segment.
    fn write_snapshot(s: &State, name: &str, id: i64) -> String {
        let key = format!("files/snapshots/{COLLECTION_ID}/metadata/{id}.json");
        let fields: Vec<Value> = Self::fields(s)
            .iter()
            .map(|f| {
                json!({"fieldID": f.field_id, "name": f.name, "is_primary_key": f.is_primary_key,
                       "data_type": f.data_type, "nullable": f.nullable})
            })
            .collect();
        let v3: Vec<Value> = s
            .segments
            .iter()
            .filter(|g| g.storage_version == 3)
            .map(|g| {
                let (_, ver) = golden(g.id);
                let base = format!("files/insert_log/{COLLECTION_ID}/{PARTITION_ID}/{}", g.id);
                json!({"segmentID": g.id, "manifest": json!({"ver": ver, "base_path": base}).to_string()})
            })
            .collect();
        let doc = json!({
            "snapshot-info": {"name": name, "id": id, "collection_id": COLLECTION_ID, "partition_ids": [PARTITION_ID]},
            "collection": {"schema": {"name": COLLECTION, "version": 4, "fields": fields}},
            "manifest-list": [],
            "storagev2-manifest-list": v3
        });
        let path = s.bucket.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
        key
    }
}

#[tonic::async_trait]
impl MilvusService for FakeMilvus {
    async fn describe_collection(
        &self,
        req: Request<pb::DescribeCollectionRequest>,
    ) -> Result<Response<pb::DescribeCollectionResponse>, Status> {
        self.record(format!("DescribeCollection {}", req.get_ref().collection_name));
        let s = self.0.lock().unwrap();
        Ok(Response::new(pb::DescribeCollectionResponse {
            status: ok(),
            schema: Some(schema::CollectionSchema {
                name: COLLECTION.into(),
                fields: Self::fields(&s),
                version: 4,
                ..Default::default()
            }),
            collection_id: COLLECTION_ID,
            collection_name: COLLECTION.into(),
            ..Default::default()
        }))
    }

    async fn show_partitions(
        &self,
        _: Request<pb::ShowPartitionsRequest>,
    ) -> Result<Response<pb::ShowPartitionsResponse>, Status> {
        self.record("ShowPartitions".into());
        Ok(Response::new(pb::ShowPartitionsResponse {
            status: ok(),
            partition_names: vec!["_default".into()],
            partition_i_ds: vec![PARTITION_ID],
            ..Default::default()
        }))
    }

    async fn flush(&self, req: Request<pb::FlushRequest>) -> Result<Response<pb::FlushResponse>, Status> {
        self.record(format!("Flush {:?}", req.get_ref().collection_names));
        Ok(Response::new(pb::FlushResponse {
            status: ok(),
            coll_flush_ts: HashMap::from([(COLLECTION.to_owned(), 42)]),
            ..Default::default()
        }))
    }

    async fn get_flush_state(
        &self,
        req: Request<pb::GetFlushStateRequest>,
    ) -> Result<Response<pb::GetFlushStateResponse>, Status> {
        self.record(format!("GetFlushState {}", req.get_ref().flush_ts));
        Ok(Response::new(pb::GetFlushStateResponse {
            status: ok(),
            flushed: true,
        }))
    }

    async fn get_persistent_segment_info(
        &self,
        _: Request<pb::GetPersistentSegmentInfoRequest>,
    ) -> Result<Response<pb::GetPersistentSegmentInfoResponse>, Status> {
        self.record("GetPersistentSegmentInfo".into());
        let s = self.0.lock().unwrap();
        let infos = s
            .segments
            .iter()
            .map(|g| pb::PersistentSegmentInfo {
                segment_id: g.id,
                collection_id: COLLECTION_ID,
                partition_id: PARTITION_ID,
                num_rows: g.rows,
                state: FLUSHED,
                level: LEVEL_L1,
                is_sorted: false,
                storage_version: g.storage_version,
            })
            .collect();
        Ok(Response::new(pb::GetPersistentSegmentInfoResponse {
            status: ok(),
            infos,
        }))
    }

    async fn add_collection_field(
        &self,
        req: Request<pb::AddCollectionFieldRequest>,
    ) -> Result<Response<common::Status>, Status> {
        use milvus_proto::prost::Message;
        let r = req.into_inner();
        let field = schema::FieldSchema::decode(&r.schema[..]).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.record(format!(
            "AddCollectionField {} {} type={} nullable={}",
            r.collection_name, field.name, field.data_type, field.nullable
        ));
        let mut s = self.0.lock().unwrap();
        if !s.snapshots_supported {
            return Err(Status::unimplemented("unknown method AddCollectionField"));
        }
        // Milvus 2.6+ takes only nullable new fields.
        if field.name == "score" && field.data_type == 11 && field.nullable {
            s.has_score = true;
            return Ok(Response::new(common::Status::default()));
        }
        Ok(Response::new(failed(1100, "field must be nullable").unwrap()))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<common::Status>, Status> {
        let r = req.into_inner();
        self.record(format!(
            "CreateSnapshot {} db={} collection={} protection={}",
            r.name, r.db_name, r.collection_name, r.compaction_protection_seconds
        ));
        let mut s = self.0.lock().unwrap();
        if !s.snapshots_supported {
            return Err(Status::unimplemented("unknown method CreateSnapshot"));
        }
        if s.snapshots.contains_key(&r.name) {
            let reason = format!("snapshot already exists[snapshot={}]", r.name);
            return Ok(Response::new(failed(65535, &reason).unwrap()));
        }
        let key = Self::write_snapshot(&s, &r.name, 7 + s.snapshots.len() as i64);
        s.snapshots.insert(r.name, key);
        Ok(Response::new(common::Status::default()))
    }

    async fn create_index(&self, req: Request<pb::CreateIndexRequest>) -> Result<Response<common::Status>, Status> {
        let r = req.into_inner();
        let params: Vec<String> = r
            .extra_params
            .iter()
            .map(|p| format!("{}={}", p.key, p.value))
            .collect();
        self.record(format!("CreateIndex {} {}", r.field_name, params.join(",")));
        let mut s = self.0.lock().unwrap();
        if s.indexes.contains_key(&r.field_name) {
            return Ok(Response::new(
                failed(65535, "at most one distinct index is allowed per field").unwrap(),
            ));
        }
        let index_type = r
            .extra_params
            .iter()
            .find(|p| p.key == "index_type")
            .map(|p| p.value.clone());
        s.indexes.insert(r.field_name, index_type.unwrap_or_default());
        Ok(Response::new(common::Status::default()))
    }

    async fn describe_index(
        &self,
        req: Request<pb::DescribeIndexRequest>,
    ) -> Result<Response<pb::DescribeIndexResponse>, Status> {
        let r = req.into_inner();
        self.record(format!("DescribeIndex {}", r.field_name));
        let s = self.0.lock().unwrap();
        let Some(index_type) = s.indexes.get(&r.field_name) else {
            // As Milvus answers a field without an index: IndexNotExist.
            #[allow(deprecated)]
            let status = common::Status {
                error_code: 25,
                code: 700,
                reason: "index not found[collection=golden]".into(),
                ..Default::default()
            };
            return Ok(Response::new(pb::DescribeIndexResponse {
                status: Some(status),
                index_descriptions: vec![],
            }));
        };
        Ok(Response::new(pb::DescribeIndexResponse {
            status: ok(),
            index_descriptions: vec![pb::IndexDescription {
                index_name: r.field_name.clone(),
                field_name: r.field_name,
                params: vec![common::KeyValuePair {
                    key: "index_type".into(),
                    value: index_type.clone(),
                }],
                state: 3,
                total_rows: 10,
                indexed_rows: 10,
                ..Default::default()
            }],
        }))
    }

    /// The stand-in serves no rows: verify's comparison is unit-tested, and its Query is
    /// checked on the real Milvus 2.3.5 (`real_env.rs`).
    async fn query(&self, _: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResults>, Status> {
        self.record("Query".into());
        Err(Status::unimplemented("the stand-in has no rows"))
    }

    async fn describe_snapshot(
        &self,
        req: Request<pb::DescribeSnapshotRequest>,
    ) -> Result<Response<pb::DescribeSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.record(format!("DescribeSnapshot {} collection={}", r.name, r.collection_name));
        let s = self.0.lock().unwrap();
        if !s.snapshots_supported {
            return Err(Status::unimplemented("unknown method DescribeSnapshot"));
        }
        let Some(key) = s.snapshots.get(&r.name) else {
            let reason = format!("snapshot not found[snapshot={}]", r.name);
            return Ok(Response::new(pb::DescribeSnapshotResponse {
                status: failed(65535, &reason),
                ..Default::default()
            }));
        };
        let s3_location = if s.location_as_uri {
            format!("s3://bkt/{key}")
        } else {
            key.clone()
        };
        Ok(Response::new(pb::DescribeSnapshotResponse {
            status: ok(),
            name: r.name,
            collection_name: COLLECTION.into(),
            partition_names: vec!["_default".into()],
            create_ts: 1 << 18,
            s3_location,
            ..Default::default()
        }))
    }
}

// ------------------------------------------------------------------ the bed

/// A bucket directory holding the golden segments (`file://<root>`, bucket `bkt`), the
/// stand-in Milvus in front of it, and a source with values for every other key.
struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    milvus: FakeMilvus,
    uri: String,
    source: PathBuf,
    /// pk (as JSON text) → the value the source gives it.
    want: HashMap<String, f64>,
    pks: Vec<Value>,
}

impl Bed {
    /// A collection whose one segment is the golden segment `segment`, reported as
    /// `storage_version`, plus `extra` segments.
    async fn new(segment: i64, storage_version: i64, extra: Vec<Seg>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        copy_dir(&fixtures().join("files"), &root.join("bkt/files"));
        let (pks, _) = golden(segment);
        let mut segments = vec![Seg {
            id: segment,
            rows: pks.len() as i64,
            storage_version,
        }];
        segments.extend(extra);
        let milvus = FakeMilvus(Arc::new(Mutex::new(State {
            bucket: root.join("bkt"),
            pk_type: if pks[0].is_i64() { 5 } else { 21 },
            has_score: true,
            segments,
            snapshots_supported: true,
            snapshots: BTreeMap::new(),
            location_as_uri: false,
            calls: Vec::new(),
            indexes: BTreeMap::new(),
        })));
        let uri = serve(milvus.clone()).await;
        let source = root.join("source.parquet");
        let want = write_source(&source, &pks);
        Self {
            _dir: dir,
            root,
            milvus,
            uri,
            source,
            want,
            pks,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.milvus.0.lock().unwrap()
    }

    fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The spec, with `extra` YAML lines under `spec.milvus` and `spec` (already indented).
    fn doc(&self, milvus_extra: &str, spec_extra: &str) -> BackfillDoc {
        BackfillDoc::parse(&format!(
            "spec:\n  milvus:\n    uri: {}\n    collection: {COLLECTION}\n{milvus_extra}  storage:\n    endpoint: file://{}\n    bucket: bkt\n  source:\n    path: {}\n{spec_extra}",
            self.uri,
            self.root.display(),
            self.source.display()
        ))
        .unwrap()
    }

    fn data_files(&self, segment: i64) -> Vec<String> {
        let dir = self.root.join(format!(
            "bkt/files/insert_log/{COLLECTION_ID}/{PARTITION_ID}/{segment}/_data"
        ));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// The run's one new column file of `segment`, checked against the source value by value.
    fn check_written(&self, result: &BackfillResult, segment: i64) {
        assert!(result.success, "{}", result.summary());
        assert_eq!((result.collection_id, result.schema_version), (COLLECTION_ID, 4));
        let out = &result.segments[&segment.to_string()];
        assert_eq!(out.row_count, self.pks.len() as u64);
        assert_eq!(
            out.output_path,
            format!("files/insert_log/{COLLECTION_ID}/{PARTITION_ID}/{segment}")
        );
        let op = &out.ops[0];
        assert_eq!(op.columns, vec!["103".to_owned()]);
        let bytes = std::fs::read(
            self.root
                .join(format!("bkt/{}/_data/{}", out.output_path, op.files[0].path)),
        )
        .unwrap();
        let batch = read_all(bytes);
        let col = batch.column(0).as_primitive::<Float64Type>();
        assert_eq!(col.len(), self.pks.len());
        for (i, pk) in self.pks.iter().enumerate() {
            match self.want.get(&pk.to_string()) {
                Some(v) => assert_eq!(col.value(i), *v, "segment {segment} row {i}"),
                None => assert!(col.is_null(i), "segment {segment} row {i} should be null"),
            }
        }
    }
}

async fn serve(milvus: FakeMilvus) -> String {
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    // One service: `serve_with_incoming` needs no router (tonic's `router` feature is off).
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(MilvusServiceServer::new(milvus), incoming));
    format!("http://{addr}")
}

/// `pk` + `score` (Float64): every other key of the segment (value = row offset / 4), plus
/// keys in no segment.
fn write_source(path: &Path, pks: &[Value]) -> HashMap<String, f64> {
    let mut want = HashMap::new();
    let (mut keys, mut vals) = (Vec::new(), Vec::new());
    for (i, pk) in pks.iter().enumerate().step_by(2) {
        want.insert(pk.to_string(), i as f64 / 4.0);
        keys.push(pk.clone());
        vals.push(i as f64 / 4.0);
    }
    for extra in 0..20 {
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
    let schema = Arc::new(Schema::new(vec![
        Field::new("pk", key_array.data_type().clone(), false),
        Field::new("score", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![key_array, Arc::new(Float64Array::from(vals))]).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    want
}

async fn plan(doc: &BackfillDoc) -> Result<Planned> {
    planner::plan_with(doc, &MilvusToken::default(), &StoreCredentials::default()).await
}

/// The planning error (`Planned` has no `Debug` for `unwrap_err`).
async fn refused(doc: &BackfillDoc) -> milvus_backfill::error::BackfillError {
    match plan(doc).await {
        Ok(p) => panic!("planned {} segment(s), expected an error", p.plan.segments.len()),
        Err(e) => e,
    }
}

async fn run(planned: &Planned) -> BackfillResult {
    runner::run_plan(
        &planned.plan,
        &planned.stores,
        &Progress::new(planned.plan.segments.len(), true),
    )
    .await
}

// ------------------------------------------------------------------ live StorageV3

#[tokio::test]
async fn contract_live_v3_segments_are_planned_at_their_newest_manifest_and_written_aligned() {
    for segment in [1003, 1004] {
        let bed = Bed::new(segment, 3, vec![]).await;
        let (_, newest) = golden(segment);
        let before = bed.data_files(segment);
        let planned = plan(&bed.doc("", "")).await.unwrap();
        let p = &planned.plan;
        assert_eq!(p.segments.len(), 1, "{:?}", p.failed);
        let seg = &p.segments[0];
        assert_eq!((seg.storage_version, seg.partition_name.as_str()), (3, "_default"));
        let v3 = seg.v3.as_ref().unwrap();
        assert_eq!(v3.manifest_version, newest);
        assert_eq!(v3.base_path, format!("files/insert_log/1001/1002/{segment}"));
        assert_eq!(p.new_fields[0].field_id, Some(103), "bound to the schema's field");
        assert!(p.warnings[0].contains("a snapshot"), "{:?}", p.warnings);
        assert!(
            !p.warnings.iter().any(|w| w.contains("garbage collector")),
            "{:?}",
            p.warnings
        );
        let result = run(&planned).await;
        bed.check_written(&result, segment);
        assert_eq!(bed.data_files(segment).len(), before.len() + 1);
        assert_eq!(
            bed.calls(),
            [
                "DescribeCollection golden",
                "ShowPartitions",
                "GetPersistentSegmentInfo"
            ]
        );
    }
}

#[tokio::test]
async fn contract_live_v3_needs_the_new_field_in_the_schema_and_no_output_path() {
    let bed = Bed::new(1003, 3, vec![]).await;
    bed.state().has_score = false;
    let e = refused(&bed.doc("", "")).await;
    assert_eq!(e.kind, ErrorKind::SchemaValidationError);
    assert!(
        e.message.contains("add it first with AddCollectionField"),
        "{}",
        e.message
    );
    bed.state().has_score = true;
    let out = bed.root.join("out");
    let e = refused(&bed.doc("", &format!("  output:\n    path: {}\n", out.display()))).await;
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(e.message.contains("remove spec.output.path"), "{}", e.message);
}

#[tokio::test]
async fn contract_a_collection_mixing_v1_and_v3_segments_is_refused_not_half_planned() {
    let v1 = Seg {
        id: 5000,
        rows: 10,
        storage_version: 0,
    };
    let bed = Bed::new(1003, 3, vec![v1]).await;
    let before = bed.data_files(1003);
    let e = refused(&bed.doc("", "")).await;
    assert!(e.kind.is_permanent(), "{e}");
    assert!(
        e.message.contains("e.g. 5000") && e.message.contains("e.g. 1003"),
        "{}",
        e.message
    );
    assert_eq!(bed.data_files(1003), before, "nothing was written");
}

/// A live StorageV2 segment beside a V3 one: its groups are found from the files (the packed
/// files milvus-storage's own tests wrote, `../shared/fixtures/milvus-storage-v2`, groups 0 =
/// fields 100,102 and 101), its rows come from the PK group's footers, and it gets a
/// single-field column group.
#[tokio::test]
async fn contract_a_live_v2_segment_is_planned_from_its_files_beside_v3_segments() {
    let v2 = Seg {
        id: 6000,
        rows: 100,
        storage_version: 2,
    };
    let bed = Bed::new(1003, 3, vec![v2]).await;
    let packed = fixtures().parent().unwrap().join("milvus-storage-v2");
    let seg_dir = bed
        .root
        .join(format!("bkt/files/insert_log/{COLLECTION_ID}/{PARTITION_ID}/6000"));
    for (group, log, file) in [(0, 9, "column_group_0.parquet"), (101, 10, "column_group_1.parquet")] {
        std::fs::create_dir_all(seg_dir.join(group.to_string())).unwrap();
        std::fs::copy(packed.join(file), seg_dir.join(format!("{group}/{log}"))).unwrap();
    }
    let mut keys = bed.pks.clone();
    keys.extend((0..100).map(|i| json!(i)));
    let want = write_source(&bed.source, &keys);
    let planned = plan(&bed.doc("", "")).await.unwrap();
    assert_eq!(planned.plan.segments.len(), 2, "{:?}", planned.plan.failed);
    let v2 = planned.plan.segments.iter().find(|s| s.segment_id == 6000).unwrap();
    assert_eq!(v2.storage_version, 2);
    assert_eq!(v2.pk_binlogs.len(), 1);
    assert!(v2.pk_binlogs[0].key.ends_with("/6000/0/9"), "{}", v2.pk_binlogs[0].key);
    let result = run(&planned).await;
    assert!(result.success, "{}", result.summary());
    let out = &result.segments["6000"];
    assert_eq!(
        (out.storage_version, out.version, out.row_count),
        (Some(2), Some(-1), 100)
    );
    let group = &out.column_groups[0];
    assert_eq!(group.field_ids, vec![103]);
    let bytes = std::fs::read(bed.root.join("bkt").join(&group.binlog_files[0])).unwrap();
    let batch = read_all(bytes);
    let col = batch.column(0).as_primitive::<Float64Type>();
    // The fixture's ids are 0..99 in row order.
    for id in 0..100i64 {
        match want.get(&id.to_string()) {
            Some(v) => assert_eq!(col.value(id as usize), *v, "row {id}"),
            None => assert!(col.is_null(id as usize), "row {id}"),
        }
    }
}

#[tokio::test]
async fn contract_a_live_v3_segment_whose_rows_differ_from_milvus_fails_alone() {
    let bed = Bed::new(1003, 3, vec![]).await;
    bed.state().segments[0].rows = 2400;
    let planned = plan(&bed.doc("", "")).await.unwrap();
    assert!(planned.plan.segments.is_empty());
    let reason = &planned.plan.failed[0].reason;
    assert!(
        reason.contains("holds 2500 rows but Milvus reports num_rows 2400"),
        "{reason}"
    );
}

// ------------------------------------------------------------------ snapshots by name

#[tokio::test]
async fn contract_flush_then_create_then_describe_then_plan_from_the_snapshot() {
    let bed = Bed::new(1003, 3, vec![]).await;
    let doc = bed.doc(
        "    snapshot:\n      name: bf-1\n      create: true\n",
        "  flush: true\n",
    );
    let planned = plan(&doc).await.unwrap();
    assert_eq!(
        bed.calls(),
        [
            "Flush [\"golden\"]",
            "GetFlushState 42",
            "CreateSnapshot bf-1 db=default collection=golden protection=86400",
            "DescribeSnapshot bf-1 collection=golden",
        ],
        "flushed first, then the snapshot; the plan reads the snapshot, not the live segments"
    );
    let p = &planned.plan;
    assert_eq!(p.warnings[0], milvus_backfill::snapshot_planner::CONSISTENCY_NOTE);
    assert_eq!(p.segments[0].v3.as_ref().unwrap().manifest_version, 4);
    assert!(bed.root.join("bkt/files/snapshots/1001/metadata/7.json").exists());
    bed.check_written(&run(&planned).await, 1003);
}

#[tokio::test]
async fn contract_an_existing_snapshot_is_read_where_describe_snapshot_points() {
    let bed = Bed::new(1004, 3, vec![]).await;
    {
        let mut s = bed.state();
        let key = FakeMilvus::write_snapshot(&s, "nightly", 9);
        s.snapshots.insert("nightly".into(), key);
        s.location_as_uri = true;
    }
    let planned = plan(&bed.doc("    snapshot:\n      name: nightly\n", ""))
        .await
        .unwrap();
    assert_eq!(bed.calls(), ["DescribeSnapshot nightly collection=golden"]);
    bed.check_written(&run(&planned).await, 1004);
}

#[tokio::test]
async fn contract_create_on_an_existing_name_plans_from_it_with_a_warning() {
    let bed = Bed::new(1003, 3, vec![]).await;
    let doc = bed.doc(
        "    snapshot:\n      name: bf-1\n      create: true\n      compactionProtectionSeconds: 7200\n",
        "",
    );
    plan(&doc).await.unwrap();
    // A second planning (a retry after the first created it) reuses the snapshot.
    let planned = plan(&doc).await.unwrap();
    let calls = bed.calls();
    assert_eq!(
        calls[0],
        "CreateSnapshot bf-1 db=default collection=golden protection=7200"
    );
    assert_eq!(calls.len(), 4);
    assert!(
        planned.plan.warnings.iter().any(|w| w.contains("existed already")),
        "{:?}",
        planned.plan.warnings
    );
}

#[tokio::test]
async fn contract_a_missing_snapshot_is_named_and_an_old_milvus_says_it_has_none() {
    let bed = Bed::new(1003, 3, vec![]).await;
    let e = refused(&bed.doc("    snapshot:\n      name: nope\n", "")).await;
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(
        e.message.contains("snapshot \"nope\" of collection \"golden\"")
            && e.message.contains("does not exist")
            && e.message.contains("create: true"),
        "{}",
        e.message
    );
    bed.state().snapshots_supported = false;
    for milvus in [
        "    snapshot:\n      name: nope\n",
        "    snapshot:\n      name: new\n      create: true\n",
    ] {
        let e = refused(&bed.doc(milvus, "")).await;
        assert_eq!(e.kind, ErrorKind::ConfigError);
        assert!(
            e.message.contains("this Milvus has no snapshots (needs Milvus 3.0+)"),
            "{}",
            e.message
        );
    }
}

#[tokio::test]
async fn contract_a_spec_the_snapshot_cannot_honour_is_refused_before_creating_it() {
    let bed = Bed::new(1003, 3, vec![]).await;
    let out = bed.root.join("out");
    let doc = bed.doc(
        "    snapshot:\n      name: bf-1\n      create: true\n",
        &format!("  output:\n    path: {}\n", out.display()),
    );
    let e = refused(&doc).await;
    assert!(e.message.contains("remove spec.output.path"), "{}", e.message);
    assert!(bed.calls().is_empty(), "no call reached Milvus: {:?}", bed.calls());
    assert!(bed.state().snapshots.is_empty());
}

fn max_64() -> milvus_backfill_api::lifecycle::AddFieldsSpec {
    milvus_backfill_api::lifecycle::AddFieldsSpec {
        max_length: Some(64),
        types: None,
    }
}

#[tokio::test]
async fn contract_add_fields_adds_the_source_columns_nullable_then_the_plan_binds_them() {
    let bed = Bed::new(1003, 3, vec![]).await;
    bed.state().has_score = false;
    let doc = bed.doc("", "");
    let added = milvus_backfill::add_fields::add_fields_of(&doc, &MilvusToken::default(), &max_64())
        .await
        .unwrap();
    assert!(
        matches!(&added[..], [milvus_backfill::add_fields::Added::New(f)] if f.name == "score" && f.data_type == 11)
    );
    assert!(
        bed.calls()
            .iter()
            .any(|c| c == "AddCollectionField golden score type=11 nullable=true"),
        "{:?}",
        bed.calls()
    );
    assert_eq!(plan(&doc).await.unwrap().plan.new_fields[0].field_id, Some(103));
    // A second call finds the field and adds nothing.
    let again = milvus_backfill::add_fields::add_fields_of(&doc, &MilvusToken::default(), &max_64())
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![milvus_backfill::add_fields::Added::Existing("score".into())]
    );
}

#[tokio::test]
async fn contract_add_fields_on_a_server_without_the_call_says_what_it_needs() {
    let bed = Bed::new(1003, 3, vec![]).await;
    bed.state().has_score = false;
    bed.state().snapshots_supported = false;
    let e = milvus_backfill::add_fields::add_fields_of(&bed.doc("", ""), &MilvusToken::default(), &max_64())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(
        e.message.contains("needs Milvus 2.6 or later") && e.message.contains("nothing was changed"),
        "{}",
        e.message
    );
}

// ------------------------------------------------------------------ planning as a Job

/// `plan-job` as a planning Job runs it: the request is read from the storage bucket, the plan
/// is stored at the run's `plan.json`, then the answer beside the request.
#[tokio::test]
async fn contract_a_planning_job_stores_the_plan_then_answers_beside_the_request() {
    use milvus_backfill_api::planning::{PlanAnswer, PlanRequest, PlanningLayout};
    let bed = Bed::new(1003, 3, vec![]).await;
    let doc = bed.doc("", "");
    let bucket = milvus_backfill::facade::open_storage(&doc.spec, None).await;
    let layout = PlanningLayout::new("files", "uid-1", 2, 0);
    let request = PlanRequest {
        backfill: "bf".into(),
        namespace: "ns".into(),
        generation: 2,
        attempt: 0,
        spec: doc.spec.clone(),
    };
    bucket.put_json(&layout.request_key(), &request).await.unwrap();
    let (token, creds) = (MilvusToken::default(), StoreCredentials::default());
    let answer = milvus_backfill::plan_job::answer(&bucket, &layout.request_key(), &token, &creds)
        .await
        .unwrap();
    let PlanAnswer::Planned { plan_key, run_id } = &answer else {
        panic!("expected a plan, got {answer:?}")
    };
    let stored: PlanAnswer = bucket.get_json(&layout.answer_key()).await.unwrap().unwrap();
    assert_eq!(stored, answer);
    let plan: milvus_backfill_api::plan::Plan = bucket.get_json(plan_key).await.unwrap().unwrap();
    assert_eq!((&plan.run_id, plan.segments.len()), (run_id, 1));
    assert_eq!(plan.segments[0].segment_id, 1003);
    assert!(
        plan_key.starts_with(&format!("files/backfill/{COLLECTION_ID}/{run_id}/")),
        "{plan_key}"
    );

    // A spec that cannot be planned: the answer says why and that retrying will not help.
    bed.state().has_score = false;
    let layout = PlanningLayout::new("files", "uid-1", 3, 0);
    bucket
        .put_json(
            &layout.request_key(),
            &PlanRequest {
                generation: 3,
                ..request
            },
        )
        .await
        .unwrap();
    let answer = milvus_backfill::plan_job::answer(&bucket, &layout.request_key(), &token, &creds)
        .await
        .unwrap();
    let PlanAnswer::Failed { kind, message } = bucket.get_json(&layout.answer_key()).await.unwrap().unwrap() else {
        panic!("expected a failure, got {answer:?}")
    };
    assert!(kind.is_permanent(), "{kind}: {message}");
    assert!(message.contains("score"), "{message}");
    // The precheck report is stored beside the request, before the answer; it failed at the mapping.
    let report: PrecheckReport = bucket.get_json(&layout.precheck_key()).await.unwrap().unwrap();
    assert!(!report.passed);
    assert_eq!(report.failed().map(|c| c.check).collect::<Vec<_>>(), [Check::Mapping]);
    let passed: PrecheckReport = bucket
        .get_json(&PlanningLayout::new("files", "uid-1", 2, 0).precheck_key())
        .await
        .unwrap()
        .unwrap();
    assert!(passed.passed, "{}", passed.summary());

    // No request: nothing to answer, and nothing is written.
    let missing = PlanningLayout::new("files", "uid-1", 4, 0);
    let e = milvus_backfill::plan_job::answer(&bucket, &missing.request_key(), &token, &creds)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(e.message.contains("planning request"), "{}", e.message);
    assert!(bucket
        .get_json::<PlanAnswer>(&missing.answer_key())
        .await
        .unwrap()
        .is_none());
}

// ------------------------------------------------------------------ the precheck

fn state_of(r: &PrecheckReport, check: Check) -> (CheckState, String) {
    let c = r.checks.iter().find(|c| c.check == check).unwrap();
    (c.state, c.detail.clone())
}

#[tokio::test]
async fn contract_the_precheck_passes_check_by_check_and_shows_rows_as_they_will_be_written() {
    let bed = Bed::new(1003, 3, vec![]).await;
    let (token, creds) = (MilvusToken::default(), StoreCredentials::default());
    let (report, planned) = planner::precheck(&bed.doc("", ""), &token, &creds).await;
    assert!(planned.is_ok());
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.collection, COLLECTION);
    for check in Check::ALL.into_iter().filter(|c| *c != Check::Vectors) {
        assert_eq!(state_of(&report, check).0, CheckState::Passed, "{check}: {report:?}");
    }
    let (vectors, why) = state_of(&report, Check::Vectors);
    assert_eq!(
        (vectors, why.as_str()),
        (CheckState::NotRun, "no new field is a vector field")
    );
    let rows = bed.want.len() as u64 + 20;
    assert!(
        state_of(&report, Check::Keys)
            .1
            .starts_with(&format!("{rows} `pk` values")),
        "{report:?}"
    );
    assert!(
        state_of(&report, Check::Mapping)
            .1
            .contains("score (Float64, field 103)"),
        "{report:?}"
    );
    // The sample: spread over the source, each value the source's for its key.
    let sample = report.sample.as_ref().unwrap();
    assert_eq!(sample.columns, ["pk", "score"]);
    assert_eq!(sample.rows.len(), 5);
    let values: HashMap<String, f64> = bed
        .want
        .iter()
        .map(|(k, v)| (k.trim_matches('"').to_owned(), *v))
        .collect();
    for row in &sample.rows {
        let key = row[0].trim_matches('"');
        let value: f64 = row[1].parse().unwrap();
        assert_eq!(values.get(key).copied().unwrap_or(-1.0), value, "{row:?}");
    }
}

#[tokio::test]
async fn contract_a_failed_precheck_names_the_check_and_runs_no_later_one() {
    let bed = Bed::new(1003, 3, vec![]).await;
    // The first key twice: a duplicate.
    write_source(
        &bed.source,
        &[bed.pks[0].clone(), bed.pks[1].clone(), bed.pks[0].clone()],
    );
    let (token, creds) = (MilvusToken::default(), StoreCredentials::default());
    let (report, planned) = planner::precheck(&bed.doc("", ""), &token, &creds).await;
    let e = planned.err().expect("a duplicate key fails the precheck");
    assert_eq!(e.kind, ErrorKind::SchemaValidationError);
    assert!(!report.passed);
    let (keys, why) = state_of(&report, Check::Keys);
    assert_eq!(keys, CheckState::Failed);
    assert!(why.contains("1 duplicate `pk` value(s)"), "{why}");
    assert_eq!(state_of(&report, Check::Collection).0, CheckState::Passed);
    for later in [Check::Vectors, Check::Segments, Check::RunId, Check::Sample] {
        assert_eq!(
            state_of(&report, later),
            (CheckState::NotRun, "not run: an earlier check failed".to_owned()),
            "{later}"
        );
    }
    assert!(
        report
            .summary()
            .starts_with("precheck failed at keys: SchemaValidationError:"),
        "{}",
        report.summary()
    );
    // Milvus unreachable: the collection check fails, with the connection's kind.
    let mut doc = bed.doc("", "");
    doc.spec.milvus.uri = "http://127.0.0.1:9".into();
    let (report, _) = planner::precheck(&doc, &token, &creds).await;
    let failed: Vec<_> = report.failed().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].check, failed[0].kind),
        (Check::Collection, Some(ErrorKind::ConnectionError))
    );
    assert_eq!(state_of(&report, Check::Source).0, CheckState::NotRun);
}

// ------------------------------------------------------------------ the lifecycle

/// `spec.lifecycle` before planning: flush, then the new field, then the snapshot (which must
/// hold the field), then planning from it. Planning again changes nothing in Milvus.
#[tokio::test]
async fn contract_lifecycle_flushes_adds_fields_then_snapshots_in_that_order_and_again_changes_nothing() {
    use milvus_backfill_api::lifecycle::{Step, StepState};
    let bed = Bed::new(1003, 3, vec![]).await;
    bed.state().has_score = false;
    let doc = bed.doc(
        "",
        "  lifecycle:\n    snapshot: {name: bf-life}\n    addFields: {maxLength: 64}\n    flush: true\n",
    );
    let planned = plan(&doc).await.unwrap();
    let calls = bed.calls();
    let order: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.split(' ').next())
        .filter(|c| ["Flush", "AddCollectionField", "CreateSnapshot", "DescribeSnapshot"].contains(c))
        .collect();
    assert_eq!(
        order,
        ["Flush", "AddCollectionField", "CreateSnapshot", "DescribeSnapshot"],
        "{calls:?}"
    );
    let steps: Vec<(Step, StepState)> = planned.plan.lifecycle.iter().map(|r| (r.step, r.state)).collect();
    assert_eq!(
        steps,
        [
            (Step::Flush, StepState::Done),
            (Step::AddFields, StepState::Done),
            (Step::Snapshot, StepState::Done)
        ]
    );
    assert!(planned.plan.lifecycle[1]
        .message
        .contains("added score (Double, nullable)"));
    // The snapshot was taken after the field was added: the plan binds it.
    assert_eq!(planned.plan.new_fields[0].field_id, Some(103));
    bed.check_written(&run(&planned).await, 1003);

    bed.state().calls.clear();
    let again = plan(&doc).await.unwrap();
    let states: Vec<StepState> = again.plan.lifecycle.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [StepState::Done, StepState::AlreadyDone, StepState::AlreadyDone]
    );
    assert!(
        !bed.calls().iter().any(|c| c.starts_with("AddCollectionField")),
        "{:?}",
        bed.calls()
    );
}

/// A server without AddCollectionField stops the lifecycle at that step, before the snapshot
/// and before anything is written; the error names the step.
#[tokio::test]
async fn contract_lifecycle_add_fields_on_an_old_server_stops_before_the_snapshot() {
    let bed = Bed::new(1003, 3, vec![]).await;
    bed.state().has_score = false;
    bed.state().snapshots_supported = false;
    let doc = bed.doc("", "  lifecycle:\n    addFields: {}\n    snapshot: {name: s}\n");
    let e = refused(&doc).await;
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(
        e.message.starts_with("step addFields (lifecycle.addFields): ") && e.message.contains("no later step ran"),
        "{}",
        e.message
    );
    assert!(
        !bed.calls().iter().any(|c| c.starts_with("CreateSnapshot")),
        "{:?}",
        bed.calls()
    );
    assert!(!bed.root.join("bkt/files/backfill").exists(), "nothing written");
}

/// `createIndex` over gRPC: the parameters Milvus parses, the build awaited, and an index that
/// exists kept. A field the run does not backfill is refused at planning.
#[tokio::test]
async fn contract_create_index_sends_the_parameters_and_keeps_an_existing_index() {
    use milvus_backfill::after_commit::{self, IndexWait};
    use milvus_backfill_api::lifecycle::StepState;
    let bed = Bed::new(1003, 3, vec![]).await;
    let with_index = |field: &str| {
        bed.doc(
            "",
            &format!(
                "  lifecycle:\n    commit: {{endpoint: \"http://127.0.0.1:1\"}}\n    createIndex:\n      - {{field: {field}, indexType: STL_SORT, params: {{a: \"1\"}}}}\n"
            ),
        )
    };
    let e = refused(&with_index("title")).await;
    assert!(
        e.message
            .contains("names [\"title\"], which this run does not backfill"),
        "{}",
        e.message
    );
    let doc = with_index("score");
    let planned = plan(&doc).await.unwrap();
    let mut milvus = milvus_backfill::milvus::MilvusClient::connect(&bed.uri, "default", &MilvusToken::default())
        .await
        .unwrap();
    let now = IndexWait {
        poll: std::time::Duration::ZERO,
        timeout: std::time::Duration::from_secs(5),
    };
    let first = after_commit::run(&doc.spec, &planned.plan, &mut milvus, None, now).await;
    assert_eq!(first[0].state, StepState::Done, "{}", first[0].message);
    assert!(
        bed.calls()
            .contains(&"CreateIndex score index_type=STL_SORT,params={\"a\":\"1\"}".to_owned()),
        "{:?}",
        bed.calls()
    );
    let second = after_commit::run(&doc.spec, &planned.plan, &mut milvus, None, now).await;
    assert_eq!(second[0].state, StepState::AlreadyDone, "{}", second[0].message);
    assert_eq!(bed.calls().iter().filter(|c| c.starts_with("CreateIndex")).count(), 1);
}

#[tokio::test]
async fn contract_a_finishing_job_runs_the_steps_after_the_commit_and_answers_beside_the_request() {
    use milvus_backfill_api::layout::RunLayout;
    use milvus_backfill_api::lifecycle::{Step, StepState};
    use milvus_backfill_api::planning::{FinishAnswer, FinishRequest, PlanningLayout};
    let bed = Bed::new(1003, 3, vec![]).await;
    let doc = bed.doc(
        "",
        "  lifecycle:\n    commit: {endpoint: \"http://127.0.0.1:1\"}\n    createIndex:\n      - {field: score, indexType: STL_SORT}\n    verify: {sampleRows: 5}\n",
    );
    let planned = plan(&doc).await.unwrap();
    let bucket = milvus_backfill::facade::open_storage(&doc.spec, None).await;
    let plan_key = RunLayout::of_plan(&planned.plan).plan_key();
    bucket.put_json(&plan_key, &planned.plan).await.unwrap();
    let layout = PlanningLayout::finishing("files", "uid-1", 2, 0);
    let request = FinishRequest {
        backfill: "bf".into(),
        namespace: "ns".into(),
        generation: 2,
        attempt: 0,
        spec: doc.spec.clone(),
        plan_key: plan_key.clone(),
    };
    bucket.put_json(&layout.request_key(), &request).await.unwrap();
    let (token, creds) = (MilvusToken::default(), StoreCredentials::default());
    let answer = milvus_backfill::finish_job::answer(&bucket, &layout.request_key(), &token, &creds)
        .await
        .unwrap();
    let stored: FinishAnswer = bucket.get_json(&layout.answer_key()).await.unwrap().unwrap();
    assert_eq!(stored, answer);
    let steps: Vec<(Step, StepState)> = answer.steps.iter().map(|r| (r.step, r.state)).collect();
    // The index is built through Milvus; verify queries it, and the stand-in serves no rows,
    // so verify's failure is recorded in the answer rather than failing the Job.
    assert_eq!(
        steps,
        [(Step::CreateIndex, StepState::Done), (Step::Verify, StepState::Failed)],
        "{:?}",
        answer.steps
    );
    assert!(
        bed.calls()
            .iter()
            .any(|c| c.starts_with("CreateIndex score index_type=STL_SORT")),
        "{:?}",
        bed.calls()
    );
    assert!(bed.calls().contains(&"Query".to_owned()), "{:?}", bed.calls());

    // Again (a retried Job): the index is kept, not built twice.
    let again = milvus_backfill::finish_job::answer(&bucket, &layout.request_key(), &token, &creds)
        .await
        .unwrap();
    assert_eq!(
        again.steps[0].state,
        StepState::AlreadyDone,
        "{}",
        again.steps[0].message
    );
    assert_eq!(bed.calls().iter().filter(|c| c.starts_with("CreateIndex")).count(), 1);

    // A plan that is gone: the Job fails (and is retried); no answer is written.
    let gone = PlanningLayout::finishing("files", "uid-1", 3, 0);
    let request = FinishRequest {
        generation: 3,
        plan_key: "files/backfill/none/plan.json".into(),
        ..request
    };
    bucket.put_json(&gone.request_key(), &request).await.unwrap();
    let e = milvus_backfill::finish_job::answer(&bucket, &gone.request_key(), &token, &creds)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ConfigError);
    assert!(e.message.contains("the run's plan"), "{}", e.message);
    assert!(bucket
        .get_json::<FinishAnswer>(&gone.answer_key())
        .await
        .unwrap()
        .is_none());
}
