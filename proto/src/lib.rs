//! Client side of the subset of Milvus' public gRPC API that milvus-backfill calls.
//! The `.proto` files under `proto/` keep upstream's package, field names and numbers.

#![allow(clippy::all, missing_docs)]

/// The protobuf runtime, for callers that serialize a message into a `bytes` field
/// (AddCollectionField carries a serialized `FieldSchema`).
pub use prost;

pub mod common {
    tonic::include_proto!("milvus.proto.common");
}
pub mod schema {
    tonic::include_proto!("milvus.proto.schema");
}
pub mod milvus {
    tonic::include_proto!("milvus.proto.milvus");
}
