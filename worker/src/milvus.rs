//! The Milvus calls the planner makes, over Milvus' public gRPC API.

use std::time::Duration;

use milvus_proto::common::Status;
use milvus_proto::milvus as pb;
use milvus_proto::milvus::milvus_service_client::MilvusServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::MilvusToken;
use crate::error::{BackfillError, Result};
use crate::plan::SegmentInfo;
use crate::retry;

type Inner = MilvusServiceClient<InterceptedService<Channel, Auth>>;

/// Adds the credentials and database the way Milvus' own SDKs do:
/// `authorization: base64(token)` and `dbname: <database>`.
#[derive(Clone)]
pub struct Auth {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    database: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req.metadata_mut().insert("dbname", self.database.clone());
        Ok(req)
    }
}

pub struct MilvusClient {
    pub(crate) inner: Inner,
    pub(crate) uri: String,
    pub(crate) database: String,
}

/// A field of the collection schema, as the planner needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldInfo {
    pub field_id: i64,
    pub name: String,
    pub data_type: i32,
    pub is_primary_key: bool,
    pub nullable: bool,
    /// The `dim` type parameter of a dense vector field.
    pub dim: Option<u32>,
}

/// The `dim` among a field's type parameters, when it has a valid one.
pub fn dim_param<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<u32> {
    params
        .into_iter()
        .find(|(k, _)| *k == "dim")
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// A field to add: nullable, of a Milvus type, with a `max_length` for VarChar and a `dim`
/// for a dense vector.
#[derive(Clone, Debug, PartialEq)]
pub struct NewFieldSchema {
    pub name: String,
    pub data_type: i32,
    pub max_length: Option<u32>,
    pub dim: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CollectionInfo {
    pub collection_id: i64,
    pub fields: Vec<FieldInfo>,
    pub schema_version: i32,
}

/// A snapshot as DescribeSnapshot reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    pub name: String,
    pub collection_name: String,
    /// Hybrid timestamp: physical milliseconds << 18.
    pub create_ts: i64,
    /// The metadata JSON: a bucket-relative key (`files/snapshots/<coll>/metadata/<id>.json`)
    /// or an `s3://` URI.
    pub s3_location: String,
}

/// What CreateSnapshot did.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    New,
    /// A snapshot of that name existed already (Milvus' reason).
    Existed(String),
}

pub const NO_SNAPSHOTS: &str = "this Milvus has no snapshots (needs Milvus 3.0+)";

/// A failed snapshot call's status, sorted by what the user should do.
#[derive(Debug, PartialEq)]
enum SnapshotStatus {
    Ok,
    NotFound(String),
    Exists(String),
    /// Anything else, including a missing collection: the generic check words it.
    Other,
}

// `error_code` is deprecated upstream but older servers set only it on some errors.
#[allow(deprecated)]
fn snapshot_status(status: Option<&Status>) -> SnapshotStatus {
    let Some(s) = status.filter(|s| s.code != 0 || s.error_code != 0) else {
        return SnapshotStatus::Ok;
    };
    let reason = s.reason.to_lowercase();
    // merr words it "snapshot not found[snapshot=<name>]"; a missing collection names the
    // collection instead and is left to the generic check.
    let about_snapshot = reason.contains("snapshot") && !reason.contains("collection not found");
    if about_snapshot && (reason.contains("not found") || reason.contains("not exist")) {
        SnapshotStatus::NotFound(s.reason.clone())
    } else if about_snapshot && reason.contains("already exist") {
        SnapshotStatus::Exists(s.reason.clone())
    } else {
        SnapshotStatus::Other
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// gRPC failures worth a retry: the server or the path to it is down or overloaded, or the
/// call timed out. Everything else (bad arguments, missing objects, auth) fails at once.
pub(crate) fn transient(s: &tonic::Status) -> bool {
    use tonic::Code;
    match s.code() {
        // Cancelled: we never cancel a call, so it is the transport's ("connection closed
        // before message completed").
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled => true,
        Code::Unknown => {
            let m = s.message().to_ascii_lowercase();
            m.contains("transport") || m.contains("connection") || m.contains("broken pipe")
        }
        _ => false,
    }
}

/// A transport error with its causes: tonic's own text ("transport error") says nothing of
/// why.
fn transport_error(e: &tonic::transport::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl MilvusClient {
    pub async fn connect(uri: &str, database: &str, token: &MilvusToken) -> Result<Self> {
        let endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| BackfillError::config(format!("spec.milvus.uri {uri:?} is not a valid URI: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        let endpoint = if uri.starts_with("https://") {
            endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| BackfillError::config(format!("TLS for {uri}: {e}")))?
        } else {
            endpoint
        };
        let channel = retry::MILVUS
            .run("connect", |_| true, || endpoint.connect())
            .await
            .map_err(|e| {
                BackfillError::connection(format!(
                    "cannot connect to Milvus at {uri} ({} attempts): {}; check spec.milvus.uri and that Milvus is running",
                    retry::MILVUS.attempts,
                    transport_error(&e)
                ))
            })?;
        let authorization = match &token.0 {
            Some(t) => Some(
                base64(t.as_bytes())
                    .parse()
                    .map_err(|_| BackfillError::config("MILVUS_TOKEN contains characters that cannot be sent"))?,
            ),
            None => None,
        };
        let database_md = database
            .parse()
            .map_err(|_| BackfillError::config(format!("spec.milvus.database {database:?} is not a valid name")))?;
        let inner = MilvusServiceClient::with_interceptor(
            channel,
            Auth {
                authorization,
                database: database_md,
            },
        )
        .max_decoding_message_size(256 * 1024 * 1024);
        Ok(Self {
            inner,
            uri: uri.to_owned(),
            database: database.to_owned(),
        })
    }

    /// One RPC, sent again while it fails transiently ([`transient`]); the channel reconnects
    /// by itself, so a retry after a dropped connection opens a new one. Every call we make is
    /// a read or idempotent (Flush, CreateSnapshot, CreateIndex and AddCollectionField are
    /// checked for "already there"), so sending one twice is safe.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        what: &str,
        req: Req,
        f: F,
    ) -> std::result::Result<tonic::Response<Resp>, tonic::Status>
    where
        Req: Clone,
        F: Fn(Inner, Req) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        retry::MILVUS
            .run(what, transient, || f(self.inner.clone(), req.clone()))
            .await
    }

    pub(crate) fn rpc_err(&self, call: &str, s: tonic::Status) -> BackfillError {
        let hint = match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                "; check MILVUS_TOKEN (spec.milvus.tokenSecretRef in a cluster)"
            }
            tonic::Code::Unimplemented => "; this Milvus version does not offer the call",
            _ if transient(&s) => {
                "; check spec.milvus.uri and that Milvus is running (the call was tried again, then given up)"
            }
            _ => "",
        };
        BackfillError::connection(format!(
            "{call} on {}: {} ({:?}){hint}",
            self.uri,
            s.message(),
            s.code()
        ))
    }

    // `error_code` is deprecated upstream but 2.3 servers still set only it on some errors.
    #[allow(deprecated)]
    pub(crate) fn check(&self, call: &str, what: &str, status: Option<Status>) -> Result<()> {
        match status {
            Some(s) if s.code != 0 || s.error_code != 0 => {
                let msg = format!(
                    "{call} for {what}: {} (code {}, error_code {})",
                    s.reason, s.code, s.error_code
                );
                // Missing collections/partitions are configuration mistakes, not outages.
                if s.reason.contains("not found") || s.reason.contains("not exist") || s.error_code == 4 {
                    Err(BackfillError::config(format!(
                        "{msg}; check spec.milvus.collection / database / partition"
                    )))
                } else {
                    Err(BackfillError::connection(msg))
                }
            }
            _ => Ok(()),
        }
    }

    pub async fn describe_collection(&mut self, collection: &str) -> Result<CollectionInfo> {
        let req = pb::DescribeCollectionRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            ..Default::default()
        };
        let r = self
            .call("describe_collection", req, |mut c, r| async move {
                c.describe_collection(r).await
            })
            .await
            .map_err(|s| self.rpc_err("DescribeCollection", s))?
            .into_inner();
        self.check(
            "DescribeCollection",
            &format!("collection {collection:?} in database {:?}", self.database),
            r.status,
        )?;
        let schema = r.schema.unwrap_or_default();
        Ok(CollectionInfo {
            collection_id: r.collection_id,
            schema_version: schema.version,
            fields: schema
                .fields
                .into_iter()
                .map(|f| FieldInfo {
                    dim: dim_param(f.type_params.iter().map(|p| (p.key.as_str(), p.value.as_str()))),
                    field_id: f.field_id,
                    name: f.name,
                    data_type: f.data_type,
                    is_primary_key: f.is_primary_key,
                    nullable: f.nullable,
                })
                .collect(),
        })
    }

    /// (name, id) of every partition.
    pub async fn show_partitions(&mut self, collection: &str) -> Result<Vec<(String, i64)>> {
        let req = pb::ShowPartitionsRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            ..Default::default()
        };
        let r = self
            .call(
                "show_partitions",
                req,
                |mut c, r| async move { c.show_partitions(r).await },
            )
            .await
            .map_err(|s| self.rpc_err("ShowPartitions", s))?
            .into_inner();
        self.check("ShowPartitions", &format!("collection {collection:?}"), r.status)?;
        Ok(r.partition_names.into_iter().zip(r.partition_i_ds).collect())
    }

    pub async fn segments(&mut self, collection: &str) -> Result<Vec<SegmentInfo>> {
        let req = pb::GetPersistentSegmentInfoRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            ..Default::default()
        };
        let r = self
            .call("get_persistent_segment_info", req, |mut c, r| async move {
                c.get_persistent_segment_info(r).await
            })
            .await
            .map_err(|s| self.rpc_err("GetPersistentSegmentInfo", s))?
            .into_inner();
        self.check(
            "GetPersistentSegmentInfo",
            &format!("collection {collection:?}"),
            r.status,
        )?;
        Ok(r.infos
            .into_iter()
            .map(|i| SegmentInfo {
                segment_id: i.segment_id,
                partition_id: i.partition_id,
                num_rows: i.num_rows,
                state: i.state,
                level: i.level,
                storage_version: i.storage_version,
            })
            .collect())
    }

    /// The snapshot calls' RPC errors: an old server's UNIMPLEMENTED says what is missing.
    fn snapshot_rpc_err(&self, call: &str, s: tonic::Status) -> BackfillError {
        if s.code() == tonic::Code::Unimplemented {
            return BackfillError::config(format!(
                "{call} on {}: {NO_SNAPSHOTS}; plan without spec.milvus.snapshot (from the live segments), \
                 or from a snapshot file (spec.milvus.snapshot.path)",
                self.uri
            ));
        }
        self.rpc_err(call, s)
    }

    /// Creates the snapshot `name` of the collection, its segments protected from compaction
    /// for `protection_seconds`. A snapshot of that name that exists already is reported, not
    /// an error: a planning retry after a successful create must not fail on it.
    /// AddCollectionField: adds `field` to the collection's schema (Milvus 2.6+ requires it
    /// nullable). Older servers do not have the call: that is a configuration error that says so.
    pub async fn add_collection_field(&mut self, collection: &str, field: &NewFieldSchema) -> Result<()> {
        use milvus_proto::prost::Message;
        let mut type_params = Vec::new();
        if let Some(max) = field.max_length {
            type_params.push(milvus_proto::common::KeyValuePair {
                key: "max_length".into(),
                value: max.to_string(),
            });
        }
        if let Some(dim) = field.dim {
            type_params.push(milvus_proto::common::KeyValuePair {
                key: "dim".into(),
                value: dim.to_string(),
            });
        }
        let schema = milvus_proto::schema::FieldSchema {
            name: field.name.clone(),
            data_type: field.data_type,
            nullable: true,
            type_params,
            ..Default::default()
        };
        let req = pb::AddCollectionFieldRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            schema: schema.encode_to_vec(),
            ..Default::default()
        };
        let status = self.call("add_collection_field", req, |mut c, r| async move { c.add_collection_field(r).await })
            .await.map_err(|s| {
            if s.code() == tonic::Code::Unimplemented {
                BackfillError::config(format!(
                    "AddCollectionField on {}: this Milvus has no AddCollectionField (it needs Milvus 2.6 or later, and Milvus \
                     commits backfills from 3.0 on): nothing was changed",
                    self.uri
                ))
            } else {
                self.rpc_err("AddCollectionField", s)
            }
        })?;
        self.check(
            "AddCollectionField",
            &format!("field {:?} of collection {collection:?}", field.name),
            Some(status.into_inner()),
        )
    }

    pub async fn create_snapshot(&mut self, name: &str, collection: &str, protection_seconds: u32) -> Result<Created> {
        let req = pb::CreateSnapshotRequest {
            name: name.to_owned(),
            description: "created by milvus-backfill to plan a backfill".to_owned(),
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            compaction_protection_seconds: i64::from(protection_seconds),
            ..Default::default()
        };
        let status = self
            .call(
                "create_snapshot",
                req,
                |mut c, r| async move { c.create_snapshot(r).await },
            )
            .await
            .map_err(|s| self.snapshot_rpc_err("CreateSnapshot", s))?
            .into_inner();
        match snapshot_status(Some(&status)) {
            SnapshotStatus::Ok => Ok(Created::New),
            SnapshotStatus::Exists(reason) => Ok(Created::Existed(reason)),
            _ => {
                self.check(
                    "CreateSnapshot",
                    &format!("snapshot {name:?} of collection {collection:?}"),
                    Some(status),
                )?;
                Ok(Created::New)
            }
        }
    }

    pub async fn describe_snapshot(&mut self, name: &str, collection: &str) -> Result<SnapshotInfo> {
        let req = pb::DescribeSnapshotRequest {
            name: name.to_owned(),
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            ..Default::default()
        };
        let r = self
            .call("describe_snapshot", req, |mut c, r| async move {
                c.describe_snapshot(r).await
            })
            .await
            .map_err(|s| self.snapshot_rpc_err("DescribeSnapshot", s))?
            .into_inner();
        if let SnapshotStatus::NotFound(reason) = snapshot_status(r.status.as_ref()) {
            return Err(BackfillError::config(format!(
                "snapshot {name:?} of collection {collection:?} in database {:?} does not exist ({reason}): check \
                 spec.milvus.snapshot.name, or set spec.milvus.snapshot.create: true to create it",
                self.database
            )));
        }
        self.check(
            "DescribeSnapshot",
            &format!(
                "snapshot {name:?} of collection {collection:?} in database {:?}",
                self.database
            ),
            r.status,
        )?;
        Ok(SnapshotInfo {
            name: r.name,
            collection_name: r.collection_name,
            create_ts: r.create_ts,
            s3_location: r.s3_location,
        })
    }

    /// Seals and flushes the collection, then waits until Milvus reports it flushed.
    pub async fn flush(&mut self, collection: &str, timeout: Duration) -> Result<()> {
        let req = pb::FlushRequest {
            db_name: self.database.clone(),
            collection_names: vec![collection.to_owned()],
            ..Default::default()
        };
        let r = self
            .call("flush", req, |mut c, r| async move { c.flush(r).await })
            .await
            .map_err(|s| self.rpc_err("Flush", s))?
            .into_inner();
        self.check("Flush", &format!("collection {collection:?}"), r.status)?;
        let mut segs: Vec<i64> = Vec::new();
        if let Some(a) = r.coll_seg_i_ds.get(collection) {
            segs.extend(&a.data);
        }
        if let Some(a) = r.flush_coll_seg_i_ds.get(collection) {
            segs.extend(&a.data);
        }
        let flush_ts = r.coll_flush_ts.get(collection).copied().unwrap_or(0);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let req = pb::GetFlushStateRequest {
                segment_i_ds: segs.clone(),
                flush_ts,
                db_name: self.database.clone(),
                collection_name: collection.to_owned(),
            };
            let s = self
                .call(
                    "get_flush_state",
                    req,
                    |mut c, r| async move { c.get_flush_state(r).await },
                )
                .await
                .map_err(|s| self.rpc_err("GetFlushState", s))?
                .into_inner();
            self.check("GetFlushState", &format!("collection {collection:?}"), s.status)?;
            if s.flushed {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(BackfillError::connection(format!(
                    "collection {collection:?} was not flushed within {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[allow(deprecated)]
    #[test]
    fn snapshot_statuses_are_sorted_by_what_to_fix() {
        use super::{snapshot_status, SnapshotStatus};
        use milvus_proto::common::Status;
        let st = |code, reason: &str| Status {
            code,
            reason: reason.into(),
            ..Default::default()
        };
        assert_eq!(snapshot_status(None), SnapshotStatus::Ok);
        assert_eq!(snapshot_status(Some(&st(0, ""))), SnapshotStatus::Ok);
        let missing = st(65535, "snapshot not found[snapshot=s1]");
        assert!(matches!(snapshot_status(Some(&missing)), SnapshotStatus::NotFound(r) if r.contains("s1")));
        let exists = st(65535, "snapshot already exists[snapshot=s1]");
        assert!(matches!(snapshot_status(Some(&exists)), SnapshotStatus::Exists(_)));
        // A missing collection is the collection's problem, worded by the generic check.
        let no_coll = st(100, "collection not found[collection=c] when describing snapshot s1");
        assert_eq!(snapshot_status(Some(&no_coll)), SnapshotStatus::Other);
        let legacy = Status {
            error_code: 1,
            reason: "snapshot s1 does not exist".into(),
            ..Default::default()
        };
        assert!(matches!(snapshot_status(Some(&legacy)), SnapshotStatus::NotFound(_)));
        assert_eq!(snapshot_status(Some(&st(5, "rate limit"))), SnapshotStatus::Other);
    }

    #[test]
    fn base64_matches_the_sdk_encoding() {
        assert_eq!(super::base64(b"root:Milvus"), "cm9vdDpNaWx2dXM=");
        assert_eq!(super::base64(b"ab"), "YWI=");
        assert_eq!(super::base64(b"abc"), "YWJj");
    }
}
