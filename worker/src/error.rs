//! Typed errors: the contract's (`milvus_backfill_api::error`), used throughout the engine.

pub use milvus_backfill_api::error::*;
